"""Optimizers and learning-rate schedules from config nodes."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from blocks.engine.optim import build_optimizer, build_schedule
from blocks.errors import ConfigError


def parameter(value: float = 1.0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([value]))


def lr_after(config: dict, total: int, steps: int, lr: float = 1.0) -> float:
    optimizer = torch.optim.SGD([parameter()], lr=lr)
    schedule = build_schedule(optimizer, config, total)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]


def test_default_optimizer_is_adam():
    optimizer = build_optimizer([parameter()], {})
    assert type(optimizer) is torch.optim.Adam
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-3, 0.0, (0.9, 0.999), 1e-8)
    assert type(build_optimizer([parameter()], None)) is torch.optim.Adam


def test_adamw_defaults_and_options():
    optimizer = build_optimizer([parameter()], {"type": "adamw", "lr": 5e-5, "betas": [0.8, 0.99], "eps": 1e-6})
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (5e-5, 0.01, (0.8, 0.99), 1e-6)
    group = build_optimizer([parameter()], {"type": "adamw", "weight_decay": 0}).param_groups[0]
    assert group["weight_decay"] == 0.0


def test_sgd_momentum():
    # loss = p, so the gradient is always 1; lr 0.1, momentum 0.9
    # step 1: buffer = 1          -> p = 1 - 0.1 * 1   = 0.9
    # step 2: buffer = 0.9*1 + 1  -> p = 0.9 - 0.1*1.9 = 0.71
    p = parameter()
    optimizer = build_optimizer([p], {"type": "sgd", "lr": 0.1, "momentum": 0.9})
    assert type(optimizer) is torch.optim.SGD
    for _ in range(2):
        optimizer.zero_grad()
        p.sum().backward()
        optimizer.step()
    assert p.item() == pytest.approx(0.71)
    # Nesterov, step 1: buffer = 1, update = g + 0.9 * buffer = 1.9 -> p = 1 - 0.19
    q = parameter()
    optimizer = build_optimizer([q], {"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True})
    q.sum().backward()
    optimizer.step()
    assert q.item() == pytest.approx(0.81)


@pytest.mark.parametrize("config,path,message", [
    ({"type": "adan"}, "/optimizer/type", "did you mean 'adam'"),
    ({"lr": 0.1, "weigth_decay": 0.1}, "/optimizer/weigth_decay", "did you mean 'weight_decay'"),
    ({"momentum": 0.9}, "/optimizer/momentum", "optimizer 'adam' has no option 'momentum'"),
    ({"type": "sgd", "betas": [0.9, 0.99]}, "/optimizer/betas", "no option 'betas'"),
    ({"lr": 0}, "/optimizer/lr", "less than or equal to the minimum of 0"),
    ({"lr": "fast"}, "/optimizer/lr", "is not of type 'number'"),
    ({"lr": True}, "/optimizer/lr", "is not of type 'number'"),
    ({"betas": [0.9]}, "/optimizer/betas", "is too short"),
    ({"betas": [0.9, 1.0]}, "/optimizer/betas/1", "greater than or equal to the maximum of 1"),
    ({"weight_decay": -1}, "/optimizer/weight_decay", "less than the minimum of 0"),
    ({"type": 3}, "/optimizer/type", "unknown optimizer type 3"),
    ([0.1], "/optimizer", "must be an object"),
    ({"type": "sgd", "nesterov": True}, "/optimizer/nesterov", "momentum > 0"),
])
def test_optimizer_errors(config, path, message):
    with pytest.raises(ConfigError, match=message) as error:
        build_optimizer([parameter()], config)
    assert error.value.path == path and error.value.file is None


def test_error_path_follows_where():
    with pytest.raises(ConfigError) as error:
        build_optimizer([parameter()], {"typ": "sgd"}, where="/stages/1/optimizer")
    assert error.value.path == "/stages/1/optimizer/typ"
    assert "did you mean 'type'" in str(error.value)
    with pytest.raises(ConfigError) as error:
        build_schedule(torch.optim.SGD([parameter()], lr=1), {"warmpu": 3}, 10, where="/stages/1/schedule")
    assert error.value.path == "/stages/1/schedule/warmpu"
    assert "did you mean 'warmup'" in str(error.value)


def test_linear_schedule():
    # 10 steps, 2 of warm-up: factor s/2 for s < 2, then (10 - s) / 8
    config = {"type": "linear", "warmup": 2}
    assert lr_after(config, 10, 0) == 0.0
    assert lr_after(config, 10, 1) == pytest.approx(0.5)
    assert lr_after(config, 10, 2) == pytest.approx(1.0)     # end of warm-up: the full lr
    assert lr_after(config, 10, 6) == pytest.approx(0.5)     # (10 - 6) / 8
    assert lr_after(config, 10, 10) == 0.0                   # the end
    assert lr_after(config, 10, 12) == 0.0                   # never negative


def test_linear_schedule_fraction_warmup_and_no_warmup():
    # 0.2 of 10 steps = 2 steps, as above
    assert lr_after({"type": "linear", "warmup": 0.2}, 10, 1, lr=0.1) == pytest.approx(0.05)
    assert lr_after({"type": "linear", "warmup": 0.2}, 10, 6, lr=0.1) == pytest.approx(0.05)
    # no warm-up: 1 at step 0, (4 - s) / 4 after
    assert lr_after({"type": "linear"}, 4, 0) == 1.0
    assert lr_after({"type": "linear"}, 4, 1) == pytest.approx(0.75)
    assert lr_after({"type": "linear"}, 4, 4) == 0.0


def test_constant_schedule():
    assert lr_after({}, 10, 0, lr=0.3) == pytest.approx(0.3)
    assert lr_after(None, 10, 7, lr=0.3) == pytest.approx(0.3)
    # warm-up 4: s / 4, then constant; a warm-up longer than training is allowed
    assert lr_after({"warmup": 4}, 10, 0) == 0.0
    assert lr_after({"warmup": 4}, 10, 2) == pytest.approx(0.5)
    assert lr_after({"type": "constant", "warmup": 4}, 10, 4) == 1.0
    assert lr_after({"type": "constant", "warmup": 4}, 10, 9) == 1.0
    assert lr_after({"type": "constant", "warmup": 20}, 10, 5) == pytest.approx(0.25)


@pytest.mark.parametrize("config,message", [
    ({"type": "linear", "warmup": 10}, "shorter than training"),
    ({"type": "linear", "warmup": 0.9999}, "shorter than training"),  # rounds to 10 steps
    ({"warmup": 1.5}, "must be < 1"),
    ({"warmup": -1}, "whole number of steps or a fraction"),
    ({"warmup": "10%"}, "whole number of steps or a fraction"),
    ({"type": "cosine"}, "unknown schedule type 'cosine'"),
])
def test_schedule_errors(config, message):
    optimizer = torch.optim.SGD([parameter()], lr=1)
    with pytest.raises(ConfigError, match=message) as error:
        build_schedule(optimizer, config, 10)
    assert error.value.path.startswith("/schedule/")


def test_schedule_state_dict_round_trip():
    config = {"type": "linear", "warmup": 3}

    def make():
        p = parameter()
        optimizer = build_optimizer([p], {"type": "adamw", "lr": 0.01})
        return p, optimizer, build_schedule(optimizer, config, 20)

    p, optimizer, schedule = make()
    for _ in range(7):
        optimizer.zero_grad()
        (p * p).sum().backward()
        optimizer.step()
        schedule.step()
    saved_schedule = json.loads(json.dumps(schedule.state_dict()))  # JSON-able
    saved_optimizer = copy.deepcopy(optimizer.state_dict())  # state_dict() shares the live tensors

    q, resumed, resumed_schedule = make()
    q.data.copy_(p.data)
    resumed.load_state_dict(saved_optimizer)
    resumed_schedule.load_state_dict(saved_schedule)
    assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert resumed_schedule.get_last_lr() == schedule.get_last_lr()
    for _ in range(5):
        for param, opt, sched in ((p, optimizer, schedule), (q, resumed, resumed_schedule)):
            opt.zero_grad()
            (param * param).sum().backward()
            opt.step()
            sched.step()
        assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        assert torch.equal(p, q)
    # 12 steps into 20 with 3 of warm-up: (20 - 12) / 17
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 8 / 17)


def test_schemas_validate_configs():
    """The editor schema (``blocks schema``) of an optimizer or schedule node, generated from the
    registered entries, agrees with what the engine accepts."""
    jsonschema = pytest.importorskip("jsonschema")
    from blocks.config.schema import full_schema

    stage = full_schema()["$defs"]["stage"]["properties"]
    for node in (stage["optimizer"], stage["schedule"]):
        jsonschema.Draft202012Validator.check_schema(node)
        assert node["description"]
        for option in node["anyOf"]:
            assert option["description"]
            assert all(prop.get("description") for key, prop in option["properties"].items() if key != "type")
    optimizer = jsonschema.Draft202012Validator(stage["optimizer"])
    schedule = jsonschema.Draft202012Validator(stage["schedule"])
    for good in ({}, {"type": "adamw", "lr": 2e-5, "betas": [0.9, 0.98]},
                 {"type": "sgd", "momentum": 0.9, "nesterov": True}):
        assert optimizer.is_valid(good), good
        build_optimizer([parameter()], good)
    for bad in ({"type": "sgd", "eps": 1e-8}, {"momentum": 0.5}, {"lr": 0}, {"typo": 1}, {"type": "rmsprop"},
                {"betas": [0.9, 1.5]}):
        assert not optimizer.is_valid(bad), bad
        with pytest.raises(ConfigError):
            build_optimizer([parameter()], bad)
    for good in ({}, {"type": "linear", "warmup": 0.1}, {"type": "constant", "warmup": 100}):
        assert schedule.is_valid(good), good
        build_schedule(torch.optim.SGD([parameter()], lr=1), good, 200)
    for bad in ({"warmup": 1.5}, {"warmup": -1}, {"type": "cosine"}, {"steps": 3}):
        assert not schedule.is_valid(bad), bad
        with pytest.raises(ConfigError):
            build_schedule(torch.optim.SGD([parameter()], lr=1), bad, 200)


def test_optimizers_and_schedules_are_registered_entries():
    from blocks.registry import OPTIMIZERS, SCHEDULES, register_optimizer

    assert OPTIMIZERS.names()[:3] == ["adam", "adamw", "sgd"] and SCHEDULES.names()[:2] == ["constant", "linear"]
    assert {p.name: p.default for p in OPTIMIZERS.parameters("adamw")}["weight_decay"] == 0.01

    @register_optimizer("test_rmsprop")
    def rmsprop(parameters: list, where: str, lr: float = 0.01, alpha: float = 0.99):
        """RMSprop (a registered optimizer a user could add).

        Args:
            lr: learning rate.
            alpha: smoothing constant.
        """
        return torch.optim.RMSprop(parameters, lr=lr, alpha=alpha)

    try:
        built = build_optimizer([parameter()], {"type": "test_rmsprop", "alpha": 0.9})
        assert type(built) is torch.optim.RMSprop and built.defaults["alpha"] == 0.9
        with pytest.raises(ConfigError, match="has no option 'alpah'; did you mean 'alpha'"):
            build_optimizer([parameter()], {"type": "test_rmsprop", "alpah": 0.9})
    finally:
        OPTIMIZERS._entries.pop("test_rmsprop")  # other tests list the built-in entries


def test_stage_defaults_come_from_the_registered_entries():
    from blocks import lr_schedules, optimizers

    assert optimizers.with_stage_defaults(None, False) == {"type": "adam", "lr": 1e-3}
    assert optimizers.with_stage_defaults(None, True) == {"type": "adamw", "lr": 2e-5}
    assert optimizers.with_stage_defaults({"type": "sgd"}, True) == {"type": "sgd", "lr": 2e-5}
    assert optimizers.with_stage_defaults({"momentum": 0.5}, False) == {"type": "adam", "lr": 1e-3, "momentum": 0.5}
    assert lr_schedules.with_stage_defaults(None, False) == {"type": "constant", "warmup": 0}
    assert lr_schedules.with_stage_defaults(None, True) == {"type": "linear", "warmup": 0.1}
    assert lr_schedules.with_stage_defaults({"warmup": 5}, True) == {"type": "constant", "warmup": 5}


def _train(config: dict, steps: int = 5) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(50, 8)
    optimizer = build_optimizer((p for p in embedding.parameters()), config)  # a generator, as modules give
    ids = torch.randint(0, 50, (4, 6))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        (embedding(ids) ** 2).sum().backward()
        optimizer.step()
    return optimizer, embedding.weight.detach()


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_fused_is_the_default_and_matches_the_multi_tensor_loop(kind):
    fused, fused_weights = _train({"type": kind, "lr": 0.01})
    loop, loop_weights = _train({"type": kind, "lr": 0.01, "fused": False})
    assert fused.defaults["fused"] is True  # torch 2.13 fuses Adam on CPU
    assert loop.defaults["fused"] in (None, False) and loop.defaults["foreach"] is True
    assert not torch.equal(fused_weights, torch.nn.Embedding(50, 8).weight)  # it trained
    torch.testing.assert_close(fused_weights, loop_weights, rtol=1e-5, atol=1e-6)


def test_fused_option_errors(monkeypatch):
    with pytest.raises(ConfigError) as error:
        build_optimizer([parameter()], {"fused": "yes"}, where="/stages/0/optimizer")
    assert error.value.path == "/stages/0/optimizer/fused"
    with pytest.raises(ConfigError) as error:
        build_optimizer([parameter()], {"type": "sgd", "fused": True})
    assert "no option 'fused'" in str(error.value)

    class OldAdam(torch.optim.Adam):  # a torch build without a fused kernel for these parameters
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors"
                                   " of supported devices")
            super().__init__(params, **options)

    monkeypatch.setattr(torch.optim, "Adam", OldAdam)
    optimizer = build_optimizer([parameter()], {})  # the default falls back quietly
    assert type(optimizer) is OldAdam and optimizer.defaults["foreach"] is True
    with pytest.raises(ConfigError) as error:
        build_optimizer([parameter()], {"fused": True}, where="/stages/0/optimizer")
    assert error.value.path == "/stages/0/optimizer/fused"
    assert "not supported here" in str(error.value) and "leave 'fused' out" in str(error.value)


# -- sparse embeddings ------------------------------------------------------------------------
from blocks.engine.optim import SparseAwareOptimizer, clip_grad_norm, sparse_parameters  # noqa: E402


class Bag(torch.nn.Module):
    """An embedding (sparse or dense gradients) and a linear layer, with the same initial weights."""

    def __init__(self, sparse: bool, rows: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(rows, 4, sparse=sparse)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, ids):
        return self.linear(self.embedding(ids)).pow(2).sum()


def train_bag(sparse: bool, config: dict, batches, clip: float | None = None, schedule: bool = True,
              model: Bag | None = None, optimizer=None) -> tuple[Bag, torch.optim.Optimizer]:
    model = model or Bag(sparse)
    optimizer = optimizer or build_optimizer(list(model.parameters()), config, sparse=sparse_parameters(model))
    scheduler = build_schedule(optimizer, {"type": "linear", "warmup": 1}, len(batches) + 1) if schedule else None
    for ids in batches:
        optimizer.zero_grad(set_to_none=True)
        model(torch.tensor(ids)).backward()
        if clip:
            clip_grad_norm(model.parameters(), clip)
        optimizer.step()
        if scheduler:
            scheduler.step()
    return model, optimizer


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_sparse_embedding_matches_dense_adam_when_every_row_is_in_every_batch(kind):
    """Lazy (sparse) Adam differs from Adam only for rows missing from a batch."""
    every_row = [[0, 1, 2, 3, 4, 5, 5, 2]] * 4  # repeated ids: their gradients add up
    config = {"type": kind, "lr": 0.05, "weight_decay": 0.0}
    sparse_model, optimizer = train_bag(True, config, every_row, clip=0.5)
    dense_model, _ = train_bag(False, config, every_row, clip=0.5)
    assert isinstance(optimizer, SparseAwareOptimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [optimizer.param_groups[0]["lr"]] * 2  # one schedule
    # SparseAdam adds eps after the bias correction of the second moment, Adam before it: the two
    # agree to ~1e-4 here, while training moved the weights by far more than that
    for a, b, start in zip(sparse_model.parameters(), dense_model.parameters(), Bag(False).parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        assert float((a - start).detach().abs().max()) > 0.02


def test_sparse_embedding_leaves_rows_outside_the_batches_alone():
    model, _ = train_bag(True, {"lr": 0.1}, [[0, 1], [1, 2]])
    start = Bag(True)
    assert torch.equal(model.embedding.weight[3:], start.embedding.weight[3:])
    assert not torch.equal(model.embedding.weight[:3], start.embedding.weight[:3])


def test_sparse_aware_optimizer_state_round_trip_continues_identically():
    batches = [[0, 1, 4], [2, 4], [1, 5, 5], [0, 3]]
    full, _ = train_bag(True, {"lr": 0.05}, batches, schedule=False)
    first, optimizer = train_bag(True, {"lr": 0.05}, batches[:2], schedule=False)
    saved = copy.deepcopy(optimizer.state_dict())
    assert set(saved) == {"dense", "sparse"} and saved["sparse"]["state"]
    resumed = Bag(True)
    resumed.load_state_dict(first.state_dict())
    again = build_optimizer(list(resumed.parameters()), {"lr": 0.05}, sparse=sparse_parameters(resumed))
    again.load_state_dict(saved)
    train_bag(True, {}, batches[2:], schedule=False, model=resumed, optimizer=again)
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not a dense \\+ sparse pair"):
        again.load_state_dict(saved["dense"])


def test_clip_grad_norm_counts_sparse_gradients_like_dense_ones():
    ids = torch.tensor([0, 2, 2, 5])
    grads = {}
    for sparse in (True, False):
        model = Bag(sparse)
        model(ids).backward()
        total = clip_grad_norm(model.parameters(), 0.1)
        grads[sparse] = (float(total), [p.grad.to_dense() for p in model.parameters()])
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-5)
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert sum(float(g.pow(2).sum()) for g in grads[True][1]) ** 0.5 == pytest.approx(0.1, rel=1e-4)


def test_sparse_embedding_with_sgd_and_weight_decay_and_alone():
    model, optimizer = train_bag(True, {"type": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
                                 [[0, 1], [1, 2]])
    assert type(optimizer) is torch.optim.SGD
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # none on the sparse rows
    embedding = torch.nn.Embedding(5, 3, sparse=True)
    alone = build_optimizer([embedding.weight], {"lr": 0.01}, sparse=[embedding.weight])
    assert type(alone) is torch.optim.SparseAdam
    with pytest.raises(ConfigError) as error:  # the config is still checked
        build_optimizer([embedding.weight], {"lr": -1}, sparse=[embedding.weight], where="/stages/2/optimizer")
    assert error.value.path == "/stages/2/optimizer/lr"
    with pytest.raises(ConfigError, match="'block_lr' cannot be combined with an Embedding") as error:
        build_optimizer([{"params": [embedding.weight]}], {}, sparse=[embedding.weight], where="/stages/2/optimizer")
    assert error.value.path == "/stages/2/block_lr"


def test_a_stage_optimizer_is_checked_with_the_config_and_may_come_from_its_imports(project):
    """Bad optimizer options fail before anything trains, at their JSON path; an optimizer that a
    module in ``imports`` registers is accepted (the check runs after the imports)."""
    from blocks.experiment import check_references, import_user_modules

    values = project.config()
    values["stages"][1]["optimizer"] = {"type": "adam", "lr": 0.01, "momentum": 0.9}
    with pytest.raises(ConfigError) as error:
        check_references(project.load(values))
    assert error.value.path == "/stages/1/optimizer/momentum" and error.value.file.endswith("config.json")
    values["stages"][1]["schedule"] = {"type": "cosine"}
    values["stages"][1]["optimizer"] = {"type": "adam"}
    with pytest.raises(ConfigError, match="unknown schedule type 'cosine'") as error:
        check_references(project.load(values))
    assert error.value.path == "/stages/1/schedule/type"

    (project.root / "my_optim.py").write_text(
        "import torch\n"
        "from blocks.registry import register_optimizer\n\n\n"
        "@register_optimizer('test_adagrad')\n"
        "def adagrad(parameters, where, lr: float = 0.01):\n"
        "    '''Adagrad.\n\n    Args:\n        lr: learning rate.\n    '''\n"
        "    return torch.optim.Adagrad(parameters, lr=lr)\n")
    values["stages"][1]["schedule"] = {"type": "constant"}
    values["stages"][1]["optimizer"] = {"type": "test_adagrad", "lr": 0.05}
    values["imports"] = ["my_optim.py"]
    from blocks.registry import OPTIMIZERS
    try:
        config = project.load(values)
        import_user_modules(config)
        check_references(config)
        assert type(build_optimizer([parameter()], config["stages"][1]["optimizer"])) is torch.optim.Adagrad
    finally:
        OPTIMIZERS._entries.pop("test_adagrad", None)


def test_block_lr_gives_the_named_nodes_their_own_learning_rate(project):
    """``block_lr`` puts each named node's weights in a group with its lr, the rest in the optimizer's
    group; the schedule scales both; a node trained at lr 0 elsewhere really stays put here."""
    from blocks.config.loader import load_config
    from blocks.engine.optim import parameter_groups
    from blocks.engine.run import train
    from tests.conftest import quiet

    experiment = project.prepare(project.single_stage())
    model = experiment.models["teacher"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = parameter_groups(model, trainable, {"encoder": 1e-4, "logits": 0.5})
    assert [g.get("lr") for g in groups] == [None, 1e-4, 0.5]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.blocks["encoder"].parameters()}
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert parameter_groups(model, trainable, None) is trainable
    optimizer = build_optimizer(groups, {"type": "adam", "lr": 0.01})
    schedule = build_schedule(optimizer, {"type": "linear", "warmup": 0}, 10)
    optimizer.step()
    schedule.step()
    assert [round(g["lr"], 8) for g in optimizer.param_groups] == [0.009, 9e-05, 0.45]

    # End to end: a tiny lr on the embedding leaves it (almost) where it started, the rest trains.
    values = project.single_stage()
    values["stages"][0]["block_lr"] = {"embed": 1e-12}
    config = load_config(project.write(values), environ={})
    run_dir = project.root / "run"
    train(config, run_dir=run_dir, progress=False, log=quiet)
    from safetensors.torch import load_file

    trained = load_file(str(run_dir / "models" / "teacher.safetensors"))
    initial = project.prepare(values).models["teacher"].state_dict()
    embedding = [name for name in initial if name.startswith("blocks.embed.")]
    head = [name for name in initial if name.startswith("blocks.logits.")]
    assert embedding and head
    assert all(torch.allclose(trained[name], initial[name], atol=1e-6) for name in embedding)
    assert not any(torch.allclose(trained[name], initial[name]) for name in head)


@pytest.mark.parametrize("block_lr,path,message", [
    ({"encodr": 1e-4}, "/stages/0/block_lr/encodr", "'encodr' is not a node of model 'teacher'.*encoder"),
    ({"pool": 1e-4}, "/stages/0/block_lr/pool", "node 'pool' has no trainable parameters"),
    ({"encoder": -1}, "/stages/0/block_lr/encoder", "less than or equal to the minimum of 0"),
])
def test_block_lr_errors_name_the_node(project, block_lr, path, message):
    """Checked before training (``blocks validate`` runs the same check), at the node's JSON path."""
    from blocks.engine.run import check_stages

    values = project.single_stage()
    values["stages"][0]["block_lr"] = block_lr
    with pytest.raises(ConfigError, match=message) as error:
        check_stages(project.prepare(values))
    assert error.value.path == path and error.value.file.endswith("config.json")
