"""GenerationKD, the generation-KD family as one loss: each switch, the methods it reproduces
(word-level KD = KD per target position, gold target = CrossEntropy, teacher_argmax = CE on the
teacher's greedy tokens), rollouts and their masks, the beta mixture, the top-k renormalisation
(cached = in the loop), gradients, the trainer's prepare_batch hook, the vocabulary checks, and a
short end-to-end run on Multi30k lines (ImitKD and word-level KD)."""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from blocks.config.loader import load_config
from blocks.data.dataset import Batch
from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID
from blocks.distill.generation_losses import GenerationKD, RolloutBatch, top_k_log_probs
from blocks.distill.losses import BatchContext, CrossEntropy, KnowledgeDistillation, LossContext
from blocks.errors import ConfigError, TrainingError
from blocks.experiment import Experiment
from blocks.tasks import UNLABELLED
from blocks.values import Sequence, TopKLogProbs

WORDS = "ant bee cat dog eel fox gnu hen ibis jay kiwi lynx".split()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pairs(root: Path, name: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        sources.append(" ".join(words))
        targets.append(" ".join(word.upper() for word in reversed(words)))
    (root / f"{name}.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (root / f"{name}.de").write_text("\n".join(targets) + "\n", encoding="utf-8")


def translator(width: int) -> dict:
    return {
        "inputs": {"source": {"field": "en", "type": "source"}, "prefix": {"field": "de", "type": "target"}},
        "graph": [
            {"name": "embed", "block": "Embedding", "input": "source", "dim": width},
            {"name": "encoder", "block": "TransformerEncoder", "layers": 1, "heads": 2, "dropout": 0.0},
            {"name": "decoder", "block": "TransformerDecoder", "input": ["encoder", "prefix"], "layers": 1,
             "heads": 2, "dropout": 0.0},
        ],
    }


def config(*losses: dict, data: str = "data") -> dict:
    return {
        "seed": 1, "device": "cpu",
        "data": {"root": data, "train": "train", "dev": "dev",
                 "reader": {"format": "parallel", "languages": ["en", "de"]}, "label": "de"},
        "task": {"type": "seq2seq", "source": "en", "subword": {"vocab_size": 60, "shared": True, "min_frequency": 1},
                 "generation": {"beam": 2, "max_length_a": 4, "max_length_b": 1.0}},
        "models": {"teacher": translator(32), "student": translator(16)},
        "stages": [{"name": "teacher", "train": "teacher", "epochs": 1, "batch_size": 8, "max_steps": 1,
                    "optimizer": {"type": "adam", "lr": 0.003}, "losses": [{"block": "CrossEntropy"}]},
                   {"name": "distill", "train": "student", "teachers": ["teacher"], "epochs": 1, "batch_size": 8,
                    "optimizer": {"type": "adam", "lr": 0.003}, "losses": list(losses)}],
    }


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_pairs(tmp_path / "data", "train", 120, 1)
    write_pairs(tmp_path / "data", "dev", 16, 2)
    return tmp_path


def write_config(root: Path, values: dict, name: str = "config.json") -> Path:
    path = root / name
    path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return path


def prepare(root: Path, values: dict) -> Experiment:
    torch.manual_seed(0)
    return Experiment.prepare(load_config(write_config(root, values), environ={}), log=lambda *a, **k: None)


def build(project, **options) -> tuple[Experiment, GenerationKD]:
    experiment = prepare(project, config({"block": "GenerationKD", **options}))
    [(_, loss)] = experiment.build_losses(1)
    return experiment, loss


def batch_of(experiment, count: int = 8) -> Batch:
    return experiment.splits["train"].collate(torch.arange(count))


def outputs_on(experiment, batch) -> dict:
    return {name: experiment.model_values(name, batch) for name in ("student", "teacher")}


def context(experiment, step: int = 0, model: str = "student") -> BatchContext:
    return BatchContext(experiment, model, torch.device("cpu"), step)


def prefix_key(experiment, model: str = "student") -> str:
    return experiment.model_inputs[model]["prefix"]


# -- the switches -------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"prefix": "student", "target": "gold"}, "target 'gold' needs prefix 'data'"),
    ({"prefix": "mixture", "target": "gold"}, "target 'gold' needs prefix 'data'"),
    ({"prefix": "data", "beta": {"type": "constant", "start": 0.5}}, "beta is the probability of a data prefix"),
    ({"prefix": "mixture", "target": "teacher_argmax", "beta": {"type": "constant", "start": 1.5}},
     "beta: its values must stay in [0, 1]"),
    ({"prefix": "mixture", "target": "teacher_argmax", "beta": {"type": "exponential"}}, "needs 'base'"),
    ({"target": "teacher_argmax", "top_k": 4}, "apply to target 'teacher_distribution'"),
    ({"target": "teacher_distribution", "label_smoothing": 0.1}, "label_smoothing applies to target 'gold'"),
    ({"teacher_output": "encoder"}, "differs from the student's"),
])
def test_settings_that_do_not_fit_together_are_config_errors_at_the_loss(project, options, message):
    with pytest.raises(ConfigError) as caught:
        build(project, **options)
    assert message in str(caught.value)
    assert caught.value.path == "/stages/1/losses/0"


def test_word_level_kd_on_gold_prefixes_equals_kd_per_target_position(project):
    experiment, loss = build(project, prefix="data", target="teacher_distribution", temperature=2.0)
    batch = batch_of(experiment)
    outputs = outputs_on(experiment, batch)
    kd = KnowledgeDistillation(_context(experiment), temperature=2.0)
    value = loss(outputs, batch)
    assert value.item() > 0
    assert torch.allclose(value, kd(outputs, batch), rtol=1e-6, atol=1e-7)
    # and from the teacher cache's top-k values, KD and GenerationKD renormalise alike
    cached = dict(outputs, teacher={"decoder": top_k_log_probs(outputs["teacher"]["decoder"], 8)})
    assert torch.allclose(loss(cached, batch), kd(cached, batch), rtol=1e-6)
    assert loss.prepare_batch(batch, context(experiment)) is batch  # data prefixes: the batch as it is
    assert not loss.prepares_batch and loss.teacher_nodes() == [("teacher", "decoder")]  # cacheable


def test_gold_target_equals_label_smoothed_cross_entropy(project):
    experiment, loss = build(project, prefix="data", target="gold", label_smoothing=0.1)
    reference = CrossEntropy(LossContext(student="student", teachers=["teacher"], task="seq2seq",
                                         output_of={"student": "decoder", "teacher": "decoder"}),
                             label_smoothing=0.1)
    batch = batch_of(experiment)
    outputs = {"student": experiment.model_values("student", batch)}  # no teacher needed
    assert torch.equal(loss(outputs, batch), reference(outputs, batch))
    assert loss.teacher is None and loss.teacher_nodes() == []


def teacher_greedy_tokens(experiment, batch, steps: int) -> torch.Tensor:
    """The teacher's greedy continuation of <bos>, ``steps`` tokens, by teacher forcing alone."""
    key = prefix_key(experiment, "teacher")
    tokens = torch.full((len(batch), 1), BOS_ID)
    for _ in range(steps):
        inputs = dict(batch.inputs)
        inputs[key] = Sequence(tokens, torch.ones_like(tokens, dtype=torch.bool))
        with torch.no_grad():
            logits = experiment.model_values("teacher", Batch(inputs, None, batch.index))["decoder"].values
        tokens = torch.cat([tokens, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return tokens


def test_teacher_argmax_target_is_cross_entropy_on_the_teachers_greedy_tokens(project):
    experiment, loss = build(project, prefix="data", target="teacher_argmax")
    batch = batch_of(experiment)
    greedy = teacher_greedy_tokens(experiment, batch, steps=6)  # <bos> y1 .. y6
    inputs = dict(batch.inputs)
    for key in {prefix_key(experiment), prefix_key(experiment, "teacher")}:
        inputs[key] = Sequence(greedy[:, :-1], torch.ones_like(greedy[:, :-1], dtype=torch.bool))
    on_greedy = Batch(inputs, greedy[:, 1:], batch.index)  # the data prefix is the teacher's greedy output
    outputs = outputs_on(experiment, on_greedy)
    student = outputs["student"]["decoder"].values
    expected = F.cross_entropy(student.flatten(0, 1), greedy[:, 1:].flatten())
    assert torch.allclose(loss(outputs, on_greedy), expected, rtol=1e-6)


# -- rollouts -----------------------------------------------------------------------------------


def test_student_rollouts_replace_every_target_prefix_and_are_masked_after_eos(project):
    experiment, loss = build(project, prefix="student", target="teacher_argmax")
    assert loss.prepares_batch and loss.teacher_nodes is None and "rollouts" in loss.uncached_reason
    batch = batch_of(experiment)
    student = experiment.models["student"]
    student.train()
    prepared = loss.prepare_batch(batch, context(experiment))
    assert student.training  # back in training mode after the rollout
    assert isinstance(prepared, RolloutBatch) and bool(prepared.rolled.all())
    # the same tokens as the task's greedy decoding of the student
    student.eval()
    greedy = experiment.task.predict_batch(experiment, "student", batch, final=False)
    student.train()
    prefix = prepared.inputs[prefix_key(experiment)]
    assert prefix is prepared.inputs[prefix_key(experiment, "teacher")] or \
        prefix_key(experiment) == prefix_key(experiment, "teacher")
    lengths = prefix.mask.sum(dim=1).tolist()
    for row, tokens in enumerate(greedy):
        n = len(tokens) + 1  # the generated tokens and <eos>
        assert lengths[row] == n
        assert prefix.values[row, :n].tolist() == [BOS_ID] + tokens
        assert prefix.values[row, n:].eq(PAD_ID).all() and not prefix.mask[row, n:].any()
        assert prepared.rollout[row, :n].tolist() == tokens + [EOS_ID]
        assert prepared.rollout[row, n:].eq(UNLABELLED).all()
        assert prepared.labels[row].eq(UNLABELLED).all()  # a rollout has no gold token
    # the sources are untouched; sentences that ended early have masked positions
    source = experiment.model_inputs["student"]["source"]
    assert prepared.inputs[source] is batch.inputs[source]
    assert min(lengths) < max(lengths)
    # what the loss reads at padded positions does not count
    outputs = outputs_on(experiment, prepared)
    value = loss(outputs, prepared)
    teacher = outputs["teacher"]["decoder"]
    noisy = torch.where(teacher.mask[..., None], teacher.values, torch.randn_like(teacher.values) * 100)
    outputs["teacher"]["decoder"] = Sequence(noisy, teacher.mask)
    assert torch.equal(loss(outputs, prepared), value)


def test_rollouts_are_cut_to_the_tasks_length_limit(project):
    values = config({"block": "GenerationKD", "prefix": "student", "target": "teacher_argmax"})
    values["task"]["max_target_length"] = 3
    for model in values["models"].values():
        model["graph"][-1]["max_length"] = 3
    experiment = prepare(project, values)
    [(_, loss)] = experiment.build_losses(1)
    prepared = loss.prepare_batch(batch_of(experiment), context(experiment))
    assert prepared.rollout.shape[1] <= 3
    for row in prepared.rollout.tolist():
        real = [token for token in row if token != UNLABELLED]
        assert real[-1] == EOS_ID and EOS_ID not in real[:-1]


def test_sampled_rollouts_draw_among_the_top_k(project):
    experiment, loss = build(project, prefix="student", target="teacher_argmax", rollout="sample", rollout_top_k=1)
    batch = batch_of(experiment)
    torch.manual_seed(3)
    sampled = loss.prepare_batch(batch, context(experiment))
    greedy_loss = GenerationKD(_context(experiment), prefix="student", target="teacher_argmax")
    greedy = greedy_loss.prepare_batch(batch, context(experiment))
    assert torch.equal(sampled.rollout, greedy.rollout)  # top-1 sampling is greedy search
    _, wide = build(project, prefix="student", target="teacher_argmax", rollout="sample", rollout_top_k=50)
    draws = set()
    for seed in range(4):
        torch.manual_seed(seed)
        draws.add(tuple(wide.prepare_batch(batch, context(experiment)).rollout.flatten().tolist()))
    assert len(draws) > 1  # sampling draws different rollouts


def _context(experiment) -> LossContext:
    return LossContext(student="student", teachers=["teacher"], task="seq2seq",
                       output_of={"student": "decoder", "teacher": "decoder"}, task_type=experiment.task)


@pytest.mark.parametrize("beta, rolled_share", [(1.0, 0.0), (0.0, 1.0)])
def test_mixture_with_beta_one_never_rolls_out_and_with_beta_zero_always(project, beta, rolled_share):
    experiment, loss = build(project, prefix="mixture", target="teacher_argmax",
                             beta={"type": "constant", "start": beta})
    batch = batch_of(experiment)
    for step in range(3):
        prepared = loss.prepare_batch(batch, context(experiment, step))
        if rolled_share == 0.0:
            assert prepared is batch
        else:
            assert bool(prepared.rolled.all())
            loss(outputs_on(experiment, prepared), prepared)
    logged = loss.log_values()
    assert logged["beta"] == beta and logged["rollout_share"] == rolled_share
    if rolled_share:
        assert logged["rollout_length"] >= 1 and 0.0 <= logged["teacher_agreement"] <= 1.0
    else:
        assert "teacher_agreement" not in logged


def test_mixture_keeps_each_examples_data_prefix_with_probability_beta(project):
    experiment, loss = build(project, prefix="mixture", target="teacher_distribution",
                             beta={"type": "constant", "start": 0.5})
    batch = experiment.splits["train"].collate(torch.arange(40))
    torch.manual_seed(0)
    prepared = loss.prepare_batch(batch, context(experiment))
    rolled = prepared.rolled
    assert 8 <= int(rolled.sum()) <= 32
    key = prefix_key(experiment)
    data, mixed = batch.inputs[key], prepared.inputs[key]
    for row in (~rolled).nonzero().squeeze(1).tolist():  # data rows: prefix and gold labels kept
        n = int(data.mask[row].sum())
        assert torch.equal(mixed.values[row, :n], data.values[row, :n]) and int(mixed.mask[row].sum()) == n
        assert torch.equal(prepared.labels[row, :n], batch.labels[row, :n])
        assert prepared.rollout[row].eq(UNLABELLED).all()
    # a CrossEntropy entry beside it learns the gold tokens of the data rows only
    ce = CrossEntropy(_context(experiment))
    outputs = outputs_on(experiment, prepared)
    logits, labels = outputs["student"]["decoder"].values, prepared.labels
    keep = labels != UNLABELLED
    assert torch.allclose(ce(outputs, prepared), F.cross_entropy(logits[keep], labels[keep]))


def test_beta_follows_imitkds_exponential_schedule_over_the_stage(project):
    experiment, loss = build(project, prefix="mixture", target="teacher_argmax")
    loss.start(100)
    batch = batch_of(experiment, 1)
    betas = []
    for step in (0, 50, 100):
        loss.prepare_batch(batch, context(experiment, step))
        betas.append(loss.beta)
    assert betas == pytest.approx([1.0, 200 ** -0.5, 1 / 200])
    _, linear = build(project, prefix="mixture", target="teacher_argmax",
                      beta={"type": "linear", "start": 1.0, "end": 0.0})
    linear.start(10)
    linear.prepare_batch(batch, context(experiment, 5))
    assert linear.beta == pytest.approx(0.5)


def test_the_exponential_schedule_and_schedules_spanning_the_stage():
    from blocks.distill.schedules import make_schedule

    decay = make_schedule({"type": "exponential", "start": 2.0, "base": 100, "steps": 10})
    assert [decay(step) for step in (0, 5, 10, 20)] == pytest.approx([2.0, 0.2, 0.02, 0.02])
    with pytest.raises(ValueError, match="an exponential schedule needs 'steps'"):
        make_schedule({"type": "exponential", "base": 200})  # a weight schedule does not know the stage
    assert make_schedule({"type": "exponential", "base": 200}, total_steps=4)(4) == pytest.approx(1 / 200)
    assert make_schedule({"type": "linear", "start": 1.0, "end": 0.0}, total_steps=4)(1) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="base > 0"):
        make_schedule({"type": "exponential", "base": 0, "steps": 3})


# -- top-k ----------------------------------------------------------------------------------------


def test_top_k_in_the_loop_equals_the_cached_top_k(project):
    experiment, in_loop = build(project, prefix="data", target="teacher_distribution", temperature=2.0, top_k=5)
    batch = batch_of(experiment)
    outputs = outputs_on(experiment, batch)
    expected = in_loop(outputs, batch)
    logits = outputs["teacher"]["decoder"]
    for cached_k in (5, 8):  # a cache holding as many tokens, or more (cut to the loss's top_k)
        cached = dict(outputs, teacher={"decoder": top_k_log_probs(logits, cached_k)})
        assert torch.equal(in_loop(cached, batch), expected)
    # a cache without top_k on the loss uses all it holds
    _, plain = build(project, prefix="data", target="teacher_distribution", temperature=2.0)
    assert torch.equal(plain(dict(outputs, teacher={"decoder": top_k_log_probs(logits, 5)}), batch), expected)
    # the whole vocabulary kept is the full KL
    vocab = logits.values.shape[-1]
    full = plain(outputs, batch)
    assert torch.allclose(plain(dict(outputs, teacher={"decoder": top_k_log_probs(logits, vocab)}), batch), full,
                          rtol=1e-5)
    # the student keeps its full distribution: top-k is not the KL of two renormalised distributions
    assert not torch.allclose(expected, full)
    with pytest.raises(TrainingError, match="holds the teacher's 3 most likely tokens"):
        in_loop(dict(outputs, teacher={"decoder": top_k_log_probs(logits, 3)}), batch)


def test_top_k_loss_is_the_cross_entropy_to_the_renormalised_teacher(project):
    experiment, loss = build(project, prefix="data", target="teacher_distribution", top_k=3)
    batch = batch_of(experiment, 2)
    outputs = outputs_on(experiment, batch)
    student, teacher = outputs["student"]["decoder"], outputs["teacher"]["decoder"]
    mask = student.mask
    s, t = student.values[mask], teacher.values[mask]
    kept, indices = t.topk(3, dim=-1)
    q = torch.softmax(kept, dim=-1)
    expected = (q * (q.log() - F.log_softmax(s, dim=-1).gather(1, indices))).sum(dim=-1).mean()
    assert torch.allclose(loss(outputs, batch), expected, rtol=1e-5)
    # teacher_argmax from a cached top-k teacher is its most likely token
    _, argmax = build(project, prefix="data", target="teacher_argmax")
    cached = dict(outputs, teacher={"decoder": top_k_log_probs(teacher, 3)})
    assert torch.allclose(argmax(cached, batch), F.cross_entropy(s, t.argmax(dim=-1)), rtol=1e-6)


# -- gradients and the trainer ----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["teacher_argmax", "teacher_distribution"])
def test_gradients_flow_into_the_student_only(project, target):
    experiment, loss = build(project, prefix="mixture", target=target, beta={"type": "constant", "start": 0.5})
    torch.manual_seed(1)
    prepared = loss.prepare_batch(batch_of(experiment), context(experiment))
    outputs = outputs_on(experiment, prepared)  # the teacher's graph is not even under no_grad here
    loss(outputs, prepared).backward()
    student = [p.grad for p in experiment.models["student"].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in student)
    assert all(p.grad is None for p in experiment.models["teacher"].parameters())


def test_the_trainer_runs_student_and_teacher_on_the_prepared_batch(project, monkeypatch):
    from blocks.engine.run import train

    values = config({"block": "GenerationKD", "prefix": "student", "target": "teacher_argmax"})
    values["stages"][1].update({"max_steps": 2, "eval_every": 2})
    calls = []
    prepare_batch = GenerationKD.prepare_batch

    def spy_prepare(self, batch, context):
        calls.append(("prepare", context.step, context.model))
        prepared = prepare_batch(self, batch, context)
        calls.append(("prepared", id(prepared)))
        return prepared

    model_values = Experiment.model_values

    def spy_model_values(self, name, batch):
        calls.append((name, id(batch)))
        return model_values(self, name, batch)

    forward = GenerationKD.forward

    def spy_forward(self, outputs, batch):
        calls.append(("loss", id(batch)))
        return forward(self, outputs, batch)

    monkeypatch.setattr(GenerationKD, "prepare_batch", spy_prepare)
    monkeypatch.setattr(Experiment, "model_values", spy_model_values)
    monkeypatch.setattr(GenerationKD, "forward", spy_forward)
    train(load_config(write_config(project, values), environ={}), run_dir=project / "run", log=lambda *a: None,
          progress=False)
    steps = [i for i, call in enumerate(calls) if call[0] == "prepare"]
    assert [calls[i][1:] for i in steps] == [(0, "student"), (1, "student")]
    for i in steps:  # prepare, then the student, the teacher and the loss on the prepared batch
        prepared = calls[i + 1][1]
        assert calls[i + 2:i + 5] == [("student", prepared), ("teacher", prepared), ("loss", prepared)]
    records = [json.loads(line) for line in (project / "run" / "metrics.jsonl").read_text().splitlines()]
    [evaluation] = [r for r in records if r.get("event") == "eval" and r["stage"] == "distill"]
    assert evaluation["rollout_share"] == 1.0 and evaluation["beta"] == 0.0
    assert evaluation["rollout_length"] >= 1 and 0.0 <= evaluation["teacher_agreement"] <= 1.0


def test_validate_refuses_two_losses_that_change_the_batch(project):
    from blocks.engine.run import check_stages

    rollout = {"block": "GenerationKD", "prefix": "mixture", "target": "teacher_argmax"}
    experiment = prepare(project, config(rollout, dict(rollout, target="teacher_distribution")))
    with pytest.raises(ConfigError) as caught:
        check_stages(experiment)
    assert "at most one such loss" in str(caught.value) and caught.value.path == "/stages/1/losses/1"
    # a data-prefix GenerationKD beside a rollout one changes nothing: accepted
    check_stages(prepare(project, config(rollout, {"block": "GenerationKD", "target": "teacher_distribution"})))


def test_a_teacher_from_a_run_teaches_and_one_with_other_vocabularies_is_refused_before_training(project):
    from blocks.cli import main
    from blocks.engine.run import train

    values = config({"block": "GenerationKD", "prefix": "mixture", "target": "teacher_argmax"})
    teacher_only = dict(copy.deepcopy(values), models={"teacher": values["models"]["teacher"]},
                        stages=values["stages"][:1])
    for run, vocab_size in (("teacher_run", 60), ("other_run", 50)):
        teacher_only["task"]["subword"]["vocab_size"] = vocab_size
        train(load_config(write_config(project, teacher_only, f"{run}.json"), environ={}), run_dir=project / run,
              log=lambda *a: None, progress=False)
    distill = dict(values, stages=[dict(values["stages"][1], max_steps=1)])
    distill["models"] = {"student": values["models"]["student"], "teacher": {"run": "teacher_run"}}
    assert main(["train", str(write_config(project, distill)), "--run-dir", "run", "--no-progress"]) == 0
    assert (project / "run" / "models" / "student.safetensors").is_file()
    distill["models"]["teacher"] = {"run": "other_run"}  # trained with task.subword.vocab_size 50
    with pytest.raises(ConfigError) as caught:
        train(load_config(write_config(project, distill), environ={}), run_dir=project / "run2",
              log=lambda *a: None, progress=False)
    message = str(caught.value)
    assert "teacher 'teacher' reads the subword vocabularies of its run" in message
    assert "only sequence-level KD" in message
    assert caught.value.path == "/stages/0/teachers/0" and not (project / "run2" / "models").exists()


# -- end to end on Multi30k lines ------------------------------------------------------------------


def multi30k_folder() -> Path:
    env = os.environ.get("DISTILBLOCKS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return root / "multi30k"


def test_imitkd_and_word_level_kd_train_end_to_end_on_multi30k_lines(tmp_path, monkeypatch):
    from blocks.cli import main

    source = multi30k_folder()
    if not (source / "train.en").is_file():
        pytest.skip(f"Multi30k not found at {source} (set DISTILBLOCKS_DATA to the data folder)")
    monkeypatch.delenv("DISTILBLOCKS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for split, count in (("train", 48), ("val", 8)):
        for language in ("en", "de"):
            lines = (source / f"{split}.{language}").read_text(encoding="utf-8").splitlines()[:count]
            (tmp_path / "data" / f"{split}.{language}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    values = config(data="data")
    values["data"]["dev"] = "val"
    values["task"]["subword"]["vocab_size"] = 300
    values["models"]["word_kd"] = copy.deepcopy(values["models"]["student"])
    stage = {"epochs": 1, "batch_size": 16, "max_steps": 2, "optimizer": {"type": "adam", "lr": 0.003}}
    values["stages"] = [
        {"name": "teacher", "train": "teacher", **stage, "losses": [{"block": "CrossEntropy"}]},
        {"name": "imitkd", "train": "student", "teachers": ["teacher"], **stage,
         "losses": [{"block": "GenerationKD", "prefix": "mixture", "target": "teacher_argmax"}]},
        {"name": "word_kd", "train": "word_kd", "teachers": ["teacher"], **stage, "cache_teachers": True,
         "losses": [{"block": "GenerationKD", "target": "teacher_distribution", "temperature": 1.0, "weight": 0.5},
                    {"block": "CrossEntropy", "weight": 0.5}]},
        # ImitKD*: the data prefixes are the teacher's translations (a sequence-level KD transfer set)
        {"name": "imitkd_star", "train": "imitkd_star", "teachers": ["teacher"], **stage,
         "transfer": {"generate": {"teacher": "teacher", "beam": 1}},
         "losses": [{"block": "GenerationKD", "prefix": "mixture", "target": "teacher_argmax",
                     "beta": {"type": "constant", "start": 0.5}}]},
    ]
    values["models"]["imitkd_star"] = copy.deepcopy(values["models"]["student"])
    assert main(["validate", str(write_config(tmp_path, values))]) == 0
    assert main(["train", "config.json", "--run-dir", "run", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for model in ("teacher", "student", "word_kd", "imitkd_star"):
        assert set(summary["models"][model]["dev"]) == {"bleu", "chrf", "bleu_lc"}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    imitkd = [r for r in records if r.get("event") == "eval" and r["stage"] == "imitkd"]
    # beta 1 at the first of the two steps, 200^(-1/2) at the second: about half the examples rolled out
    assert imitkd and imitkd[-1]["beta"] == pytest.approx(200 ** -0.5) and 0.0 < imitkd[-1]["rollout_share"] < 1.0
    word = [r for r in records if r.get("event") == "eval" and r["stage"] == "word_kd"]
    assert word and "beta" not in word[-1]  # data prefixes: nothing rolled out, nothing logged
    # word-level KD read the teacher's top-k values from the teacher cache
    assert any((folder / "meta.json").is_file() for folder in (tmp_path / "run" / "cache").iterdir()
               if folder.name != "generated")  # generated/: the translations of the ImitKD* stage
    star = [r for r in records if r.get("event") == "eval" and r["stage"] == "imitkd_star"]
    assert star and star[-1]["beta"] == 0.5 and 0.0 < star[-1]["rollout_share"] < 1.0


def test_the_step_timing_tool_times_every_method_on_the_same_batches(capsys):
    import importlib.util

    source = multi30k_folder()
    if not (source / "train.en").is_file():
        pytest.skip(f"Multi30k not found at {source} (set DISTILBLOCKS_DATA to the data folder)")
    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_generation_kd.py"
    spec = importlib.util.spec_from_file_location("distilblocks_tool_bench_generation_kd", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--data", str(source), "--lines", "48", "--steps", "1", "--batch-size", "8"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in module.SIDES}
    assert set(rows) == {"ce", "word_kd", "imitkd_half", "imitkd_all"}
    assert rows["ce"][3] == "1.0x" and rows["ce"][4] == "-"
    assert float(rows["imitkd_all"][4]) >= 1  # the rollouts' mean length is reported
