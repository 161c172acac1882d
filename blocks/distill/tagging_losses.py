"""Loss blocks of sequence tagging: the CRF's own loss and distillation into or out of a CRF.

Per-word KD needs no block of its own: ``KD``, ``LogitMSE`` and ``CrossEntropy`` read sequences of
per-word logits (``[batch, words, tags]``) and average over the words (token-level KD). The blocks
here read the :class:`~blocks.values.TagScores` of a ``CRF`` node:

* ``CRFLoss`` — the negative log-likelihood of the gold tag sequence (the CRF's training loss);
* ``CRFPosteriorKD`` — the student CRF's posterior marginals match the teacher's, word by word
  (Wang et al. 2020, "Structure-Level Knowledge Distillation for Multilingual Sequence
  Labeling", posterior distillation); the teacher may be a CRF (its marginals) or a softmax
  tagger (its softened per-word distributions);
* ``ViterbiKD`` — the student learns the teacher's best tag sequence as if it were gold
  (sequence-level KD for tagging): the CRF's log-likelihood of the teacher's Viterbi path, or
  per-word cross-entropy on the teacher's argmax tags for a softmax student.

Each averages over the sentences of the batch (``CRFLoss``, ``ViterbiKD`` on a CRF, divided by
the number of words so the scale matches per-word losses) or over the words real in both models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from blocks.distill.losses import Loss, LossContext, TeacherLoss, word_labels
from blocks.registry import register_loss
from blocks.tasks.base import UNLABELLED
from blocks.values import SEQUENCE, TAG_SCORES, Sequence, TagScores


def _crf(value, node: str, model: str) -> TagScores:
    if not isinstance(value, TagScores):
        raise ValueError(f"node '{node}' of model '{model}' must be a CRF node (TagScores), got "
                         f"{type(value).__name__}")
    return value


def _cut(scores: TagScores, length: int) -> TagScores:
    """The first ``length`` positions of a CRF value."""
    if scores.emissions.shape[1] == length:
        return scores
    return scores._replace(emissions=scores.emissions[:, :length], mask=scores.mask[:, :length])


@register_loss("CRFLoss")
class CRFLoss(Loss):
    """Negative log-likelihood of the gold tags under a linear-chain CRF, per word.

    The sum over a batch's sentences of −log p(gold tags | sentence), divided by the number of
    words. Sentences without gold tags (unlabelled examples of a transfer set) do not count.

    Args:
        output: the CRF node (default: the model's output).
    """

    label_only = True
    task_types = ("tagging",)
    output_kinds = (TAG_SCORES,)

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        from blocks.layers.crf import crf_log_likelihood

        scores = _crf(outputs[self.model][self.output], self.output, self.model)
        labels = word_labels(batch.labels, scores.emissions.shape[1])
        labelled = ((labels != UNLABELLED) | ~scores.mask).all(dim=1) & scores.mask.any(dim=1)
        if not bool(labelled.any()):
            return scores.emissions.sum() * 0.0
        chosen = TagScores(scores.emissions[labelled], scores.mask[labelled], scores.transitions, scores.start,
                           scores.end)
        tags = labels[labelled].clamp(min=0)
        log_likelihood = crf_log_likelihood(chosen, tags)
        return -log_likelihood.sum() / chosen.mask.sum().clamp(min=1)


class _TeacherTags(TeacherLoss):
    """A distillation loss whose student is a CRF (or per-word logits) and whose teacher is a CRF
    or per-word logits."""

    task_types = ("tagging",)

    def teacher_scores(self, outputs: dict) -> TagScores | Sequence:
        value = outputs[self.teacher][self.teacher_output]
        if not isinstance(value, (TagScores, Sequence)):
            raise ValueError(f"teacher node '{self.teacher_output}' must be a CRF node or per-word logits")
        return value


@register_loss("CRFPosteriorKD")
class CRFPosteriorKD(_TeacherTags):
    """The student CRF's per-word posterior marginals match the teacher's (posterior distillation).

    Σ over words real in both of KL(q_teacher ‖ p_student), divided by their number. The
    teacher's distribution is its CRF's marginals (forward-backward) or, for a softmax tagger,
    softmax(logits / T); ``scale`` multiplies by T² as KD does.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        output: the student's CRF node (default: the student's output).
        teacher_output: the teacher's CRF node or per-word logits (default: its output).
        temperature: softens a softmax teacher's logits (a CRF teacher's marginals are used as they are).
    """

    output_kinds = (TAG_SCORES,)

    def __init__(self, stage: LossContext, teacher: str | None = None, output: str | None = None,
                 teacher_output: str | None = None, temperature: float = 1.0):
        super().__init__(stage, teacher, output, teacher_output)
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        from blocks.layers.crf import crf_marginals

        student = _crf(outputs[self.model][self.output], self.output, self.model)
        teacher = self.teacher_scores(outputs)
        with torch.no_grad():
            if isinstance(teacher, TagScores):
                target, teacher_mask = crf_marginals(teacher).float(), teacher.mask
            else:
                target = torch.softmax(teacher.values.float() / self.temperature, dim=-1)
                teacher_mask = teacher.mask
        length = min(student.emissions.shape[1], target.shape[1])
        mask = student.mask[:, :length] & teacher_mask[:, :length]
        if not bool(mask.any()):
            return student.emissions.sum() * 0.0
        log_student = crf_marginals(student).float()[:, :length].clamp(min=1e-12).log()
        q = target[:, :length]
        kl = (q * (q.clamp(min=1e-12).log() - log_student)).sum(dim=-1)
        return kl[mask].mean()


@register_loss("ViterbiKD")
class ViterbiKD(_TeacherTags):
    """The student learns the teacher's best tag sequence as gold (sequence-level KD for tagging).

    The teacher's path is its CRF's Viterbi decoding, or the argmax of its per-word logits. A
    CRF student maximises that path's log-likelihood (per word); a softmax student takes
    per-word cross-entropy on it. Words beyond the teacher's (a truncated word-piece input) do
    not count.

    Args:
        teacher: teacher model (default: the stage's only teacher).
        output: the student's CRF node or per-word logits (default: the student's output).
        teacher_output: the teacher's CRF node or per-word logits (default: its output).
    """

    output_kinds = (TAG_SCORES, SEQUENCE)

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        from blocks.layers.crf import crf_log_likelihood, crf_viterbi

        teacher = self.teacher_scores(outputs)
        with torch.no_grad():
            if isinstance(teacher, TagScores):
                path, _ = crf_viterbi(teacher)
            else:
                path = teacher.values.argmax(dim=-1)
            path = path.masked_fill(~teacher.mask, UNLABELLED)
        student = outputs[self.model][self.output]
        length = student.emissions.shape[1] if isinstance(student, TagScores) else student.values.shape[1]
        tags = word_labels(path, length)
        if isinstance(student, TagScores):
            student = _cut(student, length)
            covered = ((tags != UNLABELLED) | ~student.mask).all(dim=1) & student.mask.any(dim=1)
            if not bool(covered.any()):
                return student.emissions.sum() * 0.0
            chosen = TagScores(student.emissions[covered], student.mask[covered], student.transitions,
                               student.start, student.end)
            return -crf_log_likelihood(chosen, tags[covered].clamp(min=0)).sum() / chosen.mask.sum().clamp(min=1)
        if not bool((tags != UNLABELLED).any()):
            return student.values.sum() * 0.0
        return F.cross_entropy(student.values.float().flatten(0, 1), tags.flatten(), ignore_index=UNLABELLED)
