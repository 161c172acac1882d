"""Transfer sets: a distillation stage trains on the train split, unlabelled files and augmented
copies labelled by its teachers (blocks/transfer_set.py), through the teacher cache and resume;
the gold-label losses ignore unlabelled examples; bad transfer configs and files are refused."""
from __future__ import annotations

import json
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from blocks.cli import main
from blocks.config.loader import load_config
from blocks.augmentation import teacher_word_vectors
from blocks.data.dataset import UNLABELLED
from blocks.transfer_set import WORD_MASK, build_transfer_set, make_transfer_set
from blocks.distill.losses import LossContext
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.run import train
from blocks.engine.teacher_cache import cache_components, key_of
from blocks.engine.trainer import StageTrainer
from blocks.errors import ConfigError
from blocks.registry import LOSSES
from tests.conftest import interrupt_on_call, quiet, write_tiny_bert
from tests.engine.test_teacher_cache import TeacherForwards

EXTRA = 50  # rows of the unlabelled file


def quiet_log(*args, **kwargs):
    pass


def with_extra_file(project, name="extra.tsv"):
    """An unlabelled file whose column is named differently from the task's ('review')."""
    rows = [(text,) for text, _ in project.sentences(EXTRA, 9)]
    project.write_tsv(project.data / name, rows, header=("review",))
    return {"path": name, "fields": {"text": "review"}}


def transfer_config(project, **transfer) -> dict:
    values = project.config()
    values["stages"][1]["transfer"] = transfer
    return values


def run(project, values, run_dir, resume=False, log=quiet_log):
    config = load_config(project.write(values, f"{run_dir}.json"), environ={})
    return train(config, run_dir=project.root / run_dir, resume=resume, progress=False, log=log)


def weights(path):
    tensors, _ = load_checkpoint(path)
    return {k: v.clone() for k, v in tensors.items()}


def trained_experiment(project, values):
    """The experiment of ``values`` with its teacher trained (stage 0 run for real)."""
    summary_dir = "teacher_only"
    single = json.loads(json.dumps(values))
    single["stages"] = single["stages"][:1]
    run(project, single, summary_dir)
    experiment = project.prepare(values)
    tensors, _ = load_checkpoint(project.root / summary_dir / "models" / "teacher.safetensors")
    experiment.models["teacher"].load_state_dict(tensors)
    return experiment


# -- end to end ----------------------------------------------------------------------------------


def test_student_distils_on_train_file_and_augmented_copies_through_the_cache_and_resume(project, monkeypatch):
    values = transfer_config(project, files=[with_extra_file(project)], augment={"copies": 2, "seed": 4})
    counter = TeacherForwards(monkeypatch)
    messages = []
    summary = run(project, values, "a", log=messages.append)
    line = next(m for m in messages if m.startswith("stage 'distill': transfer set of "))
    size = int(line.split("transfer set of ")[1].split(" ")[0].replace(",", ""))
    assert counter.count == math.ceil(size / 256)  # the teacher ran once over the transfer set, into the cache
    augmented = size - 120 - EXTRA
    assert f"120 train (labelled), {EXTRA} from 1 file(s), {augmented} augmented (2 copies per train example" in line
    assert 120 <= augmented <= 240  # identical copies are dropped
    assert any(m.startswith("  augmentation: mask 0.1, swap 0.1 (among 10 nearest words), n-gram 0.25") for m in messages)
    shown = [m for m in messages if m.startswith("    text: '")]
    assert len(shown) == 2 and all(" -> '" in m for m in shown)
    assert f"building teacher cache of teacher.logits for {size:,} examples" in " ".join(messages)
    assert "stage 'distill': training 'student' with teacher(s) teacher, " \
           f"{2 * math.ceil(size / 16)} steps" in messages  # an epoch is the whole transfer set
    meta = [json.loads(p.read_text()) for p in (project.root / "a" / "cache").glob("*/meta.json")]
    assert [m["examples"] for m in meta] == [size]
    assert summary["models"]["student"]["dev"]["accuracy"] >= 0.9

    # interrupted in the middle of 'distill' and resumed: the same transfer set, the same cache
    original = interrupt_on_call(monkeypatch, 4)  # the second evaluation of 'distill'
    with pytest.raises(KeyboardInterrupt):
        run(project, values, "b")
    monkeypatch.setattr(StageTrainer, "_evaluate_and_save", original)
    counter.count = 0
    messages.clear()
    run(project, values, "b", resume=True, log=messages.append)
    steps = math.ceil(size / 16)
    assert f"stage 'distill': training 'student' with teacher(s) teacher, {2 * steps} steps, resuming at step " \
           f"{steps}" in messages
    assert counter.count == 0
    assert any(m.startswith("teacher cache: reusing") and f"({size:,} examples)" in m for m in messages)
    assert not any("building teacher cache" in m or "rebuilding" in m for m in messages)
    a = weights(project.root / "a" / "models" / "student.safetensors")
    b = weights(project.root / "b" / "models" / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_cache_key_covers_the_transfer_set_content(project):
    values = transfer_config(project, augment={"copies": 2, "seed": 1})
    experiment = project.prepare(values)

    def key(split):
        return key_of(cache_components(experiment, split, "teacher", ["logits"], "float16", "fp32",
                                       torch.device("cpu")))

    first = make_transfer_set(experiment, 1).split
    again = make_transfer_set(experiment, 1).split
    assert key(first) == key(again)  # generated deterministically: a resumed stage finds its cache
    assert all(torch.equal(x, y) for k in first.ids for x, y in zip(first.ids[k], again.ids[k]))
    values["stages"][1]["transfer"]["augment"]["seed"] = 2
    other = make_transfer_set(project.prepare(values), 1).split
    assert key(other) != key(first)
    assert key(experiment.splits["train"]) not in (key(first), key(other))


def test_what_the_transfer_set_holds(project):
    values = transfer_config(project, files=[with_extra_file(project)],
                             augment={"copies": 1, "mask": 0.5, "swap": 0.0, "ngram": 0.0, "unique": False})
    experiment = project.prepare(values)
    train = experiment.splits["train"]
    built = make_transfer_set(experiment, 1)
    split = built.split
    assert built.counts == {"train": 120, "files": EXTRA, "augmented": 120}
    assert len(split) == 120 + EXTRA + 120
    assert torch.equal(split.labels[:120], train.labels)
    assert torch.all(split.labels[120:] == UNLABELLED)
    assert split.labelled.tolist() == [True] * 120 + [False] * (EXTRA + 120)
    batch = split.collate(torch.tensor([0, 130, 200]))
    assert batch.labelled.tolist() == [True, False, False]
    # a masked word is an unknown word to the word-level models; the others are the train words
    vocab = experiment.vocabularies["words"]
    key = experiment.model_inputs["student"]["tokens"]
    assert vocab.index(WORD_MASK) == vocab.unk_index
    copies = split.ids[key][120 + EXTRA:]
    masked = sum(int((ids == vocab.unk_index).sum()) for ids in copies)
    total = sum(len(ids) for ids in copies)
    assert 0.4 < masked / total < 0.6
    for original, copy in zip(train.ids[key], copies):
        kept = copy != vocab.unk_index
        assert torch.equal(copy[kept], original[kept])

    # only the train split: the stage trains on the split itself (same cache key as without a transfer key)
    values = transfer_config(project, train=True)
    experiment = project.prepare(values)
    assert build_transfer_set(experiment, 1, log=quiet) is experiment.splits["train"]


def test_max_examples_keeps_the_train_split_first(project):
    values = transfer_config(project, files=[with_extra_file(project)], max_examples=150)
    built = make_transfer_set(project.prepare(values), 1)
    assert built.counts == {"train": 120, "files": 30, "augmented": 0}
    assert built.split.labelled.sum() == 120
    values["stages"][1]["transfer"]["max_examples"] = 100
    built = make_transfer_set(project.prepare(values), 1)
    assert built.counts == {"train": 100, "files": 0, "augmented": 0} and built.split.labelled is None


def test_unlabelled_file_only_with_a_teacher_loss(project):
    values = transfer_config(project, train=False, files=[with_extra_file(project)])
    values["stages"][1]["losses"] = [{"block": "KD"}]
    messages = []
    summary = run(project, values, "run", log=messages.append)
    assert f"stage 'distill': transfer set of {EXTRA} examples: {EXTRA} from 1 file(s) (" in " ".join(messages)
    assert summary["models"]["student"]["dev"]["accuracy"] > 0.5


def test_regression_students_learn_the_teacher_scores_of_augmented_copies(project):
    values = transfer_config(project, augment={"copies": 2})
    values["task"] = {"type": "regression"}
    values["stages"][0]["losses"] = [{"block": "MSE"}]
    values["stages"][0]["epochs"] = 4
    values["stages"][1]["losses"] = [{"block": "LogitMSE", "weight": 1.0}, {"block": "MSE", "weight": 1.0}]
    values["stages"][1]["epochs"] = 4
    messages = []
    summary = run(project, values, "run", log=messages.append)  # a NaN from the unlabelled scores would stop it
    assert any(m.startswith("stage 'distill': transfer set of ") for m in messages)
    assert summary["models"]["student"]["dev"]["pearson"] > 0.8


# -- the gold-label losses -----------------------------------------------------------------------


def loss_block(name, task="classification", outputs=2):
    context = LossContext(student="student", teachers=[], output_of={"student": "logits"}, task=task,
                          num_outputs=outputs)
    return LOSSES.build(name, context, params={})


def test_cross_entropy_averages_over_labelled_examples_only():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([2, UNLABELLED, 0, UNLABELLED, 1])
    labelled = labels != UNLABELLED
    block = loss_block("CrossEntropy", outputs=3)
    outputs = {"student": {"logits": logits}}
    value = block(outputs, types.SimpleNamespace(labels=labels, labelled=labelled))
    assert torch.allclose(value, F.cross_entropy(logits[labelled], labels[labelled]))
    block.label_smoothing = 0.1
    value = block(outputs, types.SimpleNamespace(labels=labels, labelled=labelled))
    assert torch.allclose(value, F.cross_entropy(logits[labelled], labels[labelled], label_smoothing=0.1))
    value.backward()
    assert torch.all(logits.grad[~labelled] == 0) and torch.any(logits.grad[labelled] != 0)
    # a batch without a labelled example: 0, still in the graph
    logits.grad = None
    none = torch.full((5,), UNLABELLED)
    value = block(outputs, types.SimpleNamespace(labels=none, labelled=none != UNLABELLED))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.all(logits.grad == 0)
    # a batch of the plain train split (labelled = None): the usual cross-entropy
    full = torch.tensor([2, 1, 0, 0, 1])
    assert torch.equal(block(outputs, types.SimpleNamespace(labels=full, labelled=None)),
                       F.cross_entropy(logits, full, label_smoothing=0.1))


def test_mse_averages_over_labelled_examples_only():
    prediction = torch.tensor([[0.5], [2.0], [1.0]], requires_grad=True)
    labels = torch.tensor([1.0, float("nan"), 0.0])
    labelled = ~torch.isnan(labels)
    block = loss_block("MSE", task="regression", outputs=1)
    outputs = {"student": {"logits": prediction}}
    value = block(outputs, types.SimpleNamespace(labels=labels, labelled=labelled))
    assert torch.allclose(value, torch.tensor((0.25 + 1.0) / 2))
    value.backward()
    assert prediction.grad[1].item() == 0.0 and torch.isfinite(prediction.grad).all()
    nothing = torch.full((3,), float("nan"))
    value = block(outputs, types.SimpleNamespace(labels=nothing, labelled=torch.zeros(3, dtype=torch.bool)))
    assert value.item() == 0.0 and value.requires_grad


# -- a pretrained teacher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert_transfer")
    write_tiny_bert(folder, hidden_size=16, layers=1)
    return folder


def test_a_pretrained_teacher_reads_its_mask_token_and_gives_word_piece_vectors(project, tiny_bert):
    values = transfer_config(project, augment={"copies": 1, "mask": 1.0, "swap": 0.0, "ngram": 0.0})
    values["models"]["teacher"] = {
        "inputs": {"pieces": {"type": "pretrained", "field": "text", "tokenizer": str(tiny_bert), "max_length": 16}},
        "graph": [{"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "mean"},
                  {"name": "logits", "block": "Linear"}]}
    experiment = project.prepare(values)
    experiment.load_pretrained(quiet)
    split = make_transfer_set(experiment, 1).split
    pieces = experiment.model_inputs["teacher"]["pieces"]
    tokens = experiment.model_inputs["student"]["tokens"]
    copy = split.ids[pieces][120]
    assert copy[0] == 2 and copy[-1] == 3 and torch.all(copy[1:-1] == 4)  # [CLS] [MASK]... [SEP]
    assert torch.all(split.ids[tokens][120] == experiment.vocabularies["words"].unk_index)
    assert len(copy) == len(experiment.splits["train"].ids[pieces][0])
    # a word's vector is the mean of its word pieces' rows
    matrix = experiment.models["teacher"].blocks["encoder"].model.get_input_embeddings().weight
    vocab = experiment.vocabularies[experiment.fields[pieces].vocab]
    index = {token: i for i, token in enumerate(vocab.tokens)}
    vectors, counts = teacher_word_vectors(experiment, "teacher", ["goods", "Movie", "zzz"])
    assert counts.tolist() == [2, 1, 0]
    assert torch.allclose(vectors[0], (matrix[index["good"]] + matrix[index["##s"]]).detach() / 2)
    assert torch.allclose(vectors[1], matrix[index["movie"]].detach())


def test_each_field_of_a_sentence_pair_is_augmented_on_its_own(project, tiny_bert):
    for name, count, seed in (("train", 120, 1), ("dev", 40, 2), ("test", 40, 3)):
        rows = [(a, b, label) for (a, label), (b, _) in zip(project.sentences(count, seed),
                                                            project.sentences(count, seed + 10))]
        project.write_tsv(project.data / f"{name}.tsv", rows, header=("sentence", "other", "label"))
    values = transfer_config(project, augment={"copies": 1, "mask": 1.0, "swap": 0.0, "ngram": 0.0,
                                                "fields": ["text_b"]})
    values["data"]["fields"]["text_b"] = "other"
    values["models"]["teacher"] = {
        "inputs": {"pieces": {"type": "pretrained", "field": "text", "pair_field": "text_b",
                              "tokenizer": str(tiny_bert), "max_length": 32}},
        "graph": [{"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "mean"},
                  {"name": "logits", "block": "Linear"}]}
    experiment = project.prepare(values)
    experiment.load_pretrained(quiet)
    pieces = experiment.model_inputs["teacher"]["pieces"]
    split = make_transfer_set(experiment, 1).split
    original, copy = experiment.splits["train"].ids[pieces][0], split.ids[pieces][120]
    first = int((original == 3).nonzero()[0])  # [CLS] a [SEP] b [SEP]: only b is masked
    assert torch.equal(copy[:first + 1], original[:first + 1])
    assert torch.all(copy[first + 1:-1] == 4) and len(copy) == len(original)
    values["stages"][1]["transfer"]["augment"].pop("fields")  # default: every field, each on its own
    split = make_transfer_set(project.prepare(values), 1).split
    copy = split.ids[pieces][120]
    assert (copy == 4).sum() == len(copy) - 3  # [CLS] [MASK]... [SEP] [MASK]... [SEP]


# -- bad input -----------------------------------------------------------------------------------


def command(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.out, captured.err


def refused(project, capsys, values) -> str:
    path = project.write(values, "bad.json")
    code, _, err = command(capsys, "validate", path)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    return err.strip()


def test_validate_describes_the_transfer_set(project, capsys):
    values = transfer_config(project, files=[with_extra_file(project)], augment={"copies": 3})
    code, out, err = command(capsys, "validate", project.write(values))
    assert code == 0, err
    assert (f"  transfer set: train 120 + {EXTRA} from {project.data / 'extra.tsv'} + 3 augmented copies of each "
            f"train example (made when the stage starts)") in out


def test_missing_transfer_file(project, capsys):
    values = transfer_config(project, files=["nowhere.tsv"])
    err = refused(project, capsys, values)
    assert err == (f"error: {project.data / 'nowhere.tsv'}: file not found (a transfer-set file: "
                   f"{project.root / 'bad.json'}: /stages/1/transfer/files/0)")


def test_transfer_file_rows_without_a_field_the_models_read(project, capsys):
    lines = [json.dumps({"review": "a good movie"}), json.dumps({"sentence": "no review here"})]
    (project.data / "extra.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    values = transfer_config(project, files=[{"path": "extra.jsonl", "reader": {"format": "jsonl"},
                                               "fields": {"text": "review"}}])
    err = refused(project, capsys, values)
    assert err == (f"error: {project.data / 'extra.jsonl'}, line 2: no column 'review' (for field 'text'); "
                   f"columns: sentence")
    # without its own mapping a file reads the task's columns (data.fields: text -> sentence)
    values["stages"][1]["transfer"]["files"][0].pop("fields")
    err = refused(project, capsys, values)
    assert err.startswith(f"error: {project.data / 'extra.jsonl'}, line 1: no column 'sentence' (for field 'text')")


@pytest.mark.parametrize("augment, where, message", [
    ({"mask": 1.5}, "/stages/1/transfer/augment/mask", "1.5 is greater than the maximum of 1"),
    ({"swap": -0.2}, "/stages/1/transfer/augment/swap", "-0.2 is less than the minimum of 0"),
    ({"copies": -1}, "/stages/1/transfer/augment/copies", "-1 is less than the minimum of 0"),
    ({"mask": 0.6, "swap": 0.6}, "/stages/1/transfer/augment", "mask + swap must be at most 1"),
    ({"teacher": "teachr"}, "/stages/1/transfer/augment/teacher",
     "'teachr' is not a teacher of this stage; did you mean 'teacher'?"),
    ({"fields": ["txt"]}, "/stages/1/transfer/augment/fields/0",
     "field 'txt' is not read by the stage's models; did you mean 'text'?"),
    ({"copies": 2, "masks": 0.1}, "/stages/1/transfer/augment/masks", "unknown key 'masks'; did you mean 'mask'?"),
])
def test_bad_augment_settings_name_their_config_path(project, capsys, augment, where, message):
    err = refused(project, capsys, transfer_config(project, augment=augment))
    path = project.root / "bad.json"
    assert err.startswith(f"error: {path}: {where}: "), err
    assert message in err


def test_unlabelled_examples_need_teachers_and_a_teacher_loss(project, capsys):
    path = project.root / "bad.json"
    values = project.config()
    values["stages"][0]["transfer"] = {"augment": {"copies": 2}}
    err = refused(project, capsys, values)
    assert err.startswith(f"error: {path}: /stages/0/transfer: the transfer set holds augmented copies, which only "
                          f"teachers can label; give the stage \"teachers\"")

    values = transfer_config(project, files=[with_extra_file(project)])
    values["stages"][1]["losses"] = [{"block": "CrossEntropy"}]
    err = refused(project, capsys, values)
    assert err.startswith(f"error: {path}: /stages/1/losses: every loss of the stage (CrossEntropy) learns from "
                          f"gold labels only, but the transfer set holds unlabelled files without gold labels; "
                          f"add a loss that learns from the teachers")

    values["stages"][1]["transfer"]["train"] = False
    err = refused(project, capsys, values)
    assert "(and it holds no labelled examples at all)" in err

    values = transfer_config(project, train=False)
    err = refused(project, capsys, values)
    assert err == (f"error: {path}: /stages/1/transfer: the transfer set is empty: \"train\" is false and there "
                   f"are no files and no augmented copies")


def test_swaps_need_a_teacher_with_an_embedding_matrix(project):
    values = transfer_config(project, augment={"copies": 1})
    values["models"]["teacher"] = {
        "inputs": {"chars": {"field": "text", "type": "chars", "vocab": "chars"}},
        "graph": [{"name": "chars_cnn", "block": "CharCNN", "input": "chars", "filters": 4},
                  {"name": "pool", "block": "Pooling", "mode": "max"},
                  {"name": "logits", "block": "Linear"}]}
    experiment = project.prepare(values)
    with pytest.raises(ConfigError, match="/stages/1/transfer/augment/swap: teacher 'teacher' has no input-embedding "
                                          "matrix"):
        make_transfer_set(experiment, 1)
    values["stages"][1]["transfer"]["augment"]["swap"] = 0.0
    assert make_transfer_set(project.prepare(values), 1).counts["augmented"] > 0


# -- documentation and recipe --------------------------------------------------------------------

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_documented_example_is_a_valid_stage(project):
    import re

    text = (REPOSITORY / "docs" / "config.md").read_text(encoding="utf-8").split("### Transfer sets", 1)[1]
    stage = json.loads(re.findall(r"```json\n(.*?)```", text, flags=re.S)[0])
    values = project.config()
    values["stages"][1] = stage
    config = project.load(values)
    transfer = config["stages"][1]["transfer"]
    assert transfer["augment"]["copies"] == 2 and transfer["augment"]["unique"] is True
    assert transfer["files"][0]["fields"] == {"text": "text_a"}


def test_the_augmented_sst2_recipe_is_valid():
    """model_zoo/sst2/minilm_kd_bilstm_augmented.json, its teacher (a run not made here) taken from
    the recipe that makes it."""
    from blocks.catalog import load_builtin_entries
    from blocks.experiment import check_references

    config = load_config(REPOSITORY / "model_zoo" / "sst2" / "minilm_kd_bilstm_augmented.json", environ={},
                         planned_runs=True)
    load_builtin_entries()
    check_references(config)
    augment = config["stages"][0]["transfer"]["augment"]
    assert augment["copies"] == 2 and config["stages"][0]["losses"][0]["block"] == "LogitMSE"


def test_the_augmentation_benchmark_tool_runs(project, capsys):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("distilblocks_tool_bench_augment",
                                                  REPOSITORY / "tools" / "bench_augment.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    spec.loader.exec_module(tool)
    path = project.write(transfer_config(project, augment={"copies": 2}))
    assert tool.main(["--config", str(path), "--words", "good", "zzz"]) == 0
    out = capsys.readouterr().out
    assert "stage 'distill': transfer set of " in out and "make the transfer set: " in out
    assert "  good -> " in out and "  zzz -> (none)" in out
