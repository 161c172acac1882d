"""The ``blocks`` command: train, validate, test, predict, list, schema.

Errors meant for the user (a bad config, bad data, a broken checkpoint) are printed as one line
naming the file and the place, without a traceback, and the command exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from blocks.errors import DistilBlocksError


_THREADS_HELP = ("CPU threads PyTorch computes with (default: the config's \"threads\", else OMP_NUM_THREADS, "
                 "else half the usable cores, at least 1)")


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _device_name(text: str) -> str:
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", text) is None:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got '{text}'")
    return text


_DEVICE_HELP = ("cpu, cuda, cuda:N or auto (default: the run's device; a run trained on CUDA runs on the CPU "
                "where there is no CUDA device)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the JSON config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a config value, e.g. --set stages.0.epochs=2 (repeatable)")


def _add_trust_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-imports", action="store_true",
                        help="import the Python modules the run's config lists in \"imports\" (code from the run "
                             "directory runs on this machine: only for runs from a source you trust)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blocks", description="NLP models from JSON, distilled.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run every stage of a config")
    _add_config_arguments(train)
    train.add_argument("--run-dir", help="where to write the run (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--threads", type=_positive_int, help=_THREADS_HELP)

    validate = commands.add_parser("validate", help="check a config and its data without training")
    _add_config_arguments(validate)

    test = commands.add_parser("test", help="evaluate the models of a run")
    test.add_argument("run_dir")
    _add_trust_argument(test)
    test.add_argument("--data", help="a labelled file to evaluate on (default: the config's test split)")
    test.add_argument("--model", action="append", help="model(s) to evaluate (default: every trained model)")
    test.add_argument("--threads", type=_positive_int, help=_THREADS_HELP)
    test.add_argument("--device", type=_device_name, help=_DEVICE_HELP)
    test.add_argument("--greedy", action="store_true",
                      help="seq2seq: decode by greedy search instead of the task's beam search")
    test.add_argument("--no-progress", action="store_true", help="no progress bars")

    predict = commands.add_parser("predict", help="label new examples with a run's model")
    predict.add_argument("run_dir")
    _add_trust_argument(predict)
    predict.add_argument("--input", required=True, help="file to label, or - for standard input")
    predict.add_argument("--model", help="model to use (default: the student, trained by the last stage)")
    predict.add_argument("--format", choices=["tsv", "jsonl"], default="tsv", help="output format")
    predict.add_argument("--lines", action="store_true",
                         help="each input line is one example: its text, or for a model reading two text "
                              "fields (a sentence pair) the two texts separated by a tab")
    predict.add_argument("--output", help="write here instead of standard output")
    predict.add_argument("--threads", type=_positive_int, help=_THREADS_HELP)
    predict.add_argument("--device", type=_device_name, help=_DEVICE_HELP)

    listing = commands.add_parser(
        "list", help="show registered blocks, losses, tokenizers, metrics, optimizers and schedules")
    listing.add_argument("name", nargs="?", help="show one entry in full")
    listing.add_argument("--kind", choices=["block", "loss", "tokenizer", "metric", "optimizer", "schedule"],
                         default=None)
    listing.add_argument("--import", dest="imports", action="append", default=[],
                         help="a module with custom entries to include: a .py file or a dotted module name "
                              "(repeatable)")

    schema = commands.add_parser("schema", help="write the JSON Schema of config files (for editors)")
    schema.add_argument("--output", "-o", help="file to write (default: standard output)")

    export = commands.add_parser(
        "export", help="export a run's model to ONNX or TorchScript, checked against PyTorch",
        description="Export a trained model for deployment. The exported graph takes, for each model input in "
                    "the config's order, <input>_ids (int64 [batch, length], or [batch, length, chars] for a "
                    "chars input) and <input>_mask (bool [batch, length], True on real positions) and returns "
                    "the output node's scores [batch, outputs]; batch and length are dynamic. A sidecar "
                    "<file>.json next to it lists the inputs, labels and vocabulary files. The export is run "
                    "next to PyTorch on examples of the dev split and fails if the outputs differ by more "
                    "than 1e-4.")
    export.add_argument("run_dir")
    _add_trust_argument(export)
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"],
                        help="onnx (needs: pip install distilblocks[export]) or torchscript (a torch.jit .pt file)")
    export.add_argument("--model", help="model to export (default: the student, trained by the last stage)")
    export.add_argument("--output", help="file to write (default: RUN_DIR/export/<model>.onnx or .pt)")

    bench = commands.add_parser(
        "bench", help="CPU latency and throughput of a run's models, side by side",
        description="Time every trained model of a run in one process on the run's dev split: latency at "
                    "batch size 1 (ms per example) and throughput at batch size 64 (examples/s), forward "
                    "passes only, interleaved repeats, best kept; with the student's speedup over the teacher.")
    bench.add_argument("run_dir")
    _add_trust_argument(bench)
    bench.add_argument("--examples", type=int, default=1000,
                       help="examples timed at batch 64 (default 1000); batch 1 times the first min(N, 300)")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved timed passes, best kept (default 3)")
    bench.add_argument("--threads", type=_positive_int, default=None, help=_THREADS_HELP)
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--greedy", action="store_true",
                       help="a translation model decodes greedily (default: the task's beam search)")

    clean = commands.add_parser(
        "clean", help="free the disk space finished runs no longer need",
        description="For every run directory at or below the given paths: delete the resumable state of "
                    "completed stages (stages/<stage>/last.safetensors, best.safetensors; the engine does "
                    "this itself unless the config says \"keep_checkpoints\": true), and turn copies of "
                    "models taken from other runs into hard links to the source when the weights are equal. "
                    "Temporary files of interrupted writes are deleted too. models/, vocabularies, metrics and "
                    "summaries stay: test, predict, export and --resume work as before. A run another process "
                    "is training is skipped.")
    clean.add_argument("paths", nargs="+", help="run directories, or folders holding them")
    clean.add_argument("--cache", action="store_true", help="also delete each run's teacher cache (RUN/cache)")
    clean.add_argument("--dry-run", action="store_true", help="list what would be done, change nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with `blocks train CONFIG --resume`", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `blocks list | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def cmd_train(args) -> int:
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    overrides = args.overrides + ([f"threads={args.threads}"] if args.threads else [])
    if _is_multitask(args.config):
        from blocks.multitask.config import load_multitask_config
        from blocks.multitask.run import train_multitask

        config = load_multitask_config(args.config, overrides)
        train_multitask(config, run_dir=args.run_dir, resume=args.resume, progress=not args.no_progress)
        return 0
    config = load_config(args.config, overrides)
    train(config, run_dir=args.run_dir, resume=args.resume, progress=not args.no_progress)
    return 0


def _is_multitask(path: str) -> bool:
    """Whether a config file (with what it extends) declares several tasks (``tasks``)."""
    from blocks.config.loader import load_merged
    from blocks.multitask.config import is_multitask

    return is_multitask(load_merged(path))


def validate_multitask(args) -> int:
    from blocks.multitask.config import load_multitask_config
    from blocks.multitask.experiment import MultiTaskExperiment
    from blocks.multitask.run import check_multitask_stages

    config = load_multitask_config(args.config, args.overrides, planned_runs=True)
    multi = MultiTaskExperiment.prepare(config)
    check_multitask_stages(multi)
    for name, model in multi.models.items():
        shared = config.shared_models.get(name)
        count = sum(p.numel() for p in model.parameters())
        print(f"\nmodel '{name}': {count:,} parameters" + (f"; shared by the tasks: {', '.join(shared)}" if shared
                                                            else "; separate weights per task"))
        for task, graph in model.graphs.items():
            print(f"  task '{task}' ({multi.experiments[task].task.describe()}):")
            print("    " + graph.describe().replace("\n", "\n    "))
    for index, (stage, plan) in enumerate(zip(config.values["stages"], config.plans)):
        mixture = " + ".join(plan.tasks) + (f", replaying {plan.replay_share:g} of {', '.join(plan.replay_tasks)}"
                                            if plan.replay_tasks else "")
        teachers = stage.get("teachers")
        if isinstance(teachers, dict):
            teachers = [f"{teacher} ({task})" for task, names in teachers.items() for teacher in names]
        teachers = f"; taught by {', '.join(teachers)}" if teachers else ""
        print(f"stage '{stage['name']}': train '{stage['train']}' on {mixture}{teachers}")
    if len(config.orders) > 1:
        print(f"\n{len(config.orders)} orders: " + "; ".join(" -> ".join(o) for o in config.orders))
    print(f"\n{args.config}: valid")
    return 0


def cmd_validate(args) -> int:
    from blocks.config.loader import load_config
    from blocks.transfer_set import describe_transfer
    from blocks.engine.run import check_stages
    from blocks.experiment import Experiment, resolve_device

    if _is_multitask(args.config):
        return validate_multitask(args)
    config = load_config(args.config, args.overrides, planned_runs=True)
    experiment = Experiment.prepare(config)
    resolve_device(config["device"])
    check_stages(experiment)  # what `blocks train` checks before its first stage
    print(f"task: {experiment.task.describe()}; vocabularies: "
          + ", ".join(f"{n} {len(v):,}" for n, v in experiment.vocabularies.items()))
    for name, graph in experiment.models.items():
        print(f"\nmodel '{name}':")
        print(graph.describe())
    for index, stage in enumerate(config["stages"]):
        losses = experiment.build_losses(index)
        terms = " + ".join(f"{w:g}·{type(l).registered_name}" for w, l in losses)
        teachers = f" taught by {', '.join(stage['teachers'])}" if stage["teachers"] else ""
        print(f"\nstage '{stage['name']}': train '{stage['train']}'{teachers}; loss = {terms}")
        transfer = describe_transfer(experiment, index)
        if transfer:
            print(f"  {transfer}")
    if config.planned_runs:
        print(f"\nruns still needed (their models were checked with the graphs of the recipes that make them):")
        for planned in config.planned_runs:
            print(f"  {planned.command()}")
    print(f"\n{args.config}: valid" + (" once those runs are made" if config.planned_runs else ""))
    return 0


def cmd_test(args) -> int:
    from blocks.engine.evaluation import evaluate
    from blocks.engine.run import load_run, roles
    from blocks.experiment import inference_device
    from blocks.threads import use_threads

    directory, experiment, state = load_run(args.run_dir, trust_imports=args.trust_imports)
    use_threads(args.threads or experiment.config.values.get("threads"))
    device = inference_device(experiment.config["device"], args.device, note=_note)
    if args.greedy and not experiment.task.generates:
        raise DistilBlocksError(f"--greedy: a {experiment.task.name} model does not generate; --greedy is for "
                                f"seq2seq runs")
    if args.data:
        split = experiment.encode_file(args.data, with_labels=True)
        source = args.data
    else:
        from blocks.data.dataset import encode_rows, read_split, split_sources

        sources = split_sources(experiment.config["data"])
        if "test" not in sources:
            raise DistilBlocksError(f"{directory.config}: /data/test: the run's config has no test split; "
                                    f"name a labelled file with --data")
        rows = read_split(sources["test"])
        data = experiment.config["data"]
        split = encode_rows("test", rows, experiment.fields, experiment.vocabularies, experiment.task,
                            data["label"], data["group"], sources["test"].fields, sources["test"].path)
        source = sources["test"].path
    models = args.model or [m for m in roles(experiment.config) if m in state["models"]]
    results = {}
    for name in models:
        if name not in state["models"]:
            raise DistilBlocksError(f"{directory.progress_file}: model '{name}' has not finished training "
                                    f"(finished: {', '.join(state['models'])})")
        experiment.models[name].to(device)
        results[name] = evaluate(experiment, name, split, experiment.config["stages"][-1]["eval_batch_size"],
                                 device, experiment.config["precision"], progress=not args.no_progress,
                                 final=not args.greedy)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results[name].items())
        print(f"{name}: {shown}")
    report = {"data": source, "examples": len(split), "results": results}
    if experiment.task.generates:
        settings = experiment.task.generation_settings(final=not args.greedy)
        report["decoding"] = "greedy" if settings.strategy == "greedy" else f"beam {settings.beam_size}"
    print(json.dumps(report))
    return 0


def cmd_predict(args) -> int:
    from blocks.predictor import Predictor

    predictor = Predictor(args.run_dir, model=args.model, threads=args.threads, trust_imports=args.trust_imports,
                          device=args.device, note=_note)
    source = "<standard input>" if args.input == "-" else args.input
    text = _read_standard_input(source) if args.input == "-" else None
    mapping = predictor.experiment.config["data"].get("fields", {})
    # a model trained on parallel files reads the source side: one sentence per line
    if args.lines or predictor.experiment.config["data"].get("reader", {}).get("format") == "parallel":
        if text is None:
            try:
                text = Path(args.input).read_text(encoding="utf-8-sig")
            except (OSError, UnicodeError) as error:
                raise DistilBlocksError(f"{args.input}: cannot read: {error}") from None
        rows, mapping = predictor.line_rows(text, source), {}
    elif text is not None:  # standard input, in the format of the training data
        from blocks.data.dataset import split_sources
        from blocks.data.readers import format_of

        train = split_sources(predictor.experiment.config["data"])["train"]
        rows = predictor.file_rows(source, text=text, format=format_of(train.path, train.reader.get("format", "auto")))
    else:
        rows = predictor.file_rows(args.input)
    lines = predictor.formatted(rows, mapping, source, args.format)
    header = predictor.task.prediction_header(args.format)
    if header is not None:
        lines.insert(0, header)
    if args.output:  # atomically: an interrupted or failed write leaves no half-written predictions
        from blocks.engine.checkpoint import atomic_write_text

        try:
            atomic_write_text(args.output, "".join(line + "\n" for line in lines))
        except OSError as error:
            raise DistilBlocksError(f"{args.output}: cannot write the predictions: {error.strerror or error}") from None
    else:
        for line in lines:
            sys.stdout.write(line + "\n")
    return 0


def _read_standard_input(source: str) -> str:
    """Standard input as text (UTF-8; a byte-order mark is dropped); bytes that are not UTF-8 are
    reported with their position."""
    from blocks.errors import DataError

    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"byte 0x{data[error.start]:02x} is not UTF-8 ({error.reason}); give the input as UTF-8",
                        source, line) from None


def cmd_list(args) -> int:
    from blocks.catalog import import_user_module
    from blocks.registry import BLOCKS, LOSSES, METRICS, OPTIMIZERS, SCHEDULES, TOKENIZERS

    for module in args.imports:  # a .py file (relative to the current folder) or a dotted module name
        try:
            import_user_module(module, Path.cwd())
        except DistilBlocksError as error:
            cause = error.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause else error.message
            raise DistilBlocksError(f"--import {module} failed: {detail}") from error
    registries = {"block": BLOCKS, "loss": LOSSES, "tokenizer": TOKENIZERS, "metric": METRICS,
                  "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
    kinds = [args.kind] if args.kind else list(registries)
    if args.name:
        for kind in kinds:
            if args.name in registries[kind]:
                _print_entry(registries[kind], args.name, full=True)
                return 0
        registries[kinds[0]].get(args.name)  # raises with a suggestion
    for kind in kinds:
        registry = registries[kind]
        print({"block": "blocks", "loss": "losses", "tokenizer": "tokenizers", "metric": "metrics",
               "optimizer": "optimizers", "schedule": "learning-rate schedules"}[kind] + ":")
        for name in registry.names():
            _print_entry(registry, name, full=False)
        print()
    return 0


def _print_entry(registry, name: str, full: bool) -> None:
    print(f"  {name} — {registry.describe(name)}")
    for p in registry.parameters(name):
        default = "required" if p.required else f"default {json.dumps(p.default)}"
        doc = f": {p.doc}" if p.doc and full else ""
        print(f"      {p.name} ({p.type_name()}, {default}){doc}")


def cmd_schema(args) -> int:
    from blocks.catalog import load_builtin_entries
    from blocks.config.schema import full_schema

    load_builtin_entries()
    text = json.dumps(full_schema(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def cmd_export(args) -> int:
    from blocks.export import export_model

    export_model(args.run_dir, args.format, model=args.model, output=args.output, trust_imports=args.trust_imports)
    return 0


def cmd_bench(args) -> int:
    from blocks.engine.benchmark import bench_run

    result = bench_run(args.run_dir, examples=args.examples, repeats=args.repeats, threads=args.threads,
                       trust_imports=args.trust_imports, progress=not args.no_progress, greedy=args.greedy)
    print(json.dumps(result))
    return 0


def cmd_clean(args) -> int:
    from blocks.engine.clean import clean_runs, format_size

    report = clean_runs(args.paths, dry_run=args.dry_run, cache=args.cache)
    for action in report.actions if args.dry_run else []:
        print(action)
    for line in report.skipped:
        print(line)
    verb = "would free" if args.dry_run else "freed"
    print(f"{report.runs} run(s): {verb} {format_size(report.freed)} "
          f"({report.linked} model copies {'to link' if args.dry_run else 'linked'} to their source run)")
    return 0


COMMANDS = {"train": cmd_train, "validate": cmd_validate, "test": cmd_test, "predict": cmd_predict,
            "list": cmd_list, "schema": cmd_schema, "export": cmd_export, "bench": cmd_bench,
            "clean": cmd_clean}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
