"""A run: the config's stages in order, everything written to one run directory.

Under ``torchrun`` (several processes) :func:`train` joins the process group itself (see
:mod:`blocks.engine.distributed`): every rank reads the data and trains; rank 0 alone logs and
writes the run directory, the others wait for it at barriers.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from blocks.config.loader import Config
from blocks.data.vocabulary import Vocabulary
from blocks.engine import distributed
from blocks.config.run_models import check_run_task, run_weights
from blocks.engine.checkpoint import atomic_write_json, load_checkpoint, read_checkpoint_state
from blocks.engine.clean import drop_stage_checkpoints, share_weights
from blocks.engine.evaluation import evaluate, throughput
from blocks.engine.host_memory import keep_freed_memory
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.engine.optim import build_optimizer, build_schedule, parameter_groups, sparse_parameters
from blocks.errors import CheckpointError, ConfigError, DataError, DistilBlocksError
from blocks.experiment import Experiment, resolve_device
from blocks.threads import use_threads


def default_run_dir(config: Config, resume: bool) -> Path:
    """``run_dir`` from the config, else ``runs/<config name>``.

    Without an explicit directory a new run never overwrites an old one: it takes the first free
    name of ``runs/<name>``, ``runs/<name>-2``, ...; ``--resume`` takes the newest of them.
    """
    if config["run_dir"]:
        return Path(config["run_dir"])
    base = Path("runs") / Path(config.file).stem
    candidates = [base] + [base.with_name(f"{base.name}-{n}") for n in range(2, 1000)]
    taken = [c for c in candidates if not RunDir(c).is_empty()]
    if resume:
        return taken[-1] if taken else base
    return next(c for c in candidates if c not in taken)


def load_model_weights(experiment: Experiment, run_dir: RunDir, model: str) -> None:
    path = run_dir.model_weights(model)
    tensors, _ = load_checkpoint(path)
    try:
        experiment.models[model].load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(f"does not fit model '{model}' of this config: {error}", str(path)) from None


def load_run_model(experiment: Experiment, name: str) -> dict:
    """Load model ``name`` (``{"run": ...}`` in the config) with its weights from that run; returns them."""
    model = experiment.config["models"][name]
    source = run_weights(model["run"], model["model"])
    tensors, _ = load_checkpoint(source)
    try:
        experiment.models[name].load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(f"does not fit model '{name}': {error}", str(source)) from None
    return tensors


def adopt_run_models(experiment: Experiment, directory: RunDir, state: dict,
                     dist: distributed.Distributed, log=print) -> None:
    """Models from finished runs: their weights loaded and copied into this run (once)."""
    for name, model in experiment.config["models"].items():
        if "run" not in model or name in state["models"]:
            continue
        tensors = load_run_model(experiment, name)
        state["models"][name] = f"run {model['run']}"
        if dist.is_main:
            share_weights(run_weights(model["run"], model["model"]), directory.model_weights(name), tensors,
                          {"from_run": model["run"], "model": model["model"]})
            directory.write_progress(state)
        log(f"model '{name}': {model['model']} from {model['run']}")


def _with_current_defaults(saved: dict) -> dict:
    """A saved config with the defaults of keys added to the schema since it was written."""
    from blocks.config.loader import _fill_defaults
    from blocks.config.schema import CONFIG_SCHEMA

    filled = copy.deepcopy(saved)
    try:
        _fill_defaults(CONFIG_SCHEMA, filled, CONFIG_SCHEMA["$defs"])
    except (KeyError, TypeError, AttributeError):
        return saved
    return filled


def _quiet(*args, **kwargs) -> None:
    pass


def check_run_dir_path(root: Path, file: str) -> None:
    """The run directory is a folder, or can become one: neither it nor a folder above it is a file."""
    for path in [root, *root.parents]:
        if path.exists() and not path.is_dir():
            where = "is a file" if path == root else f"is inside {path}, which is a file"
            raise ConfigError(f"the run directory {root} {where}; choose another with --run-dir", file, "/run_dir")


def _not_empty(root: Path, config: Config) -> ConfigError:
    return ConfigError(f"the run directory {root} is not empty; continue that run with --resume, or choose "
                       f"another directory with --run-dir", config.file, "/run_dir")


def _write_error(error: OSError, directory: RunDir) -> DistilBlocksError:
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return CheckpointError(f"the disk is full{where}: free some space, then continue the run with "
                               f"`blocks train CONFIG --resume` (its last checkpoint is intact)", str(directory.root))
    if error.filename and directory.root.resolve() not in Path(error.filename).resolve().parents:
        return CheckpointError(f"cannot be used: {error.strerror or error}", str(error.filename))
    return CheckpointError(f"cannot write the run: {error.strerror or error}{where}", str(directory.root))


def check_stages(experiment: Experiment) -> None:
    """What each stage needs, checked before the first one trains (``blocks validate`` does the
    same): its losses against the models, its optimizer and schedule, a dev split for losses that
    learn from it, and its transfer-set files. A ConfigError names the config file and the path."""
    from blocks.transfer_set import file_sources

    config = experiment.config
    for index, stage in enumerate(config["stages"]):
        where = f"/stages/{index}"
        losses = experiment.build_losses(index)
        preparing = []
        for j, (_, loss) in enumerate(losses):
            if getattr(loss, "needs_dev", False) and "dev" not in experiment.splits:
                raise ConfigError(f"{type(loss).__name__} with reward 'dev' learns from the dev metric at each "
                                  f"evaluation, but the config has no dev split (data.dev)", config.file,
                                  f"{where}/losses/{j}")
            if getattr(loss, "prepares_batch", False):
                preparing.append(j)
                if len(preparing) > 1:
                    raise ConfigError(f"losses {preparing[0]} and {j} both change the training batch (decoder "
                                      f"prefixes); a stage has at most one such loss", config.file,
                                      f"{where}/losses/{j}")
        model = experiment.models[stage["train"]]
        try:
            parameters = parameter_groups(model, [p for p in model.parameters() if p.requires_grad],
                                          stage.get("block_lr"), f"{where}/block_lr")
            optimizer = build_optimizer(parameters, stage["optimizer"], where=f"{where}/optimizer",
                                        sparse=sparse_parameters(model))
            build_schedule(optimizer, stage["schedule"], 100, where=f"{where}/schedule")
        except ConfigError as error:
            if error.file:
                raise
            raise ConfigError(error.message, config.file, error.path) from None
        if stage.get("transfer"):
            for k, source in enumerate(file_sources(config["data"], stage["transfer"])):
                if not Path(source.path).is_file():
                    raise DataError(f"file not found (a transfer-set file: {config.file}: {where}/transfer/files/{k})",
                                    source.path)


def _differences(a, b, path: str = ""):
    """Every JSON path at which ``a`` and ``b`` differ (a list of another length differs as a whole)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _differences(x, y, f"{path}/{i}")
    elif a != b:
        yield path or "/"


def _continue_with(config: Config, directory: RunDir, log) -> bool:
    """Check that ``config`` may continue the run; when it changed only what no finished stage
    used, adopt it: the changed unfinished stages start over (True: the caller rewrites the
    set-up files, config.json among them).

    A finished stage, a model one trained, and everything outside ``models`` and ``stages`` (data,
    task, seed, vocabularies) must be unchanged; any other change refuses the resume."""
    saved = _with_current_defaults(directory.read_json(directory.config))
    if not isinstance(saved, dict) or not isinstance(saved.get("stages"), list):
        raise CheckpointError("is not a config this version can continue", str(directory.config))
    # where the run is written and how many threads compute it do not change what it computes
    current = {k: v for k, v in config.values.items() if k not in ("run_dir", "threads")}
    saved = {k: v for k, v in saved.items() if k not in ("run_dir", "threads")}
    state = directory.progress()
    completed, trained = state["completed_stages"], set(state["models"])

    def refuse(path: str) -> ConfigError:
        return ConfigError(f"the config differs from the one the run in {directory.root} started with (at {path}); "
                           f"resume with the same config and --set values (only stages that have not finished, "
                           f"and models no finished stage trained, may change)", config.file, path)

    for key in sorted((set(saved) | set(current)) - {"stages", "models"}):
        for path in _differences(saved.get(key), current.get(key), f"/{key}"):
            raise refuse(path)
    changed_models = set()
    old_models, new_models = saved.get("models", {}), current["models"]
    for name in sorted(set(old_models) | set(new_models)):
        for path in _differences(old_models.get(name), new_models.get(name), f"/models/{name}"):
            if name in trained:
                raise refuse(path)
            changed_models.add(name)
    old_stages = {s.get("name"): (i, s) for i, s in enumerate(saved["stages"]) if isinstance(s, dict)}
    names = [stage["name"] for stage in current["stages"]]
    restart = []
    for index, stage in enumerate(current["stages"]):
        old_index, old = old_stages.get(stage["name"], (None, None))
        if stage["name"] in completed:
            if old_index != index:
                raise refuse(f"/stages/{index}")
            for path in _differences(old, stage, f"/stages/{index}"):
                raise refuse(path)
        elif old != stage or {stage["train"], *stage["teachers"]} & changed_models:
            restart.append(stage["name"])
    for name in completed:
        if name not in names:
            raise refuse(f"/stages (finished stage '{name}' is missing)")
    if not restart and not changed_models and [s.get("name") for s in saved["stages"]] == names:
        return False
    for name in restart:
        if directory.stage_dir(name).exists():
            shutil.rmtree(directory.stage_dir(name))
    directory.cut_metrics(lambda record: record.get("stage") not in restart)
    log(f"the config changed where no finished stage depends on it: continuing after "
        f"{', '.join(completed) or 'no finished stage'}" + (f"; starting over: {', '.join(restart)}" if restart else ""))
    return True


def _check_vocabularies(experiment: Experiment, directory: RunDir) -> None:
    """The vocabularies a resumed run built again from its data are those the run wrote."""
    experiment.task.check_files(directory.vocab)
    for name, vocab in experiment.vocabularies.items():
        path = directory.vocab / f"{name}.txt"
        if isinstance(vocab, Vocabulary) and path.is_file() and Vocabulary.load(path) != vocab:
            raise CheckpointError("the training data changed since the run started (vocabulary differs)", str(path))


def _cut_metrics_to_checkpoints(config: Config, directory: RunDir) -> None:
    """Cut the log back to what the checkpoints the resume starts from had seen (see
    :meth:`RunDir.cut_metrics_to`), so that every interruption point gives the same log."""
    completed = directory.progress()["completed_stages"]
    restored = {}
    for stage in config["stages"]:
        path = directory.stage_checkpoint(stage["name"])
        if stage["name"] not in completed and path.is_file():
            try:
                restored[stage["name"]] = int(read_checkpoint_state(path)["position"]["step"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError("the checkpoint holds no training position", str(path)) from None
    directory.cut_metrics_to(completed, restored)


def train(config: Config, run_dir: str | Path | None = None, resume: bool = False, log=print,
          progress: bool = True) -> dict:
    """Run every stage of ``config`` into a run directory; returns the summary.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every process calls this:
    it joins the process group, trains its share of each batch, and leaves the group at the end.
    """
    dist, device = distributed.setup(resolve_device(config["device"]))
    use_threads(config["threads"])
    if device.type == "cpu":  # big per-step tensors reuse freed memory: see blocks.engine.host_memory
        keep_freed_memory()
    try:
        summary = _train(config, run_dir, resume, log if dist.is_main else _quiet, progress and dist.is_main,
                         dist, device)
    except BaseException:
        distributed.teardown(dist)
        raise
    distributed.teardown(dist, finished=True)
    return summary


def _train(config: Config, run_dir, resume: bool, log, progress: bool, dist: distributed.Distributed,
           device: torch.device) -> dict:
    # Every rank checks the directory and the whole config before rank 0 writes anything (then a
    # barrier), so all of them see the same directory and take the same decisions, and a config
    # that cannot train leaves no run directory behind.
    root = Path(run_dir) if run_dir else default_run_dir(config, resume)
    check_run_dir_path(root, config.file)
    directory = RunDir(root)
    if resume and not directory.exists():
        raise CheckpointError("there is no run here to resume (config.json is missing)", str(root))
    if not resume and not directory.is_empty():
        raise _not_empty(root, config)
    experiment = Experiment.prepare(config, log=log)
    check_run_task(config.values, experiment.task.to_json(), config.file)
    check_stages(experiment)
    dist.barrier()
    with directory.lock() if dist.is_main else contextlib.nullcontext():
        try:
            return _train_locked(experiment, directory, resume, log, progress, dist, device)
        except OSError as error:  # the run directory cannot be written (a full disk, permissions)
            raise _write_error(error, directory) from None


def _train_locked(experiment: Experiment, directory: RunDir, resume: bool, log, progress: bool,
                  dist: distributed.Distributed, device: torch.device) -> dict:
    config, root = experiment.config, directory.root
    if dist.is_main:
        if not resume and not directory.is_empty():  # another process started here meanwhile
            raise _not_empty(root, config)
        removed = directory.remove_partial_files([config["cache_dir"]] if config.values.get("cache_dir") else [])
        if removed:
            log(f"removed {len(removed)} unfinished file(s) of an interrupted write: "
                + ", ".join(str(p.relative_to(root)) if root in p.parents else str(p) for p in removed))
        changed = False
        if resume:
            directory.check_setup()
            changed = _continue_with(config, directory, log)
            _check_vocabularies(experiment, directory)
        # a new run, one interrupted during its set-up, or a changed config (a changed model may
        # read a new vocabulary): the set-up files are written, setup.json last
        if changed or not directory.setup_finished():
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(directory.config, {**config.values, "run_dir": str(root)})
            atomic_write_json(directory.task, experiment.task.to_json())
            experiment.save_vocabularies(directory.vocab)
            if not directory.environment.is_file():
                atomic_write_json(directory.environment, environment_record(device, dist))
            directory.write_setup_record()
        if resume:
            _cut_metrics_to_checkpoints(config, directory)
    dist.barrier()
    log(f"run directory: {root}  device: {device}"
        + (f"  processes: {dist.world_size} ({dist.backend})" if dist.enabled else ""))
    experiment.load_pretrained(log)

    state = directory.progress()
    for model in state["models"]:
        load_model_weights(experiment, directory, model)
    adopt_run_models(experiment, directory, state, dist, log)
    stage_results = state.get("stage_results", {})
    for index, stage in enumerate(config["stages"]):
        if stage["name"] in state["completed_stages"]:
            continue
        if stage["train"] not in state["models"]:  # its first stage (a resumed one reloads its checkpoint)
            experiment.init_from_models(stage["train"], log)
        trainer = StageTrainer(experiment, index, directory, device, log=log, progress=progress, dist=dist)
        result = trainer.run(resume=resume)
        del trainer  # with several processes: drops the DistributedDataParallel wrapper and its hooks
        result.pop("history", None)
        stage_results[stage["name"]] = result
        state["completed_stages"].append(stage["name"])
        state["models"][stage["train"]] = stage["name"]
        state["stage_results"] = stage_results
        if dist.is_main:
            directory.write_progress(state)
            if not config["keep_checkpoints"]:  # resume skips a completed stage; its weights are in models/
                drop_stage_checkpoints(directory, stage["name"])
        if result["best"] is None:
            log(f"stage '{stage['name']}' done: no dev split, the weights after step {result['best_step']:,} kept")
        else:
            log(f"stage '{stage['name']}' done: best dev {result['select']} = {_fmt(result['best'])} "
                f"at step {result['best_step']:,}")
    summary = None
    if dist.is_main:  # the others wait: the summary evaluates and times the models
        summary = summarize(experiment, directory, device, state, progress=progress)
        atomic_write_json(directory.summary, summary)
        log(format_summary(summary))
    return dist.broadcast(summary)


def environment_record(device: torch.device, dist: distributed.Distributed = distributed.SINGLE) -> dict:
    import transformers

    record = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "platform": platform.platform(), "device": str(device),
              "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": sys.argv, "host_memory": keep_freed_memory() if device.type == "cpu" else None}
    if dist.enabled:
        record["processes"] = dist.world_size
        record["backend"] = dist.backend
    return record


def final_model(config: Config) -> str:
    """The model a run delivers: the one trained by the last stage (the student, when distilling)."""
    return config["stages"][-1]["train"]


def roles(config: Config) -> dict[str, str]:
    """student = the model trained by the last stage; teachers = models that teach in any stage
    (a stage's ``teachers``, and the model whose translations a stage's ``transfer.generate`` makes)."""
    from blocks.generated_transfer import generating_teacher

    stages = config["stages"]
    student = stages[-1]["train"]
    teachers = {t for s in stages for t in s["teachers"]}
    teachers |= {t for t in map(generating_teacher, stages) if t is not None}
    taken = [name for name, model in config["models"].items() if "run" in model and name in teachers]
    trained = taken + [s["train"] for s in stages]  # models from other runs first: they are the teachers
    result = {}
    for name in dict.fromkeys(trained):
        if not teachers:
            result[name] = "model"  # no distillation in this run
        else:
            result[name] = "student" if name == student else ("teacher" if name in teachers else "model")
    return result


def _scores_from_run(config: Config, name: str) -> dict | None:
    """Dev/test scores and speed of a model taken from a finished run, from that run's summary,
    when both runs read the same data and ask the same metrics (else None: evaluate it here)."""
    model = config["models"][name]
    if "run" not in model:
        return None
    root = Path(model["run"])
    try:
        theirs = json.loads((root / "config.json").read_text(encoding="utf-8"))
        summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
        entry = summary["models"][model["model"]]
    except (OSError, ValueError, KeyError):
        return None
    if theirs.get("data") != config["data"] or theirs.get("task") != config["task"]:
        return None
    kept = {k: entry[k] for k in ("dev", "test", "examples_per_second_batch64") if k in entry}
    return {**kept, "scores_from": str(root / "summary.json")} if "examples_per_second_batch64" in kept else None


def summarize(experiment: Experiment, directory: RunDir, device: torch.device, state: dict,
              progress: bool = False) -> dict:
    """Every model's dev and test metrics and inference speed, with the student's speedup.

    ``progress`` shows a bar over these measurements (on a slow machine they take minutes).
    """
    from tqdm import tqdm

    config = experiment.config
    batch_size = config["stages"][-1]["eval_batch_size"]
    speed_split = experiment.splits.get("dev") or experiment.splits["train"]
    models = {}
    role_of = roles(config)
    student = final_model(config)
    teachers = [n for n, r in role_of.items() if r == "teacher"]
    labelled = [s for s in ("dev", "test") if s in experiment.splits and experiment.splits[s].labels is not None]
    bar = tqdm(total=len(role_of) * (len(labelled) + 1), desc="final evaluation", unit="step", leave=False,
               disable=not progress, dynamic_ncols=True)
    for name, role in role_of.items():
        entry = {"role": role, "parameters": experiment.models[name].parameter_count(),
                 "stage": state["models"].get(name)}
        models[name] = entry
        reused = _scores_from_run(config, name)
        if reused is not None:  # a model from a finished run, on the same data: its scores are known
            entry.update(reused)
            bar.update(len(labelled))
            if not teachers or name != teachers[0]:  # the speedup divides by teachers[0]'s speed: timed here
                entry["examples_per_second_batch64_from"] = reused["scores_from"]
                bar.update(1)
                continue
        else:
            for split in labelled:
                bar.set_description(f"final evaluation: {name} on {split}")
                entry[split] = evaluate(experiment, name, experiment.splits[split], batch_size, device,
                                        config["precision"], progress=progress)
                bar.update(1)
        bar.set_description(f"final evaluation: {name}'s speed")
        entry["examples_per_second_batch64"] = round(throughput(experiment, name, speed_split, 64, device), 1)
        words = words_per_example(experiment, speed_split)
        if words is not None:  # a word-level task: the speed in words, as taggers are compared
            entry["words_per_second_batch64"] = round(entry["examples_per_second_batch64"] * words, 1)
        bar.update(1)
    bar.close()
    if teachers:
        teacher_speed = models[teachers[0]]["examples_per_second_batch64"]
        models[student]["speedup_vs_" + teachers[0]] = round(
            models[student]["examples_per_second_batch64"] / teacher_speed, 2)
        models[student]["compression_vs_" + teachers[0]] = round(
            models[teachers[0]]["parameters"] / models[student]["parameters"], 2)
    return {"run_dir": str(directory.root), "device": str(device), "models": models,
            "stages": state.get("stage_results", {}), **experiment.task.summary_extras(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def words_per_example(experiment, split, max_examples: int = 2048) -> float | None:
    """The mean word count of the examples a speed measurement uses (its first ``max_examples``),
    for a word-level task; None otherwise."""
    if not experiment.task.per_token or experiment.task.generates or split.labels is None or not len(split):
        return None
    count = min(len(split), max_examples)
    return sum(len(split.labels[i]) for i in range(count)) / count


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(summary: dict) -> str:
    lines = ["", f"results ({summary['device']}):"]
    for name, entry in summary["models"].items():
        scores = []
        for split in ("dev", "test"):
            if split in entry:
                scores.append(f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in entry[split].items()))
        speed = f"{entry['examples_per_second_batch64']:,.0f} ex/s at batch 64"
        if "words_per_second_batch64" in entry:
            speed += f" ({entry['words_per_second_batch64']:,.0f} words/s)"
        if "examples_per_second_batch64_from" in entry:
            speed += " (timed in its own run)"
        extra = "".join(f"; {k.replace('_vs_', ' vs ')} {v}x" for k, v in entry.items()
                        if k.startswith(("speedup", "compression")))
        lines.append(f"  {name} ({entry['role']}): {entry['parameters']:,} parameters; "
                     f"{'; '.join(scores)}; {speed}{extra}")
    return "\n".join(lines)


def open_run(run_dir: str | Path) -> tuple[RunDir, Config]:
    """A finished or partial run's directory and its resolved config; its set-up files are checked
    against the checksums the run recorded (a CheckpointError names a damaged one)."""
    directory = RunDir(run_dir)
    if not directory.root.is_dir():
        raise CheckpointError("run directory not found", str(run_dir))
    directory.check_setup()
    values = directory.read_json(directory.config)
    if isinstance(values, dict) and "tasks" in values:
        raise CheckpointError("is the config of a multi-task run: its dev scores after every stage are in "
                              "scores.json; test, predict, bench and export take one of its tasks, "
                              f"{directory.root / 'tasks' / '<task>'}", str(directory.config))
    if not isinstance(values, dict) or not isinstance(values.get("models"), dict) \
            or not isinstance(values.get("stages"), list):
        raise CheckpointError("is not a run's config (no models and stages)", str(directory.config))
    return directory, Config(values=values, file=str(directory.config), base_dir=directory.root)


def check_trusted_imports(config: Config, trust_imports: bool) -> None:
    """A run directory may come from someone else: the code its config imports runs only when the
    user says so (``--trust-imports``)."""
    modules = config.values.get("imports") or []
    if modules and not trust_imports:
        raise CheckpointError(f"the run's config imports code that would run on this machine ({', '.join(modules)}); "
                              f"if you trust where the run comes from, pass --trust-imports", config.file)


def load_run(run_dir: str | Path, log=print, trust_imports: bool = False) -> tuple[RunDir, Experiment, dict]:
    """Rebuild a run's experiment with every finished model's weights loaded.

    Nothing in the run directory is executed unless ``trust_imports``: its config's ``imports``
    are refused (with the modules named) otherwise. Weights are safetensors, never unpickled."""
    directory, config = open_run(run_dir)
    check_trusted_imports(config, trust_imports)
    from blocks.multitask.run import is_task_of_multitask_run, load_task_run

    if is_task_of_multitask_run(directory.root):  # RUN/tasks/<task> of a multi-task run
        return load_task_run(directory.root, log=log)
    task = directory.read_json(directory.task)
    if not isinstance(task, dict) or not isinstance(task.get("type"), str):
        raise CheckpointError("is corrupt: not a task description (an object with a \"type\")", str(directory.task))
    experiment = Experiment.from_run_dir(directory.root, config, log=log)
    state = directory.progress()
    if not state["models"]:
        raise CheckpointError("no model has finished training in this run", str(directory.root))
    for model in state["models"]:
        load_model_weights(experiment, directory, model)
    return directory, experiment, state


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)
