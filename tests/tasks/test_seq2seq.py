"""The seq2seq task type end to end on a tiny synthetic parallel corpus (reverse the words and
upper-case them): parallel files, subword vocabularies saved in the run, per-position labels,
label-smoothed cross-entropy, generation, BLEU, test / predict from the run directory, and the
bad inputs a user meets first (misaligned files, empty lines, too-long sentences)."""
from __future__ import annotations

import copy
import json
import random
import shutil

import pytest
import torch
from torch.nn import functional as F

from blocks.config.loader import load_config
from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID
from blocks.errors import ConfigError, DataError
from blocks.experiment import Experiment
from blocks.tasks import UNLABELLED

WORDS = "ant bee cat dog eel fox gnu hen ibis jay kiwi lynx".split()


def write_pairs(root, name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        sources.append(" ".join(words))
        targets.append(" ".join(word.upper() for word in reversed(words)))
    (root / f"{name}.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (root / f"{name}.de").write_text("\n".join(targets) + "\n", encoding="utf-8")


TRANSLATOR = {
    "inputs": {"source": {"field": "en", "type": "source"}, "prefix": {"field": "de", "type": "target"}},
    "graph": [
        {"name": "embed", "block": "Embedding", "input": "source", "dim": 32},
        {"name": "encoder", "block": "TransformerEncoder", "layers": 1, "heads": 2, "dropout": 0.0},
        {"name": "decoder", "block": "TransformerDecoder", "input": ["encoder", "prefix"], "layers": 1, "heads": 2,
         "dropout": 0.0},
    ],
}


def seq2seq_config() -> dict:
    return {
        "seed": 1, "device": "cpu",
        "data": {"root": "data", "train": "train", "dev": "dev", "test": "test",
                 "reader": {"format": "parallel", "languages": ["en", "de"]}, "label": "de"},
        "task": {"type": "seq2seq", "source": "en",
                 "subword": {"vocab_size": 80, "shared": False, "min_frequency": 1}, "generation": {"beam": 3}},
        "models": {"model": copy.deepcopy(TRANSLATOR)},
        "stages": [{"name": "train", "train": "model", "epochs": 16, "batch_size": 8,
                    "optimizer": {"type": "adam", "lr": 0.003},
                    "losses": [{"block": "CrossEntropy", "label_smoothing": 0.1}]}],
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    write_pairs(data, "train", 400, 1)
    write_pairs(data, "dev", 40, 2)
    write_pairs(data, "test", 40, 3)
    return tmp_path


def write_config(root, values: dict, name: str = "config.json"):
    path = root / name
    path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return path


def prepare(root, values: dict, log=lambda *a, **k: None) -> Experiment:
    return Experiment.prepare(load_config(write_config(root, values), environ={}), log=log)


# -- data, inputs and labels ----------------------------------------------------------------------


def test_prefix_and_labels_are_the_target_shifted_by_one(project):
    experiment = prepare(project, seq2seq_config())
    split = experiment.splits["dev"]
    batch = split.collate(torch.arange(8))
    key = experiment.model_inputs["model"]["prefix"]
    prefix = batch.inputs[key]
    labels = batch.labels
    assert prefix.values.shape == labels.shape
    assert bool((prefix.values[:, 0] == BOS_ID).all())
    lengths = prefix.mask.sum(dim=1)
    for row, length in enumerate(lengths.tolist()):
        assert torch.equal(labels[row, :length - 1], prefix.values[row, 1:length])  # shifted by one
        assert labels[row, length - 1] == EOS_ID
        assert bool((labels[row, length:] == UNLABELLED).all())
        assert bool((prefix.values[row, length:] == PAD_ID).all())
    source = batch.inputs[experiment.model_inputs["model"]["source"]]
    source_lengths = source.mask.sum(dim=1)
    assert all(source.values[row, n - 1] == EOS_ID for row, n in enumerate(source_lengths.tolist()))
    # the references are the target sentences as read, for BLEU
    assert split.labels.texts[0] == (project / "data" / "dev.de").read_text().splitlines()[0]
    # the decoder's vocab_size defaults to the target vocabulary's size
    assert experiment.models["model"].output_spec.width == experiment.task.vocabularies.target.vocab_size


def test_label_smoothed_cross_entropy_over_target_positions(project):
    from blocks.distill.losses import CrossEntropy

    experiment = prepare(project, seq2seq_config())
    [(_, loss)] = experiment.build_losses(0)
    assert isinstance(loss, CrossEntropy) and loss.label_smoothing == 0.1
    batch = experiment.splits["dev"].collate(torch.arange(6))
    outputs = {"model": experiment.model_values("model", batch)}
    logits = outputs["model"]["decoder"].values
    assert logits.dim() == 3 and logits.shape[:2] == batch.labels.shape
    real = batch.labels != UNLABELLED
    expected = F.cross_entropy(logits[real], batch.labels[real], label_smoothing=0.1)
    assert torch.allclose(loss(outputs, batch), expected, atol=1e-6)


def test_misaligned_parallel_files_name_both_files(project):
    lines = (project / "data" / "train.de").read_text().splitlines()
    (project / "data" / "train.de").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError) as caught:
        prepare(project, seq2seq_config())
    message = str(caught.value)
    assert "train.en" in message and "train.de" in message and "400" in message and "399" in message


def test_empty_lines_are_skipped_and_counted_or_refused(project):
    lines = (project / "data" / "train.en").read_text().splitlines()
    lines[4] = "   "
    (project / "data" / "train.en").write_text("\n".join(lines) + "\n")
    logged = []
    experiment = prepare(project, seq2seq_config(), log=logged.append)
    assert len(experiment.splits["train"]) == 399
    assert any("1 sentence pair(s) with an empty side skipped (lines 5)" in line for line in logged), logged
    values = seq2seq_config()
    values["data"]["reader"]["empty"] = "error"
    with pytest.raises(DataError) as caught:
        prepare(project, values)
    assert "train.en, line 5: empty source sentence" in str(caught.value)


def test_too_long_sentences_are_cut_and_counted(project):
    values = seq2seq_config()
    values["task"]["max_target_length"] = 4
    values["models"]["model"]["inputs"]["source"]["max_length"] = 5
    logged = []
    experiment = prepare(project, values, log=logged.append)
    batch = experiment.splits["train"].collate(torch.arange(len(experiment.splits["train"])))
    assert batch.labels.shape[1] == 4 and batch.inputs[experiment.model_inputs["model"]["prefix"]].values.shape[1] == 4
    assert batch.inputs[experiment.model_inputs["model"]["source"]].values.shape[1] == 5
    assert any("field 'de' cut to their first 4 tokens" in line for line in logged), logged
    assert any("field 'en' cut to their first 5 tokens" in line for line in logged), logged


def test_metrics_and_models_that_do_not_fit_are_config_errors(project):
    values = seq2seq_config()
    values["task"]["metrics"] = ["bleu", "accuracy"]
    with pytest.raises(ConfigError) as caught:
        prepare(project, values)
    assert "/task/metrics/1" in str(caught.value) and "seq2seq metrics: bleu" in str(caught.value)
    values = seq2seq_config()
    values["models"]["model"]["graph"][2] = {"name": "decoder", "block": "Linear", "out": 7}
    with pytest.raises(ConfigError) as caught:
        prepare(project, values)
    assert "/models/model/graph/2" in str(caught.value) and "decoder" in str(caught.value)
    values = seq2seq_config()
    values["models"]["model"]["graph"][2]["max_length"] = 64
    with pytest.raises(ConfigError) as caught:
        prepare(project, values)
    assert "/models/model/graph/2/max_length" in str(caught.value) and "max_target_length 256" in str(caught.value)
    values["task"]["max_target_length"] = 64
    prepare(project, values)
    values = seq2seq_config()
    del values["task"]["source"]
    with pytest.raises(ConfigError, match="source field"):
        prepare(project, values)


def test_bleu_is_no_metric_of_a_classification_task(project):
    (project / "data" / "train.tsv").write_text("text\tlabel\na b\tx\nc d\ty\n")
    values = {"data": {"root": "data", "train": "train.tsv", "label": "label"}, "task": {"metrics": ["bleu"]},
              "models": {"m": {"inputs": {"text": {"field": "text"}},
                               "graph": [{"name": "e", "block": "Embedding", "dim": 4},
                                         {"name": "p", "block": "Pooling"}, {"name": "o", "block": "Linear"}]}},
              "stages": [{"name": "s", "train": "m", "epochs": 1}]}
    with pytest.raises(ConfigError) as caught:
        prepare(project, values)
    assert "/task/metrics/0" in str(caught.value)


# -- end to end -----------------------------------------------------------------------------------


def test_translator_trains_from_json_then_tests_and_translates_from_its_run(project, capsys):
    from blocks.cli import main
    from blocks.predictor import Predictor

    assert main(["train", str(write_config(project, seq2seq_config())), "--run-dir", "run", "--no-progress"]) == 0
    summary = json.loads((project / "run" / "summary.json").read_text())
    results = summary["models"]["model"]
    assert set(results["dev"]) == {"bleu", "chrf", "bleu_lc"}
    assert results["test"]["bleu"] > 60, results
    assert (project / "run" / "vocab" / "subword" / "subword.json").is_file()
    assert summary["metric_signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert "case:lc" in summary["metric_signatures"]["bleu_lc"] and summary["generation"]["beam"] == 3

    capsys.readouterr()
    assert main(["test", "run"]) == 0
    out = capsys.readouterr().out
    assert f"bleu {results['test']['bleu']:.4f}" in out  # the same beam search
    assert json.loads(out.splitlines()[-1])["decoding"] == "beam 3"
    assert main(["test", "run", "--greedy", "--no-progress"]) == 0
    greedy = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert greedy["decoding"] == "greedy" and set(greedy["results"]["model"]) == {"bleu", "chrf", "bleu_lc"}

    for flags, decoding in (([], "beam search, beam 3"), (["--greedy"], "greedy search")):
        capsys.readouterr()
        assert main(["bench", "run", "--examples", "8", "--repeats", "1", "--no-progress", *flags]) == 0
        out = capsys.readouterr().out
        assert f"decoding: {decoding}" in out and json.loads(out.splitlines()[-1])["models"]["model"]

    shutil.rmtree(project / "data")  # translating needs the run directory only
    [prediction] = Predictor(project / "run").predict(["ant bee cat dog"])
    assert prediction == {"source": "ant bee cat dog", "translation": "DOG CAT BEE ANT"}
    (project / "input.en").write_text("eel fox gnu\nhen ibis jay kiwi\n")
    capsys.readouterr()
    assert main(["predict", "run", "--input", "input.en"]) == 0
    assert capsys.readouterr().out.splitlines() == ["GNU FOX EEL", "KIWI JAY IBIS HEN"]

    capsys.readouterr()
    assert main(["export", "run", "--format", "onnx"]) == 2  # a stated limitation, not a traceback
    assert "it is exported as two TorchScript graphs: use --format torchscript" in capsys.readouterr().err


def test_a_resumed_run_checks_its_subword_vocabularies(project):
    from blocks.cli import main
    from blocks.engine.run import train
    from blocks.errors import CheckpointError

    values = seq2seq_config()
    values["stages"][0]["epochs"] = 1
    path = write_config(project, values)
    quiet = lambda *a, **k: None  # noqa: E731
    assert main(["train", str(path), "--run-dir", "run", "--no-progress"]) == 0
    config = load_config(path, environ={})
    train(config, run_dir="run", resume=True, log=quiet, progress=False)  # same data: the same vocabularies
    write_pairs(project / "data", "train", 400, 7)  # other sentences: other subword merges
    with pytest.raises(CheckpointError, match="subword vocabularies"):
        train(load_config(path, environ={}), run_dir="run", resume=True, log=quiet, progress=False)


def test_two_columns_of_one_file_and_their_empty_target(project):
    (project / "data" / "pairs.tsv").write_text("en\tde\nant bee\tBEE ANT\ncat dog eel\tEEL DOG CAT\n")
    values = seq2seq_config()
    values["data"].update({"train": "pairs.tsv", "dev": "pairs.tsv", "test": None, "reader": {}})
    experiment = prepare(project, values)
    assert experiment.splits["train"].labels.texts == ["BEE ANT", "EEL DOG CAT"]
    (project / "data" / "pairs.tsv").write_text("en\tde\nant bee\tBEE ANT\ncat dog eel\t \n")
    with pytest.raises(DataError) as caught:
        prepare(project, values)
    assert "pairs.tsv, line 3: an empty target sentence" in str(caught.value)


def test_a_source_input_outside_a_seq2seq_task_is_a_config_error(project):
    (project / "data" / "train.tsv").write_text("text\tlabel\na b\tx\nc d\ty\n")
    values = {"data": {"root": "data", "train": "train.tsv", "label": "label"},
              "models": {"m": {"inputs": {"text": {"field": "text", "type": "source"}},
                               "graph": [{"name": "e", "block": "Embedding", "dim": 4},
                                         {"name": "p", "block": "Pooling"}, {"name": "o", "block": "Linear"}]}},
              "stages": [{"name": "s", "train": "m", "epochs": 1}]}
    with pytest.raises(ConfigError, match="inputs of type 'source' belong to a task that encodes them") as caught:
        prepare(project, values)
    assert "/models/m/inputs/text/type" in str(caught.value)


def test_a_translator_exports_as_encoder_and_decoder_step_and_translates_as_the_run_does(project, capsys):
    from blocks.cli import main
    from blocks.export_seq2seq import ExportedTranslator
    from blocks.predictor import Predictor

    values = seq2seq_config()
    values["models"]["model"]["graph"][2]["positions"] = "sinusoidal"
    assert main(["train", str(write_config(project, values)), "--run-dir", "run", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "run", "--format", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert "greedy translations, 0 differ" in out, out
    folder = project / "run" / "export"
    assert {f.name for f in folder.iterdir()} == {"model.encoder.pt", "model.decoder_step.pt", "model.pt.json",
                                                  "model.subword"}
    sidecar = json.loads((folder / "model.pt.json").read_text())
    assert sidecar["decoder"] == {"layers": 1, "heads": 2, "head_size": 16, "max_length": 256}
    assert sidecar["check"]["differing"] == 0 and sidecar["check"]["greedy_translations"] == 40

    shutil.rmtree(project / "data")
    texts = ["ant bee cat dog", "eel fox gnu", "hen ibis jay kiwi lynx ant"]
    exported = ExportedTranslator(folder / "model.pt.json")
    predictor = Predictor(project / "run")
    assert exported.translate(texts) == [p["translation"] for p in predictor.predict(texts)]  # beam 3
    assert exported.translate(texts)[0] == "DOG CAT BEE ANT"
    greedy = exported.translate(texts, strategy="greedy")
    assert len(greedy) == 3 and greedy[0] == "DOG CAT BEE ANT"


def test_exporting_a_recurrent_translator_says_why_not(project, capsys):
    from blocks.cli import main

    values = seq2seq_config()
    values["models"]["model"]["graph"] = [
        {"name": "embed", "block": "Embedding", "input": "source", "dim": 16},
        {"name": "encoder", "block": "BiGRU", "hidden": 8},
        {"name": "decoder", "block": "RNNDecoder", "input": ["encoder", "prefix"], "hidden": 16}]
    values["stages"][0]["epochs"] = 1
    assert main(["train", str(write_config(project, values)), "--run-dir", "run", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "run", "--format", "torchscript"]) == 2
    assert "decodes with RNNDecoder; only a TransformerDecoder is exported yet" in capsys.readouterr().err
