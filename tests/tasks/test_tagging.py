"""The tagging task type end to end on a tiny synthetic CoNLL-style data set: reading, schemes,
per-word labels, CRF and softmax taggers, token-level and CRF distillation, the teacher cache,
test / predict from a run directory, and the errors a user meets first."""
from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from blocks.config.loader import load_config
from blocks.errors import ConfigError, DataError
from blocks.experiment import Experiment

PEOPLE = ["Anna", "Bruno", "Clara", "Dmitri", "Elena"]
PLACES = [["Paris"], ["Rome"], ["New", "York"], ["Oslo"]]
FILLER = ["the", "visit", "of", "went", "to", "said", "in", "today", "met", "a", "city", "friend"]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    words = [(w, "O") for w in rng.sample(FILLER, 3)]
    person = rng.choice(PEOPLE)
    place = rng.choice(PLACES)
    words.insert(rng.randrange(len(words) + 1), (person, "B-PER"))
    tagged_place = [(w, "B-LOC" if i == 0 else "I-LOC") for i, w in enumerate(place)]
    position = rng.randrange(len(words) + 1)
    return words[:position] + tagged_place + words[position:]


def write_conll(path, count: int, seed: int, docstart: bool = True) -> None:
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- O", ""] if docstart else []
    for _ in range(count):
        for word, tag in sentence(rng):
            lines.append(f"{word} X {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


TAGGER = {
    "inputs": {"words": {"field": "words", "lowercase": True}, "chars": {"field": "words", "type": "chars",
                                                                         "vocab": "chars"}},
    "graph": [
        {"name": "embed", "block": "Embedding", "input": "words", "dim": 12},
        {"name": "casing", "block": "Casing", "input": "chars", "dim": 4},
        {"name": "features", "block": "Concat", "input": ["embed", "casing"]},
        {"name": "encoder", "block": "BiLSTM", "hidden": 12},
        {"name": "emissions", "block": "Linear"},
        {"name": "crf", "block": "CRF"},
    ],
}
SOFTMAX_STUDENT = {
    "inputs": {"words": {"field": "words", "lowercase": True}},
    "graph": [
        {"name": "embed", "block": "Embedding", "input": "words", "dim": 8},
        {"name": "logits", "block": "Linear"},
    ],
}


def tagging_config() -> dict:
    return {
        "seed": 2, "device": "cpu",
        "data": {"root": "data", "train": "train.txt", "dev": "dev.txt", "test": "test.txt",
                 "reader": {"format": "columns", "columns": ["words", "pos", "ner"], "delimiter": " "},
                 "label": "ner"},
        "task": {"type": "tagging", "scheme": "IOB2"},
        "models": {"teacher": copy.deepcopy(TAGGER), "student": copy.deepcopy(SOFTMAX_STUDENT)},
        "stages": [
            {"name": "teacher", "train": "teacher", "epochs": 6, "batch_size": 8,
             "optimizer": {"type": "adam", "lr": 0.03}, "losses": [{"block": "CRFLoss"}]},
            {"name": "distill", "train": "student", "teachers": ["teacher"], "epochs": 4, "batch_size": 8,
             "optimizer": {"type": "adam", "lr": 0.05},
             "losses": [{"block": "KD", "teacher_output": "emissions", "temperature": 2.0, "weight": 0.5},
                        {"block": "CrossEntropy", "weight": 0.5}]},
        ],
    }


@pytest.fixture
def tagging_project(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    write_conll(data / "train.txt", 80, 1)
    write_conll(data / "dev.txt", 30, 2)
    write_conll(data / "test.txt", 30, 3)
    return tmp_path


def write_config(root, values: dict, name: str = "config.json"):
    path = root / name
    path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return path


def prepare(root, values: dict) -> Experiment:
    return Experiment.prepare(load_config(write_config(root, values), environ={}), log=lambda *a, **k: None)


# -- labels and data ------------------------------------------------------------------------------


def test_per_word_labels_are_read_collated_and_padded(tagging_project):
    experiment = prepare(tagging_project, tagging_config())
    task, train = experiment.task, experiment.splits["train"]
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert isinstance(train.labels, list) and len(train.labels) == 80
    assert all(len(tags) == len(ids) for tags, ids in zip(train.labels, train.ids[experiment.model_inputs["teacher"]["words"]]))
    batch = train.collate(torch.tensor([0, 1, 2]))
    lengths = [len(train.labels[i]) for i in range(3)]
    assert batch.labels.shape == (3, max(lengths))
    for row, length in enumerate(lengths):
        assert (batch.labels[row, :length] >= 0).all() and (batch.labels[row, length:] == -100).all()


def test_a_tag_breaking_the_scheme_names_file_and_line_or_is_repaired(tagging_project):
    lines = ["the X O", "Anna X I-PER", "went X O", ""] * 3
    (tagging_project / "data" / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        prepare(tagging_project, tagging_config())
    assert "train.txt, line 2" in str(caught.value) and "I-PER" in str(caught.value)
    values = tagging_config()
    values["task"]["repair"] = True
    values["data"]["dev"] = values["data"]["test"] = "train.txt"
    experiment = prepare(tagging_project, values)
    assert experiment.task.labels == ["O", "B-PER", "I-PER"]  # the scheme's tags of the one type seen
    assert all(tags.tolist() == [0, 1, 0] for tags in experiment.splits["train"].labels)  # I-PER became B-PER


def test_word_and_tag_counts_must_agree_in_a_table(tagging_project):
    rows = ["text\ttags", "Anna went to Rome\tB-PER O O B-LOC", "the visit\tO O O"]
    (tagging_project / "data" / "train.tsv").write_text("\n".join(rows) + "\n")
    values = tagging_config()
    values["data"] = {"root": "data", "train": "train.tsv", "label": "tags"}
    values["models"]["student"]["inputs"]["words"]["field"] = "text"
    values["models"]["teacher"]["inputs"] = {"words": {"field": "text"}, "chars": {"field": "text", "type": "chars",
                                                                                   "vocab": "chars"}}
    values["stages"] = values["stages"][:1]
    with pytest.raises(DataError) as caught:
        prepare(tagging_project, values)
    assert "train.tsv, line 3" in str(caught.value) and "2 word(s)" in str(caught.value) and "3 tag(s)" in str(caught.value)


def test_a_tag_not_seen_in_training_is_reported_with_its_line(tagging_project):
    with open(tagging_project / "data" / "dev.txt", "a") as handle:
        handle.write("Zed X B-ORG\n\n")
    with pytest.raises(DataError) as caught:
        prepare(tagging_project, tagging_config())
    assert "dev.txt" in str(caught.value) and "B-ORG" in str(caught.value)


# -- validation of graphs and losses -----------------------------------------------------------------


def test_a_pooled_tagger_is_refused_with_the_node_path(tagging_project):
    values = tagging_config()
    values["models"]["student"]["graph"].insert(1, {"name": "pool", "block": "Pooling", "mode": "max"})
    with pytest.raises(ConfigError) as caught:
        prepare(tagging_project, values)
    assert "/models/student/graph/2" in str(caught.value) and "tagging" in str(caught.value)


@pytest.mark.parametrize("loss, expected", [
    ({"block": "CRFLoss"}, "tag_scores"),  # the softmax student has no CRF
    ({"block": "MSE"}, "regression"),
    ({"block": "CRFPosteriorKD"}, "tag_scores"),
])
def test_a_loss_that_does_not_fit_the_student_is_a_config_error(tagging_project, loss, expected):
    values = tagging_config()
    values["stages"][1]["losses"] = [loss]
    experiment = prepare(tagging_project, values)
    with pytest.raises(ConfigError) as caught:
        experiment.build_losses(1)
    assert "/stages/1/losses/0" in str(caught.value) and expected in str(caught.value)


def test_kd_on_a_crf_node_points_at_the_emissions(tagging_project):
    values = tagging_config()
    values["models"]["student"] = copy.deepcopy(TAGGER)
    values["stages"][1]["losses"] = [{"block": "KD"}]
    experiment = prepare(tagging_project, values)
    with pytest.raises(ConfigError) as caught:
        experiment.build_losses(1)
    assert "emission" in str(caught.value)


# -- training, distillation, the run directory ----------------------------------------------------


def test_crf_teacher_and_distilled_student_train_from_json(tagging_project, capsys):
    from blocks.cli import main

    values = tagging_config()
    path = write_config(tagging_project, values)
    assert main(["train", str(path), "--run-dir", "run", "--no-progress"]) == 0
    summary = json.loads((tagging_project / "run" / "summary.json").read_text())
    assert summary["models"]["teacher"]["test"]["entity_f1"] > 0.9
    assert summary["models"]["student"]["test"]["entity_f1"] > 0.9
    assert set(summary["models"]["student"]["dev"]) == {"entity_f1", "entity_precision", "entity_recall",
                                                         "token_accuracy"}
    assert summary["models"]["student"]["words_per_second_batch64"] > summary["models"]["student"][
        "examples_per_second_batch64"]
    capsys.readouterr()
    assert main(["test", "run"]) == 0
    out = capsys.readouterr().out
    assert "entity_f1" in out

    # predict: CoNLL columns (word, tag) and JSON Lines with entity spans
    from blocks.predictor import Predictor

    predictor = Predictor(tagging_project / "run")
    [prediction] = predictor.predict(["Clara went to New York"])
    assert prediction["words"] == ["Clara", "went", "to", "New", "York"]
    assert prediction["tags"] == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert prediction["entities"] == [{"type": "PER", "start": 0, "end": 1, "text": "Clara"},
                                      {"type": "LOC", "start": 3, "end": 5, "text": "New York"}]
    (tagging_project / "input.txt").write_text("Anna X O\nmet X O\nBruno X O\n\n")
    capsys.readouterr()
    assert main(["predict", "run", "--input", "input.txt"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == ["Anna\tB-PER", "met\tO", "Bruno\tB-PER"]

    # export: the CRF tagger's Viterbi path, checked against PyTorch on other batch shapes
    from blocks.export import export_model

    for fmt in ("torchscript", "onnx"):
        result = export_model(tagging_project / "run", fmt, model="teacher", log=lambda *a: None)
        assert result["check"]["max_abs_diff"] == 0.0, result["check"]
    sidecar = json.loads((tagging_project / "run" / "export" / "teacher.pt.json").read_text())
    assert sidecar["outputs"][0]["dtype"] == "int64" and sidecar["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]

    # bench reports words per second for a tagger
    assert main(["bench", "run", "--examples", "20", "--repeats", "1"]) == 0
    assert "words/s at batch 64" in capsys.readouterr().out


def test_crf_posterior_and_viterbi_kd_from_a_cached_crf_teacher(tagging_project):
    from blocks.engine.run import train

    values = tagging_config()
    values["models"]["student"] = copy.deepcopy(TAGGER)
    values["stages"][1]["cache_teachers"] = True
    values["stages"][1]["losses"] = [{"block": "CRFPosteriorKD", "weight": 0.5}, {"block": "ViterbiKD", "weight": 0.3},
                                     {"block": "CRFLoss", "weight": 0.2}]
    path = write_config(tagging_project, values)
    lines = []
    train(load_config(path, environ={}), run_dir=tagging_project / "run", progress=False, log=lines.append)
    assert any("teacher cache" in line for line in lines), lines
    caches = list((tagging_project / "run" / "cache").glob("*/meta.json"))
    assert caches and json.loads(caches[0].read_text())["entries"][0]["kind"] == "tag_scores"
    history = [json.loads(line) for line in (tagging_project / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in history if r.get("event") == "eval" and r.get("stage") == "distill"]
    assert evaluations and max(r["metrics"]["entity_f1"] for r in evaluations) > 0.9


def test_cached_crf_values_equal_the_teacher_forward(tagging_project):
    from blocks.engine.teacher_cache import CacheRequest, open_or_build

    values = tagging_config()
    experiment = prepare(tagging_project, values)
    train = experiment.splits["train"]
    cache = open_or_build(CacheRequest(
        experiment, train, {"teacher": ["crf"]}, tagging_project / "run", torch.device("cpu"), "fp32",
        "float16", 16, progress=False, log=lambda *a: None))
    index = torch.tensor([5, 0, 17])
    batch = train.collate(index)
    experiment.models["teacher"].eval()
    with torch.no_grad():
        direct = experiment.model_values("teacher", batch)["crf"]
    cached = cache.outputs(index, torch.device("cpu"))["teacher"]["crf"]
    length = cached.emissions.shape[1]
    assert torch.equal(cached.mask, direct.mask[:, :length])
    assert torch.allclose(cached.emissions, direct.emissions[:, :length], atol=1e-6)
    for name in ("transitions", "start", "end"):
        assert torch.allclose(getattr(cached, name), getattr(direct, name))


def test_bioes_model_is_scored_in_iob2(tagging_project):
    values = tagging_config()
    values["task"]["model_scheme"] = "BIOES"
    values["stages"] = values["stages"][:1]
    experiment = prepare(tagging_project, values)
    assert "S-PER" in experiment.task.labels and "E-LOC" in experiment.task.labels
    from blocks.engine.evaluation import evaluate

    gold = experiment.splits["dev"].labels
    # a model that predicts the gold tags scores 1.0 after conversion back to IOB2
    scores = experiment.task.metrics(gold, experiment.splits["dev"], ["entity_f1", "token_accuracy"])
    assert scores == {"entity_f1": 1.0, "token_accuracy": 1.0}
    assert set(evaluate(experiment, "teacher", experiment.splits["dev"], 16, torch.device("cpu"))) >= {"entity_f1"}


def test_entity_metrics_match_seqeval():
    from seqeval.metrics import f1_score, precision_score, recall_score

    from blocks.metrics import compute_metrics
    from blocks.tasks.tagging import TagPredictions

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-ORG"]]
    values = compute_metrics(["entity_f1", "entity_precision", "entity_recall", "token_accuracy"],
                             TagPredictions(predicted, gold, "IOB2"))
    assert values["entity_f1"] == pytest.approx(f1_score(gold, predicted))
    assert values["entity_precision"] == pytest.approx(precision_score(gold, predicted))
    assert values["entity_recall"] == pytest.approx(recall_score(gold, predicted))
    assert values["token_accuracy"] == pytest.approx(4 / 6)


# -- word pieces ------------------------------------------------------------------------------------


def test_word_align_first_and_mean():
    from blocks.layers.word_alignment import WordAlign
    from blocks.values import SEQUENCE, TOKENS, Sequence, Spec, WordPieces

    states = torch.arange(12, dtype=torch.float).reshape(1, 6, 2)
    #            [CLS] w0  w1a w1b w2  [SEP]
    words = torch.tensor([[-1, 0, 1, 1, 2, -1]])
    pieces = WordPieces(torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 6, dtype=torch.bool), words)
    specs = [Spec(SEQUENCE, 2), Spec(TOKENS, None, None, {"words": True})]
    first = WordAlign(specs, "first")(Sequence(states, torch.ones(1, 6, dtype=torch.bool)), pieces)
    mean = WordAlign(specs, "mean")(Sequence(states, torch.ones(1, 6, dtype=torch.bool)), pieces)
    assert first.mask.tolist() == [[True, True, True]]
    assert first.values[0].tolist() == [[2, 3], [4, 5], [8, 9]]
    assert mean.values[0].tolist() == [[2, 3], [5, 6], [8, 9]]


def write_word_piece_bert(tagging_project):
    """A random BERT over this data's words, some of which split into pieces, in ./bert."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tagging_project / "bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w.lower() for w in FILLER}) + \
        ["anna", "bruno", "clara", "paris", "rome", "new", "york", "os", "##lo", "d", "##mi", "##tri", "el", "##ena"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)


def test_a_word_piece_teacher_meets_the_student_at_words(tagging_project):
    from blocks.engine.run import train

    write_word_piece_bert(tagging_project)
    values = tagging_config()
    values["models"]["teacher"] = {
        "inputs": {"pieces": {"type": "pretrained", "field": "words", "tokenizer": "bert", "max_length": 32}},
        "graph": [{"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "none"},
                  {"name": "words", "block": "WordAlign", "input": ["encoder", "pieces"]},
                  {"name": "logits", "block": "Linear"}]}
    values["stages"][0].update({"losses": [{"block": "CrossEntropy"}], "epochs": 2,
                                "optimizer": {"type": "adamw", "lr": 1e-3}})
    values["stages"][1]["losses"][0] = {"block": "KD", "temperature": 2.0, "weight": 0.5}
    experiment = prepare(tagging_project, values)
    batch = experiment.splits["train"].collate(torch.arange(4))
    with torch.no_grad():
        teacher_words = experiment.model_values("teacher", batch)["words"]
    student_key = experiment.model_inputs["student"]["words"]
    assert torch.equal(teacher_words.mask, batch.inputs[student_key].mask)  # one state per word
    path = write_config(tagging_project, values)
    train(load_config(path, environ={}), run_dir=tagging_project / "run", progress=False, log=lambda *a: None)
    assert (tagging_project / "run" / "summary.json").is_file()



def test_words_cut_by_the_piece_limit_keep_their_positions_beside_other_word_features(tagging_project):
    """A WordAlign node has one position per word even where max_length cut the last words' pieces
    (masked out), so it concatenates with character features; the cut sentences are counted."""
    from blocks.engine.run import train

    write_word_piece_bert(tagging_project)
    values = tagging_config()
    values["models"]["teacher"] = {
        "inputs": {"pieces": {"type": "pretrained", "field": "words", "tokenizer": "bert", "max_length": 4},
                   "chars": {"field": "words", "type": "chars", "vocab": "chars"}},
        "graph": [{"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "none"},
                  {"name": "words", "block": "WordAlign", "input": ["encoder", "pieces"]},
                  {"name": "casing", "block": "Casing", "input": "chars", "dim": 4},
                  {"name": "features", "block": "Concat", "input": ["words", "casing"]},
                  {"name": "logits", "block": "Linear"}]}
    values["stages"][0].update({"losses": [{"block": "CrossEntropy"}], "epochs": 1,
                                "optimizer": {"type": "adamw", "lr": 1e-3}})
    values["stages"][1]["losses"][0] = {"block": "KD", "temperature": 2.0, "weight": 0.5}
    lines = []
    experiment = prepare(tagging_project, values)
    split = experiment.splits["train"]
    assert split.truncated["words"][1] == 4 and split.truncated["words"][0] > 0  # 2 pieces: fewer than the words
    batch = split.collate(torch.arange(8))
    pieces = batch.inputs[experiment.model_inputs["teacher"]["pieces"]]
    words_mask = batch.inputs[experiment.model_inputs["student"]["words"]].mask
    assert torch.equal(pieces.counts, words_mask.sum(dim=1))  # every word counted, cut or not
    with torch.no_grad():
        aligned = experiment.model_values("teacher", batch)["words"]
    assert aligned.mask.shape == words_mask.shape  # one position per word
    assert bool((aligned.mask <= words_mask).all()) and aligned.mask.sum() < words_mask.sum()  # the cut ones masked
    assert bool((aligned.values[~aligned.mask] == 0).all())
    train(load_config(write_config(tagging_project, values), environ={}), run_dir=tagging_project / "run",
          progress=False, log=lines.append)
    assert (tagging_project / "run" / "summary.json").is_file()
    assert any("4" in line and "cut" in line for line in lines), [line for line in lines if "cut" in line]



def test_an_augmented_transfer_set_for_a_tagger(tagging_project):
    """Perturbed copies of the training sentences, tagged by the teacher (token-level KD)."""
    from blocks.engine.run import train

    values = tagging_config()
    values["stages"][1]["transfer"] = {"augment": {"copies": 2, "mask": 0.2, "swap": 0.0, "ngram": 0.0}}
    values["stages"][1]["epochs"] = 2
    lines = []
    train(load_config(write_config(tagging_project, values), environ={}), run_dir=tagging_project / "run",
          progress=False, log=lines.append)
    described = " ".join(lines)
    assert "augmented" in described, lines
    summary = json.loads((tagging_project / "run" / "summary.json").read_text())
    assert summary["models"]["student"]["test"]["entity_f1"] > 0.8


def test_raw_sentences_split_by_a_tokenizer_are_a_tagger_transfer_set(tagging_project):
    """Unlabelled raw text, split into words by a registered tokenizer, tagged by the teacher."""
    from blocks.engine.run import train
    from blocks.transfer_set import file_sources, read_transfer_file

    raw = ["text", "Anna went to Rome, yesterday.", "Bob's visit to Paris (France) ended."]
    (tagging_project / "data" / "raw.tsv").write_text("\n".join(raw) + "\n", encoding="utf-8")
    values = tagging_config()
    values["stages"][1]["transfer"] = {"files": [{"path": "raw.tsv", "reader": {"format": "tsv"},
                                                  "fields": {"words": "text"}, "tokenizer": "treebank"}]}
    values["stages"][1]["epochs"] = 1
    config = load_config(write_config(tagging_project, values), environ={})
    source, = file_sources(config.values["data"], config.values["stages"][1]["transfer"])
    rows = read_transfer_file(source, ["words"])
    assert [row.fields["text"] for row in rows] == ["Anna went to Rome , yesterday .",
                                                    "Bob 's visit to Paris ( France ) ended ."]
    lines = []
    train(config, run_dir=tagging_project / "run", progress=False, log=lines.append)
    assert any("82 examples" in line and "2 from" in line for line in lines), [l for l in lines if "transfer" in l]


def test_an_unknown_transfer_file_tokenizer_names_its_config_path(tagging_project):
    values = tagging_config()
    values["stages"][1]["transfer"] = {"files": [{"path": "train.txt", "tokenizer": "treebnak"}]}
    with pytest.raises(ConfigError) as caught:
        prepare(tagging_project, values)
    assert "/stages/1/transfer/files/0/tokenizer" in str(caught.value) and "treebank" in str(caught.value)
