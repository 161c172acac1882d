"""BiLSTM / BiGRU blocks: the padded path (the default) vs torch's PackedSequence path, side by side.

Both paths compute the same outputs up to float rounding (``blocks/layers/recurrent.py``): the
packed one is torch's ``pack_padded_sequence`` route, which on CPU loops over time steps with a
shrinking batch; the padded one runs each direction over the padded batch (rows reversed in place
for the right-to-left direction), which is what the fused RNN kernels (oneDNN on CPU) take.

Two measurements, each with the sides alternating so that a change of machine load hits both:

* ``--config RECIPE``: training. The first ``--steps`` steps of the recipe's stage (default: the
  last) through ``StageTrainer.run`` (what ``blocks train`` runs), from the same student weights
  and batch order, with every recurrent block of the trained model on one path, then the other.
  Teachers come from their run directories and their outputs from the shared teacher cache
  (built first if missing, not timed), so a step is the student's forward, backward, gradient
  clipping and optimizer step. Checked first: the two paths' outputs and gradients at the same
  weights on 4 training batches from short to long (the exit code is 1 if they differ by more than 1e-4).
  Reported: ms per step, the speedup, and how far apart the two students end (float-rounding
  drift: the kernels round differently and Adam amplifies it; not a pass/fail check).
* ``--run RUN_DIR``: inference. Every trained model of the run that has a recurrent block, on
  each path, timed as ``tools/bench_inference.py`` does (dev split pre-collated, batches sorted
  by length, ``torch.inference_mode()``, best of ``--repeats`` interleaved passes), with the
  largest absolute difference of the two paths' outputs over the timed batches.

Example (the SST-2 BiLSTM student over MiniLM word pieces)::

    python tools/bench_recurrent.py --config model_zoo/sst2/minilm_kd_bilstm.json \\
        --set models.teacher.run=runs/zoo/minilm_teacher-seed2 --run runs/zoo/minilm_kd_bilstm-seed1 \\
        --threads 1 --steps 100
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass

import torch

from blocks.engine.benchmark import (Entry, available_cores, format_table, load_average, markdown_table, measure,
                                     run_entries, speed_table)
from blocks.engine.training_benchmark import (alternate_sides, compare_weights, first_steps_of_stage, snapshot,
                                              start_benchmark, time_stage)
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.errors import DistilBlocksError
from blocks.layers.recurrent import RecurrentEncoder

PATHS = {False: "padded", True: "packed"}
OUTPUT_TOLERANCE = 1e-4  # largest allowed |padded - packed| of an output or a gradient at the same weights


def recurrent_blocks(model: torch.nn.Module) -> list[RecurrentEncoder]:
    return [module for module in model.modules() if isinstance(module, RecurrentEncoder)]


def use_path(model: torch.nn.Module, packed: bool) -> None:
    for block in recurrent_blocks(model):
        block.packed = packed


# -- training ---------------------------------------------------------------------------------
def training_side(experiment, stage_index: int, device: torch.device, initial: dict, packed: bool) -> dict:
    """The first steps of the stage with every recurrent block of the student on one path."""
    stage = experiment.config["stages"][stage_index]
    model = experiment.models[stage["train"]]
    model.load_state_dict(initial)
    use_path(model, packed)
    with tempfile.TemporaryDirectory(prefix="bench-recurrent-") as folder:
        trainer = StageTrainer(experiment, stage_index, RunDir(folder), device, log=lambda *a: None, progress=False)
        timed = time_stage(trainer, device)
    return {"loop": timed.loop, "build": timed.build, "steps": timed.result["steps"], "weights": snapshot(model)}


def gradient_difference(experiment, stage: dict, device: torch.device, batches: int = 4) -> tuple[float, float]:
    """Largest |padded - packed| of the student's output and of its gradients, same weights, same batches.

    The gradient is that of the sum of the output node over ``batches`` training batches spread from
    the shortest to the longest (dropout off), so it tests the backward passes of both paths, not only their outputs.
    """
    from blocks.data.batching import sorted_batches

    model = experiment.models[stage["train"]]
    train = experiment.splits["train"]
    largest_output = largest_gradient = 0.0
    model.eval()
    ordered = sorted_batches(train.lengths, stage["batch_size"])
    for index in ordered[::max(1, len(ordered) // batches)][:batches]:  # short to long
        batch = train.collate(index).to(device)
        results = []
        for packed in (False, True):
            use_path(model, packed)
            model.zero_grad(set_to_none=True)
            output = experiment.model_values(stage["train"], batch)[model.output_name]
            output.float().sum().backward()
            results.append((output.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                              if p.grad is not None}))
        (out_a, grads_a), (out_b, grads_b) = results
        largest_output = max(largest_output, (out_a - out_b).abs().max().item())
        largest_gradient = max([largest_gradient] + [(grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a])
    model.zero_grad(set_to_none=True)
    model.train()
    return largest_output, largest_gradient


def bench_training(args, device: torch.device) -> bool:
    experiment, stage_index = first_steps_of_stage(args.config, args.overrides, args.stage, args.steps,
                                                   cache_teachers=True, device_name=args.device)
    stage = experiment.config["stages"][stage_index]
    student = experiment.models[stage["train"]]
    found = recurrent_blocks(student)
    if not found:
        raise SystemExit(f"error: model '{stage['train']}' trained by stage {stage_index} has no BiLSTM/BiGRU block")
    for name in [stage["train"], *stage["teachers"]]:
        experiment.models[name].to(device)
    initial = snapshot(student)
    print(f"training: {args.config}, stage {stage_index} '{stage['name']}': '{stage['train']}' "
          f"({len(found)} recurrent block(s)), batch size {stage['batch_size']}, "
          f"teachers: {', '.join(stage['teachers']) or 'none'} (outputs from the teacher cache)")
    output_gap, gradient_gap = gradient_difference(experiment, stage, device)
    same = output_gap <= OUTPUT_TOLERANCE and gradient_gap <= OUTPUT_TOLERANCE
    print(f"  same weights, 4 training batches (short to long): largest |padded - packed| output {output_gap:.2e}, "
          f"gradient {gradient_gap:.2e} -> {'same' if same else 'DIFFERENT'} (tolerance {OUTPUT_TOLERANCE:g})")
    times, ends = alternate_sides({PATHS[packed]: (lambda packed=packed: training_side(
        experiment, stage_index, device, initial, packed)) for packed in (False, True)}, args.repeats)
    use_path(student, False)
    weights, _ = compare_weights(ends["padded"]["weights"], ends["packed"]["weights"], rtol=1e-3, atol=1e-5)
    padded_ms, packed_ms = (1000 * statistics.median(times[path]) for path in ("padded", "packed"))
    print(f"training results ({args.steps} steps, median of {args.repeats}):")
    print(f"  packed (\"packed\": true): {packed_ms:.1f} ms/step")
    print(f"  padded (the default):    {padded_ms:.1f} ms/step")
    print(f"  speedup packed / padded: {packed_ms / padded_ms:.2f}x")
    print(f"  final student weights, padded vs packed: {weights} (the kernels round differently, and Adam's "
          f"normalised steps turn last-bit differences of small gradients into steps of up to the learning rate)")
    return same


# -- inference --------------------------------------------------------------------------------
@dataclass
class PathEntry(Entry):
    """A model of a run timed with its recurrent blocks on one path."""

    packed: bool = False

    @property
    def label(self) -> str:
        return f"{self.model} ({self.role}), {PATHS[self.packed]}"

    def forward(self, batches) -> None:
        use_path(self.experiment.models[self.model], self.packed)
        super().forward(batches)


def largest_difference(entry: Entry) -> float:
    """Largest |padded - packed| of the model's output node over the batches it is timed on."""
    model = entry.experiment.models[entry.model]
    largest = 0.0
    with torch.inference_mode():
        for size, batches in entry.batches.items():
            for batch in batches:
                outputs = []
                for packed in (False, True):
                    use_path(model, packed)
                    values = entry.experiment.model_values(entry.model, batch)
                    outputs.append(values[model.output_name].float())
                largest = max(largest, (outputs[0] - outputs[1]).abs().max().item())
    return largest


def bench_inference(args, device: torch.device) -> bool:
    """Time the run's models with recurrent blocks on both paths; False if their outputs differ."""
    found, about = run_entries(args.run, args.run, args.batch_sizes, args.examples, args.batch1_examples,
                               device=device)
    entries, same = [], True
    for entry in found:
        if not recurrent_blocks(entry.experiment.models[entry.model]):
            continue
        for packed in (False, True):
            fields = {name: getattr(entry, name) for name in entry.__dataclass_fields__ if name != "best"}
            entries.append(PathEntry(**fields, packed=packed))
    if not entries:
        raise SystemExit(f"error: no trained model of {args.run} has a BiLSTM/BiGRU block")
    print(f"inference: {args.run}, {about['split_size']:,} dev examples; batch sizes {args.batch_sizes}")
    measure(entries, args.batch_sizes, args.repeats)
    headers, rows, left = speed_table(entries, args.batch_sizes, with_run=False)
    for line in format_table(headers, rows, left):
        print(line)
    for padded, packed in zip(entries[::2], entries[1::2]):
        ratios = ", ".join(f"batch {size}: {padded.speed(size) / packed.speed(size):.2f}x"
                           for size in args.batch_sizes)
        difference = largest_difference(padded)
        same = same and difference <= OUTPUT_TOLERANCE
        print(f"  {padded.model}: padded / packed examples/s {ratios}; largest |output difference| "
              f"{difference:.2e}")
    print("Markdown:")
    for line in markdown_table(headers, rows, left):
        print(line)
    return same


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_recurrent.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe whose stage is timed in training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="config override for --config, as for `blocks train --set` (repeatable)")
    parser.add_argument("--stage", type=int, default=None, help="stage index (default: the last stage)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per side and repeat (default 100)")
    parser.add_argument("--run", help="run directory whose trained models are timed in inference")
    parser.add_argument("--examples", type=int, default=1000, help="examples timed at batch sizes > 1 (default 1000)")
    parser.add_argument("--batch1-examples", type=int, default=300, help="examples timed at batch 1 (default 300)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="default: 1 64")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the two sides (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: every usable core, here {available_cores()})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] (training only)")
    args = parser.parse_args(argv)
    if not args.config and not args.run:
        parser.error("give --config (training), --run (inference) or both")
    if args.steps < 1 or args.repeats < 1 or args.examples < 1 or args.batch1_examples < 1:
        parser.error("--steps, --repeats, --examples and --batch1-examples must be >= 1")
    args.batch_sizes = sorted(set(args.batch_sizes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = start_benchmark("DistilBlocks recurrent benchmark: BiLSTM/BiGRU padded path vs packed path",
                             "tools/bench_recurrent.py", argv, args.threads, args.device)
    same = True
    try:
        if args.run:
            same = bench_inference(args, torch.device("cpu"))
        if args.config:
            same = bench_training(args, device) and same
    except DistilBlocksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"load average after (1, 5, 15 min): {load_average()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
