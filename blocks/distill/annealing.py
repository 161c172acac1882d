"""Annealing-KD (Jafari et al., EACL 2021; methods.md §4), phase 1.

``L = mean ‖z_s − Φ(T)·z_t‖²`` on raw logits, ``Φ(T) = 1 − (T − 1)/τ_max``, with T stepping from
τ_max down to 1 in τ_max equal steps over the stage: the student first matches a flattened
teacher, then the real one. No labels, no softmax. Phase 2 is an ordinary stage training the same
student with CrossEntropy (MSE for regression); the engine starts it from phase 1's best
checkpoint, as the method prescribes.
"""
from __future__ import annotations

import math

import torch

from blocks.distill.losses import LossContext, TeacherLoss
from blocks.registry import register_loss


@register_loss("AnnealingKD")
class AnnealingKD(TeacherLoss):
    """Phase 1 of Annealing-KD: MSE between the student's logits and the annealed teacher logits.

    Args:
        max_temperature: τ_max; T takes the values τ_max, τ_max − 1, ..., 1.
        steps_per_temperature: optimizer steps at each T; default: the stage's steps / τ_max
            (the paper: one T step every E1/τ_max epochs).
        teacher: teacher model (default: the stage's only teacher).
        output: student node holding the logits (default: the student's output).
        teacher_output: teacher node holding the logits (default: the teacher's output).
    """

    def __init__(self, stage: LossContext, max_temperature: int = 7, steps_per_temperature: int | None = None,
                 teacher: str | None = None, output: str | None = None, teacher_output: str | None = None):
        super().__init__(stage, teacher, output, teacher_output)
        if isinstance(max_temperature, bool) or not isinstance(max_temperature, int) or max_temperature < 1:
            raise ValueError("max_temperature must be an integer >= 1")
        if steps_per_temperature is not None and steps_per_temperature < 1:
            raise ValueError("steps_per_temperature must be >= 1")
        self.max_temperature = max_temperature
        self.steps_per_temperature = steps_per_temperature
        self.temperature = float(max_temperature)

    def start(self, total_steps: int) -> None:
        """Told the stage's number of optimizer steps before training."""
        if self.steps_per_temperature is None:
            self.steps_per_temperature = max(1, math.ceil(total_steps / self.max_temperature))

    def temperature_at(self, step: int) -> int:
        every = self.steps_per_temperature or 1
        return max(1, self.max_temperature - step // every)

    def set_step(self, step: int) -> None:
        self.temperature = float(self.temperature_at(step))

    def factor(self) -> float:
        """Φ(T) = 1 − (T − 1)/τ_max."""
        return 1.0 - (self.temperature - 1.0) / self.max_temperature

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = self.pair(outputs)
        return (student - self.factor() * teacher).pow(2).mean()

    def log_values(self) -> dict:
        return {"annealing_temperature": self.temperature}
