"""Smoke tests of the seq2seq measurement scripts in tools/, at tiny sizes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"distilblocks_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generation_benchmark_times_greedy_and_beam(capsys):
    tool = load_tool("bench_generation")
    for decoder in ("transformer", "rnn"):
        rows = tool.main(["--decoder", decoder, "--vocab", "50", "--width", "16", "--layers", "1", "--sentences", "6",
                          "--batch", "1", "4", "--beam", "3", "--repeats", "1", "--max-len-a", "2",
                          "--max-len-b", "0.2"])
        assert [(row["batch"], row["strategy"]) for row in rows] == \
            [(size, name) for size in (1, 4) for name in ("greedy", "beam 3", "greedy, no cache")]
        assert all(row["sentences_per_s"] > 0 and row["tokens_per_s"] >= row["sentences_per_s"] for row in rows)
    printed = capsys.readouterr().out
    assert "rnn decoder, width 16, 1-layer encoder + 1-layer GRU, vocab 50" in printed
    assert "greedy / beam 3: " in printed and "cached / uncached greedy: " in printed


def test_smoke_run_trains_decodes_and_scores(multi30k, capsys):
    tool = load_tool("seq2seq_smoke")
    results = tool.main(["--data", str(multi30k), "--pairs", "200", "--dev", "8", "--vocab", "300", "--width", "16",
                         "--heads", "2", "--max-steps", "3", "--batch", "16", "--beam", "2"])
    assert results["steps"] == 3
    for name in ("greedy", "beam 2"):
        assert 0 <= results[name]["bleu"] <= 100 and 0 <= results[name]["chrf"] <= 100
        assert results[name]["sentences_per_s"] > 0
    printed = capsys.readouterr().out
    assert "200 training pairs, 8 dev pairs" in printed and "BLEU signature: nrefs:1|case:mixed" in printed


def test_subword_benchmark_reports_both_layouts(multi30k, capsys):
    rows = load_tool("bench_subword").main(["--data", str(multi30k), "--pairs", "300", "--vocab", "300",
                                            "--models", "bpe"])
    assert [(row["model"], row["shared"]) for row in rows] == [("bpe", True), ("bpe", False)]
    # only dev sentences with characters unseen in 300 training pairs (<unk>) can differ
    assert all(row["target_vocab"] == 300 and 0 <= row["round_trip_mismatches"] < 50 for row in rows)
    assert rows[1]["pieces_per_sentence"] > 10  # 300 pieces cut German finely
    assert "300 training pairs, vocabulary size 300" in capsys.readouterr().out


def test_the_uncached_baseline_generates_what_the_cached_decoders_generate():
    import torch

    from blocks.generation import beam_search, greedy_search

    tool = load_tool("bench_generation")
    for decoder in ("transformer", "rnn"):
        torch.manual_seed(0)
        model = tool.RandomTranslator(decoder, vocab=40, width=16, layers=1)
        ids, mask = tool.batches(tool.random_sources(5, 40, torch.Generator().manual_seed(0)), 5)[0]
        memory = model.encode(ids, mask)
        special = dict(bos_id=tool.BOS, eos_id=tool.EOS, pad_id=tool.PAD, max_len_a=2, max_len_b=0.5)
        uncached = tool.UncachedDecoder(model.decoder)
        assert greedy_search(uncached, memory, **special).tokens == \
            greedy_search(model.decoder, memory, **special).tokens
        assert beam_search(uncached, memory, beam_size=3, **special).tokens == \
            beam_search(model.decoder, memory, beam_size=3, **special).tokens


def test_translation_table_gives_greedy_and_beam_bleu_per_recipe(tmp_path, monkeypatch, capsys):
    import json
    import shutil

    from blocks.cli import main
    from tests.tasks.test_seq2seq import seq2seq_config, write_config, write_pairs

    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name, count, seed in (("train", 200, 1), ("dev", 20, 2), ("test", 20, 3)):
        write_pairs(tmp_path / "data", name, count, seed)
    values = seq2seq_config()
    values["stages"][0]["epochs"] = 4
    assert main(["train", str(write_config(tmp_path, values)), "--run-dir", "runs/tiny-seed1", "--no-progress"]) == 0
    shutil.copytree(tmp_path / "runs" / "tiny-seed1", tmp_path / "runs" / "tiny-seed2")
    capsys.readouterr()
    assert main(["test", "runs/tiny-seed1", "--greedy", "--no-progress"]) == 0
    greedy = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]["model"]["bleu"]
    beam = json.loads((tmp_path / "runs" / "tiny-seed1" / "summary.json").read_text())["models"]["model"]["test"]

    tool = load_tool("translation_table")
    monkeypatch.setattr(sys, "argv", ["translation_table.py", "runs", "--baseline", "tiny"])
    tool.main()
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| recipe | model | parameters | seeds | test BLEU, greedy | test BLEU, beam")
    # two identical seeds: the mean is the run's score, the std 0
    assert table[2].startswith("| tiny | model | ") and f"| 1, 2 | {greedy:.2f} ± 0.00 | {beam['bleu']:.2f} ± 0.00 |" \
        in table[2] and table[2].endswith("| — |")  # the baseline itself
    shutil.copytree(tmp_path / "runs" / "tiny-seed1", tmp_path / "runs" / "other-seed1")
    monkeypatch.setattr(sys, "argv", ["translation_table.py", "runs", "--baseline", "tiny"])
    tool.main()
    assert capsys.readouterr().out.splitlines()[2].endswith("| +0.00 / +0.00 vs tiny |")
    shutil.rmtree(tmp_path / "runs" / "other-seed1")
    cached = json.loads((tmp_path / "runs" / "tiny-seed1" / tool.GREEDY_FILE).read_text())
    assert cached["results"]["bleu"] == greedy
    monkeypatch.setattr("blocks.engine.evaluation.evaluate", None)  # a second table reads the kept scores
    monkeypatch.setattr(sys, "argv", ["translation_table.py", "runs", "--plot", "curves.png"])
    tool.main()
    assert capsys.readouterr().out.splitlines()[2] == table[2].rsplit(" — |", 1)[0]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(tool.dev_curve(tmp_path / "runs" / "tiny-seed1", "model")) == [25, 50, 75, 100]
