"""Tabulate translation runs: test BLEU by greedy and by beam search, mean ± std over seeds.

Reads every ``<folder>/<recipe>-seed<N>`` run with a ``summary.json`` (a finished ``blocks
train`` of a seq2seq recipe). Beam-search scores (the task's ``generation`` settings) come from
the summary; greedy scores are computed here, by decoding the test split greedily with the run's
trained model, as ``blocks test RUN --greedy`` does, and kept in ``RUN/greedy_test.json`` (keyed
by the weights' checksum, so a retrained run is decoded again). Prints a Markdown table: per
recipe, the model the run trained, its seeds, greedy and beam test BLEU (cased sacreBLEU) and
chrF, and with ``--baseline RECIPE`` the difference in greedy and beam BLEU from that recipe's
mean (``--baseline STUDENT=RECIPE``, repeatable, compares one recipe with another baseline: a
student with another architecture with its own from-scratch recipe). ``--plot PNG`` also draws each recipe's dev BLEU during training (greedy search, the
checkpoint-selecting evaluations, mean over its seeds) against the optimizer step.

    python tools/translation_table.py runs/multi30k --baseline transformer_small \
        --baseline seqkd_transformer_fast=transformer_fast --threads 1 --plot docs/images/multi30k_dev_bleu.png
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

RUN_NAME = re.compile(r"^(?P<recipe>.+)-seed(?P<seed>\d+)$")
GREEDY_FILE = "greedy_test.json"


def trained_model(summary: dict) -> str:
    """The model the run's last stage trained (the one the table reports)."""
    trained = [name for name, result in summary["models"].items() if result.get("role") != "teacher"]
    return trained[-1] if trained else next(iter(summary["models"]))


def greedy_test(run_dir: Path, model: str, threads: int | None) -> dict[str, float]:
    """Greedy-search test scores of ``model`` of the run (computed once per weights)."""
    cached_file = run_dir / GREEDY_FILE
    from blocks.engine.run_dir import file_sha256

    digest = file_sha256(run_dir / "models" / f"{model}.safetensors")
    if cached_file.is_file():
        cached = json.loads(cached_file.read_text())
        if cached.get("weights_sha256") == digest and cached.get("model") == model:
            return cached["results"]
    from blocks.data.dataset import encode_rows, read_split, split_sources
    from blocks.engine.evaluation import evaluate
    from blocks.engine.run import load_run
    from blocks.threads import use_threads

    _, experiment, _ = load_run(run_dir, log=lambda *a, **k: None)
    use_threads(threads)
    data = experiment.config["data"]
    source = split_sources(data)["test"]
    split = encode_rows("test", read_split(source), experiment.fields, experiment.vocabularies, experiment.task,
                        data["label"], data["group"], source.fields, source.path)
    import torch

    results = evaluate(experiment, model, split, experiment.config["stages"][-1]["eval_batch_size"],
                       torch.device("cpu"), final=False, progress=sys.stderr.isatty())
    cached_file.write_text(json.dumps({"model": model, "weights_sha256": digest, "results": results}, indent=2))
    return results


def dev_curve(run_dir: Path, model: str) -> dict[int, float]:
    """Dev BLEU (greedy) by optimizer step of ``model``'s last training stage, from metrics.jsonl."""
    by_stage: dict[str, dict[int, float]] = {}
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if record.get("event") == "eval" and record.get("model") == model and record.get("split") == "dev":
                by_stage.setdefault(record["stage"], {})[record["step"]] = record["metrics"]["bleu"]
    return list(by_stage.values())[-1] if by_stage else {}


def plot_curves(curves: dict[str, list[dict[int, float]]], path: Path) -> None:
    """One line per recipe: the mean over its seeds at the steps every seed evaluated."""
    from matplotlib.figure import Figure

    from blocks.engine.plots import _save

    figure = Figure(figsize=(7.5, 4.5))
    ax = figure.subplots()
    for recipe, runs in sorted(curves.items()):
        steps = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
        if steps:
            ax.plot(steps, [statistics.mean(run[step] for run in runs) for step in steps], marker="o", markersize=3,
                    label=f"{recipe} (seeds: {len(runs)})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("dev BLEU, greedy search")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Multi30k en-de: dev BLEU during training", fontsize=11)
    figure.tight_layout()
    _save(figure, path)


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of <recipe>-seed<N> run directories")
    parser.add_argument("--baseline", action="append", default=[],
                        help="recipe to compare every other recipe with (mean BLEU differences); STUDENT=RECIPE "
                             "for one recipe's own baseline (repeatable)")
    parser.add_argument("--threads", type=int, help="CPU threads for the greedy decoding")
    parser.add_argument("--plot", type=Path, help="also draw the dev BLEU curves into this PNG file")
    args = parser.parse_args()

    rows: dict[str, list[dict]] = {}
    curves: dict[str, list[dict[int, float]]] = {}
    for summary_file in sorted(args.folder.glob("*/summary.json")):
        match = RUN_NAME.match(summary_file.parent.name)
        if not match:
            continue
        summary = json.loads(summary_file.read_text())
        model = trained_model(summary)
        if "bleu" not in summary["models"][model].get("test", {}):
            continue  # not a translation run
        print(f"{summary_file.parent.name}: greedy decoding of the test split ...", file=sys.stderr, flush=True)
        greedy = greedy_test(summary_file.parent, model, args.threads)
        beam = summary["models"][model]["test"]
        curves.setdefault(match["recipe"], []).append(dev_curve(summary_file.parent, model))
        rows.setdefault(match["recipe"], []).append(
            {"seed": int(match["seed"]), "model": model, "parameters": summary["models"][model]["parameters"],
             "greedy": greedy["bleu"], "beam": beam["bleu"], "chrf": beam["chrf"]})
    if not rows:
        sys.exit(f"no finished translation runs (<recipe>-seed<N>/summary.json) in {args.folder}")
    default, own = None, {}
    for value in args.baseline:
        student, _, baseline = value.rpartition("=")
        if baseline not in rows:
            sys.exit(f"--baseline {value}: no runs of {baseline} in {args.folder} (recipes: {', '.join(rows)})")
        if student:
            own[student] = baseline
        else:
            default = baseline
    means = {recipe: {key: statistics.mean(r[key] for r in runs) for key in ("greedy", "beam")}
             for recipe, runs in rows.items()}
    header = "| recipe | model | parameters | seeds | test BLEU, greedy | test BLEU, beam | test chrF, beam |"
    rule = "|---|---|---|---|---|---|---|"
    if args.baseline:
        header += " Δ greedy / beam vs baseline |"
        rule += "---|"
    print(header)
    print(rule)
    for recipe, runs in rows.items():
        runs.sort(key=lambda r: r["seed"])
        line = (f"| {recipe} | {runs[0]['model']} | {runs[0]['parameters'] / 1e6:.1f}M | "
                f"{', '.join(str(r['seed']) for r in runs)} | {_mean_std([r['greedy'] for r in runs])} | "
                f"{_mean_std([r['beam'] for r in runs])} | {_mean_std([r['chrf'] for r in runs])} |")
        baseline = own.get(recipe, default)
        if baseline == recipe or (args.baseline and baseline is None):
            line += " — |"
        elif baseline:
            line += (f" {means[recipe]['greedy'] - means[baseline]['greedy']:+.2f} / "
                     f"{means[recipe]['beam'] - means[baseline]['beam']:+.2f} vs {baseline} |")
        print(line)
    if args.plot:
        plot_curves(curves, args.plot)
        print(f"\nwrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
