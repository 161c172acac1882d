"""Multi-teacher distillation: one loss block, several teachers, a teacher-weighting rule.

``MultiTeacherKD`` compares the student with K teachers and weights them per instance::

    combine = "losses":  L = mean_i Σ_k w_ik · D(z_s,i , z_t,i^k)
    combine = "targets": L = mean_i D(z_s,i , Σ_k w_ik · target_i^k)     (averaged teacher targets)

where D is the T²-scaled KL of classic KD (``distance: "kd"``; the averaged target is then the
weighted mean of the teachers' softened distributions) or the MSE between logits (``"mse"``,
TMKD; the averaged target is the weighted mean of the logits). The weights ``w_ik`` (Σ_k = 1):

- ``equal``: 1/K;  ``fixed``: the config's ``weights``, normalised;
- ``entropy``: softmax_k(−H(p_t^k) / τ_w), confident teachers count more;
- ``gold_ce``: softmax_k(−CE(y, z_t^k) / τ_w), teachers right about the gold label count more
  (needs gold labels; unlabelled examples fall back to equal weights).

With ``heads`` (one student output node per teacher: TMKD/MKDM per-teacher heads on a shared
encoder), teacher k is compared with head k only (``combine = "losses"``).

``ReinforcedTeacherSelector`` is RL-KD (Yuan et al., AAAI 2021; methods.md §3): a policy decides
per instance which teachers the student learns from.

Both blocks keep the mean weight each teacher received since the last evaluation; the trainer logs
it with every evaluation and plots it over training (``RUN/plots/``).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blocks.data.dataset import UNLABELLED  # the label index of examples without a gold label
from blocks.distill.losses import Loss, LossContext, _logits, _node_spec, word_labels
from blocks.errors import did_you_mean
from blocks.registry import register_loss
from blocks.values import SEQUENCE, VECTOR, Sequence

WEIGHTINGS = ("equal", "fixed", "entropy", "gold_ce")


def _teachers(stage: LossContext, teachers: list[str] | None, minimum: int, block: str) -> list[str]:
    chosen = list(stage.teachers) if teachers is None else list(teachers)
    for name in chosen:
        if name not in stage.teachers:
            raise ValueError(f"teacher '{name}' is not among the stage's teachers{did_you_mean(name, stage.teachers)} "
                             f"({', '.join(stage.teachers) or 'none'})")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a teacher is listed twice in {chosen}")
    if len(chosen) < minimum:
        raise ValueError(f"{block} needs at least {minimum} teachers; the stage gives {len(chosen)} "
                         f"({', '.join(chosen) or 'none'}); use KD for a single teacher")
    return chosen


def _per_instance_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float, scale: bool) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)) per instance, [batch]."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                  reduction="none", log_target=True).sum(dim=-1)
    return kl * (t * t) if scale else kl


def _per_teacher_kd(student: torch.Tensor, teachers: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²-scaled KD of the student to each teacher, per instance: [batch, K] from teachers [batch, K, C]."""
    return torch.stack([_per_instance_kd(student, teachers[:, k], temperature, True)
                        for k in range(teachers.shape[1])], dim=1)


def _per_instance_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (student - teacher).pow(2).mean(dim=-1)


class _TeacherWeightLog:
    """Running mean of the weight each teacher received, reset at every evaluation."""

    def __init__(self, teachers: list[str]):
        self.teachers = teachers
        self.sums = torch.zeros(len(teachers), dtype=torch.float64)
        self.count = 0

    def add(self, weights: torch.Tensor) -> None:  # [batch, K]
        self.sums += weights.detach().double().sum(dim=0).cpu()
        self.count += weights.shape[0]

    def take(self) -> dict[str, float]:
        if not self.count:
            return {}
        means = (self.sums / self.count).tolist()
        self.sums.zero_()
        self.count = 0
        return {teacher: round(value, 6) for teacher, value in zip(self.teachers, means)}


class _MultiTeacherBase(Loss):
    def __init__(self, stage: LossContext, teachers: list[str] | None, teacher_outputs: list[str] | None,
                 output: str | None, heads: list[str] | None, minimum: int):
        super().__init__(stage, output)
        block = type(self).__name__
        self.teachers = _teachers(stage, teachers, minimum, block)
        if teacher_outputs is not None and len(teacher_outputs) != len(self.teachers):
            raise ValueError(f"teacher_outputs names {len(teacher_outputs)} nodes for {len(self.teachers)} teachers")
        self.teacher_outputs = list(teacher_outputs) if teacher_outputs else [stage.output_of[t] for t in self.teachers]
        if heads is not None:
            if output is not None:
                raise ValueError("give either 'output' (one student head) or 'heads' (one per teacher), not both")
            if len(heads) != len(self.teachers):
                raise ValueError(f"'heads' names {len(heads)} student nodes for {len(self.teachers)} teachers "
                                 f"({', '.join(self.teachers)}); give one head per teacher")
        self.heads = list(heads) if heads else None
        first = None
        for model, node in ([(self.model, n) for n in (self.heads or [self.output])]
                            + list(zip(self.teachers, self.teacher_outputs))):
            spec = _node_spec(stage, model, node)
            if spec.kind not in (self.output_kinds or (VECTOR,)):
                raise ValueError(f"{block} compares logits; '{node}' of model '{model}' is a {spec.describe()}")
            if first is not None and spec.width != first[2]:
                raise ValueError(f"{block}: '{first[1]}' of model '{first[0]}' has width {first[2]} but '{node}' of "
                                 f"model '{model}' has width {spec.width}; teachers and student must predict the "
                                 f"same label set")
            first = first or (model, node, spec.width)
        self.weight_log = _TeacherWeightLog(self.teachers)

    def teacher_nodes(self) -> list[tuple[str, str]]:
        return list(zip(self.teachers, self.teacher_outputs))

    def student_logits(self, outputs: dict) -> list[torch.Tensor]:
        """The student's logits compared with each teacher (one head, or one head per teacher)."""
        if self.heads:
            return [_logits(outputs[self.model][head]).float() for head in self.heads]
        return [_logits(outputs[self.model][self.output]).float()] * len(self.teachers)

    def teacher_logits(self, outputs: dict) -> torch.Tensor:
        """[batch, K, classes]"""
        return torch.stack([_logits(outputs[t][node]).float() for t, node in zip(self.teachers, self.teacher_outputs)],
                           dim=1)

    def log_values(self) -> dict:
        """Mean teacher weights since the last call (the trainer logs them with each evaluation)."""
        weights = self.weight_log.take()
        return {"teacher_weights": weights} if weights else {}


@register_loss("MultiTeacherKD")
class MultiTeacherKD(_MultiTeacherBase):
    """Distillation from several teachers with fixed or per-instance teacher weights.

    Args:
        teachers: the teachers to learn from (default: every teacher of the stage).
        weighting: "equal", "fixed" (the weights list), "entropy" or "gold_ce" (per-instance confidence).
        weights: with "fixed": one weight per teacher (normalised to sum 1).
        sharpness: per-instance weighting: softmax_k(−confidence / sharpness); smaller is sharper.
        distance: "kd" (T²-scaled KL of softened distributions) or "mse" (between logits, TMKD).
        combine: "losses" (weighted sum of per-teacher losses) or "targets" (one loss to the weighted
            average of the teachers' targets).
        temperature: KD temperature T (distance "kd").
        scale: multiply the KD term by T².
        output: student node holding the logits (default: the student's output).
        heads: one student node per teacher instead of output (per-teacher heads).
        teacher_outputs: one node per teacher (default: each teacher's output).
    """

    output_kinds = (VECTOR, SEQUENCE)  # per-word logits on a tagging task: every word is an instance

    def __init__(self, stage: LossContext, teachers: list[str] | None = None,
                 weighting: Literal["equal", "fixed", "entropy", "gold_ce"] = "equal",
                 weights: list[float] | None = None, sharpness: float = 1.0,
                 distance: Literal["kd", "mse"] = "kd", combine: Literal["losses", "targets"] = "losses",
                 temperature: float = 2.0, scale: bool = True, output: str | None = None,
                 heads: list[str] | None = None, teacher_outputs: list[str] | None = None):
        super().__init__(stage, teachers, teacher_outputs, output, heads, minimum=1)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}{did_you_mean(str(weighting), WEIGHTINGS)} "
                             f"(known: {', '.join(WEIGHTINGS)})")
        if distance == "kd" and stage.task == "regression":
            raise ValueError("distance \"kd\" compares softened class distributions, which a regression output "
                             "(one score) does not have; use distance \"mse\"")
        if distance not in ("kd", "mse"):
            raise ValueError(f"unknown distance {distance!r} (known: kd, mse)")
        if combine not in ("losses", "targets"):
            raise ValueError(f"unknown combine {combine!r} (known: losses, targets)")
        if combine == "targets" and self.heads:
            raise ValueError("per-teacher heads learn from their own teacher: use combine \"losses\" with heads")
        if weighting == "fixed":
            if weights is None or len(weights) != len(self.teachers):
                raise ValueError(f"weighting \"fixed\" needs 'weights', one per teacher ({', '.join(self.teachers)})")
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError("fixed weights must be >= 0 with a positive sum")
        elif weights is not None:
            raise ValueError(f"'weights' is only read with weighting \"fixed\" (weighting is \"{weighting}\")")
        if weighting == "gold_ce" and stage.task not in ("classification", "tagging"):
            raise ValueError("weighting \"gold_ce\" needs gold classes (a classification or tagging task)")
        if temperature <= 0 or sharpness <= 0:
            raise ValueError("temperature and sharpness must be > 0")
        self.weighting, self.distance, self.combine = weighting, distance, combine
        self.temperature, self.scale, self.sharpness = temperature, scale, sharpness
        fixed = torch.tensor(weights if weights is not None else [1.0] * len(self.teachers), dtype=torch.float32)
        self.register_buffer("fixed_weights", fixed / fixed.sum(), persistent=False)

    def teacher_weights(self, teacher_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """[batch, K] weights summing to 1 over the teachers."""
        batch, k = teacher_logits.shape[:2]
        if self.weighting in ("equal", "fixed"):
            return self.fixed_weights.to(teacher_logits.device).expand(batch, k)
        log_p = F.log_softmax(teacher_logits, dim=-1)
        if self.weighting == "entropy":
            confidence = -(log_p.exp() * log_p).sum(dim=-1)  # entropy: lower is more confident
            return F.softmax(-confidence / self.sharpness, dim=-1)
        equal = torch.full((batch, k), 1.0 / k, device=teacher_logits.device)
        if labels is None:
            return equal
        labelled = labels != UNLABELLED
        gold = labels.clamp(min=0).view(-1, 1, 1).expand(batch, k, 1)
        ce = -log_p.gather(-1, gold).squeeze(-1)  # [batch, K]
        return torch.where(labelled.unsqueeze(1), F.softmax(-ce / self.sharpness, dim=-1), equal)

    def _per_word(self, outputs: dict, labels: torch.Tensor | None
                  ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Teachers ``[words, K, classes]``, the student(s) ``[words, classes]`` and the words' gold
        tags, over the words real in the student and every teacher: each word is an instance."""
        students = [outputs[self.model][head] for head in (self.heads or [self.output])]
        teachers = [outputs[t][node] for t, node in zip(self.teachers, self.teacher_outputs)]
        if not all(isinstance(value, Sequence) for value in students + teachers):
            raise ValueError(f"{type(self).__name__}: the student and every teacher must give per-word logits")
        length = min(value.values.shape[1] for value in students + teachers)
        mask = students[0].mask[:, :length]
        for value in students[1:] + teachers:
            mask = mask & value.mask[:, :length]
        pick = [value.values[:, :length][mask].float() for value in students + teachers]
        tags = word_labels(labels, length)[mask] if labels is not None else None
        student_values = pick[:len(students)] if self.heads else pick[:1] * len(self.teachers)
        return torch.stack(pick[len(students):], dim=1), student_values, tags

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        labels = getattr(batch, "labels", None)
        if self.output_kind == SEQUENCE or isinstance(outputs[self.model][(self.heads or [self.output])[0]], Sequence):
            teachers, students, labels = self._per_word(outputs, labels)
            if teachers.shape[0] == 0:
                return students[0].sum() * 0.0
        else:
            teachers = self.teacher_logits(outputs)
            students = self.student_logits(outputs)
        weights = self.teacher_weights(teachers, labels)
        self.weight_log.add(weights)
        if self.combine == "targets":
            student = students[0]
            if self.distance == "mse":
                target = (weights.unsqueeze(-1) * teachers).sum(dim=1)
                return _per_instance_mse(student, target).mean()
            t = self.temperature
            target = (weights.unsqueeze(-1) * F.softmax(teachers / t, dim=-1)).sum(dim=1)
            kl = F.kl_div(F.log_softmax(student / t, dim=-1), target, reduction="none").sum(dim=-1)
            return (kl * (t * t) if self.scale else kl).mean()
        per_teacher = torch.stack([self._distance(students[k], teachers[:, k]) for k in range(len(self.teachers))],
                                  dim=1)  # [batch, K]
        return (weights * per_teacher).sum(dim=1).mean()

    def _distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.distance == "mse":
            return _per_instance_mse(student, teacher)
        return _per_instance_kd(student, teacher, self.temperature, self.scale)


@register_loss("ReinforcedTeacherSelector")
class ReinforcedTeacherSelector(_MultiTeacherBase):
    """RL-KD (Yuan et al., AAAI 2021): a policy picks, per instance, the teachers to learn from.

    State of instance i: the student's representation at ``state_output`` (detached; optional), each
    teacher's soft labels, and each teacher's cross-entropy on the gold label. Policy:
    p_i = sigmoid(W·state_i + b); actions a_ik ~ Bernoulli(p_ik) (the most likely choice at
    evaluation). The student loss is ``mean_{i,k}(a_ik · KD(z_s,i, z_t,i^k))``; add a CrossEntropy
    loss beside it for the gold labels (methods.md: 0.5 / 0.5). After each optimizer step the
    student is run again on the batch (no gradient, inference mode) and the reward per instance is
    ``−CE`` ("ce") or ``−(CE + KD to the selected teachers)`` ("ce_kd"); the policy takes a
    REINFORCE step ``(R − b)·∇log π(a|s)`` with its own Adam optimizer and a moving-average baseline
    b. With reward "dev" an episode is the stretch between two dev evaluations (``eval_every``):
    every instance of the episode gets R = the change of the stage's selection metric (sign
    flipped for a metric to minimise) and the policy takes one REINFORCE step over all of them at
    the evaluation; the first evaluation only sets the reference value. Warm up the student on
    equal weights in an earlier stage (MultiTeacherKD) first.

    Args:
        teachers: the teachers to select among (at least 2; default: every teacher of the stage).
        state_output: student node (a vector) giving the instance representation; null: none.
        reward: "ce", "ce_kd" (per instance, after every step) or "dev" (per episode of eval_every
            steps: the change of the dev selection metric).
        temperature: KD temperature T.
        policy_lr: the policy's learning rate.
        baseline_momentum: b ← m·b + (1 − m)·mean(R).
        output: student node holding the logits (default: the student's output).
        teacher_outputs: one node per teacher (default: each teacher's output).
    """

    def __init__(self, stage: LossContext, teachers: list[str] | None = None, state_output: str | None = None,
                 reward: Literal["ce", "ce_kd", "dev"] = "ce", temperature: float = 2.0, policy_lr: float = 1e-3,
                 baseline_momentum: float = 0.9, output: str | None = None,
                 teacher_outputs: list[str] | None = None):
        super().__init__(stage, teachers, teacher_outputs, output, None, minimum=2)
        if stage.task != "classification":
            raise ValueError("ReinforcedTeacherSelector needs a classification task (its state holds the "
                             "teachers' cross-entropy on the gold label)")
        if reward not in ("ce", "ce_kd", "dev"):
            raise ValueError(f"unknown reward {reward!r} (known: ce, ce_kd, dev)")
        if temperature <= 0 or policy_lr <= 0 or not 0 <= baseline_momentum < 1:
            raise ValueError("temperature and policy_lr must be > 0 and baseline_momentum in [0, 1)")
        k, classes = len(self.teachers), stage.num_outputs
        state_width = 0
        if state_output is not None:
            spec = _node_spec(stage, self.model, state_output)
            if spec.kind != VECTOR:
                raise ValueError(f"state_output '{state_output}' must be a vector node, not a {spec.describe()}")
            state_width = spec.width
        self.state_output = state_output
        self.reward, self.temperature = reward, temperature
        self.policy_lr, self.momentum = policy_lr, baseline_momentum
        self.policy = nn.Linear(state_width + k * classes + k, k)
        nn.init.zeros_(self.policy.weight)
        nn.init.zeros_(self.policy.bias)  # p = 0.5 for every teacher at the start
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))
        # reward "dev": the metric at the last evaluation, and the episode's (state, action) pairs
        self.register_buffer("reference", torch.zeros(()))
        self.register_buffer("reference_ready", torch.zeros((), dtype=torch.bool))
        self._episode: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending: tuple | None = None
        self.policy_log = _TeacherWeightLog(self.teachers)

    def student_parameters(self) -> list[nn.Parameter]:
        """The policy is trained by its own optimizer, not with the student."""
        return []

    @property
    def needs_dev(self) -> bool:
        """Reward "dev" learns from the dev metric, so the stage must have a dev split."""
        return self.reward == "dev"

    def _state(self, outputs: dict, teachers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(teachers, dim=-1)  # [batch, K, C]
        gold = labels.clamp(min=0).view(-1, 1, 1).expand(-1, teachers.shape[1], 1)
        ce = -log_p.gather(-1, gold).squeeze(-1)
        parts = [log_p.exp().flatten(1), ce]
        if self.state_output is not None:
            parts.insert(0, outputs[self.model][self.state_output].float())
        return torch.cat(parts, dim=1).detach()

    def forward(self, outputs: dict, batch) -> torch.Tensor:
        teachers = self.teacher_logits(outputs)
        student = self.student_logits(outputs)[0]
        state = self._state(outputs, teachers, batch.labels)
        with torch.no_grad():
            probabilities = torch.sigmoid(self.policy(state))
            actions = torch.bernoulli(probabilities) if self.training else (probabilities > 0.5).float()
        self.weight_log.add(actions)
        self.policy_log.add(probabilities)
        kd = _per_teacher_kd(student, teachers, self.temperature)
        if self.training:
            labelled = batch.labels != UNLABELLED
            if self.reward == "dev":
                self._episode.append((state[labelled], actions[labelled]))
            else:
                self._pending = (state, actions, teachers.detach())
        return (actions * kd).mean()

    def after_step(self, batch, student_outputs) -> None:
        """REINFORCE update of the policy from the updated student's result on the same batch."""
        if self._pending is None:
            return
        state, actions, teachers = self._pending
        self._pending = None
        student = _logits(student_outputs()[self.output]).float()
        labels = batch.labels
        labelled = labels != UNLABELLED
        reward = -F.cross_entropy(student, labels.clamp(min=0), reduction="none")
        if self.reward == "ce_kd":
            kd = _per_teacher_kd(student, teachers, self.temperature)
            reward = reward - (actions * kd).sum(dim=1) / actions.sum(dim=1).clamp(min=1.0)
        reward = torch.where(labelled, reward, torch.zeros_like(reward)).detach()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        mean_reward = reward[labelled].mean() if labelled.any() else reward.mean()
        if distributed:  # one policy and one baseline for every process
            torch.distributed.all_reduce(mean_reward)
            mean_reward = mean_reward / torch.distributed.get_world_size()
        self._reinforce(state[labelled], actions[labelled], reward[labelled], mean_reward)

    def after_evaluation(self, value: float) -> None:
        """Reward "dev": one REINFORCE step over the episode that ends at this evaluation.

        ``value`` is the stage's selection metric on dev, oriented so that higher is better.
        """
        if self.reward != "dev":
            return
        episode, self._episode = self._episode, []
        value_tensor = torch.tensor(float(value), device=self.reference.device)
        if not bool(self.reference_ready):  # the first evaluation: nothing to compare with yet
            self.reference.copy_(value_tensor)
            self.reference_ready.fill_(True)
            return
        change = value_tensor - self.reference
        self.reference.copy_(value_tensor)
        if not episode:
            return
        state = torch.cat([s for s, _ in episode])
        actions = torch.cat([a for _, a in episode])
        self._reinforce(state, actions, change.expand(state.shape[0]), change)

    def _reinforce(self, state: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor,
                   mean_reward: torch.Tensor) -> None:
        """One REINFORCE step ``−mean((R − b)·log π(a|s))``; b follows the mean reward."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not bool(self.baseline_ready):
            self.baseline.copy_(mean_reward)
            self.baseline_ready.fill_(True)
        advantage = reward - self.baseline
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.policy_lr)
        with torch.enable_grad():
            probabilities = torch.sigmoid(self.policy(state)).clamp(1e-6, 1 - 1e-6)
            log_prob = (actions * probabilities.log() + (1 - actions) * (1 - probabilities).log()).sum(dim=1)
            policy_loss = -(advantage * log_prob).sum() / max(state.shape[0], 1)
            self._optimizer.zero_grad(set_to_none=True)
            policy_loss.backward()
        if distributed:
            for parameter in self.policy.parameters():
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= torch.distributed.get_world_size()
        self._optimizer.step()
        self.baseline.mul_(self.momentum).add_((1 - self.momentum) * mean_reward)

    def log_values(self) -> dict:
        values = super().log_values()
        probabilities = self.policy_log.take()
        if probabilities:
            values["selection_probability"] = probabilities
        return values
