"""The hooks a stage calls on its loss blocks, in order: the trainer calls each one a loss
overrides (declared on :class:`blocks.distill.losses.Loss` as no-ops), and never probes with hasattr."""
from __future__ import annotations

import torch

from blocks.config.loader import load_config
from blocks.distill.losses import Loss
from blocks.engine.run import train
from blocks.registry import LOSSES, register_loss

CALLS: list[tuple] = []


class RecordingLoss(Loss):
    """A loss that records every hook the trainer calls (a test fixture)."""

    def start(self, total_steps: int) -> None:
        CALLS.append(("start", total_steps))

    def set_step(self, step: int) -> None:
        CALLS.append(("set_step", step))

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        CALLS.append(("forward",))
        return outputs[self.model][self.output].float().pow(2).mean() * 0.0 + \
            torch.nn.functional.cross_entropy(outputs[self.model][self.output].float(), batch.labels)

    def after_step(self, batch, student_outputs) -> None:
        CALLS.append(("after_step",))

    def after_evaluation(self, value: float) -> None:
        CALLS.append(("after_evaluation",))

    def log_values(self) -> dict:
        CALLS.append(("log_values",))
        return {"recorded": len(CALLS)}


def test_the_trainer_calls_every_hook_in_order(project):
    CALLS.clear()
    values = project.single_stage()
    values["stages"][0].update({"losses": [{"block": "RecordingLoss"}], "epochs": 1, "batch_size": 40,
                                "eval_every": 2})
    register_loss("RecordingLoss")(RecordingLoss)  # registered for this test only
    try:
        train(load_config(project.write(values), environ={}), run_dir=project.root / "run", progress=False,
              log=lambda *a: None)
    finally:
        LOSSES._entries.pop("RecordingLoss", None)
    # 120 examples in batches of 40: 3 steps, evaluations after steps 2 and 3
    names = [c[0] for c in CALLS]
    assert CALLS[0] == ("start", 3)
    expected_step = ["set_step", "forward", "after_step"]
    step_calls = [c for c in CALLS if c[0] in ("set_step", "forward", "after_step")]
    assert [c[0] for c in step_calls] == expected_step * 3
    assert [c[1] for c in CALLS if c[0] == "set_step"] == [0, 1, 2]
    evaluations = [i for i, name in enumerate(names) if name == "after_evaluation"]
    assert len(evaluations) == 2 and all(names[i + 1] == "log_values" for i in evaluations)
    # the second evaluation comes after the third step
    assert evaluations[1] > max(i for i, name in enumerate(names) if name == "after_step")


def test_hooks_of_the_base_class_are_no_ops_the_trainer_skips():
    from blocks.engine.trainer import _overrides
    from blocks.distill.losses import KnowledgeDistillation

    assert not _overrides(KnowledgeDistillation.__new__(KnowledgeDistillation), "after_step")
    assert _overrides(RecordingLoss.__new__(RecordingLoss), "after_step")
