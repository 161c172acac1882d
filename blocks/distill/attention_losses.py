"""Attention-map distillation: a student's self-attention probabilities matched to a teacher's.

The maps come from encoders that offer them as a named output: a ``TransformerEncoder`` or
``PretrainedEncoder`` node with ``"attentions": true`` gives ``"<node>:attentions"``, an
:class:`~blocks.values.AttentionMaps` value ``[batch, layers, heads, length, length]`` with the
sequence mask. ``AttentionMatch`` pairs student layers with teacher layers (TinyBERT, Jiao et
al. 2020: MSE between the maps; MiniLM, Wang et al. 2020: KL between them) and averages the
distance over the real positions only, so padding never changes the loss.

The teacher cache (:mod:`blocks.engine.teacher_cache`) cannot store attention maps (they are
``length x length`` per example, and the cache keeps fixed-size rows per position), so a stage
with an ``AttentionMatch`` runs its teachers every step, whatever ``cache_teachers`` says.
"""
from __future__ import annotations

from typing import Literal

import torch

from blocks.distill.losses import LossContext, TeacherLoss, _node_spec
from blocks.errors import did_you_mean
from blocks.registry import register_loss
from blocks.values import ATTENTION, AttentionMaps, Spec

DISTANCES = ("mse", "kl")
# Floor of the student's probabilities inside the KL's logarithm: a PretrainedEncoder in training
# mode returns its maps after attention dropout, which zeroes some of them.
_KL_FLOOR = 1e-8


def default_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i with teacher layer ceil((i + 1) * T / S) - 1: uniform, last with last.

    12 teacher and 4 student layers: 2, 5, 8, 11 (TinyBERT's map); 5 and 3: 1, 3, 4.
    """
    return [(i, -(-(i + 1) * teacher_layers // student_layers) - 1) for i in range(student_layers)]


@register_loss("AttentionMatch")
class AttentionMatch(TeacherLoss):
    """Match a student's attention maps to a teacher's, layer by layer (TinyBERT, MiniLM).

    Both nodes are attention outputs: "<node>:attentions" of a TransformerEncoder or
    PretrainedEncoder node with "attentions": true. Each [student layer, teacher layer] pair is
    compared over the real query rows and key columns (padding is left out), and the distance
    is averaged over rows (and columns for mse), heads and layer pairs. Both models must read
    the same positions (the same tokenization). The teachers of such a stage run every step
    (attention maps are not cached).

    Args:
        output: student attention node, e.g. "encoder:attentions".
        teacher_output: teacher attention node, e.g. "encoder:attentions".
        teacher: teacher model (default: the stage's only teacher).
        layers: [student layer, teacher layer] pairs, indexes into each node's layers (for a
            PretrainedEncoder, its kept layers); default: each student layer i with teacher layer
            ceil((i + 1) * T / S) - 1 of the T teacher and S student layers (last with last).
        distance: "mse" (mean squared difference of the probabilities, TinyBERT) or "kl"
            (KL(teacher row ‖ student row) per query position, MiniLM).
        average_heads: compare the maps averaged over heads (needed when the head counts differ).
    """

    # Attention maps cannot go into the teacher cache: declaring no teacher_nodes() method makes
    # the trainer run the stage's teachers every step (see blocks.engine.teacher_cache.requested_nodes).
    teacher_nodes = None
    uncached_reason = "AttentionMatch reads attention maps, [length x length] per example, which the cache does not hold"

    output_kinds = None  # attention maps, checked below
    reads_logits = False

    def __init__(self, stage: LossContext, output: str, teacher_output: str, teacher: str | None = None,
                 layers: list[list[int]] | None = None, distance: Literal["mse", "kl"] = "mse",
                 average_heads: bool = False):
        super().__init__(stage, teacher, output, teacher_output)
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}{did_you_mean(str(distance), DISTANCES)}"
                             f" (known: {', '.join(DISTANCES)})")
        self.distance = distance
        self.average_heads = average_heads
        student_spec = _node_spec(stage, self.model, self.output)
        teacher_spec = _node_spec(stage, self.teacher, self.teacher_output)
        for role, node, spec in (("student", self.output, student_spec),
                                 ("teacher", self.teacher_output, teacher_spec)):
            if spec.kind != ATTENTION:
                raise ValueError(f"an attention match needs two attention outputs; {role} '{node}' is a "
                                 f"{spec.describe()}: name an encoder's \"<node>:attentions\" (a TransformerEncoder "
                                 f"or PretrainedEncoder node with \"attentions\": true)")
        self.student_layers, student_heads = _layers_and_heads(student_spec)
        self.teacher_layers, teacher_heads = _layers_and_heads(teacher_spec)
        if student_heads != teacher_heads and not average_heads:
            raise ValueError(f"student '{self.output}' has {student_heads} attention heads but teacher "
                             f"'{self.teacher_output}' has {teacher_heads}; set \"average_heads\": true to "
                             f"compare maps averaged over heads")
        self.layer_map = self._layer_map(layers)
        self.register_buffer("student_index", torch.tensor([s for s, _ in self.layer_map]), persistent=False)
        self.register_buffer("teacher_index", torch.tensor([t for _, t in self.layer_map]), persistent=False)
        self._masks_checked = False

    def _layer_map(self, layers: list[list[int]] | None) -> list[tuple[int, int]]:
        if layers is None:
            return default_layer_map(self.student_layers, self.teacher_layers)
        if not layers:
            raise ValueError("layers: give at least one [student layer, teacher layer] pair")
        pairs = []
        for k, pair in enumerate(layers):
            if len(pair) != 2:
                raise ValueError(f"layers[{k}]: expected a [student layer, teacher layer] pair, got {pair}")
            s, t = pair
            if not 0 <= s < self.student_layers:
                raise ValueError(f"layers[{k}]: student layer {s} is not among the {self.student_layers} layers "
                                 f"of student '{self.output}' (0..{self.student_layers - 1})")
            if not 0 <= t < self.teacher_layers:
                raise ValueError(f"layers[{k}]: teacher layer {t} is not among the {self.teacher_layers} layers "
                                 f"of teacher '{self.teacher_output}' (0..{self.teacher_layers - 1})")
            pairs.append((s, t))
        return pairs

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        student, teacher = outputs[self.model][self.output], outputs[self.teacher][self.teacher_output]
        for role, node, value in (("student", self.output, student), ("teacher", self.teacher_output, teacher)):
            if not isinstance(value, AttentionMaps):
                raise ValueError(f"AttentionMatch: {role} '{node}' gave a {type(value).__name__}, not attention maps")
        s_maps, t_maps, mask = self._aligned(student, teacher)
        s_maps = s_maps.index_select(1, self.student_index).float()  # [B, pairs, heads, L, L]
        t_maps = t_maps.index_select(1, self.teacher_index).float()
        if self.average_heads:
            s_maps, t_maps = s_maps.mean(dim=2, keepdim=True), t_maps.mean(dim=2, keepdim=True)
        if s_maps.shape != t_maps.shape:
            raise ValueError(f"AttentionMatch: student '{self.output}' gives maps of shape {tuple(s_maps.shape)} "
                             f"but teacher '{self.teacher_output}' gives {tuple(t_maps.shape)}")
        rows = mask[:, None, None, :, None]
        real = rows & mask[:, None, None, None, :]  # [B, 1, 1, L, L]
        per_map = s_maps.shape[1] * s_maps.shape[2]  # pairs x heads
        if self.distance == "mse":
            squared = (s_maps - t_maps).pow(2).masked_fill(~real, 0.0)
            entries = mask.sum(dim=1).pow(2).sum() * per_map  # sum over the batch of length²
            return squared.sum() / entries.clamp(min=1)
        log_ratio = torch.log(t_maps.clamp(min=_KL_FLOOR)) - torch.log(s_maps.clamp(min=_KL_FLOOR))
        terms = torch.where(real & (t_maps > 0), t_maps * log_ratio, torch.zeros_like(t_maps))
        return terms.sum() / (mask.sum() * per_map).clamp(min=1)

    def _aligned(self, student: AttentionMaps, teacher: AttentionMaps):
        """Student and teacher maps over the same positions, and their mask."""
        s_maps, s_mask = student
        t_maps, t_mask = teacher
        s_len, t_len = s_mask.shape[1], t_mask.shape[1]
        if s_len != t_len:
            shorter = min(s_len, t_len)
            if bool(s_mask[:, shorter:].any()) or bool(t_mask[:, shorter:].any()):
                raise ValueError(f"AttentionMatch: student '{self.output}' covers {s_len} positions but teacher "
                                 f"'{self.teacher_output}' {t_len}; an attention match needs the same positions "
                                 f"(the same tokenization)")
            s_maps, s_mask = s_maps[..., :shorter, :shorter], s_mask[:, :shorter]
            t_maps, t_mask = t_maps[..., :shorter, :shorter], t_mask[:, :shorter]
        if not self._masks_checked:  # once: a check every step would wait for the device
            if not torch.equal(s_mask, t_mask):
                raise ValueError(f"AttentionMatch: student '{self.output}' and teacher '{self.teacher_output}' "
                                 f"mask different positions; an attention match needs the same tokenization")
            self._masks_checked = True
        return s_maps, t_maps, s_mask & t_mask


def _layers_and_heads(spec: Spec) -> tuple[int, int]:
    return int(spec.extra["layers"]), int(spec.extra["heads"])
