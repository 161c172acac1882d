"""Optimizers and learning-rate schedules built from the ``optimizer`` and ``schedule`` config nodes.

Example config::

    "optimizer": {"type": "adamw", "lr": 5e-5, "weight_decay": 0.01},
    "schedule": {"type": "linear", "warmup": 0.1}

A schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per optimizer step. Its
multiplier at scheduler step ``s`` (the number of ``scheduler.step()`` calls so far, i.e. the
factor used by optimizer step ``s + 1``) is, with ``w`` warm-up steps and ``T`` total steps:

* ``constant``: ``s / w`` while ``s < w``, then 1;
* ``linear``:   ``s / w`` while ``s < w``, then ``max(0, (T - s) / (T - w))``

(the Hugging Face ``get_linear_schedule_with_warmup`` convention: the factor is 0 at ``s = 0``
when there is a warm-up, reaches 1 at ``s = w`` and 0 at ``s = T``).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from blocks.errors import ConfigError, did_you_mean

OPTIMIZER_TYPES = ("adam", "adamw", "sgd")
SCHEDULE_TYPES = ("constant", "linear")

_ADAM_KEYS = ("type", "lr", "weight_decay", "betas", "eps", "fused")
_SGD_KEYS = ("type", "lr", "weight_decay", "momentum", "nesterov")

OPTIMIZER_SCHEMA: dict = {
    "type": "object",
    "description": "The optimizer. Options not listed for its type are errors.",
    "properties": {
        "type": {"enum": list(OPTIMIZER_TYPES), "default": "adam",
                 "description": "adam, adamw (decoupled weight decay) or sgd."},
        "lr": {"type": "number", "exclusiveMinimum": 0, "default": 1e-3,
               "description": "Peak learning rate (the schedule scales it)."},
        "weight_decay": {"type": "number", "minimum": 0,
                         "description": "L2 penalty (adam, sgd) or decoupled weight decay (adamw);"
                                        " default 0.0, or 0.01 for adamw."},
        "betas": {"type": "array", "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                  "minItems": 2, "maxItems": 2, "default": [0.9, 0.999],
                  "description": "adam/adamw: decay rates of the first and second moment estimates."},
        "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-8,
                "description": "adam/adamw: term added to the denominator for stability."},
        "fused": {"type": "boolean",
                  "description": "adam/adamw: update all parameters in one fused kernel (torch's"
                                 " fused=True). Same arithmetic as the default multi-tensor loop,"
                                 " several times faster on CPU for large embedding tables. Default:"
                                 " on where this torch build supports it for the parameters' device"
                                 " (torch >= 2.4 on CPU), else off; true where unsupported is an"
                                 " error."},
        "momentum": {"type": "number", "minimum": 0, "default": 0.0,
                     "description": "sgd: momentum factor."},
        "nesterov": {"type": "boolean", "default": False,
                     "description": "sgd: Nesterov momentum (needs momentum > 0)."},
    },
    "additionalProperties": False,
    "if": {"properties": {"type": {"const": "sgd"}}, "required": ["type"]},
    "then": {"properties": {"betas": False, "eps": False, "fused": False}},
    "else": {"properties": {"momentum": False, "nesterov": False}},
}

SCHEDULE_SCHEMA: dict = {
    "type": "object",
    "description": "How the learning rate changes over training, per optimizer step.",
    "properties": {
        "type": {"enum": list(SCHEDULE_TYPES), "default": "constant",
                 "description": "constant: the optimizer's lr after the warm-up; linear: linear"
                                " warm-up from 0, then linear decay to 0 at the last step."},
        "warmup": {"anyOf": [{"type": "integer", "minimum": 0},
                             {"type": "number", "minimum": 0, "exclusiveMaximum": 1}],
                   "default": 0,
                   "description": "Warm-up length: a whole number of steps, or a fraction in"
                                  " [0, 1) of the total steps. For linear it must be shorter than"
                                  " training."},
    },
    "additionalProperties": False,
}


def _node(config: Any, what: str, where: str) -> dict:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"the {what} must be an object, not {config!r}", None, where)
    return dict(config)


def _check_keys(config: dict, allowed: Iterable[str], what: str, where: str) -> None:
    allowed = tuple(allowed)
    for key in config:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise ConfigError(f"{what} has no option '{key}'{hint} (its options: {', '.join(allowed)})",
                              None, f"{where}/{key}")


def _number(config: dict, key: str, default: float, where: str, *, minimum: float = 0.0,
            exclusive: bool = False) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"'{key}' must be a number, not {value!r}", None, f"{where}/{key}")
    if value < minimum or (exclusive and value == minimum):
        relation = ">" if exclusive else ">="
        raise ConfigError(f"'{key}' must be {relation} {minimum:g}, not {value!r}", None, f"{where}/{key}")
    return float(value)


def _type(config: dict, types: tuple[str, ...], default: str, what: str, where: str) -> str:
    kind = config.get("type", default)
    if kind not in types:
        hint = did_you_mean(kind, types) if isinstance(kind, str) else ""
        raise ConfigError(f"unknown {what} type {kind!r}{hint} (known: {', '.join(types)})",
                          None, f"{where}/type")
    return kind


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable weights of ``module`` whose gradients are sparse (embeddings with ``sparse=True``)."""
    return [m.weight for m in module.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad]


class SparseAwareOptimizer(torch.optim.Optimizer):
    """The configured Adam/AdamW for dense gradients plus ``SparseAdam`` for sparse ones, as one optimizer.

    torch's Adam rejects sparse gradients and ``SparseAdam`` accepts nothing else, so a model with a
    sparse embedding needs both. This pairs them behind the ``Optimizer`` interface the engine uses:
    ``param_groups`` lists both optimizers' groups (the very dicts, so a learning-rate schedule
    scales both), ``step``/``zero_grad`` go to both, and ``state_dict`` holds both states.
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.SparseAdam):
        # Optimizer.__init__ is not called: the parameter groups and state live in the two parts.
        self.dense, self.sparse = dense, sparse
        self.defaults = dict(dense.defaults)
        self._optimizer_step_pre_hooks: dict = OrderedDict()
        self._optimizer_step_post_hooks: dict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict = OrderedDict()

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    @property
    def state(self) -> dict:
        return {**self.dense.state, **self.sparse.state}

    def step(self, closure=None):
        loss = self.dense.step(closure)
        self.sparse.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"dense", "sparse"}:
            raise ValueError("the saved optimizer state is not a dense + sparse pair (was the embedding "
                             "'sparse' setting changed since it was saved?)")
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])

    def __repr__(self) -> str:
        return f"SparseAwareOptimizer(dense={type(self.dense).__name__}, sparse=SparseAdam)"


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (which torch's rejects).

    The total 2-norm is over all gradients, a sparse one counted by its coalesced values (repeated
    rows summed first, as the dense gradient would have them); all are scaled by the same factor.
    """
    parameters = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in parameters):
        return nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = []
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(factor.to(g.dtype))
    return total


def build_optimizer(parameters: Any, config: dict | None, where: str = "/optimizer",
                    sparse: Iterable[torch.Tensor] = ()) -> torch.optim.Optimizer:
    """An optimizer over ``parameters`` (an iterable of tensors or of parameter-group dicts).

    Args:
        parameters: what ``torch.optim`` optimizers accept.
        config: the ``optimizer`` config node (see :data:`OPTIMIZER_SCHEMA`); None means defaults.
        where: JSON path of the node, for error messages.
        sparse: those of ``parameters`` whose gradients are sparse (:func:`sparse_parameters`). With
            adam/adamw they are updated by ``SparseAdam`` (same lr, betas and eps; no weight decay)
            inside a :class:`SparseAwareOptimizer`; sgd takes sparse gradients itself.

    Raises:
        ConfigError: unknown type or option (with a suggestion), or a bad value, at ``where/<key>``.
    """
    kind, options, fused = _options(config, where)
    parameters = list(parameters)  # a generator would be spent by a first try
    sparse = list(sparse)
    if sparse:
        if any(isinstance(p, dict) for p in parameters):
            raise ValueError("with sparse parameters, give the parameters as tensors, not parameter groups")
        chosen = {id(p) for p in sparse}
        dense = [p for p in parameters if id(p) not in chosen]
        if kind == "sgd":  # sgd takes sparse gradients, but not with weight decay
            parameters = ([{"params": dense}] if dense else []) + [{"params": sparse, "weight_decay": 0.0}]
        else:
            sparse_optimizer = torch.optim.SparseAdam(sparse, lr=options["lr"], betas=options["betas"],
                                                      eps=options["eps"])
            if not dense:
                return sparse_optimizer
            return SparseAwareOptimizer(_adam(kind, dense, options, fused, where), sparse_optimizer)
    if kind == "sgd":
        return torch.optim.SGD(parameters, **options)
    return _adam(kind, parameters, options, fused, where)


def _options(config: dict | None, where: str) -> tuple[str, dict, bool | None]:
    """The optimizer type, its torch options, and ``fused`` (adam/adamw; None: where supported)."""
    config = _node(config, "optimizer", where)
    kind = _type(config, OPTIMIZER_TYPES, "adam", "optimizer", where)
    _check_keys(config, _SGD_KEYS if kind == "sgd" else _ADAM_KEYS, f"optimizer '{kind}'", where)
    lr = _number(config, "lr", 1e-3, where, exclusive=True)
    weight_decay = _number(config, "weight_decay", 0.01 if kind == "adamw" else 0.0, where)
    if kind == "sgd":
        momentum = _number(config, "momentum", 0.0, where)
        nesterov = config.get("nesterov", False)
        if not isinstance(nesterov, bool):
            raise ConfigError(f"'nesterov' must be true or false, not {nesterov!r}", None, f"{where}/nesterov")
        if nesterov and momentum == 0:
            raise ConfigError("'nesterov' needs a momentum > 0", None, f"{where}/nesterov")
        return kind, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov}, None
    betas = config.get("betas", [0.9, 0.999])
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1 for b in betas)):
        raise ConfigError(f"'betas' must be a list of two numbers in [0, 1), not {betas!r}", None,
                          f"{where}/betas")
    eps = _number(config, "eps", 1e-8, where, exclusive=True)
    fused = config.get("fused")
    if fused is not None and not isinstance(fused, bool):
        raise ConfigError(f"'fused' must be true or false, not {fused!r}", None, f"{where}/fused")
    return kind, {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps,
                  "weight_decay": weight_decay}, fused


def _adam(kind: str, parameters: list, options: dict, fused: bool | None, where: str) -> torch.optim.Optimizer:
    """Adam or AdamW with torch's fused kernel where it exists (``fused`` None), or as ``fused`` says."""
    optimizer_class = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    if fused is False:
        return optimizer_class(parameters, foreach=True, **options)
    try:
        # torch < 2.4 has no fused CPU kernel, and no build fuses every device: it raises on construction
        return optimizer_class(parameters, fused=True, **options)
    except (RuntimeError, ValueError, TypeError) as error:
        if fused:
            raise ConfigError(f"'fused': true is not supported here (torch {torch.__version__}: {error});"
                              " leave 'fused' out to fall back to the multi-tensor loop",
                              None, f"{where}/fused") from None
    return optimizer_class(parameters, foreach=True, **options)


def warmup_steps(config: dict | None, total_steps: int, where: str = "/schedule") -> int:
    """The schedule's warm-up in steps (a fraction is rounded to the nearest step)."""
    warmup = (config or {}).get("warmup", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not math.isfinite(warmup) or warmup < 0:
        raise ConfigError(f"'warmup' must be a whole number of steps or a fraction in [0, 1), not {warmup!r}",
                          None, f"{where}/warmup")
    if isinstance(warmup, int):
        return warmup
    if warmup >= 1:
        raise ConfigError(f"'warmup' {warmup!r} is a fraction of the training steps, so it must be < 1;"
                          " write a whole number (no decimal point) for a number of steps",
                          None, f"{where}/warmup")
    return int(round(warmup * total_steps))


def build_schedule(optimizer: torch.optim.Optimizer, config: dict | None, total_steps: int,
                   where: str = "/schedule") -> LambdaLR:
    """A learning-rate schedule for ``optimizer`` over ``total_steps`` optimizer steps.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        config: the ``schedule`` config node (see :data:`SCHEDULE_SCHEMA`); None means constant.
        total_steps: number of optimizer steps in the whole training (>= 1).
        where: JSON path of the node, for error messages.

    The returned scheduler's ``state_dict()`` is JSON-able (its multiplier is a plain function,
    which torch does not save); rebuild it with the same config and ``total_steps`` before
    ``load_state_dict``.
    """
    config = _node(config, "schedule", where)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, not {total_steps!r}")
    kind = _type(config, SCHEDULE_TYPES, "constant", "schedule", where)
    _check_keys(config, ("type", "warmup"), f"schedule '{kind}'", where)
    warmup = warmup_steps(config, total_steps, where)
    if kind == "linear" and warmup >= total_steps:
        raise ConfigError(f"the warm-up ({warmup} steps) must be shorter than training"
                          f" ({total_steps} steps) for a linear schedule", None, f"{where}/warmup")

    if kind == "constant":
        def factor(step: int) -> float:
            return step / warmup if step < warmup else 1.0
    else:
        def factor(step: int) -> float:
            if step < warmup:
                return step / warmup
            return max(0.0, (total_steps - step) / (total_steps - warmup))

    return LambdaLR(optimizer, factor)
