"""A resolved config made concrete: user imports, cross-references, data, vocabularies, graphs.

``Experiment.prepare`` is shared by ``train`` and ``validate`` (data read, vocabularies built
from train); ``Experiment.from_run_dir`` rebuilds the same objects from a run directory alone
(vocabularies and label set from files, no training data needed) for ``test`` and ``predict``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from blocks.catalog import import_user_module, load_builtin_entries
from blocks.config.loader import Config
from blocks.config.run_models import INIT_SEPARATOR, init_source
from blocks.data.pretrained_tokenizer import slug
from blocks.data.dataset import (PRETRAINED, SPLITS, TASK_INPUT_TYPES, EncodedSplit, build_input_fields, count_tokens, encode_rows,
                                 input_specs, read_split, split_sources)
from blocks.data.dev_split import check_stages_without_dev
from blocks.transfer_set import check_transfer_config
from blocks.data.vocabulary import Vocabulary
from blocks.distill.losses import LossContext
from blocks.distill.schedules import make_schedule
from blocks.engine.checkpoint import atomic_write_json
from blocks.errors import ConfigError, DataError, WidthError, did_you_mean
from blocks.graph import Graph, block_params
from blocks.lr_schedules import check_schedule
from blocks.optimizers import check_optimizer
from blocks.registry import LOSSES, METRICS
from blocks.tasks import TaskType, task_class, task_from_config, task_from_json

PRETRAINED_FOLDER = "pretrained"


def import_user_modules(config: Config) -> None:
    """Import the modules listed in ``imports`` (dotted names, or .py files relative to the config)."""
    for i, name in enumerate(config["imports"]):
        import_user_module(name, config.base_dir, config.file, f"/imports/{i}")


def check_references(config: Config) -> None:
    """Cross-references the schema cannot express: models, teachers, losses, metrics, blocks."""
    values, file = config.values, config.file
    models = values["models"]
    task_config = values["task"]
    provisional = task_class(task_config["type"], file).from_values({**task_config,
                                                                     "labels": task_config.get("labels") or []})
    for i, name in enumerate(task_config["metrics"]):
        if name not in provisional.own_metrics:
            METRICS.get(name, file, f"/task/metrics/{i}")
        problem = provisional.metric_problem(name)
        if problem:
            raise ConfigError(problem, file, f"/task/metrics/{i}")
    trained: set[str] = set()
    first_stage: dict[str, int] = {}  # model -> index of the first stage that trains it
    stage_names: set[str] = set()
    for i, stage in enumerate(values["stages"]):
        path = f"/stages/{i}"
        if stage["name"] in stage_names:
            raise ConfigError(f"stage name '{stage['name']}' is used twice", file, f"{path}/name")
        stage_names.add(stage["name"])
        if stage["train"] not in models:
            raise ConfigError(f"model '{stage['train']}' is not defined{did_you_mean(stage['train'], models)}"
                              f" (models: {', '.join(models)})", file, f"{path}/train")
        for j, teacher in enumerate(stage["teachers"]):
            if teacher not in models:
                raise ConfigError(f"teacher '{teacher}' is not a model{did_you_mean(teacher, models)}",
                                  file, f"{path}/teachers/{j}")
            if teacher == stage["train"]:
                raise ConfigError(f"model '{teacher}' cannot teach itself", file, f"{path}/teachers/{j}")
            if teacher not in trained and "run" not in models[teacher] and teacher not in config.external_models:
                raise ConfigError(f"teacher '{teacher}' is not trained by an earlier stage", file,
                                  f"{path}/teachers/{j}")
        for j, loss in enumerate(stage["losses"]):
            LOSSES.get(loss["block"], file, f"{path}/losses/{j}/block")
            params = {k: v for k, v in loss.items() if k not in ("block", "weight")}
            LOSSES.validate_params(loss["block"], params, file, f"{path}/losses/{j}")
        for key, check in (("optimizer", check_optimizer), ("schedule", check_schedule)):
            try:
                check(stage[key], f"{path}/{key}")
            except ConfigError as error:
                raise ConfigError(error.message, file, error.path) from None
        if (stage["select"] or task_config["metrics"][0]) not in provisional.own_metrics:
            METRICS.get(stage["select"] or task_config["metrics"][0], file, f"{path}/select")
        if stage["select"] and provisional.metric_problem(stage["select"]) and stage["select"] != "loss":
            raise ConfigError(provisional.metric_problem(stage["select"]), file, f"{path}/select")
        check_transfer_config(values, i, file)
        trained.add(stage["train"])
        first_stage.setdefault(stage["train"], i)
    for model_name, model in models.items():
        for i, node in enumerate(model["graph"]):
            if "block" in node:
                block_params(node, file, f"/models/{model_name}/graph/{i}", num_outputs=2)
            if "init_from" in node:
                check_init_from(values, model_name, i, first_stage, file)


def check_init_from(values: dict, model_name: str, index: int, first_stage: dict[str, int], file) -> None:
    node = values["models"][model_name]["graph"][index]
    path = f"/models/{model_name}/graph/{index}/init_from"
    models = values["models"]
    source_model, source_node = init_source(node)
    if "share" in node:
        raise ConfigError(f"node '{node['name']}' shares the block of '{node['share']}', and with it that "
                          f"node's weights: give init_from there", file, path)
    if source_model not in models:
        raise ConfigError(f"model '{source_model}' is not defined{did_you_mean(source_model, models)} "
                          f"(models: {', '.join(models)})", file, path)
    if source_model == model_name:
        raise ConfigError(f"a node cannot start from a node of its own model '{model_name}'", file, path)
    names = [n["name"] for n in models[source_model]["graph"]]
    if source_node not in names:
        raise ConfigError(f"model '{source_model}' has no node '{source_node}'{did_you_mean(source_node, names)} "
                          f"(name it as \"{source_model}{INIT_SEPARATOR}<node>\")", file, path)
    if model_name not in first_stage:
        raise ConfigError(f"init_from takes effect when a stage trains model '{model_name}', and none does",
                          file, path)
    trained_before = any(stage["train"] == source_model for stage in values["stages"][:first_stage[model_name]])
    if "run" not in models[source_model] and not trained_before:
        raise ConfigError(f"model '{source_model}' is not trained before model '{model_name}' is (by an earlier "
                          f"stage, or taken from a run)", file, path)


def field_place(values: dict, name: str) -> str | None:
    """The JSON path of the config that makes a run read field ``name``: its column mapping, the
    label or group key, else the first model input reading it."""
    data = values.get("data", {})
    if name in (data.get("fields") or {}):
        return f"/data/fields/{name}"
    for key in ("label", "group"):
        if data.get(key) == name:
            return f"/data/{key}"
    for model_name, model in values.get("models", {}).items():
        for input_name, definition in (model.get("inputs") or {}).items():
            for key in ("field", "pair_field"):
                if definition.get(key) == name:
                    return f"/models/{model_name}/inputs/{input_name}/{key}"
    return None


def task_vocabulary(task: TaskType, input_field, config: Config):
    """The vocabulary of an input the task encodes itself (seq2seq's source and target)."""
    if input_field.type not in task.input_types:
        path = next((f"/models/{name}/inputs/{input_name}/type" for name, model in config["models"].items()
                     for input_name, definition in model["inputs"].items()
                     if definition.get("type") == input_field.type), "/models")
        raise ConfigError(f"inputs of type '{input_field.type}' belong to a task that encodes them "
                          f"(seq2seq); this is a {task.name} task", config.file, path)
    return task.input_vocabulary(input_field.type, input_field.owner)


def adopt_run_vocabularies(task: TaskType, config: Config) -> list[str]:
    """The models taken from runs that keep vocabularies of their own (seq2seq: a run trained with
    other subword vocabularies), after checking that the stages use them only as they can be used."""
    adopt = getattr(task, "adopt_run_vocabularies", None)
    if adopt is None:
        return []
    own = [name for name, model in config["models"].items() if "run" in model and adopt(name, model["run"])]
    if own:
        task.check_own_vocabularies(config)
    return own


def load_vocabulary_file(file: str, config: Config, path: str) -> Vocabulary:
    from blocks.errors import CheckpointError

    location = Path(file) if Path(file).is_absolute() else config.base_dir / file
    try:
        return Vocabulary.load(location)
    except CheckpointError as error:
        raise ConfigError(f"{error.message}: {location}", config.file, path) from None


class Experiment:
    """Everything built from a config: task, inputs, vocabularies, graphs and encoded splits."""

    def __init__(self, config: Config, task: TaskType, fields, model_inputs, vocabularies: dict[str, Vocabulary],
                 splits: dict[str, EncodedSplit]):
        self.config, self.task = config, task
        self.fields, self.model_inputs = fields, model_inputs
        self.vocabularies, self.splits = vocabularies, splits
        self.models: dict[str, Graph] = {}
        torch.manual_seed(config["seed"])  # graphs initialise the same way on every build
        for name, model in config["models"].items():
            specs = input_specs(fields, model_inputs[name], vocabularies)
            self.models[name] = Graph(name, model, specs, task.num_outputs_of(name), config.file, f"/models/{name}")
            self._check_output(name)
            self._bind_task(self.models[name])
        # Which parameters each model trains (a frozen embedding stays frozen after it taught).
        self.trainable = {name: {n: p.requires_grad for n, p in graph.named_parameters()}
                          for name, graph in self.models.items()}

    def _check_output(self, name: str) -> None:
        """A model's output node must give what the task decodes (a vector of logits for
        classification, a sequence of per-word scores or a CRF for tagging)."""
        graph, task = self.models[name], self.task
        spec = graph.output_spec
        if spec.kind in task.output_kinds:
            return
        path = f"/models/{name}/output" if self.config["models"][name].get("output") else \
            f"/models/{name}/graph/{len(self.config['models'][name]['graph']) - 1}"
        wanted = " or ".join(task.output_kinds)
        hint = {"sequence": "; per-example tasks need a pooling node (Pooling, AttentionPooling) before the head",
                "vector": "; a tagging model keeps one value per word: remove the pooling node"}.get(spec.kind, "")
        raise ConfigError(f"model '{name}' ends in node '{graph.output_name}', a {spec.describe()}, but a "
                          f"{task.name} task needs a {wanted} output{hint}", self.config.file, path)

    def _bind_task(self, graph: Graph) -> None:
        """Blocks that depend on the label set: a CRF takes the tag scheme's allowed transitions;
        a task that checks its models' shape (seq2seq: a decoder at the end) does so."""
        check_model = getattr(self.task, "check_model", None)
        if check_model is not None:
            check_model(graph, self.config.file)
        constraints = getattr(self.task, "transition_constraints", None)
        if constraints is None:
            return
        for block in graph.blocks.values():
            if hasattr(block, "constrain"):
                allowed = constraints()
                if allowed is not None:
                    block.constrain(*allowed)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def prepare(cls, config: Config, splits: tuple[str, ...] = SPLITS, log=print,
                vocabularies: dict[str, Vocabulary] | None = None) -> "Experiment":
        """Check the config, read the data, build vocabularies from train, build the graphs.

        ``vocabularies`` (by name) are used as given instead of being built (a multi-task run's,
        built over every task). A DataError about a field also names the config file and JSON
        path that asked for it."""
        try:
            return cls._prepare(config, splits, log, vocabularies or {})
        except DataError as error:
            place = field_place(config.values, error.field) if error.field else None
            if place is None:
                raise
            raise DataError(f"{error.message} (the field is asked for at {config.file}: {place})", error.file,
                            error.line, error.field) from None

    @classmethod
    def _prepare(cls, config: Config, splits: tuple[str, ...], log, given: dict) -> "Experiment":
        load_builtin_entries()
        import_user_modules(config)
        check_references(config)
        check_stages_without_dev(config.values, config.file)
        values = config.values
        words = task_class(values["task"]["type"], config.file).per_token
        fields, model_inputs = build_input_fields(values["models"], config.file, config.base_dir, words=words)
        sources = split_sources(values["data"])
        data = values["data"]
        train_rows = read_split(sources["train"])
        if not train_rows:
            raise DataError("the training file holds no examples", sources["train"].path)
        task = task_from_config(values["task"], train_rows, data["label"], sources["train"].fields, config.file)
        own = adopt_run_vocabularies(task, config)
        for name in own:
            log(f"model '{name}' keeps the subword vocabularies of its run ({task.describe_own_vocabularies(name)})")
        if own:  # their source and target inputs are encoded with their own vocabularies
            fields, model_inputs = build_input_fields(values["models"], config.file, config.base_dir, words=words,
                                                      own_vocabularies=own)
        counts = count_tokens(fields, train_rows, sources["train"].fields)
        vocab_options = values["vocabularies"]
        vocabularies = {}
        for name, counter in counts.items():
            options = vocab_options.get(name, {"min_freq": 1, "max_size": None})
            if name in given:
                vocabularies[name] = given[name]
                continue
            if options.get("file"):
                vocabularies[name] = load_vocabulary_file(options["file"], config, f"/vocabularies/{name}/file")
                continue
            vocabularies[name] = Vocabulary.build(counter, min_freq=options.get("min_freq", 1),
                                                  max_size=options.get("max_size"))
        for input_field in fields.values():
            if input_field.type == PRETRAINED:
                vocabularies[input_field.vocab] = input_field.tokenizer.vocabulary
            elif input_field.type in TASK_INPUT_TYPES:
                vocabularies[input_field.vocab] = task_vocabulary(task, input_field, config)
        for name in vocab_options:
            if name not in vocabularies:
                raise ConfigError(f"vocabulary '{name}' is not used by any input{did_you_mean(name, vocabularies)}",
                                  config.file, f"/vocabularies/{name}")
        encoded = {}
        for split in splits:
            if split not in sources:
                continue
            rows = train_rows if split == "train" else read_split(sources[split])
            if not rows:
                raise DataError(f"the {split} file holds no examples", sources[split].path)
            encoded[split] = encode_rows(split, rows, fields, vocabularies, task, data["label"], data["group"],
                                         sources[split].fields, sources[split].path)
            log(f"{split}: {len(rows):,} examples from {sources[split].path}"
                + "".join(f"; {note}" for note in getattr(rows, "notes", ())))
            for field, (cut, limit) in encoded[split].truncated.items():
                log(f"  {split}: {cut:,} example(s) of field '{field}' cut to their first {limit:,} tokens "
                    f"(the input's max_length; {limit:,} when it is not set)")
        return cls(config, task, fields, model_inputs, vocabularies, encoded)

    @classmethod
    def from_run_dir(cls, run_dir: Path, config: Config, log=print) -> "Experiment":
        """Rebuild from a run directory: vocabularies and labels from its files, no data read."""
        load_builtin_entries()
        import_user_modules(config)
        index_file = run_dir / PRETRAINED_FOLDER / "index.json"
        locations = ({written: str(run_dir / PRETRAINED_FOLDER / folder)
                      for written, folder in json.loads(index_file.read_text()).items()}
                     if index_file.is_file() else {})
        task = task_from_json(json.loads((run_dir / "task.json").read_text()))
        task.load_files(run_dir / "vocab")
        fields, model_inputs = build_input_fields(config["models"], config.file, config.base_dir, locations,
                                                  words=task.per_token,
                                                  own_vocabularies=adopt_run_vocabularies(task, config))
        vocabularies = {}
        for key, input_field in fields.items():
            if input_field.type == PRETRAINED:
                vocabularies[input_field.vocab] = input_field.tokenizer.vocabulary
            elif input_field.type in TASK_INPUT_TYPES:
                vocabularies[input_field.vocab] = task_vocabulary(task, input_field, config)
            elif input_field.vocab not in vocabularies:
                vocabularies[input_field.vocab] = Vocabulary.load(run_dir / "vocab" / f"{input_field.vocab}.txt")
        return cls(config, task, fields, model_inputs, vocabularies, {})

    def encode_file(self, path: str, with_labels: bool, reader: dict | None = None,
                    fields: dict | None = None) -> EncodedSplit:
        """Read and encode another file with the config's reader options (for test / predict).

        ``fields`` replaces the config's field -> column mapping (``{}``: columns named as the fields).
        """
        from blocks.data.readers import read_rows

        data = self.config["data"]
        options = {**data.get("reader", {}), **(reader or {})}
        rows = read_rows(path, **options)
        if not rows:
            raise DataError("the file holds no examples", path)
        label = data["label"] if with_labels else None
        group = data["group"] if with_labels else None
        mapping = data.get("fields", {}) if fields is None else fields
        return encode_rows("file", rows, self.fields, self.vocabularies, self.task, label, group,
                           mapping, path)

    # -- use ----------------------------------------------------------------------------------
    def model_values(self, name: str, batch) -> dict:
        """Run one model on a batch: its node values by node name."""
        inputs = {local: batch.inputs[key] for local, key in self.model_inputs[name].items()}
        return self.models[name](inputs)

    def build_losses(self, stage_index: int, losses: list[dict] | None = None,
                     where: str | None = None) -> list[tuple[float, nn.Module]]:
        """The stage's loss blocks with their weights; ``losses`` (at JSON path ``where``) replaces
        the stage's list, with no teachers (a multi-task stage's replayed tasks)."""
        stage = self.config["stages"][stage_index]
        teachers = list(stage["teachers"]) if losses is None else []
        where = where or f"/stages/{stage_index}/losses"
        context = LossContext(student=stage["train"], teachers=teachers,
                              output_of={n: g.output_name for n, g in self.models.items()},
                              task=self.task.name, num_outputs=self.task.num_outputs, task_type=self.task,
                              output_specs={n: g.output_spec for n, g in self.models.items()},
                              node_specs={n: {node.name: node.spec for node in g.nodes} for n, g in self.models.items()})
        built = []
        for j, loss in enumerate(stage["losses"] if losses is None else losses):
            params = {k: v for k, v in loss.items() if k not in ("block", "weight")}
            if losses is not None:  # the stage's own are checked with the config (check_references)
                LOSSES.get(loss.get("block"), self.config.file, f"{where}/{j}/block")
                LOSSES.validate_params(loss["block"], params, self.config.file, f"{where}/{j}")
            try:
                block = LOSSES.build(loss["block"], context, params=params)
            except ValueError as error:
                raise ConfigError(f"{loss['block']}: {error}", self.config.file, f"{where}/{j}") from None
            self._check_loss_nodes(block, f"{where}/{j}")
            built.append((self._loss_weight(loss.get("weight", 1.0), f"{where}/{j}/weight"), block))
        return built

    def _loss_weight(self, weight, path: str):
        """A number, or a schedule over optimizer steps (a function step -> weight)."""
        if not isinstance(weight, dict):
            return float(weight)
        try:
            return make_schedule(weight)
        except ValueError as error:
            raise ConfigError(f"weight schedule: {error}", self.config.file, path) from None

    def _check_loss_nodes(self, block: nn.Module, path: str) -> None:
        """A loss may only read nodes that exist in the models it names."""
        for model_attr, node_attr, key in (("model", "output", "output"),
                                           ("teacher", "teacher_output", "teacher_output")):
            model, node = getattr(block, model_attr, None), getattr(block, node_attr, None)
            if model is None or node is None:
                continue
            names = [n.name for n in self.models[model].nodes]
            if node not in names:
                raise ConfigError(f"model '{model}' has no node '{node}'{did_you_mean(node, names)}",
                                  self.config.file, f"{path}/{key}")

    def save_vocabularies(self, folder: Path) -> None:
        """Word vocabularies into ``folder``; pretrained tokenizers (with their model configs) into
        ``pretrained/`` beside it, so that the run directory alone can rebuild every input."""
        folder.mkdir(parents=True, exist_ok=True)
        self.task.save_files(folder)
        for name, vocab in self.vocabularies.items():
            if isinstance(vocab, Vocabulary):
                vocab.save(folder / f"{name}.txt")
        index = {}
        for input_field in self.fields.values():
            if input_field.type == PRETRAINED and input_field.tokenizer.written not in index:
                name = slug(input_field.tokenizer.written)
                input_field.tokenizer.save(folder.parent / PRETRAINED_FOLDER / name)
                index[input_field.tokenizer.written] = name
        if index:
            atomic_write_json(folder.parent / PRETRAINED_FOLDER / "index.json", index)

    def init_from_models(self, name: str, log=print) -> None:
        """The nodes of model ``name`` with ``"init_from"`` take the weights of their source nodes."""
        model = self.config["models"][name]
        for index, node in enumerate(model["graph"]):
            if "init_from" not in node:
                continue
            source_model, source_node = init_source(node)
            source_graph = self.models[source_model]
            owner = next(n.owner for n in source_graph.nodes if n.name == source_node)
            try:
                report = self.models[name].blocks[node["name"]].init_from(source_graph.blocks[owner])
            except WidthError as error:
                raise ConfigError(f"node '{node['name']}' cannot start from '{source_model}{INIT_SEPARATOR}"
                                  f"{source_node}': it {error}", self.config.file,
                                  f"/models/{name}/graph/{index}/init_from") from None
            log(f"model '{name}': node '{node['name']}' starts from '{source_model}{INIT_SEPARATOR}{source_node}' "
                f"({report})")

    def load_pretrained(self, log=print) -> None:
        """Pretrained weights of every block that has some (models from other runs bring their own)."""
        for name, model in self.models.items():
            if "run" in self.config["models"][name]:
                continue
            for block in model.blocks.values():
                report = block.load_pretrained(self.config.base_dir)
                if report:
                    log(report)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available", None, "/device")
    return torch.device(name)


def inference_device(trained_on: str, asked: str | None = None, note=None) -> torch.device:
    """The device for using a finished run (test, predict): ``asked`` (``--device``) when given;
    else the run's own, except that a run trained on CUDA runs on the CPU of a machine without
    CUDA (``note`` is told so), so a run made on a GPU server works on a laptop."""
    if asked is not None:
        return resolve_device(asked)
    if trained_on.startswith("cuda") and not torch.cuda.is_available():
        if note is not None:
            note(f"the run was trained on '{trained_on}'; there is no CUDA device here, so it runs on the CPU")
        return torch.device("cpu")
    return resolve_device(trained_on)
