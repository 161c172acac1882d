"""The learning-rate schedules a stage can name in its ``schedule`` node, registered like optimizers.

Example config::

    "schedule": {"type": "linear", "warmup": 0.1}

A schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per optimizer step. Its
multiplier at scheduler step ``s`` (the number of ``scheduler.step()`` calls so far, i.e. the
factor used by optimizer step ``s + 1``) is, with ``w`` warm-up steps and ``T`` total steps:

* ``constant``: ``s / w`` while ``s < w``, then 1;
* ``linear``:   ``s / w`` while ``s < w``, then ``max(0, (T - s) / (T - w))``

(the Hugging Face ``get_linear_schedule_with_warmup`` convention: the factor is 0 at ``s = 0``
when there is a warm-up, reaches 1 at ``s = w`` and 0 at ``s = T``).

Each schedule is a function registered with :func:`blocks.registry.register_schedule`; the
framework passes the optimizer, the number of optimizer steps of the whole stage and the node's
JSON path, the config node gives the keyword options. These are not the value schedules that a
loss weight or a temperature can follow (:mod:`blocks.distill.schedules`).

A stage without a ``schedule`` node gets ``constant`` without warm-up, or, when the model it trains
holds a pretrained encoder, :data:`FINE_TUNING_SCHEDULE`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Union

from blocks.errors import ConfigError, did_you_mean
from blocks.registry import SCHEDULES, Schema, register_schedule

Warmup = Union[Annotated[int, Schema(minimum=0)], Annotated[float, Schema(minimum=0, exclusiveMaximum=1)]]

DEFAULT_SCHEDULE = "constant"
FINE_TUNING_SCHEDULE = {"type": "linear", "warmup": 0.1}


def warmup_steps(warmup: Any, total_steps: int, where: str = "/schedule") -> int:
    """The warm-up in steps: a whole number as it is, a fraction of ``total_steps`` rounded to a step."""
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


@register_schedule("constant")
def constant(optimizer: Any, total_steps: int, where: str, warmup: Warmup = 0) -> Any:
    """The optimizer's learning rate, after a linear warm-up from 0 if one is given.

    Args:
        warmup: warm-up length: a whole number of steps, or a fraction in [0, 1) of the total steps
            (it may be longer than training).
    """
    from torch.optim.lr_scheduler import LambdaLR

    steps = warmup_steps(warmup, total_steps, where)

    def factor(step: int) -> float:
        return step / steps if step < steps else 1.0

    return LambdaLR(optimizer, factor)


@register_schedule("linear")
def linear(optimizer: Any, total_steps: int, where: str, warmup: Warmup = 0) -> Any:
    """Linear warm-up from 0 to the optimizer's learning rate, then linear decay to 0 at the last step.

    Args:
        warmup: warm-up length: a whole number of steps, or a fraction in [0, 1) of the total steps;
            it must be shorter than training.
    """
    from torch.optim.lr_scheduler import LambdaLR

    steps = warmup_steps(warmup, total_steps, where)
    if steps >= total_steps:
        raise ConfigError(f"the warm-up ({steps} steps) must be shorter than training"
                          f" ({total_steps} steps) for a linear schedule", None, f"{where}/warmup")

    def factor(step: int) -> float:
        if step < steps:
            return step / steps
        return max(0.0, (total_steps - step) / (total_steps - steps))

    return LambdaLR(optimizer, factor)


def check_schedule(config: Any, where: str = "/schedule") -> tuple[str, dict]:
    """The schedule's registered name and its options (without ``type``), checked against its signature.

    Raises:
        ConfigError: not an object, an unknown type or option (with a suggestion), or a bad value,
            at ``where/<key>``.
    """
    kind, options = SCHEDULES.typed_options(config, DEFAULT_SCHEDULE, where)
    if "warmup" in options:
        warmup_steps(options["warmup"], 1, where)  # the friendlier message before the schema's
    known = ["type"] + [p.name for p in SCHEDULES.parameters(kind)]
    for key in options:
        if key not in known:
            raise ConfigError(f"schedule '{kind}' has no option '{key}'{did_you_mean(str(key), known)}"
                              f" (its options: {', '.join(known)})", None, f"{where}/{key}")
    SCHEDULES.validate_params(kind, options, None, where)
    return kind, options


def with_stage_defaults(config: Any, fine_tuning: bool) -> Any:
    """The stage's ``schedule`` node with ``type`` and ``warmup`` filled in, as the resolved config shows them.

    ``fine_tuning`` (the trained model holds a pretrained encoder): :data:`FINE_TUNING_SCHEDULE`
    when the node is missing.
    """
    if config is None:
        return dict(FINE_TUNING_SCHEDULE) if fine_tuning else {"type": DEFAULT_SCHEDULE, "warmup": 0}
    if not isinstance(config, dict):
        return config  # check_schedule reports it
    return {"type": DEFAULT_SCHEDULE, "warmup": 0, **config}
