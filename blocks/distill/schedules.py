"""Value schedules over optimizer steps, usable by any loss block (a weight, a temperature).

A schedule is a small dict::

    {"type": "constant", "start": 2.0}
    {"type": "linear", "start": 4.0, "end": 1.0, "steps": 1000}   # then stays at end
    {"type": "linear", "start": 0.0, "end": 1.0, "begin": 500, "steps": 1000}  # start until step 500
    {"type": "step", "start": 4.0, "every": 100, "factor": 0.5}    # start * factor ** (step // every)

:func:`make_schedule` checks it and returns a function ``step -> value``.
"""
from __future__ import annotations

from typing import Any, Callable

from blocks.errors import did_you_mean

TYPES = ("constant", "linear", "step")
_KEYS = {"constant": {"type", "start"},
         "linear": {"type", "start", "end", "steps", "begin"},
         "step": {"type", "start", "every", "factor", "end"}}


def _number(schedule: dict, key: str, kind: str, default: Any = None) -> float:
    value = schedule.get(key, default)
    if value is None:
        raise ValueError(f"a {kind} schedule needs '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"schedule '{key}' must be a number, not {value!r}")
    return float(value)


def _integer(schedule: dict, key: str, kind: str) -> int:
    value = schedule.get(key)
    if value is None:
        raise ValueError(f"a {kind} schedule needs '{key}'")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"schedule '{key}' must be an integer, not {value!r}")
    return value


def make_schedule(schedule: dict) -> Callable[[int], float]:
    """A function ``step -> value`` for a schedule dict; ValueError with a clear message if invalid."""
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
            raise ValueError(f"a {kind} schedule has no key '{key}'{did_you_mean(key, _KEYS[kind])} "
                             f"(its keys: {', '.join(sorted(_KEYS[kind]))})")
    start = _number(schedule, "start", kind)
    if kind == "constant":
        return lambda step: start
    if kind == "linear":
        end = _number(schedule, "end", kind)
        steps = _integer(schedule, "steps", kind)
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
