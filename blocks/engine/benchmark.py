"""CPU inference speed of a run's trained models, measured side by side in one process.

The one implementation behind ``blocks bench`` and ``tools/bench_inference.py`` (the harness the
other ``tools/bench_*.py`` scripts use to time training steps is
:mod:`blocks.engine.training_benchmark`):

* the examples are a split of the run's own config (read as ``blocks test`` reads it) or a file;
* batches are collated beforehand (sorted by length, as evaluation does, or in file order) and
  shared by the models of a run, so only the forward passes are timed, under
  ``torch.inference_mode()`` with every model in ``eval()`` mode;
* every model gets one untimed warm-up pass (at most ``warmup_batches`` batches per size), then
  the repeats are interleaved (every model at the first batch size, every model at the next,
  again ...) and the best time of each model at each size is kept, so that a change in the
  machine's load hits all models alike.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blocks.data.batching import sorted_batches
from blocks.data.dataset import EncodedSplit, encode_rows, read_split, split_sources
from blocks.errors import DistilBlocksError
from blocks.threads import usable_cores, use_threads


# -- machine ----------------------------------------------------------------------------------
def available_cores() -> int:
    return usable_cores()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def busy() -> bool:
    """Whether other processes use the CPU (1-minute load average >= 0.75)."""
    try:
        return os.getloadavg()[0] >= 0.75
    except (AttributeError, OSError):
        return False


# -- what is measured -------------------------------------------------------------------------
@dataclass
class Entry:
    """One model of one run, with the batches it is timed on and its best times."""

    run: str
    model: str
    role: str
    parameters: int
    experiment: object
    batches: dict  # batch size -> pre-collated batches (shared by the models of one run)
    examples: dict  # batch size -> number of examples in those batches
    best: dict = field(default_factory=dict)  # batch size -> best seconds
    final: bool = True  # a generating model: the task's final search (beam), else greedy search

    @property
    def label(self) -> str:
        return f"{self.model} ({self.role})"

    def forward(self, batches) -> None:
        task = self.experiment.task
        output = self.experiment.models[self.model].output_name
        for batch in batches:
            if task.generates:  # a translation model's inference is its decoding (the task's final search)
                task.predict_batch(self.experiment, self.model, batch, self.final)
                continue
            values = self.experiment.model_values(self.model, batch)
            if task.per_token:  # a tagger's inference includes its decoding (Viterbi for a CRF)
                task.decode_batch(values[output], batch)

    def speed(self, batch_size: int) -> float:
        """Examples per second at ``batch_size`` (best of the repeats)."""
        return self.examples[batch_size] / self.best[batch_size]

    def latency_ms(self, batch_size: int = 1) -> float:
        """Milliseconds per example at ``batch_size`` (at batch 1: the latency of one example)."""
        return 1000.0 / self.speed(batch_size)


def examples_split(experiment, run_dir: str, split_name: str, data: str | None) -> tuple[EncodedSplit, str]:
    """The examples to run the models on: ``data`` (a file), or the config's split read as ``blocks test`` does."""
    if data:
        return experiment.encode_file(data, with_labels=False), data
    config = experiment.config
    sources = split_sources(config["data"])
    if split_name not in sources:
        raise DistilBlocksError(f"the config of {run_dir} has no {split_name} split "
                                f"(it has {', '.join(sources)}); choose one with --split or a file with --data")
    source = sources[split_name]
    rows = read_split(source)
    if not rows:
        raise DistilBlocksError(f"the {split_name} file holds no examples: {source.path}")
    split = encode_rows(split_name, rows, experiment.fields, experiment.vocabularies, experiment.task,
                        None, None, source.fields, source.path)
    return split, source.path


def batch_indexes(lengths: torch.Tensor, batch_size: int, order: str) -> list[torch.Tensor]:
    if order == "sorted":
        return sorted_batches(lengths, batch_size)
    return list(torch.split(torch.arange(len(lengths)), batch_size))


def collate_batches(split: EncodedSplit, batch_sizes, examples: int, batch1_examples: int, order: str,
                    device: torch.device) -> tuple[dict, dict]:
    """Pre-collated batches per batch size, and how many examples they hold.

    Batch sizes > 1 use the first ``examples`` examples; batch size 1 the first
    ``min(examples, batch1_examples)``.
    """
    count = min(len(split), examples)
    batches, counts = {}, {}
    for size in batch_sizes:
        n = min(count, batch1_examples) if size == 1 else count
        batches[size] = [split.collate(index).to(device) for index in batch_indexes(split.lengths[:n], size, order)]
        counts[size] = n
    return batches, counts


def describe_sizes(batches: dict, examples: dict) -> str:
    return ", ".join(f"batch {s}: {examples[s]:,} examples in {len(batches[s]):,} batch"
                     + ("es" if len(batches[s]) != 1 else "") for s in batches)


def run_entries(run_dir: str | Path, label: str, batch_sizes, examples: int, batch1_examples: int = 300,
                split_name: str = "dev", data: str | None = None, order: str = "sorted",
                models: list[str] | None = None, device: torch.device | None = None,
                trust_imports: bool = False) -> tuple[list[Entry], dict]:
    """Load a run and make an :class:`Entry` for each of its trained models (in role order).

    Returns the entries and what they run on: ``models``, ``split_size``, ``source``,
    ``batches`` and ``examples`` (per batch size).

    Raises:
        DistilBlocksError: the run cannot be read, its examples are missing, or none of
            ``models`` finished training.
    """
    from blocks.engine.run import load_run, roles

    device = device or torch.device("cpu")
    directory, experiment, state = load_run(run_dir, log=lambda *a: None, trust_imports=trust_imports)
    split, source = examples_split(experiment, str(run_dir), split_name, data)
    batches, counts = collate_batches(split, batch_sizes, examples, batch1_examples, order, device)
    role_of = roles(experiment.config)
    names = [m for m in role_of if m in state["models"]]
    if models:
        missing = [m for m in models if m not in state["models"]]
        if len(missing) == len(models):
            raise DistilBlocksError(f"none of {', '.join(models)} finished training in {run_dir} "
                                    f"(finished: {', '.join(state['models'])})")
        names = [m for m in names if m in models]
    entries = []
    for name in names:
        model = experiment.models[name].to(device)
        model.eval()
        entries.append(Entry(label, name, role_of[name], model.parameter_count(), experiment, batches, counts))
    return entries, {"models": names, "split_size": len(split), "source": source, "batches": batches,
                     "examples": counts}


def measure(entries: list[Entry], batch_sizes, repeats: int, warmup_batches: int = 20, progress: bool = False) -> None:
    """Time every entry at every batch size: a warm-up pass, then ``repeats`` interleaved passes.

    Fills each entry's ``best`` (batch size -> best seconds over the repeats). ``progress`` shows
    a bar over the passes (updated between timed passes, never inside one).
    """
    from tqdm import tqdm

    bar = tqdm(total=(repeats + 1) * len(batch_sizes) * len(entries), desc="bench", unit="pass", leave=False,
               disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for entry in entries:  # warm-up: one untimed pass (few batches) at every size
            for size in batch_sizes:
                bar.set_description(f"bench: warm-up {entry.model}, batch {size}")
                entry.forward(entry.batches[size][:warmup_batches])
                bar.update(1)
        for repeat in range(repeats):
            for size in batch_sizes:
                for entry in entries:
                    bar.set_description(f"bench: repeat {repeat + 1}/{repeats}, {entry.model}, batch {size}")
                    start = time.perf_counter()
                    entry.forward(entry.batches[size])
                    elapsed = time.perf_counter() - start
                    entry.best[size] = min(entry.best.get(size, float("inf")), elapsed)
                    bar.update(1)


# -- reporting --------------------------------------------------------------------------------
def speed_table(entries: list[Entry], batch_sizes, with_run: bool = True) -> tuple[list[str], list[list[str]], set]:
    """Headers, rows and the left-aligned columns of the results table.

    Per batch size: examples/s, at batch 1 also ms per example, and the speedup over the slowest
    model at that size.
    """
    slowest = {size: min(e.speed(size) for e in entries) for size in batch_sizes}
    headers = (["run"] if with_run else []) + ["model (role)", "parameters"]
    for size in batch_sizes:
        headers += [f"batch {size} ex/s"] + (["batch 1 ms/ex"] if size == 1 else []) + [f"batch {size} speedup"]
    rows = []
    for e in entries:
        row = ([e.run] if with_run else []) + [e.label, f"{e.parameters:,}"]
        for size in batch_sizes:
            speed = e.speed(size)
            row += ([f"{speed:,.1f}"] + ([f"{e.latency_ms(size):.2f}"] if size == 1 else [])
                    + [f"{speed / slowest[size]:.2f}x"])
        rows.append(row)
    return headers, rows, ({0, 1} if with_run else {0})


def format_table(headers: list[str], rows: list[list[str]], left: set, indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return [indent + "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [headers] + rows]


def markdown_table(headers: list[str], rows: list[list[str]], left: set) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i in left else "---:" for i in range(len(headers))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def comparisons(entries: list[Entry], batch_sizes) -> list[dict]:
    """For each run, each student against each teacher: speedup per batch size and compression."""
    found = []
    for run in dict.fromkeys(e.run for e in entries):
        members = [e for e in entries if e.run == run]
        for student in (e for e in members if e.role == "student"):
            for teacher in (e for e in members if e.role == "teacher"):
                found.append({"run": run, "student": student.model, "teacher": teacher.model,
                              "speedup": {s: student.speed(s) / teacher.speed(s) for s in batch_sizes},
                              "compression": teacher.parameters / student.parameters})
    return found


def comparison_line(found: dict) -> str:
    parts = [f"batch {s} {x:.2f}x faster" for s, x in found["speedup"].items()]
    return (f"{found['student']} vs {found['teacher']}: " + ", ".join(parts)
            + f"; {found['compression']:.2f}x fewer parameters")


def results(entries: list[Entry], batch_sizes) -> dict:
    """The measurements as plain numbers (for JSON)."""
    models = {}
    for e in entries:
        entry = {"role": e.role, "parameters": e.parameters}
        for size in batch_sizes:
            entry[f"batch{size}_examples_per_second"] = round(e.speed(size), 1)
            if size == 1:
                # significant digits, not decimals: a tiny model's latency is a few hundredths of a ms
                entry["batch1_ms_per_example"] = float(f"{e.latency_ms(1):.5g}")
        models[e.model if len({x.run for x in entries}) == 1 else f"{e.run}/{e.model}"] = entry
    compared = [{**c, "speedup": {f"batch{s}": round(x, 2) for s, x in c["speedup"].items()},
                 "compression": round(c["compression"], 2)} for c in comparisons(entries, batch_sizes)]
    return {"models": models, "student_vs_teacher": compared}


# -- `blocks bench` -----------------------------------------------------------------------------
BENCH_SIZES = (1, 64)


def bench_run(run_dir: str | Path, examples: int = 1000, repeats: int = 3, threads: int | None = None,
              batch1_examples: int = 300, out=print, trust_imports: bool = False, progress: bool = False,
              greedy: bool = False) -> dict:
    """``blocks bench``: batch-1 latency and batch-64 throughput of every trained model of a run.

    A generating model (seq2seq) is timed with the task's final search (beam search), or with
    greedy search when ``greedy``.

    Uses the run's dev split (else its train split). Sets torch's thread count to ``threads``
    (default: the run config's ``threads``, else :func:`blocks.threads.default_threads`) while
    measuring and restores it after. Prints the table through ``out`` and returns :func:`results`
    plus the settings; ``progress`` shows a bar over the timed passes.
    """
    from blocks.engine.run import open_run

    if examples < 1 or repeats < 1 or (threads is not None and threads < 1):
        raise DistilBlocksError("--examples, --repeats and --threads must be >= 1")
    _, config = open_run(run_dir)
    split_name = "dev" if "dev" in split_sources(config["data"]) else "train"
    previous = torch.get_num_threads()
    use_threads(threads or config.values.get("threads"))
    try:
        entries, about = run_entries(run_dir, Path(run_dir).name, BENCH_SIZES, examples, batch1_examples,
                                     split_name=split_name, trust_imports=trust_imports)
        for entry in entries:
            entry.final = not greedy
        if entries and entries[0].experiment.task.generates:
            generation = entries[0].experiment.task.generation
            out("decoding: " + ("greedy search" if greedy or generation["beam"] <= 1 else
                                f"beam search, beam {generation['beam']} (--greedy: greedy search)"))
        out(f"run {run_dir}: models {', '.join(about['models'])}; {about['split_size']:,} examples from "
            f"{about['source']}; {describe_sizes(about['batches'], about['examples'])}")
        out(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
            f"load average {load_average()}")
        out("the speeds depend on the threads (--threads), the device and the machine's load; the speedups "
            "compare models timed side by side here")
        if busy():
            out("warning: other processes are using the CPU; the timings are noisy")
        measure(entries, BENCH_SIZES, repeats, progress=progress)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    out(f"forward passes only (and a tagger's decoding; a seq2seq model's generation), inference mode, "
        f"batches pre-collated and sorted by "
        f"length; best of {repeats} "
        f"interleaved repeat(s); speedup = vs the slowest model")
    headers, rows, left = speed_table(entries, BENCH_SIZES, with_run=False)
    for line in format_table(headers, rows, left):
        out(line)
    for found in comparisons(entries, BENCH_SIZES):
        out("  " + comparison_line(found))
    measured = results(entries, BENCH_SIZES)
    words = words_per_example(entries[0], BENCH_SIZES[-1])
    if words is not None:
        out(f"  tagging: {words:.2f} words per sentence on average, so words/s = ex/s x {words:.2f}: "
            + "; ".join(f"{e.model} {e.speed(s) * words:,.0f} words/s at batch {s}" for e in entries
                        for s in BENCH_SIZES))
        for e in entries:
            for s in BENCH_SIZES:
                measured["models"][e.model][f"batch{s}_words_per_second"] = round(e.speed(s) * words, 1)
    return {"run_dir": str(run_dir), "threads": used_threads, "repeats": repeats,
            "examples": {f"batch{s}": n for s, n in about["examples"].items()}, **measured}


def words_per_example(entry: "Entry", batch_size: int) -> float | None:
    """The mean word count of the examples timed at ``batch_size``, for a word-level task (from the
    batches' per-word labels); None otherwise."""
    if not entry.experiment.task.per_token or entry.experiment.task.generates:
        return None  # a translation model: sentences per second are the measure
    batches = entry.batches[batch_size]
    if not batches:
        return None
    return sum(batch_words(batch) for batch in batches) / sum(len(batch) for batch in batches)


def batch_words(batch) -> int:
    """The words of a word-level batch: its tags, else the real positions of a word-level input
    (a word-piece input counts the words its pieces belong to)."""
    from blocks.values import WordPieces

    if batch.labels is not None:
        return int((batch.labels >= 0).sum())
    for value in batch.inputs.values():
        if isinstance(value, WordPieces):
            return int((value.words.max(dim=1).values + 1).clamp(min=0).sum())
        return int(value.mask.sum())
    return 0
