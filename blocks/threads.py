"""How many CPU threads PyTorch computes with: the ``threads`` config key and ``--threads``.

PyTorch's default is one thread per core. On a machine other processes also use, every thread
waits at each operation for the slowest one, and a step can take many times longer than on one
thread (the demo on a busy 2-core machine: 2:21 on one thread, while two threads had done a third
of it after 11 minutes). So the default here is half the usable cores, at least one: on two
cores, one thread. An explicit ``threads`` (or ``--threads``) is used as given;
``OMP_NUM_THREADS`` in the environment counts as explicit too.
"""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; all logical CPUs where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is set to a number, else half the usable cores (at least 1)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, usable_cores() // 2)


def use_threads(requested: int | None) -> int:
    """Make PyTorch compute with ``requested`` threads (None: :func:`default_threads`); returns the count."""
    import torch

    count = requested or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
