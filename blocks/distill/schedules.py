"""Value schedules over optimizer steps, usable by any loss block (a weight, a temperature).

A schedule is a small dict::

    {"type": "constant", "start": 2.0}
    {"type": "linear", "start": 4.0, "end": 1.0, "steps": 1000}   # then stays at end
    {"type": "linear", "start": 0.0, "end": 1.0, "begin": 500, "steps": 1000}  # start until step 500
    {"type": "step", "start": 4.0, "every": 100, "factor": 0.5}    # start * factor ** (step // every)
    {"type": "exponential", "base": 200}                            # start * base ** (-step / steps)

An exponential schedule decays from ``start`` (default 1) to ``start / base`` at step ``steps``
and stays there: ImitKD's ``beta_t = 200 ** (-t / N)`` (Lin et al. 2020). A loss that knows its
stage's number of optimizer steps (the ``start`` hook) may let a linear or exponential schedule
leave ``steps`` out: it then spans the whole stage (``total_steps`` of :func:`make_schedule`).

:func:`make_schedule` checks it and returns a function ``step -> value``.
"""
from __future__ import annotations

from typing import Any, Callable

from blocks.errors import did_you_mean

TYPES = ("constant", "linear", "step", "exponential")
_KEYS = {"constant": {"type", "start"},
         "linear": {"type", "start", "end", "steps", "begin"},
         "step": {"type", "start", "every", "factor", "end"},
         "exponential": {"type", "start", "base", "steps"}}


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _number(schedule: dict, key: str, kind: str, default: Any = None) -> float:
    value = schedule.get(key, default)
    if value is None:
        raise ValueError(f"{_a(kind)} schedule needs '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"schedule '{key}' must be a number, not {value!r}")
    return float(value)


def _integer(schedule: dict, key: str, kind: str) -> int:
    value = schedule.get(key)
    if value is None:
        raise ValueError(f"{_a(kind)} schedule needs '{key}'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"schedule '{key}' must be an integer, not {value!r}")
    return value


def _steps(schedule: dict, kind: str, total_steps: int | None) -> int:
    """A schedule's ``steps``, or the stage's ``total_steps`` when it leaves them out and they are known."""
    if "steps" not in schedule and total_steps is not None:
        return max(1, total_steps)
    return _integer(schedule, "steps", kind)


def make_schedule(schedule: dict, total_steps: int | None = None) -> Callable[[int], float]:
    """A function ``step -> value`` for a schedule dict; ValueError with a clear message if invalid.

    ``total_steps``: the stage's number of optimizer steps, which a linear or exponential
    schedule without ``steps`` spans (None: such a schedule must give ``steps``)."""
    if not isinstance(schedule, dict):
        raise ValueError(f"a schedule must be an object such as {{\"type\": \"linear\", ...}}, not {schedule!r}")
    kind = schedule.get("type")
    if kind is None:
        raise ValueError(f"a schedule needs a 'type' ({', '.join(TYPES)})")
    if kind not in TYPES:
        raise ValueError(f"unknown schedule type {kind!r}{did_you_mean(str(kind), TYPES)} "
                         f"(known: {', '.join(TYPES)})")
    for key in schedule:
        if key not in _KEYS[kind]:
            raise ValueError(f"{_a(kind)} schedule has no key '{key}'{did_you_mean(key, _KEYS[kind])} "
                             f"(its keys: {', '.join(sorted(_KEYS[kind]))})")
    start = _number(schedule, "start", kind, 1.0 if kind == "exponential" else None)
    if kind == "constant":
        return lambda step: start
    if kind == "exponential":
        base = _number(schedule, "base", kind)
        length = _steps(schedule, kind, total_steps)
        if base <= 0:
            raise ValueError("an exponential schedule needs base > 0")
        if length <= 0:
            raise ValueError("an exponential schedule needs steps > 0")
        return lambda step: start * base ** (-min(max(step, 0), length) / length)
    if kind == "linear":
        end = _number(schedule, "end", kind)
        steps = _steps(schedule, kind, total_steps)
        begin = _integer(schedule, "begin", kind) if "begin" in schedule else 0
        if steps < begin or steps < 0:
            raise ValueError(f"the schedule ends (step {steps}) before it starts (step {begin})")
        if steps == begin:
            raise ValueError("a linear schedule needs steps > begin (it changes over at least one step)")

        def linear(step: int) -> float:
            fraction = (min(max(step, begin), steps) - begin) / (steps - begin)
            return start + (end - start) * fraction

        return linear
    every = _integer(schedule, "every", kind)
    if every <= 0:
        raise ValueError("a step schedule needs every > 0")
    factor = _number(schedule, "factor", kind)
    if factor <= 0:
        raise ValueError("a step schedule needs factor > 0")
    floor = schedule.get("end")
    if floor is not None:
        floor = _number(schedule, "end", kind)

    def stepped(step: int) -> float:
        value = start * factor ** (max(step, 0) // every)
        if floor is not None:
            value = max(value, floor) if factor < 1 else min(value, floor)
        return value

    return stepped
