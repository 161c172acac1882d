"""Smoke test of tools/bench_checkpoint_checksum.py on a tiny state."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_checkpoint_checksum.py"


def test_bench_checkpoint_checksum_times_both_ways(capsys):
    spec = importlib.util.spec_from_file_location("distilblocks_tool_bench_checkpoint_checksum", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--parameters", "5000", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("checkpoint of 5,000 parameters with Adam's moments: 0 MiB;")
    for what in ("write", "read"):
        line = next(line for line in out.splitlines() if line.startswith(what))
        assert "with checksum" in line and "without" in line and line.endswith("%)")
    assert module.main(["--parameters", "0"]) == 2
