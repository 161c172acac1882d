"""The optimizers a stage can name in its ``optimizer`` node, registered like blocks and losses.

Example config::

    "optimizer": {"type": "adamw", "lr": 5e-5, "weight_decay": 0.01}

Each optimizer is a function registered with :func:`blocks.registry.register_optimizer`. Its
keyword parameters are the options of the config node: their type hints (with the allowed range
in ``Annotated[..., Schema(...)]``) give the JSON Schema and the checks, their defaults are the
defaults, and the docstring's ``Args:`` describe them in ``blocks list --kind optimizer``. The framework passes the
first two arguments: the parameters to optimize and the node's JSON path (for error messages).

This module does not import PyTorch until an optimizer is built, so the config loader can check a
node without it. The engine builds the optimizer (:func:`blocks.engine.optim.build_optimizer`,
which also pairs a sparse-gradient embedding with ``SparseAdam``).

A stage without an ``optimizer`` node gets ``adam`` with its defaults, or, when the model it trains
holds a pretrained encoder, :data:`FINE_TUNING_OPTIMIZER`.
"""
from __future__ import annotations

from typing import Annotated, Any

from blocks.errors import ConfigError, did_you_mean
from blocks.registry import OPTIMIZERS, Schema, register_optimizer

Positive = Annotated[float, Schema(exclusiveMinimum=0)]
NonNegative = Annotated[float, Schema(minimum=0)]
Betas = Annotated[tuple[Annotated[float, Schema(minimum=0, exclusiveMaximum=1)], ...],
                  Schema(minItems=2, maxItems=2)]

DEFAULT_OPTIMIZER = "adam"
FINE_TUNING_OPTIMIZER = {"type": "adamw", "lr": 2e-5}


def _adam(optimizer_class: Any, parameters: list, options: dict, fused: bool | None, where: str) -> Any:
    """Adam or AdamW with torch's fused kernel where it exists (``fused`` None), or as ``fused`` says."""
    import torch

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


@register_optimizer("adam")
def adam(parameters: list, where: str, lr: Positive = 1e-3, weight_decay: NonNegative = 0.0,
         betas: Betas = (0.9, 0.999), eps: Positive = 1e-8, fused: bool | None = None) -> Any:
    """Adam, with the weight decay added to the gradient (L2 penalty).

    Args:
        lr: peak learning rate (the schedule scales it).
        weight_decay: L2 penalty added to the gradient.
        betas: decay rates of the first and second moment estimates.
        eps: term added to the denominator for stability.
        fused: update all parameters in one fused kernel (torch's fused=True): the same arithmetic as
            the multi-tensor loop, several times faster on CPU for large embedding tables. Default
            (null): on where this torch build supports it for the parameters' device (torch >= 2.4
            on CPU), else off; true where unsupported is an error.
    """
    import torch

    options = {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps, "weight_decay": weight_decay}
    return _adam(torch.optim.Adam, parameters, options, fused, where)


@register_optimizer("adamw")
def adamw(parameters: list, where: str, lr: Positive = 1e-3, weight_decay: NonNegative = 0.01,
          betas: Betas = (0.9, 0.999), eps: Positive = 1e-8, fused: bool | None = None) -> Any:
    """AdamW: Adam with decoupled weight decay (the usual choice to fine-tune a transformer).

    Args:
        lr: peak learning rate (the schedule scales it).
        weight_decay: decoupled weight decay (the weights shrink by lr * weight_decay per step).
        betas: decay rates of the first and second moment estimates.
        eps: term added to the denominator for stability.
        fused: as for adam: one fused kernel where this torch build has it (default), or as set.
    """
    import torch

    options = {"lr": lr, "betas": (float(betas[0]), float(betas[1])), "eps": eps, "weight_decay": weight_decay}
    return _adam(torch.optim.AdamW, parameters, options, fused, where)


@register_optimizer("sgd")
def sgd(parameters: list, where: str, lr: Positive = 1e-3, weight_decay: NonNegative = 0.0,
        momentum: NonNegative = 0.0, nesterov: bool = False) -> Any:
    """Stochastic gradient descent, with optional (Nesterov) momentum; takes sparse gradients itself.

    Args:
        lr: peak learning rate (the schedule scales it).
        weight_decay: L2 penalty added to the gradient (not applied to sparse-gradient embeddings).
        momentum: momentum factor.
        nesterov: Nesterov momentum (needs momentum > 0).
    """
    import torch

    if nesterov and momentum == 0:
        raise ConfigError("'nesterov' needs a momentum > 0", None, f"{where}/nesterov")
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


sgd.takes_sparse_gradients = True  # the engine pairs the others with SparseAdam for sparse embeddings


def check_optimizer(config: Any, where: str = "/optimizer") -> tuple[str, dict]:
    """The optimizer's registered name and its options (without ``type``), checked against its signature.

    Raises:
        ConfigError: not an object, an unknown type or option (with a suggestion), or a value of
            the wrong type or out of range, at ``where/<key>``.
    """
    kind, options = OPTIMIZERS.typed_options(config, DEFAULT_OPTIMIZER, where)
    known = ["type"] + [p.name for p in OPTIMIZERS.parameters(kind)]
    for key in options:
        if key not in known:
            raise ConfigError(f"optimizer '{kind}' has no option '{key}'{did_you_mean(str(key), known)}"
                              f" (its options: {', '.join(known)})", None, f"{where}/{key}")
    OPTIMIZERS.validate_params(kind, options, None, where)
    return kind, options


def option_defaults(kind: str) -> dict:
    """The defaults of a registered optimizer's options, from its signature."""
    return {p.name: p.default for p in OPTIMIZERS.parameters(kind) if not p.required}


def with_stage_defaults(config: Any, fine_tuning: bool) -> Any:
    """The stage's ``optimizer`` node with ``type`` and ``lr`` filled in, as the resolved config shows them.

    ``fine_tuning`` (the trained model holds a pretrained encoder): :data:`FINE_TUNING_OPTIMIZER`
    when the node is missing, and its learning rate when the node names none.
    """
    if config is None:
        return dict(FINE_TUNING_OPTIMIZER) if fine_tuning else {"type": DEFAULT_OPTIMIZER,
                                                               "lr": option_defaults(DEFAULT_OPTIMIZER)["lr"]}
    if not isinstance(config, dict):
        return config  # check_optimizer reports it
    filled = dict(config)
    filled.setdefault("type", DEFAULT_OPTIMIZER)
    if "lr" not in filled and isinstance(filled["type"], str) and filled["type"] in OPTIMIZERS:
        filled["lr"] = FINE_TUNING_OPTIMIZER["lr"] if fine_tuning else option_defaults(filled["type"]).get("lr")
    return filled
