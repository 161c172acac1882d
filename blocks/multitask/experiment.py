"""A multi-task config made concrete: one :class:`~blocks.experiment.Experiment` per task, whose
models share their trunk's blocks.

Each task's experiment reads its own data and builds its own graphs (the shared graph plus its
head). The graphs of a model with heads then share one block object per trunk node (and per
shared head), so a step on any task trains the same trunk. Word vocabularies are built once over
every task's training data, so that a shared embedding indexes the same words for every task.
:class:`MultiTaskModel` holds a model's distinct blocks once each: what a stage trains and what
its checkpoints hold.
"""
from __future__ import annotations

import collections

from torch import nn

from blocks.data.dataset import (PRETRAINED, TASK_INPUT_TYPES, build_input_fields, count_tokens, read_split,
                                 split_sources)
from blocks.data.vocabulary import Vocabulary
from blocks.errors import ConfigError
from blocks.experiment import Experiment, load_vocabulary_file
from blocks.multitask.config import MultiTaskConfig
from blocks.tasks import task_class

#: between a task's name and a node's name in the keys of a :class:`MultiTaskModel`
TASK_SEPARATOR = ":"


class MultiTaskModel(nn.Module):
    """A model's blocks over every task, each distinct block once: a trunk node's block under its
    node name, a task's own block under ``task:node``. Its state dict is a run's saved weights of
    the model; the per-task graphs run the blocks."""

    def __init__(self, name: str, graphs: dict, shared_nodes: set[str]):
        super().__init__()
        self.name = name
        self.graphs = graphs  # task -> Graph (plain dict: not submodules, their blocks are registered below)
        self.parts = nn.ModuleDict()
        seen: dict[int, str] = {}
        for task, graph in graphs.items():
            for owner, block in graph.blocks.items():
                if id(block) in seen:
                    continue
                key = owner if owner in shared_nodes else f"{task}{TASK_SEPARATOR}{owner}"
                seen[id(block)] = key
                self.parts[key] = block


class MultiTaskExperiment:
    """The per-task experiments of a multi-task config, with shared blocks (see the module
    docstring)."""

    def __init__(self, config: MultiTaskConfig, experiments: dict[str, Experiment]):
        self.config = config
        self.experiments = experiments
        self.tasks = list(experiments)
        self._share_blocks()
        self.models: dict[str, MultiTaskModel] = {}
        for name in config.first["models"]:  # the models the stages use
            graphs = {task: experiment.models[name] for task, experiment in experiments.items()}
            self.models[name] = MultiTaskModel(name, graphs, set(config.shared_models.get(name, ())))

    @classmethod
    def prepare(cls, config: MultiTaskConfig, log=print) -> "MultiTaskExperiment":
        vocabularies = shared_vocabularies(config)
        experiments = {}
        for task, task_config in config.tasks.items():
            log(f"task '{task}':")
            experiments[task] = Experiment.prepare(task_config, log=lambda text: log(f"  {text}"),
                                                   vocabularies=vocabularies)
        return cls(config, experiments)

    def _share_blocks(self) -> None:
        first = self.tasks[0]
        for model, trunk in self.config.shared_models.items():
            base = self.experiments[first].models[model]
            for task in self.tasks:
                graph = self.experiments[task].models[model]
                head_task = self.config.head_owner[model][task]
                for node in graph.nodes:
                    if node.part_of is not None or node.owner != node.name:
                        continue
                    if node.name in trunk:
                        source = base
                    elif head_task != task:  # the head of another task, shared
                        source = self.experiments[head_task].models[model]
                    else:
                        continue
                    if task == first and source is base:
                        continue
                    self._check_same_shape(model, node.name, source.blocks[node.name], graph.blocks[node.name],
                                           first if source is base else head_task, task)
                    graph.blocks[node.name] = source.blocks[node.name]

    def _check_same_shape(self, model: str, node: str, kept: nn.Module, replaced: nn.Module, first: str,
                          task: str) -> None:
        ours = {k: tuple(v.shape) for k, v in kept.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in replaced.state_dict().items()}
        if ours != theirs:
            raise ConfigError(f"node '{node}' of model '{model}' is shared by the tasks but its weights differ in "
                              f"shape between task '{first}' and task '{task}' (does it depend on the task's labels? "
                              f"then it belongs in the heads)", self.config.file, f"/models/{model}/graph")

    def experiment(self, task: str) -> Experiment:
        return self.experiments[task]

    def load_pretrained(self, log=print) -> None:
        """Pretrained weights of every distinct block that has some (a shared block once)."""
        for name, model in self.models.items():
            if name in self.config.run_models:
                continue
            for block in model.parts.values():
                report = block.load_pretrained(self.config.base_dir)
                if report:
                    log(report)


def shared_vocabularies(config: MultiTaskConfig) -> dict[str, Vocabulary]:
    """The word vocabularies of the models' inputs, built over every task's training rows (or read
    from a file), so that every task indexes one table."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    options = config.first["vocabularies"]
    for task_config in config.tasks.values():
        values = task_config.values
        per_token = task_class(values["task"]["type"], task_config.file).per_token
        fields, _ = build_input_fields(values["models"], task_config.file, task_config.base_dir, words=per_token)
        fields = {key: f for key, f in fields.items() if f.type != PRETRAINED and f.type not in TASK_INPUT_TYPES}
        if not fields:
            continue
        source = split_sources(values["data"])["train"]
        for name, counter in count_tokens(fields, read_split(source), source.fields).items():
            counts[name].update(counter)
    vocabularies = {}
    for name, counter in counts.items():
        option = options.get(name, {"min_freq": 1, "max_size": None})
        if option.get("file"):
            vocabularies[name] = load_vocabulary_file(option["file"], config.first, f"/vocabularies/{name}/file")
        else:
            vocabularies[name] = Vocabulary.build(counter, min_freq=option.get("min_freq", 1),
                                                  max_size=option.get("max_size"))
    return vocabularies
