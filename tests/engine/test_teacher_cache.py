"""The teacher-output cache: same results as teachers in the loop, reuse, and rebuilds when stale or damaged."""
from __future__ import annotations

import json
import random
import shutil
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from blocks.config.loader import load_config
from blocks.distill.losses import Loss, TeacherLoss
from blocks.engine import teacher_cache
from blocks.engine.checkpoint import load_checkpoint
from blocks.engine.teacher_cache import cache_folders
from blocks.engine.run import load_model_weights, train
from blocks.engine.run_dir import RunDir
from blocks.engine.teacher_cache import CacheRequest, CachedOutputs, open_or_build, requested_nodes
from blocks.engine.trainer import StageTrainer
from blocks.errors import TrainingError
from blocks.experiment import Experiment
from blocks.registry import LOSSES
from blocks.values import Sequence, TopKLogProbs

from tests.conftest import FILLER, NEGATIVE, POSITIVE, TEST_DEVICE, interrupt_on_call


def quiet(*args, **kwargs):
    pass


def run(project, values, run_dir, resume=False, log=quiet):
    config = load_config(project.write(values, f"{run_dir}.json"), environ={})
    return train(config, run_dir=project.root / run_dir, resume=resume, progress=False, log=log)


def weights(path):
    tensors, _ = load_checkpoint(path)
    return {k: v.clone() for k, v in tensors.items()}


def variable_length_data(project, count=120, seed=5):
    """Sentences of 1 to 11 words, so that batches are padded (the fixture's are all 5 words)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        cue = POSITIVE if i % 2 else NEGATIVE
        words = rng.sample(FILLER, rng.randint(0, 8)) + rng.sample(cue, rng.randint(1, 3))
        rng.shuffle(words)
        rows.append((" ".join(words), str(i % 2)))
    project.write_tsv(project.data / "train.tsv", rows)


class TeacherForwards:
    """Counts teacher forward passes made while a stage with teachers trains (not the summary's)."""

    def __init__(self, monkeypatch, teacher="teacher"):
        self.count = 0
        self.inside = False
        original_values = Experiment.model_values
        original_run = StageTrainer.run

        def model_values(experiment, name, batch):
            if name == teacher and self.inside:
                self.count += 1
            return original_values(experiment, name, batch)

        def stage_run(trainer, resume):
            self.inside = bool(trainer.teachers)
            try:
                return original_run(trainer, resume)
            finally:
                self.inside = False

        monkeypatch.setattr(Experiment, "model_values", model_values)
        monkeypatch.setattr(StageTrainer, "run", stage_run)


@pytest.mark.parametrize("variable_lengths", [False, True], ids=["fixture-data", "variable-lengths"])
def test_cached_teacher_gives_the_same_student_as_teacher_in_the_loop(project, monkeypatch, variable_lengths):
    if variable_lengths:
        variable_length_data(project)
    counter = TeacherForwards(monkeypatch)
    values = project.config()
    values["stages"][1]["cache_teachers"] = False
    loop = run(project, values, "loop")
    loop_forwards, counter.count = counter.count, 0
    values["stages"][1]["cache_teachers"] = True
    cached = run(project, values, "cached")
    assert loop_forwards == 16 and counter.count == 1  # every step vs once (120 examples, one batch of 256)
    assert not (project.root / "loop" / "cache").exists()
    assert len(cache_folders(project.root / "cached" / "cache")) == 1

    a = weights(project.root / "loop" / "models" / "student.safetensors")
    b = weights(project.root / "cached" / "models" / "student.safetensors")
    for key in a:
        if variable_lengths or TEST_DEVICE != "cpu":
            # the teacher sees other paddings in the cache's batches, or a GPU picks other kernels
            # for the cache's batch size: last-bit differences only
            assert torch.allclose(a[key], b[key], rtol=0, atol=1e-5), key
        else:
            assert torch.equal(a[key], b[key]), key  # float32 logits: bit for bit
    assert loop["models"]["student"]["dev"] == cached["models"]["student"]["dev"]
    assert cached["stages"]["distill"]["teacher_cache_seconds"] >= 0


def test_the_cache_is_reused_by_later_stages_and_on_resume(project, monkeypatch):
    values = project.config()
    again = dict(values["stages"][1], name="distill2", epochs=1)
    values["stages"].append(again)
    counter = TeacherForwards(monkeypatch)
    messages = []
    run(project, values, "a", log=messages.append)
    assert counter.count == 1  # built in 'distill', reused in 'distill2'
    assert sum(m.startswith("building teacher cache of teacher.logits") for m in messages) == 1
    assert sum(m.startswith("teacher cache: reusing") for m in messages) == 1

    original = interrupt_on_call(monkeypatch, 4)  # the second evaluation of 'distill'
    with pytest.raises(KeyboardInterrupt):
        run(project, values, "b")
    monkeypatch.setattr(StageTrainer, "_evaluate_and_save", original)
    counter.count = 0
    messages.clear()
    run(project, values, "b", resume=True, log=messages.append)
    assert "stage 'distill': training 'student' with teacher(s) teacher, 16 steps, resuming at step 8" in messages
    assert counter.count == 0  # the resumed stages read the cache the interrupted run built
    assert sum(m.startswith("teacher cache: reusing") for m in messages) == 2
    assert not any("building teacher cache" in m or "rebuilding" in m for m in messages)
    a = weights(project.root / "a" / "models" / "student.safetensors")
    b = weights(project.root / "b" / "models" / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def prepared(run_copy):
    """(run dir, experiment with the trained teacher loaded, train split) of a finished run."""
    config = load_config(run_copy / "config.json", environ={})
    experiment = Experiment.prepare(config, log=quiet)
    load_model_weights(experiment, RunDir(run_copy), "teacher")
    return run_copy, experiment, experiment.splits["train"]


def teacher_logits(experiment, split, index):
    model = experiment.models["teacher"]
    model.eval()
    with torch.no_grad():
        return experiment.model_values("teacher", split.collate(index))["logits"]


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="reopens the run's cache with a CPU request, which a cache "
                    "built on another device does not serve (the device type is part of its key)")
def test_stale_or_damaged_caches_are_rebuilt_never_used(prepared, monkeypatch, capsys):
    root, experiment, split = prepared
    builds = {"n": 0}
    compute = teacher_cache.compute

    def counting(*args, **kwargs):
        builds["n"] += 1
        return compute(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "compute", counting)
    messages = []

    def open_cache(progress=False):
        messages.clear()
        cache = open_or_build(CacheRequest(
            experiment, split, {"teacher": ["logits"]}, root, torch.device("cpu"), "fp32", "float16", 64,
            progress=progress, log=messages.append))
        index = torch.tensor([3, 0, 77, 119])
        cached = cache.outputs(index, torch.device("cpu"))["teacher"]["logits"]
        assert torch.allclose(cached, teacher_logits(experiment, split, index), rtol=0, atol=1e-6)
        return cache

    cache = open_cache().caches[0]  # the run built it during its distillation stage
    assert builds["n"] == 0 and messages[0].startswith("teacher cache: reusing")
    values_file = cache.folder / "00-teacher-logits.values.bin"
    size = values_file.stat().st_size
    assert size == len(split) * 2 * 4  # float32 logits, whatever cache_dtype says

    values_file.write_bytes(values_file.read_bytes()[:size // 2])
    open_cache(progress=True)
    assert builds["n"] == 1
    assert messages[0] == f"rebuilding teacher cache: {values_file} is truncated ({size // 2:,} of {size:,} bytes)"
    assert values_file.stat().st_size == size
    assert "teacher cache" in capsys.readouterr().err  # the progress bar

    data = bytearray(values_file.read_bytes())
    data[:8] = bytes(8)
    values_file.write_bytes(bytes(data))
    open_cache()
    assert builds["n"] == 2
    assert messages[0] == f"rebuilding teacher cache: {values_file} does not match its checksum (altered or from another cache)"

    meta_file = cache.folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["components"]["teacher"]["weights"] = "0" * 64  # a cache of another teacher
    meta_file.write_text(json.dumps(meta))
    open_cache()
    assert builds["n"] == 3 and messages[0].startswith(f"rebuilding teacher cache: {cache.folder} was built for other")

    meta_file.write_text("{not json")
    open_cache()
    assert builds["n"] == 4 and messages[0] == f"rebuilding teacher cache: {meta_file} is corrupt"

    open_cache()
    assert builds["n"] == 4  # valid again

    with torch.no_grad():
        next(experiment.models["teacher"].parameters()).add_(0.25)  # the teacher changed
    new = open_cache().caches[0]
    assert builds["n"] == 5
    assert messages[0] == "rebuilding teacher cache: the weights of teacher 'teacher' changed"
    assert new.folder != cache.folder and not cache.folder.exists()  # the stale cache is removed


def test_old_format_caches_are_removed_from_the_run_folder_and_reported_in_a_shared_one(prepared):
    root, experiment, split = prepared
    for folder in cache_folders(root / "cache"):
        shutil.rmtree(folder)
    old = root / "cache" / "0123456789abcdef"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps({"format": 1, "key": old.name, "components": {}}))
    messages = []
    open_or_build(CacheRequest(
        experiment, split, {"teacher": ["logits"]}, root, torch.device("cpu"), "fp32", "float16", 64,
        progress=False, log=messages.append))
    assert messages[0] == "rebuilding teacher cache: it was written in an older cache format (1)"
    assert not old.exists() and len(cache_folders(root / "cache")) == 1

    # in a folder shared by several runs nothing is deleted; the log says what is there
    shared = root / "shared"
    (shared / old.name).mkdir(parents=True)
    (shared / old.name / "meta.json").write_text(json.dumps({"format": 1, "key": old.name, "components": {}}))
    messages.clear()
    open_or_build(CacheRequest(
        experiment, split, {"teacher": ["logits"]}, root, torch.device("cpu"), "fp32", "float16", 64,
        progress=False, log=messages.append, shared_root=shared))
    assert messages[0] == (f"teacher cache: 1 cache(s) in {shared} were written in an older format and are no "
                           f"longer read (0.1 kB); delete them to free the space")
    assert (shared / old.name).exists() and len(cache_folders(shared)) == 2


def test_each_teacher_has_its_own_cache_whatever_it_is_called_and_whoever_it_teaches_with(project):
    """A stage with two teachers reuses the cache one of them built when it taught alone, under
    another name; a second such stage builds nothing."""
    values = project.config()
    values["stages"] = values["stages"][:1]
    run(project, values, "teacher_a")
    values["seed"] = 4
    run(project, values, "teacher_b")

    def distill(teachers: dict[str, str], run_dir: str) -> list[str]:
        config = project.config()
        config["cache_dir"] = str(project.root / "shared")
        config["models"] = {name: {"run": str(project.root / source)} for name, source in teachers.items()}
        config["models"]["student"] = project.config()["models"]["student"]
        stage = config["stages"][1]
        stage["teachers"] = list(teachers)
        if len(teachers) > 1:
            stage["losses"] = [{"block": "MultiTeacherKD", "weighting": "equal", "temperature": 2.0, "weight": 0.7},
                               {"block": "CrossEntropy", "weight": 0.3}]
        config["stages"] = [stage]
        messages = []
        run(project, config, run_dir, log=messages.append)
        return [m for m in messages if m.startswith(("teacher cache:", "building teacher cache"))]

    alone = distill({"teacher": "teacher_a"}, "alone")
    assert len(alone) == 1 and alone[0].startswith("building teacher cache of teacher.logits")
    (built,) = cache_folders(project.root / "shared")
    together = distill({"mentor": "teacher_a", "second": "teacher_b"}, "together")
    assert together[0] == f"teacher cache: reusing {built} (120 examples)"
    assert together[1].startswith("building teacher cache of second.logits")
    assert len(cache_folders(project.root / "shared")) == 2
    again = distill({"second": "teacher_b", "mentor": "teacher_a"}, "again")
    assert all(m.startswith("teacher cache: reusing") for m in again) and len(again) == 2
    assert len(cache_folders(project.root / "shared")) == 2


class HiddenMatch(Loss):
    """Test loss: the student's pooled vector against the mean of the teacher's encoder states
    (a Sequence) and its pooled vector (first 8 features each)."""

    def __init__(self, stage, declare: bool = True):
        super().__init__(stage)
        self.teacher = stage.teachers[0]
        self.declare = declare

    def teacher_nodes(self):
        return [(self.teacher, "encoder"), (self.teacher, "pool")] if self.declare else []

    def forward(self, outputs, batch):
        encoder = outputs[self.teacher]["encoder"]
        assert isinstance(encoder, Sequence) and encoder.mask.dtype == torch.bool
        mask = encoder.mask.unsqueeze(-1).float()
        mean = (encoder.values * mask).sum(1) / mask.sum(1).clamp(min=1)
        student = outputs[self.model]["pool"]
        return F.mse_loss(student, mean[:, :8]) + F.mse_loss(student, outputs[self.teacher]["pool"][:, :8])


def test_hidden_states_and_sequences_through_the_cache(project, monkeypatch):
    variable_length_data(project)
    monkeypatch.setitem(LOSSES._entries, "HiddenMatch", HiddenMatch)
    HiddenMatch.registered_name = "HiddenMatch"
    values = project.config()
    values["stages"][1]["losses"] = [{"block": "HiddenMatch", "weight": 0.5}, {"block": "CrossEntropy"}]
    results = {}
    for name, cache, dtype in (("loop", False, "float16"), ("fp32", True, "float32"), ("fp16", True, "float16")):
        values["stages"][1].update(cache_teachers=cache, cache_dtype=dtype)
        results[name] = run(project, values, name)
    loop = weights(project.root / "loop" / "models" / "student.safetensors")
    for name, tolerance in (("fp32", 1e-6), ("fp16", 1e-2)):
        other = weights(project.root / name / "models" / "student.safetensors")
        for key in loop:
            assert torch.allclose(loop[key], other[key], rtol=0, atol=tolerance), (name, key)
    (folder,) = cache_folders(project.root / "fp16" / "cache")
    meta = json.loads((folder / "meta.json").read_text())
    stored = {e["node"]: (e["kind"], e["files"]["values"]["dtype"], e["value_dtype"]) for e in meta["entries"]}
    assert stored == {"encoder": ("sequence", "float16", "float32"), "pool": ("vector", "float16", "float32")}

    # the cached Sequence has the loop's shape, mask and (to float16 precision) values
    config = load_config(project.root / "fp16" / "config.json", environ={})
    experiment = Experiment.prepare(config, log=quiet)
    load_model_weights(experiment, RunDir(project.root / "fp16"), "teacher")
    split = experiment.splits["train"]
    cache = open_or_build(CacheRequest(
        experiment, split, {"teacher": ["encoder", "pool"]}, project.root / "fp16", torch.device("cpu"),
        "fp32", "float16", 256, progress=False, log=quiet))
    experiment.models["teacher"].eval()
    index = torch.tensor([5, 1, 99, 42, 7])
    with torch.no_grad():
        direct = experiment.model_values("teacher", split.collate(index))
    cached = cache.outputs(index, torch.device("cpu"))["teacher"]
    assert cached["encoder"].values.shape == direct["encoder"].values.shape
    assert torch.equal(cached["encoder"].mask, direct["encoder"].mask)
    on = direct["encoder"].mask.unsqueeze(-1)
    assert torch.allclose(cached["encoder"].values * on, direct["encoder"].values * on, rtol=1e-3, atol=1e-3)
    assert cached["pool"].dtype == torch.float32
    assert torch.allclose(cached["pool"], direct["pool"], rtol=1e-3, atol=1e-3)

    # a loss that reads a teacher node it did not declare is told so (when another loss's nodes are
    # cached; with no declared node at all the teachers simply run every step)
    values["stages"][1]["losses"] = [{"block": "HiddenMatch", "declare": False}, {"block": "KD"}]
    values["stages"][1].update(cache_teachers=True)
    with pytest.raises(TrainingError, match="which no loss block declared in teacher_nodes"):
        run(project, values, "undeclared")


def test_loss_blocks_declare_the_teacher_nodes_they_read(project):
    experiment = project.prepare()
    losses = experiment.build_losses(1)
    assert [loss.teacher_nodes() for _, loss in losses] == [[("teacher", "logits")], []]
    assert isinstance(losses[0][1], TeacherLoss)
    assert requested_nodes(losses, ["teacher"]) == {"teacher": ["logits"]}
    assert requested_nodes([(1.0, torch.nn.Identity())], ["teacher"]) is None  # cannot say: no cache
    with pytest.raises(TrainingError, match="no loss block declared"):
        CachedOutputs("teacher", {"logits": torch.zeros(1)})["pool"]


def test_auto_policy_keeps_the_teacher_in_the_loop_for_stages_shorter_than_an_epoch(project):
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    values = project.config()
    values["stages"][1]["max_steps"] = 2  # 2 batches of 16 < 120 training examples
    messages = []
    train(load_config(project.write(values), environ={}), run_dir=project.root / "short", progress=False,
          log=messages.append)
    assert any("teachers run every step (the stage sees 32 examples" in m for m in messages)
    assert not (project.root / "short" / "cache").exists()

    values["stages"][1]["cache_teachers"] = True  # an explicit true always caches
    train(load_config(project.write(values), environ={}), run_dir=project.root / "forced", progress=False,
          log=lambda *a: None)
    assert cache_folders(project.root / "forced" / "cache")


def test_auto_policy_reads_a_cache_already_on_disk_even_for_a_short_stage(project):
    """A stage shorter than an epoch builds nothing, but reads the cache a full run left in cache_dir."""
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    values = project.config()
    values["cache_dir"] = str(project.root / "shared")
    train(load_config(project.write(values), environ={}), run_dir=project.root / "full", progress=False,
          log=lambda *a: None)
    built = cache_folders(project.root / "shared")
    assert len(built) == 1

    values["stages"][1]["max_steps"] = 2
    messages = []
    summary = train(load_config(project.write(values), environ={}), run_dir=project.root / "short", progress=False,
                    log=messages.append)
    assert any(m.startswith(f"teacher cache: reusing {built[0]}") for m in messages), messages
    assert not any("teachers run every step" in m for m in messages)
    assert summary["stages"]["distill"]["steps"] == 2
    assert cache_folders(project.root / "shared") == built  # nothing new was built


def test_a_run_waits_for_another_process_building_the_same_cache_then_reuses_it(prepared, monkeypatch):
    """Seeds started side by side on one shared cache folder compute the teacher outputs once."""
    fcntl = pytest.importorskip("fcntl")
    root, experiment, split = prepared
    nodes, cpu = {"teacher": ["logits"]}, torch.device("cpu")
    cache_root = root / "cache"
    for folder in cache_folders(cache_root):
        shutil.rmtree(folder)
    components = teacher_cache.cache_components(experiment, split, "teacher", ["logits"], "float16", "fp32", cpu)
    key = teacher_cache.key_of(components)
    real_build = teacher_cache._build
    builds = []
    monkeypatch.setattr(teacher_cache, "_build", lambda *args, **kwargs: builds.append(args[1]))

    with open(cache_root / f".lock-{key}", "w") as other:  # another process is building this cache
        fcntl.flock(other, fcntl.LOCK_EX)
        messages, opened = [], {}
        waiter = threading.Thread(target=lambda: opened.update(cache=open_or_build(CacheRequest(
            experiment, split, nodes, root, cpu, "fp32", "float16", 64, progress=False,
            log=messages.append))))
        waiter.start()
        deadline = time.monotonic() + 30
        while not messages and time.monotonic() < deadline:
            time.sleep(0.01)
        assert messages == [f"teacher cache: waiting for another process that is building {cache_root / key}"]
        assert waiter.is_alive()
        real_build(CacheRequest(experiment, split, nodes, root, cpu, progress=False), key, components, "teacher")
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(30)
    assert not waiter.is_alive()
    assert builds == []  # the waiting run built nothing: it opened the other one's cache
    assert messages[-1].endswith("built meanwhile by another process")
    assert [cache.folder for cache in opened["cache"].caches] == [cache_root / key]
    assert cache_folders(cache_root) == [cache_root / key]


# -- a generating teacher's decoder: top-k log-probabilities -----------------------------------------


def seq2seq_experiment(root, top_k=None, epochs=1):
    """A seq2seq teacher and student (the tiny translators of tests/tasks/test_seq2seq.py) with a
    word-level KD stage that reads the teacher's decoder."""
    from tests.tasks.test_seq2seq import TRANSLATOR, seq2seq_config, write_pairs

    data = root / "data"
    data.mkdir(exist_ok=True)
    for name, count, seed in (("train", 40, 1), ("dev", 8, 2), ("test", 8, 3)):
        write_pairs(data, name, count, seed)
    values = seq2seq_config()
    values["models"] = {"teacher": TRANSLATOR, "student": TRANSLATOR}
    values["stages"] = [
        {"name": "teacher", "train": "teacher", "epochs": epochs, "batch_size": 8},
        {"name": "word_kd", "train": "student", "teachers": ["teacher"], "epochs": 1, "batch_size": 8,
         "cache_teachers": True, "losses": [{"block": "KD", "temperature": 2.0}]}]
    if top_k is not None:
        values["stages"][1]["cache_top_k"] = top_k
    path = root / "seq2seq.json"
    path.write_text(json.dumps(values))
    return Experiment.prepare(load_config(path, environ={}), log=quiet)


def test_a_generating_teachers_decoder_is_cached_as_its_top_k_log_probabilities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = seq2seq_experiment(tmp_path)
    split, cpu = experiment.splits["train"], torch.device("cpu")
    request = CacheRequest(experiment, split, {"teacher": ["decoder"]}, tmp_path / "run", cpu, progress=False,
                           log=quiet, top_k=5)
    caches = open_or_build(request)
    [record] = caches.caches[0].meta["entries"]
    assert record["kind"] == "top_k" and record["top_k"] == 5
    assert (record["files"]["values"]["dtype"], record["files"]["log_probs"]["dtype"]) == ("int32", "float16")
    positions = sum(len(t) for t in split.labels)  # every target position, <eos> included
    assert record["files"]["values"]["shape"] == [positions, 5]

    index = torch.tensor([3, 0, 7, 12])
    cached = caches.outputs(index, cpu)["teacher"]["decoder"]
    assert isinstance(cached, TopKLogProbs)
    teacher = experiment.models["teacher"].eval()
    with torch.no_grad():
        direct = experiment.model_values("teacher", split.collate(index))["decoder"]
    expected_log_probs, expected_indices = torch.topk(F.log_softmax(direct.values.float(), dim=-1), 5, dim=-1)
    mask = direct.mask
    assert torch.equal(cached.mask, mask[:, :cached.mask.shape[1]])
    assert torch.equal(cached.indices[mask], expected_indices[mask])
    assert torch.allclose(cached.log_probs[mask], expected_log_probs[mask], atol=1e-2, rtol=1e-3)  # float16
    assert cached.indices.dtype == torch.long and cached.log_probs.dtype == torch.float32

    # k is part of the key: another k is another cache; the same k reuses this one
    again = open_or_build(CacheRequest(experiment, split, {"teacher": ["decoder"]}, tmp_path / "run", cpu,
                                       progress=False, log=quiet, top_k=5))
    assert again.caches[0].folder == caches.caches[0].folder
    other = open_or_build(CacheRequest(experiment, split, {"teacher": ["decoder"]}, tmp_path / "run", cpu,
                                       progress=False, log=quiet, top_k=3))
    assert other.caches[0].folder != caches.caches[0].folder
    with pytest.raises(TrainingError, match="full next-token distribution"):
        open_or_build(CacheRequest(experiment, split, {"teacher": ["decoder"]}, tmp_path / "run", cpu,
                                   progress=False, log=quiet, top_k=0))


def test_kd_on_top_k_renormalises_over_the_kept_tokens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment = seq2seq_experiment(tmp_path)
    [(_, kd)] = experiment.build_losses(1)
    batch = experiment.splits["train"].collate(torch.arange(6))
    student = experiment.model_values("student", batch)
    with torch.no_grad():
        teacher = experiment.model_values("teacher", batch)["decoder"]
    full = kd({"student": student, "teacher": {"decoder": teacher}}, batch)
    log_probs = F.log_softmax(teacher.values.float(), dim=-1)
    vocab = log_probs.shape[-1]
    values, indices = log_probs.topk(vocab, dim=-1)  # every token kept: the exact KL divergence
    exact = kd({"student": student, "teacher": {"decoder": TopKLogProbs(indices, values, teacher.mask)}}, batch)
    assert torch.allclose(exact, full, rtol=1e-4, atol=1e-5)

    values, indices = log_probs.topk(4, dim=-1)  # four kept: their probabilities renormalised at T
    truncated = kd({"student": student, "teacher": {"decoder": TopKLogProbs(indices, values, teacher.mask)}}, batch)
    t, mask = kd.temperature, teacher.mask
    target = F.log_softmax(values[mask] / t, dim=-1)
    predicted = F.log_softmax(student["decoder"].values[mask].float() / t, dim=-1).gather(1, indices[mask])
    expected = (target.exp() * (target - predicted)).sum(dim=-1).mean() * t * t
    assert torch.allclose(truncated, expected) and truncated.item() > 0
    truncated.backward()  # the student learns through it
    assert any(p.grad is not None for p in experiment.models["student"].parameters())


def test_a_word_level_kd_stage_reads_the_top_k_cache(tmp_path, monkeypatch):
    from blocks.distill.losses import KnowledgeDistillation

    monkeypatch.chdir(tmp_path)
    seq2seq_experiment(tmp_path, top_k=4)  # writes the data and the config
    read = []
    original = KnowledgeDistillation._top_k
    monkeypatch.setattr(KnowledgeDistillation, "_top_k",
                        lambda self, outputs: read.append(1) or original(self, outputs))
    messages = []
    train(load_config(tmp_path / "seq2seq.json", environ={}), run_dir=tmp_path / "run", progress=False,
          log=lambda message, *a, **k: messages.append(str(message)))
    assert any(m.startswith("building teacher cache of teacher.decoder") for m in messages)
    [folder] = cache_folders(tmp_path / "run" / "cache")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["components"]["policy"]["top_k"] == 4 and meta["entries"][0]["kind"] == "top_k"
    assert len(read) == 5  # every step of the KD stage (40 examples, batch 8)
