"""Smoke test of tools/bench_crf.py on a small synthetic column file."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_crf.py"


def test_bench_crf_prints_the_three_comparisons(tmp_path, capsys):
    pytest.importorskip("torchcrf")
    spec = importlib.util.spec_from_file_location("distilblocks_tool_bench_crf", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    sentences = ["\n".join(f"w{i} O" for i in range(n)) for n in (3, 7, 1, 12, 5, 2)]
    (tmp_path / "small.txt").write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    assert module.main(["--file", str(tmp_path / "small.txt"), "--batch", "3", "--batches", "2",
                        "--repeats", "1", "--tags", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 batches of 3 sentences from small.txt (30 words, longest 12), 4 tags" in out
    for task, baseline in (("nll", "pytorch-crf"), ("viterbi", "pytorch-crf"), ("marginals", "autograd of log Z")):
        line = next(line for line in out.splitlines() if line.startswith(task))
        assert line.endswith(baseline) and line.split()[3].endswith("x")
    assert module.main(["--file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: file not found" in capsys.readouterr().err
