"""Sequence-level KD (blocks.generated_transfer): a teacher's translations of the train split as the
stage's transfer set, stored as readable text, keyed, reused, rebuilt when stale or corrupt; its
config checks; and a short end-to-end run on Multi30k."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from blocks.config.loader import load_config
from blocks.data.subword import BOS_ID, EOS_ID
from blocks.engine.teacher_cache import key_of
from blocks.errors import ConfigError
from blocks.experiment import Experiment
from blocks.generated_transfer import (OUTPUTS, decoding_settings, generated_split, generation_components,
                                       open_or_generate)
from blocks.generation import generate

from tests.tasks.test_seq2seq import TRANSLATOR, write_pairs


def seqkd_config(**generate_options) -> dict:
    """A teacher stage, then a student trained on the teacher's translations (small and fast)."""
    student = copy.deepcopy(TRANSLATOR)
    student["graph"][0]["dim"] = 16
    return {
        "seed": 1, "device": "cpu",
        "data": {"root": "data", "train": "train", "dev": "dev",
                 "reader": {"format": "parallel", "languages": ["en", "de"]}, "label": "de"},
        "task": {"type": "seq2seq", "source": "en",
                 "subword": {"vocab_size": 80, "shared": False, "min_frequency": 1}, "generation": {"beam": 3}},
        "models": {"teacher": copy.deepcopy(TRANSLATOR), "student": student},
        "stages": [
            {"name": "teacher", "train": "teacher", "epochs": 1, "batch_size": 8,
             "optimizer": {"type": "adam", "lr": 0.003}},
            {"name": "seqkd", "train": "student", "epochs": 1, "batch_size": 8,
             "transfer": {"generate": {"teacher": "teacher", **generate_options}}},
        ],
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    write_pairs(data, "train", 48, 1)
    write_pairs(data, "dev", 8, 2)
    return tmp_path


def prepare(root, values: dict) -> Experiment:
    path = root / "config.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    return Experiment.prepare(load_config(path, environ={}), log=lambda *a, **k: None)


class Log(list):
    def __call__(self, message, *args, **kwargs):
        self.append(str(message))

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


def generated(experiment, root, log=None):
    return open_or_generate(experiment, 1, root / "cache", False, torch.device("cpu"), progress=False,
                            log=log if log is not None else Log())


# -- decoding and the files --------------------------------------------------------------------------


def test_outputs_equal_a_direct_generate_call_and_are_stored_as_readable_text(project):
    experiment = prepare(project, seqkd_config(beam=2, max_length_a=4, max_length_b=1.0))
    log = Log()
    result = generated(experiment, project, log)
    assert result.built and log.has("teacher 'teacher' decodes the 48 train sources (beam 2")

    # the same decoding, called directly on the whole split as one batch in file order
    train, task = experiment.splits["train"], experiment.task
    settings = decoding_settings(task, {"beam": 2, "max_length_a": 4, "max_length_b": 1.0})
    assert (settings.strategy, settings.beam_size, settings.max_len_a) == ("beam", 2, 4)
    assert settings.length_penalty == task.generation["length_penalty"]  # the task's, not given
    graph = experiment.models["teacher"]
    node, decoder = task.decoder_node(graph)
    batch = train.collate(torch.arange(len(train)))
    inputs = {"source": batch.inputs[experiment.model_inputs["teacher"]["source"]]}
    bos = torch.full((len(train), 1), BOS_ID)
    from blocks.values import Sequence
    inputs["prefix"] = Sequence(bos, torch.ones_like(bos, dtype=torch.bool))
    graph.eval()
    with torch.inference_mode():
        direct = generate(decoder, graph(inputs)[node.inputs[0]], settings, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=0)
    assert result.decoded.outputs == task.translations(direct.tokens)
    assert result.decoded.scores == pytest.approx(direct.scores.tolist(), abs=1e-3)

    lines = (result.folder / OUTPUTS).read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 48 and set(first) == {"source", "output", "score"}
    assert first["source"] == (project / "data" / "train.en").read_text().splitlines()[0]
    meta = json.loads((result.folder / "meta.json").read_text())
    assert meta["key"] == result.folder.name and meta["examples"] == 48 and meta["teacher"] == "teacher"

    again = Log()
    reused = generated(experiment, project, again)
    assert not reused.built and again.has("reusing") and reused.decoded.outputs == result.decoded.outputs


def test_the_key_changes_with_teacher_weights_decoding_data_and_vocabularies(project):
    experiment = prepare(project, seqkd_config())
    train, task = experiment.splits["train"], experiment.task
    settings = decoding_settings(task, {})
    base = key_of(generation_components(experiment, "teacher", train, settings))
    assert key_of(generation_components(experiment, "teacher", train, settings)) == base
    assert key_of(generation_components(experiment, "teacher", train, decoding_settings(task, {"beam": 2}))) != base
    assert key_of(generation_components(experiment, "teacher", train,
                                        decoding_settings(task, {"length_penalty": 0.6}))) != base
    with torch.no_grad():
        next(experiment.models["teacher"].parameters()).add_(0.01)
    assert key_of(generation_components(experiment, "teacher", train, settings)) != base
    write_pairs(project / "data", "train", 48, 9)  # other sentences: other sources and subword merges
    other = prepare(project, seqkd_config())
    components = generation_components(other, "teacher", other.splits["train"], settings)
    base_components = generation_components(prepare(project, seqkd_config()), "teacher", other.splits["train"],
                                            settings)
    assert components == base_components  # deterministic given the data
    assert components["data"] != generation_components(experiment, "teacher", train, settings)["data"]
    assert components["tokenizer"] != generation_components(experiment, "teacher", train, settings)["tokenizer"]


def test_truncated_and_edited_files_are_detected_and_decoded_again(project):
    experiment = prepare(project, seqkd_config(beam=1, max_length_a=3, max_length_b=0.5))
    first = generated(experiment, project)
    path = first.folder / OUTPUTS
    original = path.read_bytes()

    path.write_bytes(original[: len(original) // 2])  # truncated
    log = Log()
    again = generated(experiment, project, log)
    assert again.built and log.has("rebuilding generated transfer set:") and log.has("is truncated")
    assert path.read_bytes() == original and again.decoded.outputs == first.decoded.outputs

    record = json.loads(original.decode().splitlines()[0])
    output = json.dumps(record["output"]).encode()
    edited = original.replace(output, json.dumps("X" * len(record["output"])).encode(), 1)
    assert len(edited) == len(original) and edited != original
    path.write_bytes(edited)  # same size, other text: only the checksum tells
    log = Log()
    assert generated(experiment, project, log).built and log.has("does not match its checksum")
    assert path.read_bytes() == original

    (first.folder / "meta.json").write_text("{not json")
    log = Log()
    assert generated(experiment, project, log).built and log.has("meta.json is corrupt")


def test_a_stale_set_is_replaced_and_the_log_says_what_changed(project):
    experiment = prepare(project, seqkd_config(beam=1, max_length_a=3, max_length_b=0.5))
    old = generated(experiment, project).folder
    with torch.no_grad():
        next(experiment.models["teacher"].parameters()).add_(0.05)
    log = Log()
    new = generated(experiment, project, log)
    assert new.built and new.folder != old and not old.exists()
    assert log.has("rebuilding generated transfer set: the weights of teacher 'teacher' changed")


def test_the_split_trains_on_the_teacher_outputs_and_optionally_the_gold_pairs(project):
    from blocks.transfer_set import stage_input_keys

    for include_gold in (False, True):
        experiment = prepare(project, seqkd_config(beam=1, include_gold=include_gold))
        stage = experiment.config["stages"][1]
        log = Log()
        split = generated_split(experiment, 1, stage_input_keys(experiment, stage), project / "cache", False,
                                torch.device("cpu"), progress=False, log=log)
        train, task = experiment.splits["train"], experiment.task
        outputs = generated(experiment, project).decoded.outputs
        kept = [text for text in outputs if text.strip()]
        gold = len(train) if include_gold else 0
        assert len(split) == gold + len(kept)
        assert log.has(f"{len(kept):,} translations by 'teacher'") and log.has("target tokens per output vs")
        prefix_key = experiment.model_inputs["student"]["prefix"]
        source_key = experiment.model_inputs["student"]["source"]
        for i, text in enumerate(kept[:5]):
            ids = task.vocabularies.target.encode(text)
            assert split.labels[gold + i].tolist() == ids + [EOS_ID]
            assert split.ids[prefix_key][gold + i].tolist() == [BOS_ID] + ids
        if include_gold:
            assert split.labels.texts[: len(train)] == train.labels.texts
            assert all(torch.equal(a, b) for a, b in zip(split.ids[source_key], train.ids[source_key]))


def test_training_a_student_on_the_teacher_outputs(project):
    from blocks.engine.run import train

    values = seqkd_config(beam=2)
    values["stages"][0]["epochs"] = 10  # enough to translate something: an untrained teacher says nothing
    values["cache_dir"] = "shared_cache"  # the teacher cache's folder, shared by runs
    path = project / "config.json"
    path.write_text(json.dumps(values))
    log = Log()
    train(load_config(path, environ={}), run_dir=project / "run", log=log, progress=False)
    assert log.has("stage 'seqkd': transfer set of") and log.has(str(project / "shared_cache" / "generated"))
    assert log.has("decodes the 48 train sources")
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert "bleu" in summary["models"]["student"]["dev"]
    log = Log()  # another run (another seed of the student would do the same) trains the same teacher
    train(load_config(path, environ={}), run_dir=project / "run2", log=log, progress=False)
    assert not log.has("decodes the") and log.has("generated transfer set: reusing")


def test_a_teacher_taken_from_a_finished_run_decodes(project):
    from blocks.engine.run import train

    values = seqkd_config(beam=2)
    teacher_only = {**copy.deepcopy(values), "stages": [dict(values["stages"][0], epochs=10)]}
    (project / "teacher.json").write_text(json.dumps(teacher_only))
    train(load_config(project / "teacher.json", environ={}), run_dir=project / "teacher_run", log=Log(),
          progress=False)
    values["models"]["teacher"] = {"run": "teacher_run"}
    values["stages"] = values["stages"][1:]
    (project / "seqkd.json").write_text(json.dumps(values))
    log = Log()
    train(load_config(project / "seqkd.json", environ={}), run_dir=project / "run", log=log, progress=False)
    assert log.has("teacher 'teacher' decodes the 48 train sources") and log.has("translations by 'teacher'")
    [folder] = [f for f in (project / "run" / "cache" / "generated").iterdir() if f.is_dir()]  # and a lock file
    outputs = [json.loads(line)["output"] for line in (folder / OUTPUTS).read_text().splitlines()]
    assert sum(bool(text.strip()) for text in outputs) > 24  # the trained teacher says something


def _teacher_run_with_its_own_vocabularies(project) -> dict:
    """A teacher trained in its own run with subword vocabularies of up to 120 pieces per side (the
    toy data gives 63 target pieces); returns a SeqKD config whose student (and task) has 40: the
    teacher keeps its run's vocabularies."""
    from blocks.engine.run import train

    values = seqkd_config(beam=2)
    teacher_only = {**copy.deepcopy(values), "stages": [dict(values["stages"][0], epochs=10)]}
    teacher_only["task"]["subword"] = {"vocab_size": 120, "shared": False, "min_frequency": 1}
    (project / "teacher.json").write_text(json.dumps(teacher_only))
    train(load_config(project / "teacher.json", environ={}), run_dir=project / "teacher_run", log=Log(),
          progress=False)
    values["task"]["subword"] = {"vocab_size": 40, "shared": False, "min_frequency": 1}
    values["models"]["teacher"] = {"run": "teacher_run"}
    values["stages"] = values["stages"][1:]
    return values


def test_a_teacher_with_other_subword_vocabularies_teaches_a_smaller_vocabulary_by_seqkd(project, capsys):
    from blocks.cli import main
    from blocks.engine.run import load_run, train
    from blocks.generated_transfer import train_sources

    values = _teacher_run_with_its_own_vocabularies(project)
    (project / "seqkd.json").write_text(json.dumps(values))
    experiment = prepare(project, values)
    task = experiment.task
    assert task.vocabularies.target.vocab_size == 40 and task.vocabularies_of("teacher").target.vocab_size == 63
    assert experiment.models["teacher"].blocks["decoder"].embedding.num_embeddings == 63
    assert experiment.models["student"].blocks["decoder"].embedding.num_embeddings == 40
    # the teacher reads the sources encoded with its own vocabulary, the student with the task's
    teacher_key = experiment.model_inputs["teacher"]["source"]
    student_key = experiment.model_inputs["student"]["source"]
    assert teacher_key != student_key
    first = train_sources(experiment)[0]
    ids = experiment.splits["train"].ids
    assert ids[teacher_key][0].tolist()[:-1] == task.vocabularies_of("teacher").source.encode(first)
    assert ids[student_key][0].tolist()[:-1] == task.vocabularies.source.encode(first)

    log = Log()
    train(load_config(project / "seqkd.json", environ={}), run_dir=project / "run", log=log, progress=False)
    [folder] = [f for f in (project / "run" / "cache" / "generated").iterdir() if f.is_dir()]
    outputs = [json.loads(line)["output"] for line in (folder / OUTPUTS).read_text().splitlines()]
    _, teacher_run, _ = load_run(project / "teacher_run", log=lambda *a: None)
    batch = teacher_run.encode_file(str(project / "data" / "train"), with_labels=True).collate(torch.arange(4))
    teacher_run.models["teacher"].eval()
    direct = teacher_run.task.translations(teacher_run.task.generate_batch(
        teacher_run, "teacher", batch, decoding_settings(teacher_run.task, {"beam": 2})).tokens)
    assert log.has("model 'teacher' keeps the subword vocabularies of its run (63 target pieces against the "
                   "task's 40)")
    assert outputs[:4] == direct  # the same translations the teacher gives in its own run
    assert sum(bool(text.strip()) for text in outputs) > 24
    summary = json.loads((project / "run" / "summary.json").read_text())
    assert {"bleu", "chrf", "bleu_lc"} <= set(summary["models"]["student"]["dev"])
    teacher_summary = json.loads((project / "teacher_run" / "summary.json").read_text())["models"]["teacher"]
    assert summary["models"]["teacher"]["role"] == "teacher"  # it teaches through its translations
    assert summary["models"]["teacher"]["dev"] == teacher_summary["dev"]
    # the run directory tests the teacher too, with its run's vocabularies, as its own run does
    scores = []
    for run in ("run", "teacher_run"):
        capsys.readouterr()
        assert main(["test", str(project / run), "--model", "teacher", "--data", str(project / "data" / "dev"),
                     "--no-progress"]) == 0
        scores.append([line for line in capsys.readouterr().out.splitlines() if "bleu" in line])
    assert scores[0] == scores[1] and scores[0]


@pytest.mark.parametrize("change, path, message", [
    (lambda v: v["stages"][0].update(teachers=["teacher"], losses=[{"block": "KD"}]), "/stages/0/teachers/0",
     "only sequence-level KD (transfer.generate"),
    (lambda v: v["stages"].append({"name": "tune", "train": "teacher"}), "/stages/1/train",
     "reads the subword vocabularies of its run (63 target pieces against the task's 40)"),
])
def test_a_teacher_with_other_vocabularies_cannot_give_distributions_or_train(project, change, path, message):
    values = _teacher_run_with_its_own_vocabularies(project)
    change(values)
    with pytest.raises(ConfigError) as caught:
        prepare(project, values)
    assert caught.value.path == path and message in str(caught.value)


# -- config checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, path, message", [
    (lambda v: v["stages"].reverse(), "/stages/0/transfer/generate/teacher", "is not trained before this stage"),
    (lambda v: v["stages"][1]["transfer"]["generate"].update(teacher="nobody"), "/stages/1/transfer/generate/teacher",
     "model 'nobody' is not defined"),
    (lambda v: v["stages"][1]["transfer"]["generate"].update(teacher="student"),
     "/stages/1/transfer/generate/teacher", "is the model this stage trains"),
    (lambda v: v["stages"][1]["transfer"]["generate"].pop("teacher"), "/stages/1/transfer/generate",
     "name the model that decodes"),
    (lambda v: v["stages"][1]["transfer"]["generate"].update(beam=0), "/stages/1/transfer/generate/beam",
     "less than the minimum of 1"),
    (lambda v: v["stages"][1]["transfer"].update(max_examples=10), "/stages/1/transfer/max_examples",
     "does not combine"),
    (lambda v: v["stages"][1].update(cache_top_k=0), "/stages/1/cache_top_k", "full next-token distribution"),
])
def test_bad_generate_options_are_config_errors_at_their_json_path(project, change, path, message):
    values = seqkd_config()
    change(values)
    with pytest.raises(ConfigError) as caught:
        prepare(project, values)
    assert caught.value.path == path and message in str(caught.value)


def test_generate_needs_a_generating_task(tmp_path):
    from blocks.config.loader import load_config as load
    from blocks.experiment import check_references

    values = {"data": {"root": ".", "train": "t.tsv", "label": "label"}, "task": {"type": "classification"},
              "models": {"a": {"inputs": {"tokens": {"field": "text"}}, "graph": [
                  {"name": "embed", "block": "Embedding", "dim": 8}, {"name": "pool", "block": "Pooling"},
                  {"name": "logits", "block": "Linear"}]}},
              "stages": [{"name": "a", "train": "a"},
                         {"name": "b", "train": "a", "transfer": {"generate": {"teacher": "a"}}}]}
    values["models"]["b"] = copy.deepcopy(values["models"]["a"])
    values["stages"][1]["train"] = "b"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError) as caught:
        check_references(load(path, environ={}))
    assert caught.value.path == "/stages/1/transfer/generate" and "needs a task that generates" in str(caught.value)


# -- Multi30k, end to end ------------------------------------------------------------------------------


def test_blocks_train_with_seqkd_and_word_kd_on_a_few_dozen_multi30k_lines(multi30k_slice, capsys):
    from blocks.cli import main

    values = seqkd_config(beam=2)
    values["data"].update({"root": str(multi30k_slice), "train": "train", "dev": "val"})
    values["task"]["subword"] = {"vocab_size": 300, "shared": True, "min_frequency": 1}
    for model in values["models"].values():
        model["inputs"]["source"]["max_length"] = 64
    values["stages"][1].update({"teachers": ["teacher"], "cache_teachers": True, "cache_top_k": 4,
                                "losses": [{"block": "CrossEntropy", "weight": 0.5},
                                           {"block": "KD", "temperature": 1.0, "weight": 0.5}]})
    path = multi30k_slice.parent / "seqkd.json"
    path.write_text(json.dumps(values))
    assert main(["train", str(path), "--run-dir", str(multi30k_slice.parent / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "teacher 'teacher' decodes the 40 train sources (beam 2" in out
    assert "stage 'seqkd': transfer set of 40 examples" in out or "stage 'seqkd': transfer set of" in out
    assert "teacher cache built" in out
    [cache] = [f for f in (multi30k_slice.parent / "run" / "cache").iterdir() if (f / "meta.json").is_file()]
    [entry] = json.loads((cache / "meta.json").read_text())["entries"]
    assert entry["kind"] == "top_k" and entry["top_k"] == 4
    summary = json.loads((multi30k_slice.parent / "run" / "summary.json").read_text())
    assert set(summary["models"]["student"]["dev"]) == {"bleu", "chrf", "bleu_lc"}


@pytest.fixture
def multi30k_slice(tmp_path, monkeypatch):
    """The first 40 training and 10 validation pairs of Multi30k, copied into tmp_path/data."""
    import os
    from pathlib import Path

    env = os.environ.get("DISTILBLOCKS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = root / "multi30k"
    if not (folder / "train.en").is_file():
        pytest.skip(f"Multi30k not found at {folder} (set DISTILBLOCKS_DATA to the data folder)")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 40), ("val", 10)):
        for language in ("en", "de"):
            with open(folder / f"{split}.{language}", encoding="utf-8") as handle:
                lines = [next(handle) for _ in range(count)]
            (data / f"{split}.{language}").write_text("".join(lines), encoding="utf-8")
    return data
