"""One stage of a multi-task run: train a model on one task or a mixture of tasks, plus replay.

Every batch comes from one task (its own inputs, labels, head and losses). The epoch's batches
are those of every source (a task's training split, or the stored share of a replayed task's),
bucketed by length per source and then interleaved: shuffled together (``proportional``: each
task's share of the steps is its share of the examples) or drawn with probability proportional
to ``n_k ** (1 / T)`` (``{"temperature": T}``; as many batches in all). The stored replay sample
of a task is fixed by the seed and the task, so every stage replays the same examples.

Everything else is :class:`~blocks.engine.trainer.StageTrainer`'s: the optimizer over the model's
distinct blocks, the schedule, checkpoints and resume, NaN checks, progress, plots. A dev
evaluation scores each of the stage's tasks (``<task>/<metric>``) and selects by ``mean``, the
mean of each task's first metric. Each task is taught by its own teacher weights, whose outputs on
that task's training split are cached as in a single-task stage. Several processes are for
single-task runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from blocks.data.batching import bucket_batches
from blocks.data.dataset import EncodedSplit
from blocks.engine.distributed import SINGLE
from blocks.engine.evaluation import evaluate
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageState, StageTrainer, _overrides, epoch_generator
from blocks.errors import TrainingError
from blocks.experiment import Experiment
from blocks.multitask.config import StagePlan

MEAN = "mean"


@dataclass
class TaskSource:
    """Where a stage's batches come from: a task's training split (all of it, or the stored
    ``pool`` of a replayed task) and what that task's batches are trained with."""

    task: str
    experiment: Experiment
    split: EncodedSplit
    losses: list
    teachers: list[str]
    pool: torch.Tensor | None = None  # replay: the stored examples' indexes
    cache: object = None  # the teachers' outputs on the split, when the stage caches them

    def __len__(self) -> int:
        return len(self.pool) if self.pool is not None else len(self.split)


def replay_pool(size: int, share: float, seed: int, task_index: int) -> torch.Tensor:
    """The stored share of a task's training examples (indexes, sorted): fixed by the seed and
    the task, so every later stage replays the same ones."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (task_index + 1))
    count = max(1, math.ceil(share * size))
    return torch.randperm(size, generator=generator)[:count].sort().values


class MixedSplit:
    """The training examples of a mixture: ``collate((source, index))`` collates a batch of one
    source and makes the trainer use that source's model, teachers and losses."""

    def __init__(self, trainer: "MixtureTrainer", sources: list[TaskSource]):
        self.trainer, self.sources = trainer, sources

    def __len__(self) -> int:
        return sum(len(source) for source in self.sources)

    def collate(self, item):
        position, index = item
        self.trainer.use_source(position)
        return self.sources[position].split.collate(index)


class MixtureTrainer(StageTrainer):
    def __init__(self, multi, plan: StagePlan, stage_index: int, run_dir, device: torch.device, log=print,
                 progress: bool = True):
        self.multi, self.plan = multi, plan
        self.experiment = multi.experiments[plan.tasks[0]]
        self.config = self.experiment.config.values
        self.stage_index = stage_index
        self.stage = self.config["stages"][stage_index]
        self.run_dir, self.device = run_dir, device
        self.precision = self.config["precision"]
        self.dist, self.main, self.log, self.show_progress = SINGLE, True, log, progress
        self.model_name = self.stage["train"]
        self.teachers = list(dict.fromkeys(t for task in plan.tasks
                                           for t in multi.experiments[task].config["stages"][stage_index]["teachers"]))
        self.model = multi.models[self.model_name]
        self.keep_last = plan.keep_last
        where = f"/stages/{stage_index}"
        self.sources = []
        for task in plan.tasks:
            experiment = multi.experiments[task]
            self.sources.append(TaskSource(task, experiment, experiment.splits["train"],
                                           experiment.build_losses(stage_index),
                                           list(experiment.config["stages"][stage_index]["teachers"])))
        for task in plan.replay_tasks:
            experiment = multi.experiments[task]
            split = experiment.splits["train"]
            pool = replay_pool(len(split), plan.replay_share, self.config["seed"], multi.tasks.index(task))
            losses = experiment.build_losses(stage_index, plan.replay_losses, where=f"{where}/replay/losses")
            self.sources.append(TaskSource(task, experiment, split, losses, [], pool))
        self.losses = [entry for source in self.sources for entry in source.losses]
        self.loss_modules = nn.ModuleList([loss for _, loss in self.losses])
        self.after_step_losses = [loss for _, loss in self.losses if _overrides(loss, "after_step")]
        self.after_evaluation_losses = [loss for _, loss in self.losses if _overrides(loss, "after_evaluation")]
        if self.after_evaluation_losses:
            raise TrainingError(f"{where}: a loss that learns from the dev metric is not available in a multi-task "
                                f"stage")
        self.batch_preparer = None
        self.select, self.maximize = MEAN, True
        self.train_split = MixedSplit(self, self.sources)
        # a stage without dev data for one of its tasks keeps its last weights
        self.dev_split = self.sources if all("dev" in multi.experiments[t].splits for t in plan.tasks) else None
        size = self.stage["batch_size"]
        self.batches_per_epoch = sum(math.ceil(len(source) / size) for source in self.sources)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.stage["accumulate"])
        total = max(1, math.ceil(self.steps_per_epoch * self.stage["epochs"]))
        self.total_steps = min(total, self.stage["max_steps"] or total)
        self.state = StageState()
        self.ddp = None
        self.teacher_cache = None
        self.cache_seconds = 0.0
        self._current = None

    def run(self, resume: bool) -> dict:
        result = super().run(resume)
        if any(source.cache is not None for source in self.sources):
            result["teacher_cache_seconds"] = round(self.cache_seconds, 2)
        return result

    def use_source(self, position: int) -> None:
        """Train the next batch as one of source ``position``'s (its task's graphs and losses)."""
        if position == self._current:
            return
        source = self.sources[position]
        self._current = position
        self.experiment, self.teachers = source.experiment, source.teachers
        self.losses, self.teacher_cache = source.losses, source.cache
        self.batch_preparer = next((loss for _, loss in source.losses if getattr(loss, "prepares_batch", False)),
                                   None)

    # -- what differs from a single-task stage ---------------------------------------------------
    def _teacher_models(self) -> list[nn.Module]:
        return [source.experiment.models[name] for source in self.sources for name in source.teachers]

    def _set_trainable(self) -> None:
        for task, graph in self.model.graphs.items():
            trainable = self.multi.experiments[task].trainable[self.model_name]
            for name, parameter in graph.named_parameters():
                parameter.requires_grad_(trainable[name])

    def _open_teacher_cache(self) -> None:
        """Each task's teacher outputs on its training split, cached as a single-task stage caches
        them (keyed by that task's data and teacher weights)."""
        mixed, run_dir, seconds = self.train_split, self.run_dir, 0.0
        for position, source in enumerate(self.sources):
            self.use_source(position)
            # each task's caches in RUN/tasks/<task>/cache: a run's cache folder keeps one cache
            # per teacher, and each task has its own teacher weights
            self.train_split, self.run_dir = source.split, RunDir(run_dir.root / "tasks" / source.task)
            super()._open_teacher_cache()
            source.cache = self.teacher_cache
            seconds += self.cache_seconds
        self.train_split, self.run_dir, self.cache_seconds, self._current = mixed, run_dir, seconds, None
        self.teacher_cache = next((source.cache for source in self.sources if source.cache is not None), None)

    def epoch_batches(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        generator = epoch_generator(self.config["seed"], self.stage_index, epoch)
        size = self.stage["batch_size"]
        per_source = []
        for source in self.sources:
            lengths = source.split.lengths if source.pool is None else source.split.lengths[source.pool]
            batches = bucket_batches(lengths, size, generator)
            if source.pool is not None:
                batches = [source.pool[index] for index in batches]
            per_source.append(batches)
        tagged = [(k, index) for k, batches in enumerate(per_source) for index in batches]
        if self.plan.mixing == "proportional" or len(per_source) == 1:
            order = torch.randperm(len(tagged), generator=generator).tolist()
            return [tagged[i] for i in order]
        # temperature sampling: source k with probability n_k^(1/T), as many batches in all
        weights = torch.tensor([len(source) ** (1.0 / self.plan.mixing) for source in self.sources])
        draws = torch.multinomial(weights / weights.sum(), len(tagged), replacement=True, generator=generator)
        taken = [0] * len(per_source)
        result = []
        for k in draws.tolist():
            batches = per_source[k]
            result.append((k, batches[taken[k] % len(batches)]))
            taken[k] += 1
        return result

    def _dev_metrics(self) -> dict[str, float]:
        metrics, firsts = {}, []
        for task in self.plan.tasks:
            experiment = self.multi.experiments[task]
            names = experiment.config["task"]["metrics"]
            scores = evaluate(experiment, self.model_name, experiment.splits["dev"], self.stage["eval_batch_size"],
                              self.device, self.precision, metrics=names, progress=self.show_progress, final=False)
            metrics.update({f"{task}/{name}": value for name, value in scores.items()})
            firsts.append(scores[names[0]])
        metrics[MEAN] = sum(firsts) / len(firsts)
        return metrics

    def _loss_log_values(self) -> dict:
        values: dict = {}
        for source in self.sources:
            for _, loss in source.losses:
                if _overrides(loss, "log_values"):
                    values.update(loss.log_values())
        return values
