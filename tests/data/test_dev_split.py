"""A dev split carved from train (``"dev": {"from_train": ...}``) and what happens without any dev split."""
from __future__ import annotations

import collections

import pytest

from blocks.data.dataset import read_split, split_sources
from blocks.data.dev_split import DevCarve
from blocks.data.readers import Row, Rows
from blocks.errors import ConfigError, DataError


def rows_with_labels(labels: list[str]) -> Rows:
    return Rows([Row({"text": f"t{i}", "label": label}, "train.tsv", i + 2) for i, label in enumerate(labels)],
                ["a reader note"])


def test_carving_is_stratified_exact_in_size_and_disjoint():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    rows = rows_with_labels(labels)
    train, dev = DevCarve(0.1, 7, "label").split(rows, {}, "train.tsv")
    assert len(dev) == 10 and len(train) == 90
    assert collections.Counter(r.fields["label"] for r in dev) == {"a": 6, "b": 3, "c": 1}
    assert {r.line for r in train}.isdisjoint(r.line for r in dev)
    assert [r.line for r in dev] == sorted(r.line for r in dev)  # file order kept
    assert dev.notes == ["a reader note", "carved: 10% of the train file's rows, stratified by 'label', seed 7"]
    assert train.notes == ["a reader note", "less the 10 rows carved out as dev"]


def test_carving_depends_on_the_seed_only():
    rows = rows_with_labels(["a", "b"] * 50)
    first = DevCarve(0.2, 1, "label").split(rows, {}, "f")[1]
    again = DevCarve(0.2, 1, "label").split(rows, {}, "f")[1]
    other = DevCarve(0.2, 2, "label").split(rows, {}, "f")[1]
    assert [r.line for r in first] == [r.line for r in again] != [r.line for r in other]


def test_unique_labels_give_a_random_sample_of_the_exact_size():
    rows = rows_with_labels([f"{i / 7:.4f}" for i in range(35)])  # regression scores: one row per value
    train, dev = DevCarve(0.2, 0, "label").split(rows, {}, "f")
    assert len(dev) == 7 and len(train) == 28
    assert DevCarve(0.125, 0, "label").describe().startswith("12.5% of the train file's rows")


def test_carving_reads_the_label_through_the_field_mapping_and_needs_two_rows():
    rows = Rows([Row({"0": "x", "1": "pos"}, "f", 1), Row({"0": "y", "1": "neg"}, "f", 2)])
    train, dev = DevCarve(0.5, 0, "label").split(rows, {"label": 1}, "f")
    assert len(train) == len(dev) == 1
    with pytest.raises(DataError, match="needs at least 2 rows; the file has 1"):
        DevCarve(0.5, 0, "label").split(rows[:1], {}, "f")


def test_config_carves_dev_out_of_train_for_every_reader_of_the_splits(project):
    values = project.single_stage()
    values["data"]["dev"] = {"from_train": 0.25, "seed": 4}
    config = project.load(values)
    sources = split_sources(config["data"])
    train, dev = read_split(sources["train"]), read_split(sources["dev"])
    assert len(train) + len(dev) == 120 and len(dev) == 30
    assert {r.line for r in train}.isdisjoint(r.line for r in dev)
    lines = []
    from blocks.experiment import Experiment

    experiment = Experiment.prepare(config, log=lines.append)
    assert len(experiment.splits["dev"]) == 30 and len(experiment.splits["train"]) == 90
    assert any(line.startswith("dev: 30 examples from ") and "carved: 25% of the train file's rows" in line
               for line in lines)


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_config_refuses_a_fraction_outside_0_1(project, fraction):
    values = project.single_stage()
    values["data"]["dev"] = {"from_train": fraction}
    with pytest.raises(ConfigError) as caught:
        project.load(values)
    assert caught.value.path.startswith("/data/dev")


@pytest.mark.parametrize("key, value", [("early_stopping", 2), ("select", "f1")])
def test_settings_that_need_dev_scores_are_refused_without_dev(project, key, value):
    values = project.single_stage()
    del values["data"]["dev"]
    values["stages"][0][key] = value
    with pytest.raises(ConfigError) as caught:
        project.prepare(values)
    assert caught.value.path == f"/stages/0/{key}"
    assert "no dev split" in caught.value.message and '"dev": {"from_train": 0.1}' in caught.value.message


def test_training_without_dev_says_the_last_weights_are_kept(project, capsys):
    from blocks.engine.run import train

    values = project.single_stage()
    del values["data"]["dev"]
    values["stages"][0]["epochs"] = 1
    lines = []
    train(project.load(values), run_dir=project.root / "run", progress=False, log=lines.append)
    assert any("stage 'teacher': no dev split, so the weights after the last step are kept" in line
               for line in lines)
    assert "stage 'teacher' done: no dev split, the weights after step 8 kept" in lines
    assert "  teacher step 8 (epoch 1): checkpoint (no dev split)" in capsys.readouterr().out
