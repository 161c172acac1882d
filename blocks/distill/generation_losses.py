"""Distilling a generating (seq2seq) model: one loss block for the whole generation-KD family.

Every method of the family is a choice of two things per training batch (the view of the ImitKD
code base, Lin et al. 2020): **where the decoder's prefixes come from** and **what each
position's target is**. :class:`GenerationKD` has one switch for each, so the methods are
recipes, not code paths:

=====================  ====================================  ==========================
method                 ``prefix``                            ``target``
=====================  ====================================  ==========================
from scratch           ``data`` (gold)                       ``gold``
word-level KD          ``data`` (gold)                       ``teacher_distribution``
SeqKD                  ``data`` (teacher outputs)            ``gold`` (their tokens)
SeqKD + word           ``data`` (teacher outputs)            ``teacher_distribution``
ImitKD                 ``mixture`` (gold / rollouts)         ``teacher_argmax``
ImitKD+Full            ``mixture`` (gold / rollouts)         ``teacher_distribution``
ImitKD*                ``mixture`` (teacher outputs / r.)    ``teacher_argmax``
=====================  ====================================  ==========================

"Teacher outputs" are the batch's own targets when the stage trains on a sequence-level KD
transfer set (Kim & Rush 2016: the teacher's beam outputs replace the references); to this loss
they are data. Mixing in cross-entropy on the gold tokens (word-level KD as
``alpha * CE + (1 - alpha) * KD``) is a second entry of the stage's weighted ``losses`` list,
``CrossEntropy`` with weight alpha, not an option here: its labels are the gold tokens of the
examples whose prefixes are data (a rolled-out example has none: its labels are ``UNLABELLED``).

**Rollouts.** With ``prefix`` ``student`` every example's prefix is the student's own output;
with ``mixture`` an example keeps its data prefix with probability ``beta_t`` and is rolled out
otherwise. ``beta`` is a schedule over optimizer steps (:mod:`blocks.distill.schedules`), by
default ImitKD's ``200 ** (-t / N)`` with ``N`` the stage's number of steps. A rollout decodes
the batch's sources with the student (``greedy`` or top-k ``sample``), without gradients and in
eval mode (no dropout), at most the task's generation length limit (``max_length_a + max_length_b
* source length`` tokens, ``<eos>`` included, and ``task.max_target_length``). The rolled-out
prefix is ``<bos>`` and the generated tokens; the sentence's positions end at its ``<eos>``
(padding after it is masked), exactly like a data prefix. The trainer asks this loss for the
rolled-out batch (:meth:`blocks.distill.losses.Loss.prepare_batch`) before the student and the
teacher run, so the teacher runs in the loop on the student's prefixes: such a stage cannot use
the teacher cache.

**Targets.** ``teacher_argmax``: cross-entropy against the teacher's most likely next token given
the prefix. ``teacher_distribution``: ``T^2 * KL(p_teacher^T || p_student^T)`` per position,
averaged over the real positions (as ``KD`` does for a tagger's words).

**Truncated teacher distributions (top-k).** The teacher cache stores a generating teacher's
output as the k most likely tokens and their log-probabilities under the full softmax
(:class:`blocks.values.TopKLogProbs`). From those, the teacher's distribution at temperature T is
renormalised over the k kept: ``q = softmax(log_p_k / T)`` (log-probabilities differ from logits
by one constant per position, so this equals the softmax of the k kept logits over T). The
student keeps its **full** distribution: ``log p_student^T`` over the whole vocabulary, gathered
at the k indices, and the loss is ``T^2 * sum_k q_k (log q_k - log p_student^T(k))``. Mass the
student puts outside the teacher's k tokens is thereby penalised (their probabilities must grow
for the loss to fall), which a student renormalised over the k tokens too would not see; with
k = the vocabulary size it is exactly the full KL. ``top_k`` on the loss truncates the teacher's
full logits in the loop the same way — through the same log-softmax, top-k, renormalisation —
so a cached and an in-loop top-k teacher give the same number (up to the cache's float16
storage). A cache holding fewer than ``top_k`` tokens is an error.

**Logs** (at each evaluation, means since the previous one): ``beta``, ``rollout_share`` (the
share of examples rolled out), ``rollout_length`` (mean tokens of a rollout, ``<eos>`` included),
``teacher_agreement`` (the share of rolled-out positions where the teacher's argmax equals the
student's token).

**Vocabularies.** A teacher target compares the teacher's and the student's per-token outputs,
so both must be over one target vocabulary: different output widths are a config error, and so
is a teacher taken from a run (``"run"``) whose saved subword vocabularies differ from the task's
(such a teacher keeps its own vocabularies and teaches only through its translations:
sequence-level KD, :mod:`blocks.generated_transfer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from blocks.data.dataset import Batch
from blocks.distill.losses import BatchContext, Loss, LossContext, _known_spec, resolve_teacher, word_labels
from blocks.distill.schedules import make_schedule
from blocks.errors import TrainingError
from blocks.registry import Schema, register_loss
from blocks.tasks.base import UNLABELLED
from blocks.values import SEQUENCE, Sequence, TopKLogProbs

PREFIXES = ("data", "student", "mixture")
TARGETS = ("gold", "teacher_argmax", "teacher_distribution")
ROLLOUTS = ("greedy", "sample")
#: ImitKD's schedule of the probability of a data prefix: beta_t = 200 ** (-t / N)
DEFAULT_BETA = {"type": "exponential", "base": 200}


@dataclass
class RolloutBatch(Batch):
    """A training batch whose decoder prefixes were (partly) generated by the student.

    ``rolled`` ``[batch]``: the examples whose prefix is the student's rollout. ``rollout``
    ``[batch, length]``: their next tokens (the generated tokens and ``<eos>``), ``UNLABELLED``
    elsewhere. ``labels`` keep the gold tokens of the other examples (``UNLABELLED`` for the
    rolled-out ones, which have no gold token)."""

    rolled: torch.Tensor | None = None
    rollout: torch.Tensor | None = None


def top_k_log_probs(logits: Sequence, k: int) -> TopKLogProbs:
    """A teacher's full logits truncated as the teacher cache stores them: the k most likely
    tokens per position and their log-probabilities under the full softmax (temperature 1)."""
    log_probs, indices = F.log_softmax(logits.values.float(), dim=-1).topk(k, dim=-1)
    return TopKLogProbs(indices, log_probs, logits.mask)


@register_loss("GenerationKD")
class GenerationKD(Loss):
    """Seq2seq distillation: which prefixes the decoder sees and what each position learns;
    word-level KD, SeqKD, ImitKD and ImitKD+Full are settings of it (docs/methods.md).

    The module docstring describes the methods as settings, the rollouts and the top-k
    renormalisation of a cached teacher.

    Args:
        prefix: where the decoder's prefixes come from: "data" (the batch's target sentences:
            the references, or a sequence-level KD transfer set's teacher outputs), "student"
            (the student's rollouts) or "mixture" (per example, data with probability beta,
            else a rollout).
        target: each position's target: "gold" (the data's next token; prefix "data" only),
            "teacher_argmax" (the teacher's most likely next token) or "teacher_distribution"
            (the teacher's softmax at ``temperature``, T² · KL).
        beta: mixture: the probability of a data prefix as a schedule over optimizer steps;
            default {"type": "exponential", "base": 200} (ImitKD: 200^(-t/N) over the stage's N
            steps); also linear ({"type": "linear", "start": 1, "end": 0}, over the stage
            unless "steps" is given) or constant ({"type": "constant", "start": 0.5}).
        rollout: how the student generates a rollout: "greedy" or "sample" (top-k sampling).
        rollout_top_k: sampling: draw among the k most likely tokens.
        temperature: teacher_distribution: the softening temperature T > 0.
        top_k: teacher_distribution: keep the teacher's k most likely tokens per position and
            renormalise over them (default: the full distribution, or what the teacher cache holds).
        label_smoothing: target "gold": label smoothing of the cross-entropy, in [0, 1).
        teacher: the teacher model (default: the stage's only teacher; unused with target "gold").
        output: student node holding the per-position logits (default: the student's output, its decoder).
        teacher_output: teacher node holding the logits (default: the teacher's output).
    """

    task_types = ("seq2seq",)
    output_kinds = (SEQUENCE,)

    def __init__(self, stage: LossContext, prefix: Literal["data", "student", "mixture"] = "data",
                 target: Literal["gold", "teacher_argmax", "teacher_distribution"] = "teacher_distribution",
                 beta: dict | None = None, rollout: Literal["greedy", "sample"] = "greedy",
                 rollout_top_k: Annotated[int, Schema(minimum=1)] = 10,
                 temperature: Annotated[float, Schema(exclusiveMinimum=0)] = 1.0,
                 top_k: Annotated[int, Schema(minimum=1)] | None = None,
                 label_smoothing: Annotated[float, Schema(minimum=0, exclusiveMaximum=1)] = 0.0,
                 teacher: str | None = None, output: str | None = None, teacher_output: str | None = None):
        super().__init__(stage, output)
        for name, value, known in (("prefix", prefix, PREFIXES), ("target", target, TARGETS),
                                   ("rollout", rollout, ROLLOUTS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r} (known: {', '.join(known)})")
        if target == "gold" and prefix != "data":
            raise ValueError(f"target 'gold' needs prefix 'data': a {prefix} prefix is the student's own output, "
                             f"which has no gold next token (use teacher_argmax or teacher_distribution)")
        if beta is not None and prefix != "mixture":
            raise ValueError(f"beta is the probability of a data prefix in a mixture; prefix is {prefix!r}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be at least 1")
        if (top_k is not None or temperature != 1.0) and target != "teacher_distribution":
            raise ValueError("temperature and top_k shape the teacher's distribution: they apply to target "
                             "'teacher_distribution'")
        if rollout_top_k < 1:
            raise ValueError("rollout_top_k must be at least 1")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if label_smoothing and target != "gold":
            raise ValueError("label_smoothing applies to target 'gold' (the teacher's targets are not smoothed)")
        self.prefix, self.target, self.rollout = prefix, target, rollout
        self.rollout_top_k, self.temperature, self.top_k = rollout_top_k, temperature, top_k
        self.label_smoothing = label_smoothing
        self.beta_spec = dict(beta if beta is not None else DEFAULT_BETA)
        try:
            self.beta_schedule = make_schedule(self.beta_spec, total_steps=1)  # checked now; spans the stage at start
            _check_probability(self.beta_schedule)
        except ValueError as error:
            raise ValueError(f"beta: {error}") from None
        self.beta = self.beta_schedule(0) if prefix == "mixture" else (1.0 if prefix == "data" else 0.0)
        self.prepares_batch = prefix != "data"
        self.teacher = self.teacher_output = None
        if target != "gold":
            self._resolve_teacher(stage, teacher, teacher_output)
        self._stats = torch.zeros(3)  # since the last log: examples seen, rolled out, rollout tokens
        self._agreement = torch.zeros(2)  # rolled-out positions, of which the teacher agrees

    def _resolve_teacher(self, stage: LossContext, teacher: str | None, teacher_output: str | None) -> None:
        try:
            self.teacher, self.teacher_output = resolve_teacher(stage, teacher, teacher_output)
        except ValueError as error:
            raise ValueError(f"target {self.target!r} reads a teacher: {error}") from None
        teacher = self.teacher
        student, taught = _known_spec(stage, self.model, self.output), _known_spec(stage, teacher, self.teacher_output)
        if taught is not None and taught.kind != SEQUENCE:
            raise ValueError(f"teacher node '{self.teacher_output}' of model '{teacher}' is a {taught.describe()}; "
                             f"a teacher target reads per-position logits (the teacher's decoder)")
        if student is not None and taught is not None and student.width != taught.width:
            raise ValueError(f"the teacher's target vocabulary ({taught.width:,} outputs at '{self.teacher_output}') "
                             f"differs from the student's ({student.width:,} at '{self.output}'): per-token targets "
                             f"need one vocabulary (give both decoders the task's target vocabulary: leave their "
                             f"vocab_size unset)")

    # -- what the trainer asks ---------------------------------------------------------------
    @property
    def teacher_nodes(self):
        """The method declaring the teacher node read, for the teacher cache; None with rollouts
        (the prefixes change at every step, so the stage runs its teachers in the loop)."""
        return self._teacher_nodes if self.prefix == "data" else None

    def _teacher_nodes(self) -> list[tuple[str, str]]:
        return [] if self.teacher is None else [(self.teacher, self.teacher_output)]

    @property
    def uncached_reason(self) -> str | None:
        if self.prefix == "data" or self.teacher is None:
            return None
        return (f"GenerationKD with prefix '{self.prefix}' runs the teacher on the student's rollouts, "
                f"which change at every step")

    def start(self, total_steps: int) -> None:
        self.beta_schedule = make_schedule(self.beta_spec, total_steps=total_steps)

    # -- rollouts ------------------------------------------------------------------------------
    def prepare_batch(self, batch: Batch, context: BatchContext) -> Batch:
        """The batch with rolled-out prefixes (see the module docstring); unchanged for data prefixes."""
        if self.prefix == "data":
            return batch
        self.beta = 0.0 if self.prefix == "student" else float(self.beta_schedule(context.step))
        count = len(batch)
        rolled = torch.ones(count, dtype=torch.bool) if self.prefix == "student" else torch.rand(count) >= self.beta
        self._stats[0] += count
        if not bool(rolled.any()):
            return batch
        rows = rolled.nonzero().squeeze(1)
        generated = self.student_rollout(batch, rows, context)
        self._stats[1] += len(rows)
        self._stats[2] += sum(len(ids) for ids in generated)
        return rolled_out_batch(batch, rolled, generated, context.experiment)

    def student_rollout(self, batch: Batch, rows: torch.Tensor, context: BatchContext) -> list[list[int]]:
        """Per example of ``rows``, the student's next tokens: what it generates, then ``<eos>``
        (cut to the task's ``max_target_length``, ``<eos>`` kept last)."""
        from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID
        from blocks.generation import GenerationSettings, generate

        experiment, name = context.experiment, context.model
        task, graph = experiment.task, experiment.models[name]
        node, decoder = task.decoder_node(graph, experiment.config.file)
        device_rows = rows.to(context.device)
        inputs = {local: type(value)(*(t[device_rows] for t in value))
                  for local, key in experiment.model_inputs[name].items()
                  for value in [batch.inputs[key]]}
        bos = torch.full((len(rows), 1), BOS_ID, dtype=torch.long, device=context.device)
        inputs[node.inputs[1]] = Sequence(bos, torch.ones_like(bos, dtype=torch.bool))
        settings = GenerationSettings(self.rollout, top_k=self.rollout_top_k,
                                      max_len_a=task.generation["max_length_a"],
                                      max_len_b=task.generation["max_length_b"])
        training = graph.training
        graph.eval()
        try:
            with torch.no_grad():
                memory = graph(inputs)[node.inputs[0]]
                tokens = generate(decoder, memory, settings, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID).tokens
        finally:
            graph.train(training)
        limit = task.max_target_length
        return [ids[:limit - 1] + [EOS_ID] for ids in tokens]

    # -- the loss ------------------------------------------------------------------------------
    def forward(self, outputs: dict, batch: Batch) -> torch.Tensor:
        student = self.student_value(outputs)
        if not isinstance(student, Sequence):
            raise TrainingError(f"GenerationKD reads per-position logits at '{self.output}'; got a "
                                f"{type(student).__name__}")
        logits = student.values.float()
        if self.target == "gold":
            labels = word_labels(batch.labels, logits.shape[1])
            if not bool((labels != UNLABELLED).any()):
                return logits.sum() * 0.0
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=UNLABELLED,
                                   label_smoothing=self.label_smoothing)
        teacher = outputs[self.teacher][self.teacher_output]
        if isinstance(teacher, TopKLogProbs):
            teacher = self._truncated(teacher)
        elif self.top_k is not None:
            teacher = top_k_log_probs(teacher, min(self.top_k, teacher.values.shape[-1]))
        elif not isinstance(teacher, Sequence):
            raise TrainingError(f"GenerationKD reads the teacher's per-position logits at '{self.teacher_output}'; "
                                f"got a {type(teacher).__name__}")
        length = min(logits.shape[1], teacher.mask.shape[1])
        mask = student.mask[:, :length] & teacher.mask[:, :length]
        positions = int(mask.sum())
        if positions == 0:
            return logits.sum() * 0.0
        s = logits[:, :length][mask]  # [N, V]
        if isinstance(teacher, TopKLogProbs):
            indices = teacher.indices[:, :length][mask].long()  # [N, k]
            kept = teacher.log_probs[:, :length][mask].float().detach()
            best = indices.gather(1, kept.argmax(dim=-1, keepdim=True)).squeeze(1)
        else:
            full = teacher.values[:, :length][mask].float().detach()
            best = full.argmax(dim=-1)
        self._count_agreement(batch, best, mask, length)
        if self.target == "teacher_argmax":
            return F.cross_entropy(s, best)
        t = self.temperature
        student_log = F.log_softmax(s / t, dim=-1)
        if isinstance(teacher, TopKLogProbs):
            teacher_log = F.log_softmax(kept / t, dim=-1)  # renormalised over the k kept
            loss = (teacher_log.exp() * (teacher_log - student_log.gather(1, indices))).sum() / positions
        else:
            loss = F.kl_div(student_log, F.log_softmax(full / t, dim=-1), reduction="batchmean", log_target=True)
        return loss * (t * t)

    def _truncated(self, teacher: TopKLogProbs) -> TopKLogProbs:
        """A cached top-k teacher cut to the loss's ``top_k`` (the cache must hold at least as many)."""
        cached = teacher.indices.shape[-1]
        if self.top_k is None or self.top_k == cached:
            return teacher
        if self.top_k > cached:
            raise TrainingError(f"GenerationKD: top_k is {self.top_k} but the teacher cache holds the teacher's "
                                f"{cached} most likely tokens per position; set top_k to at most {cached}")
        log_probs, order = teacher.log_probs.float().topk(self.top_k, dim=-1)
        return TopKLogProbs(teacher.indices.gather(-1, order), log_probs, teacher.mask)

    def _count_agreement(self, batch: Batch, best: torch.Tensor, mask: torch.Tensor, length: int) -> None:
        """Rolled-out positions where the teacher's argmax is the student's generated token."""
        rollout = getattr(batch, "rollout", None)
        if rollout is None:
            return
        tokens = word_labels(rollout, length)[mask]
        rolled = tokens != UNLABELLED
        self._agreement[0] += int(rolled.sum())
        self._agreement[1] += int((best[rolled] == tokens[rolled]).sum())

    def log_values(self) -> dict:
        if self.prefix == "data":
            return {}
        seen, rolled, tokens = (float(v) for v in self._stats)
        positions, agreed = (float(v) for v in self._agreement)
        values = {"beta": self.beta, "rollout_share": rolled / seen if seen else 0.0,
                  "rollout_length": tokens / rolled if rolled else 0.0}
        if positions:
            values["teacher_agreement"] = agreed / positions
        self._stats.zero_()
        self._agreement.zero_()
        return values


def rolled_out_batch(batch: Batch, rolled: torch.Tensor, generated: list[list[int]], experiment) -> RolloutBatch:
    """``batch`` with the target prefix of each example in ``rolled`` replaced by ``<bos>`` and its
    rollout (``generated``: next tokens, ``<eos>`` last), in every input of type ``target`` (the
    student's and the teachers'); labels ``UNLABELLED`` there, the rollout's tokens in ``rollout``."""
    from blocks.data.batching import pad_ids
    from blocks.data.subword import BOS_ID, PAD_ID

    keys = [key for key, field in experiment.fields.items() if field.type == "target" and key in batch.inputs]
    data = batch.inputs[keys[0]]
    device = data.values.device
    by_row = iter(generated)
    prefixes, labels, rollouts = [], [], []
    for row, is_rolled in enumerate(rolled.tolist()):
        if is_rolled:
            ids = torch.tensor(next(by_row), dtype=torch.long)
            prefixes.append(torch.cat([torch.tensor([BOS_ID]), ids[:-1]]))
            labels.append(torch.full_like(ids, UNLABELLED))
            rollouts.append(ids)
        else:
            prefix = data.values[row][data.mask[row]].cpu()
            prefixes.append(prefix)
            labels.append(batch.labels[row, :len(prefix)].cpu())
            rollouts.append(torch.full_like(prefix, UNLABELLED))
    ids, mask = pad_ids(prefixes, PAD_ID)
    new_prefix = Sequence(ids.to(device), mask.to(device))
    inputs = dict(batch.inputs)
    for key in keys:
        inputs[key] = new_prefix
    return RolloutBatch(inputs, pad_ids(labels, UNLABELLED)[0].to(device), batch.index, batch.groups, batch.labelled,
                        rolled=rolled.to(device), rollout=pad_ids(rollouts, UNLABELLED)[0].to(device))


def _check_probability(schedule) -> None:
    """beta is a probability at every step (schedules are monotone: look at both ends)."""
    try:
        ends = (schedule(0), schedule(10 ** 9))
    except OverflowError:
        raise ValueError("its values must stay in [0, 1]") from None
    if any(not 0.0 <= value <= 1.0 for value in ends):
        raise ValueError(f"its values must stay in [0, 1] (it gives {ends[0]:g} at step 0)")
