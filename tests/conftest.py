"""Shared fixtures for the core tests: a tiny separable sentiment dataset and a tiny two-model config.

Everything is written under ``tmp_path``; every model is tiny (embedding 8, BiLSTM hidden 8)
so that a whole two-stage run takes about a second on one CPU thread.
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
from pathlib import Path

import pytest

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "terrible"]
FILLER = ["the", "movie", "was", "a", "plot", "really", "quite", "film", "story", "very"]


def sentences(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (sentence, label) pairs, alternating labels, clearly separable by their words."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        words = rng.sample(FILLER, 3) + rng.sample(cue, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), str(label)))
    return rows


def write_tsv(path: Path, rows, header=("sentence", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_dataset(folder: Path, train: int = 120, dev: int = 40, test: int = 40) -> Path:
    write_tsv(folder / "train.tsv", sentences(train, 1))
    write_tsv(folder / "dev.tsv", sentences(dev, 2))
    write_tsv(folder / "test.tsv", sentences(test, 3))
    return folder


TEACHER = {
    "inputs": {"tokens": {"field": "text", "lowercase": True}},
    "graph": [
        {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
        {"name": "encoder", "block": "BiLSTM", "hidden": 8},
        {"name": "pool", "block": "Pooling", "mode": "max"},
        {"name": "logits", "block": "Linear"},
    ],
}

STUDENT = {
    "inputs": {"tokens": {"field": "text", "lowercase": True}},
    "graph": [
        {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
        {"name": "pool", "block": "Pooling", "mode": "mean"},
        {"name": "logits", "block": "Linear"},
    ],
}

# The device of the shared tiny config: the CPU, unless DISTILBLOCKS_TEST_DEVICE names another
# (``DISTILBLOCKS_TEST_DEVICE=cuda pytest tests`` runs the engine's tests on a GPU).
TEST_DEVICE = os.environ.get("DISTILBLOCKS_TEST_DEVICE", "cpu")

BASE_CONFIG = {
    "name": "tiny",
    "seed": 3,
    "device": TEST_DEVICE,
    "data": {"root": "data", "train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv",
             "fields": {"text": "sentence"}, "label": "label"},
    "task": {"metrics": ["accuracy", "f1"]},
    "models": {"teacher": TEACHER, "student": STUDENT},
    "stages": [
        {"name": "teacher", "train": "teacher", "epochs": 2, "batch_size": 16,
         "optimizer": {"type": "adam", "lr": 0.02}},
        {"name": "distill", "train": "student", "teachers": ["teacher"],
         "losses": [{"block": "KD", "temperature": 2.0, "weight": 0.7}, {"block": "CrossEntropy", "weight": 0.3}],
         "epochs": 2, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.05}},
    ],
}


def quiet(*args, **kwargs) -> None:
    """A ``log`` function that says nothing."""


def interrupt_on_call(monkeypatch, call: int):
    """Make StageTrainer._evaluate_and_save raise KeyboardInterrupt on its ``call``-th call;
    returns the original method (to put back before resuming)."""
    from blocks.engine.trainer import StageTrainer

    original = StageTrainer._evaluate_and_save
    calls = {"n": 0}

    def interrupting(self, bar):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, bar)

    monkeypatch.setattr(StageTrainer, "_evaluate_and_save", interrupting)
    return original


class PieceVocab:
    """The vocabulary a pretrained-tokenizer input hands a PretrainedEncoder: only its size and [SEP]."""

    def __init__(self, size: int):
        self.size, self.sep_index, self.pad_index = size, 3, 0

    def __len__(self):
        return self.size


def write_tiny_bert(folder: Path, hidden_size: int = 32, layers: int = 4) -> int:
    """A random BERT with a WordPiece tokenizer over the tiny dataset's words, saved in ``folder``
    (loadable like all-MiniLM-L6-v2); returns its vocabulary size."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(FILLER + POSITIVE + NEGATIVE)) + ["##s"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size,
                        max_position_embeddings=2 * hidden_size)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return len(vocab)


class Project:
    """A folder holding the tiny dataset (``data/``) and config files written next to it."""

    def __init__(self, root: Path):
        self.root = root
        self.data = write_dataset(root / "data")

    sentences = staticmethod(sentences)
    write_tsv = staticmethod(write_tsv)

    @staticmethod
    def config() -> dict:
        """A fresh (deep) copy of the base config, to modify."""
        return copy.deepcopy(BASE_CONFIG)

    @staticmethod
    def single_stage() -> dict:
        """The base config with the teacher stage only (fastest to train)."""
        values = copy.deepcopy(BASE_CONFIG)
        values["stages"] = values["stages"][:1]
        return values

    def write(self, values: dict | str, name: str = "config.json") -> Path:
        path = self.root / name
        path.write_text(values if isinstance(values, str) else json.dumps(values, indent=2), encoding="utf-8")
        return path

    def load(self, values: dict | None = None, overrides=(), name: str = "config.json"):
        from blocks.config.loader import load_config

        path = self.write(values if values is not None else self.config(), name)
        return load_config(path, overrides, environ={})

    def prepare(self, values: dict | None = None, overrides=()):
        from blocks.experiment import Experiment

        return Experiment.prepare(self.load(values, overrides), log=quiet)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    """A tiny dataset and config folder; the data-root variable is cleared and cwd is tmp_path."""
    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished two-stage run (teacher, then KD student) shared by read-only tests.

    Tests that change a run must copy it first (see ``run_copy``).
    """
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    root = tmp_path_factory.mktemp("finished")
    project = Project(root)
    path = project.write(project.config())
    run_dir = root / "run"
    train(load_config(path, environ={}), run_dir=run_dir, progress=False, log=quiet)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run, free to damage."""
    target = tmp_path / "run_copy"
    shutil.copytree(finished_run, target)
    return target
