"""What the checkpoint checksum costs: writing and reading a checkpoint with and without it.

The checksum (a SHA-256 over the tensors' layout, the state and every data byte; see
:mod:`blocks.engine.checkpoint`) is computed when a checkpoint is written and verified when it is
read. This script times, side by side in one process and interleaved, the file written and read
as the engine does it (:func:`save_checkpoint` / :func:`load_checkpoint`) against the same bytes
written and parsed without the checksum (the module's own serialiser and parser), on a state of
the size of a fine-tuned model with Adam (weights and two moments).

    python tools/bench_checkpoint_checksum.py                    # 22.7M parameters (MiniLM-L6)
    python tools/bench_checkpoint_checksum.py --parameters 2000000 --repeats 5
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blocks.engine import checkpoint  # noqa: E402


def state(parameters: int) -> dict[str, torch.Tensor]:
    """Weights and Adam's two moments, in tensors of a transformer layer's sizes."""
    generator = torch.Generator().manual_seed(0)
    tensors, left, index = {}, parameters, 0
    while left > 0:
        size = min(left, 384 * 1536)
        for part in ("model", "optimizer.exp_avg", "optimizer.exp_avg_sq"):
            tensors[f"{part}.{index}"] = torch.randn(size, generator=generator)
        left -= size
        index += 1
    return tensors


def plain_write(path: Path, tensors: dict, meta: dict) -> None:
    out, _, _ = checkpoint._serialize(tensors, {checkpoint.VERSION_KEY: "1", checkpoint.STATE_KEY: "{}"})
    checkpoint.atomic_write_bytes(path, out)


def plain_read(path: Path) -> dict:
    return checkpoint._parse(bytearray(path.read_bytes()))[0]


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameters", type=int, default=22_713_216, help="model parameters (default: MiniLM-L6)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed passes, best kept")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.parameters < 1 or args.repeats < 1:
        print("error: --parameters and --repeats must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    tensors = state(args.parameters)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with tempfile.TemporaryDirectory() as folder:
        with_sum, without = Path(folder) / "with.safetensors", Path(folder) / "without.safetensors"
        timings = {"write": [[], []], "read": [[], []]}
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            timings["write"][0].append(best_of(lambda: checkpoint.save_checkpoint(with_sum, tensors, {}), 1))
            timings["write"][1].append(best_of(lambda: plain_write(without, tensors, {}), 1))
            timings["read"][0].append(best_of(lambda: checkpoint.load_checkpoint(with_sum), 1))
            timings["read"][1].append(best_of(lambda: plain_read(without), 1))
    print(f"checkpoint of {args.parameters:,} parameters with Adam's moments: {size / 2 ** 20:,.0f} MiB; "
          f"torch {torch.__version__}, {args.threads} thread(s); best of {args.repeats}")
    for what, (checked, plain) in timings.items():
        a, b = min(checked), min(plain)
        print(f"{what:5s}  with checksum {a * 1000:8.1f} ms   without {b * 1000:8.1f} ms   "
              f"overhead {(a - b) * 1000:7.1f} ms ({(a / b - 1) * 100:+.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
