"""The harness of the ``tools/bench_*.py`` scripts that time training: nothing else uses it.

* :func:`start_benchmark` sets the threads and device and prints the header every measurement
  starts with (the command, the machine, the software, the load);
* :func:`first_steps_of_stage` and :func:`time_stage` time the first steps of a recipe's stage,
  the end-of-epoch work and the teacher-cache opening apart;
* :func:`alternate_sides` runs the sides of a comparison in turn, so a change of load hits all;
* :func:`compare_weights` and :func:`snapshot` check that two sides trained the same weights.

Inference speed (``blocks bench``) is :mod:`blocks.engine.benchmark`.
"""
from __future__ import annotations

import contextlib
import io
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import torch

from blocks.engine.benchmark import available_cores, cpu_name, load_average
from blocks.engine.host_memory import keep_freed_memory


def machine_lines(device: torch.device) -> list[str]:
    lines = [f"machine: {platform.platform()}; CPU: {cpu_name()}; {os.cpu_count()} logical CPUs "
             f"({available_cores()} usable by this process)",
             f"software: Python {platform.python_version()}, torch {torch.__version__}; device {device}; "
             f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"]
    if device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(device)}")
    return lines


def start_benchmark(title: str, script: str, argv: list[str] | None, threads: int | None,
                    device_name: str, host_memory: bool = True) -> torch.device:
    """Set the torch threads and the device of a ``tools/bench_*.py`` run and print its header.

    The header: the title, the command that reproduces the run, the machine and software, the load
    average and, on a busy machine, a warning. Exits with a message when CUDA is asked for and absent.
    On CPU, unless ``host_memory`` is false, the process keeps freed memory for reuse as ``blocks
    train`` does (:mod:`blocks.engine.host_memory`), so the timed steps are the ones users get.
    """
    torch.set_num_threads(threads or available_cores())
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    shown = sys.argv[1:] if argv is None else list(argv)
    print(title)
    print("command: " + shlex.join([sys.executable, script, *shown]))
    for line in machine_lines(device):
        print(line)
    if device.type == "cpu" and host_memory:
        print(f"host memory: {keep_freed_memory()}")
    print(f"load average before (1, 5, 15 min): {load_average()}")
    warning = busy_warning()
    if warning:
        print(warning)
    return device


def busy_warning() -> str | None:
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load >= 0.75:
        return (f"WARNING: the 1-minute load average is {load:.2f} before the benchmark starts: other processes "
                f"are using the CPU, so the timings are noisy. Measure on an idle machine.")
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NestedTimer:
    """Accumulates the time spent in wrapped callables, counting nested calls once."""

    def __init__(self):
        self.total = 0.0
        self.calls = 0
        self._depth = 0

    def wrap(self, function):
        def timed(*args, **kwargs):
            outermost = self._depth == 0
            self._depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                if outermost:
                    self.total += time.perf_counter() - start
                    self.calls += 1
        return timed


@dataclass
class TimedStage:
    """One ``StageTrainer.run``: its result and seconds, the end-of-epoch work and the cache opening apart."""

    result: dict
    total: float
    end: float  # dev evaluation and checkpoint writing
    build: float  # opening (or building) the teacher cache

    @property
    def loop(self) -> float:
        """The training loop alone: what both sides of a benchmark do differently."""
        return self.total - self.end - self.build


def time_stage(trainer, device: torch.device) -> TimedStage:
    """Run ``trainer`` (a fresh ``StageTrainer``) once, its prints captured, timing its parts."""
    end, build = NestedTimer(), NestedTimer()
    for method in ("_evaluate_and_save", "save", "save_best", "_finish"):
        setattr(trainer, method, end.wrap(getattr(trainer, method)))
    trainer._open_teacher_cache = build.wrap(trainer._open_teacher_cache)
    synchronize(device)
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        result = trainer.run(resume=False)
        synchronize(device)
        total = time.perf_counter() - start
    return TimedStage(result, total, end.total, build.total)


def alternate_sides(sides: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Run the sides of a benchmark in turn, ``repeats`` times, so that a change of load hits all.

    ``sides`` maps a name to a function that runs that side once and returns at least ``loop``
    (seconds), ``steps`` and ``build`` (seconds opening the teacher cache), and optionally
    ``label`` (shown instead of the name). Prints a line per run; returns the seconds per step of
    every run and the last result, both by side name.
    """
    times: dict[str, list[float]] = {name: [] for name in sides}
    last: dict[str, dict] = {}
    width = max(len(name) for name in sides)
    for repeat in range(repeats):
        for name, run_side in sides.items():
            result = run_side()
            per_step = result["loop"] / max(result["steps"], 1)
            times[name].append(per_step)
            last[name] = result
            print(f"  repeat {repeat + 1}, {result.get('label', name):{width}s}: {result['steps']} steps, "
                  f"{1000 * per_step:.1f} ms/step (+ {result['build']:.1f} s opening or building the teacher "
                  f"cache, not timed)", flush=True)
    return times, last


def first_steps_of_stage(config_file: str, overrides: list[str], stage: int | None, steps: int, cache_teachers: bool,
                         device_name: str):
    """The experiment of a recipe set up to time the first ``steps`` steps of one stage.

    The stage (default: the last one) runs one epoch cut to ``steps`` steps, with one dev evaluation
    at the end; its teachers come from their run directories (a recipe that trains its own teacher
    is refused with a message). Returns ``(experiment, stage_index)``; raises ``DistilBlocksError``
    for a bad recipe, ``SystemExit`` for a bad ``stage``.
    """
    from blocks.config.loader import load_config
    from blocks.engine.run import load_run_model
    from blocks.experiment import Experiment

    probe = load_config(config_file, overrides)
    index = len(probe["stages"]) - 1 if stage is None else stage
    if not 0 <= index < len(probe["stages"]):
        raise SystemExit(f"error: --stage {index}: the recipe has {len(probe['stages'])} stage(s)")
    config = load_config(config_file, [*overrides, f"stages.{index}.epochs=1", f"stages.{index}.eval_every=0",
                                       f"stages.{index}.max_steps={steps}",
                                       f"stages.{index}.cache_teachers={str(cache_teachers).lower()}",
                                       f"device={device_name}"])
    experiment = Experiment.prepare(config, splits=("train", "dev"), log=lambda *a: None)
    experiment.load_pretrained(log=lambda *a: None)
    for teacher in experiment.config["stages"][index]["teachers"]:
        if "run" not in experiment.config["models"][teacher]:
            raise SystemExit(f"error: teacher '{teacher}' is trained by the recipe itself; this benchmark "
                             f"takes teachers from run directories (--set models.{teacher}.run=RUN)")
        load_run_model(experiment, teacher)
    return experiment, index


def compare_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-5,
                    atol: float = 1e-6) -> tuple[str, bool]:
    """('bitwise identical' | 'equal within tolerance (max |diff| x), not bitwise' | 'DIFFER ...', ok)."""
    if a.keys() != b.keys():
        return "DIFFER (different parameter names)", False
    if all(torch.equal(a[k], b[k]) for k in a):
        return "bitwise identical", True
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())
    if all(torch.allclose(a[k].float(), b[k].float(), rtol=rtol, atol=atol) for k in a):
        return f"equal within tolerance (max |diff| {diff:.2e}), not bitwise", True
    return f"DIFFER (max |diff| {diff:.3e})", False


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
