"""blocks train on CPU keeps freed memory in the process (glibc), so per-step tensors are not faulted in again."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from blocks.engine import host_memory

LINUX_GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# Allocates and frees a 47 MB tensor (the dense gradient of a 30,522 x 384 embedding) as a training
# step does, and prints the minor page faults that ten such allocations cost once the heap holds
# the chunks they reuse (glibc sorts its freed chunks into bins over the first few).
FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from blocks.engine.host_memory import keep_freed_memory
    print(keep_freed_memory())
    for _ in range(8):
        torch.zeros(30522, 384).add_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.zeros(30522, 384).add_(1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults(environment: dict) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != host_memory.ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", FAULTS], env={**env, **environment}, capture_output=True,
                          text=True, check=True)
    line, count = done.stdout.strip().splitlines()[-2:]
    return line, int(count)


@pytest.mark.skipif(not LINUX_GLIBC, reason="the setting exists in glibc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    kept, kept_faults = faults({})
    system, system_faults = faults({host_memory.ENVIRONMENT: "system"})
    assert kept.startswith("freed memory kept for reuse (glibc ")
    assert system == "system default (DISTILBLOCKS_MALLOC=system)"
    pages = 10 * 30522 * 384 * 4 // 4096
    assert system_faults > 0.9 * pages  # every allocation came back as fresh pages
    assert kept_faults < 0.05 * pages


def test_the_setting_is_applied_once_and_reported(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", None)
    monkeypatch.setenv(host_memory.ENVIRONMENT, "System")
    assert host_memory.keep_freed_memory() == "system default (DISTILBLOCKS_MALLOC=system)"
    monkeypatch.delenv(host_memory.ENVIRONMENT)
    # decided once per process: an allocator setting cannot be taken back halfway through a run
    assert host_memory.keep_freed_memory() == "system default (DISTILBLOCKS_MALLOC=system)"


def test_other_platforms_keep_their_allocator(monkeypatch):
    monkeypatch.delenv(host_memory.ENVIRONMENT, raising=False)
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory._apply() == "system default (not Linux)"
