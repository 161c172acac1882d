"""Attention maps as a named output of both encoders, and the AttentionMatch loss on them.

Encoders: shapes, the plain path left unchanged, the maps against a reference computation and
their padding invariance (TransformerEncoder, and PretrainedEncoder on a tiny random BERT). Graph:
"<node>:attentions" as a node, and its errors. Loss: values by hand, the default layer map, the
error messages, the teacher cache left out, and a tiny end-to-end distillation.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from blocks.block import NamedOutputs
from blocks.catalog import load_builtin_entries
from blocks.distill.attention_losses import AttentionMatch, default_layer_map
from blocks.distill.losses import LossContext
from blocks.engine.teacher_cache import requested_nodes
from blocks.errors import ConfigError
from blocks.graph import Graph
from blocks.layers.pretrained import PretrainedEncoder
from blocks.layers.transformer import TransformerEncoder
from blocks.registry import LOSSES
from blocks.values import ATTENTION, SEQUENCE, TOKENS, VECTOR, AttentionMaps, Sequence, Spec
from tests.conftest import PieceVocab, write_tiny_bert

load_builtin_entries()


def padded_batch(lengths: list[int], width: int, extra: int = 0, seed: int = 0) -> Sequence:
    """Random features with noise at the padded positions, so that only the mask can hide them."""
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths) + extra
    values = torch.randn(len(lengths), length, width, generator=generator) * 3
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return Sequence(values, mask)


def assert_maps_are_clean(maps: torch.Tensor, mask: torch.Tensor) -> None:
    """Real rows sum to 1, padded rows and columns are 0."""
    real = mask[:, None, None, :, None] & mask[:, None, None, None, :]
    assert torch.all(maps[~real.expand_as(maps)] == 0)
    sums = maps.sum(dim=-1)  # [B, layers, heads, L]
    rows = mask[:, None, None, :].expand_as(sums)
    assert torch.allclose(sums[rows], torch.ones_like(sums[rows]), atol=1e-5)


# -- TransformerEncoder --------------------------------------------------------------------------
def encoder_pair(pre_ln: bool = True, **options):
    torch.manual_seed(0)
    plain = TransformerEncoder([Spec(SEQUENCE, 8)], layers=3, heads=2, ffn=16, pre_ln=pre_ln, **options)
    with_maps = TransformerEncoder([Spec(SEQUENCE, 8)], layers=3, heads=2, ffn=16, pre_ln=pre_ln, attentions=True,
                                   **options)
    with_maps.load_state_dict(plain.state_dict())
    return plain, with_maps


def test_transformer_offers_attentions_only_when_asked():
    plain, with_maps = encoder_pair()
    assert dict(plain.named_outputs) == {}
    spec = with_maps.named_outputs["attentions"]
    assert spec.kind == ATTENTION and spec.extra == {"layers": 3, "heads": 2}
    assert spec.describe() == "attention[3 layers x 2 heads]"
    batch = padded_batch([5, 3, 1], 8)
    assert isinstance(plain.eval()(batch), Sequence)
    result = with_maps.eval()(batch)
    assert isinstance(result, NamedOutputs) and isinstance(result.main, Sequence)
    attentions = result.named["attentions"]
    assert isinstance(attentions, AttentionMaps)
    assert attentions.maps.shape == (3, 3, 2, 5, 5)  # [batch, layers, heads, length, length]
    assert torch.equal(attentions.mask, batch.mask)
    assert_maps_are_clean(attentions.maps, batch.mask)


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_transformer_outputs_are_exactly_those_of_the_plain_path(pre_ln, training, grad):
    plain, with_maps = encoder_pair(pre_ln)
    plain.train(training)
    with_maps.train(training)
    batch = padded_batch([5, 3, 1], 8, extra=1)
    with torch.set_grad_enabled(grad):
        torch.manual_seed(7)  # the same dropout draws: computing the maps draws nothing
        expected = plain(batch)
        torch.manual_seed(7)
        got = with_maps(batch).main
    assert torch.equal(got.values, expected.values)
    assert torch.equal(got.mask, expected.mask)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_transformer_maps_are_the_self_attention_weights(pre_ln):
    _, block = encoder_pair(pre_ln)
    block.eval()
    batch = padded_batch([5, 3, 2], 8)
    with torch.no_grad():
        maps = block(batch).named["attentions"].maps
        hidden = (batch.values + block.position_embedding.weight[:5]) * batch.mask[..., None]
        real = batch.mask[:, None, :, None] & batch.mask[:, None, None, :]
        for i, layer in enumerate(block.encoder.layers):
            inputs = layer.norm1(hidden) if pre_ln else hidden
            _, weights = layer.self_attn(inputs, inputs, inputs, key_padding_mask=~batch.mask, need_weights=True,
                                         average_attn_weights=False)
            assert torch.allclose(maps[:, i], weights.masked_fill(~real, 0.0), atol=1e-6)
            hidden = layer(hidden, src_key_padding_mask=~batch.mask)


def test_transformer_maps_are_padding_invariant():
    _, block = encoder_pair()
    block.eval()
    lengths = [5, 1, 3]
    batch = padded_batch(lengths, 8, extra=3)
    with torch.no_grad():
        batched = block(batch).named["attentions"]
        for i, n in enumerate(lengths):
            alone = block(Sequence(batch.values[i:i + 1, :n], batch.mask[i:i + 1, :n])).named["attentions"]
            assert torch.allclose(batched.maps[i, :, :, :n, :n], alone.maps[0], atol=1e-6)
            assert torch.all(batched.maps[i, :, :, n:] == 0) and torch.all(batched.maps[i, :, :, :, n:] == 0)
    assert_maps_are_clean(batched.maps, batched.mask)


def test_transformer_maps_beyond_max_length_are_padded_back():
    _, block = encoder_pair(max_length=4)
    block.eval()
    batch = padded_batch([3, 2], 8, extra=4)  # 7 positions, only padding beyond 4
    with torch.no_grad():
        result = block(batch)
        cropped = block(Sequence(batch.values[:, :4], batch.mask[:, :4]))
    maps = result.named["attentions"].maps
    assert maps.shape == (2, 3, 2, 7, 7)
    assert torch.equal(maps[..., :4, :4], cropped.named["attentions"].maps)
    assert torch.all(maps[..., 4:, :] == 0) and torch.all(maps[..., :, 4:] == 0)
    assert result.main.values.shape == (2, 7, 8)


def test_empty_sequence_gives_zero_maps():
    _, block = encoder_pair()
    block.eval()
    mask = torch.tensor([[True, True, False], [False, False, False]])
    maps = block(Sequence(torch.randn(2, 3, 8), mask)).named["attentions"].maps
    assert torch.isfinite(maps).all() and torch.all(maps[1] == 0)


# -- PretrainedEncoder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert_attentions")
    return SimpleNamespace(folder=folder, vocab_size=write_tiny_bert(folder))


def bert_block(tiny_bert, **options) -> PretrainedEncoder:
    spec = Spec(TOKENS, None, PieceVocab(tiny_bert.vocab_size), extra={"pretrained": str(tiny_bert.folder)})
    block = PretrainedEncoder([spec], **options)
    block.load_pretrained(tiny_bert.folder)
    return block.eval()


def piece_batch(lengths: list[int], extra: int = 0, seed: int = 0) -> Sequence:
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths) + extra
    ids = torch.randint(5, 20, (len(lengths), length), generator=generator)  # garbage in the padding too
    ids[:, 0] = 2
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return Sequence(ids, mask)


def test_pretrained_attentions_shape_and_reference(tiny_bert):
    from transformers import BertModel

    block = bert_block(tiny_bert, pooling="none", attentions=True)
    spec = block.named_outputs["attentions"]
    assert spec.kind == ATTENTION and spec.extra == {"layers": 4, "heads": 2}
    batch = piece_batch([6, 4, 2])
    with torch.no_grad():
        result = block(batch)
    maps = result.named["attentions"].maps
    assert maps.shape == (3, 4, 2, 6, 6)
    assert_maps_are_clean(maps, batch.mask)
    reference = BertModel.from_pretrained(tiny_bert.folder, attn_implementation="eager", add_pooling_layer=False).eval()
    with torch.no_grad():
        expected = reference(input_ids=batch.values, attention_mask=batch.mask.long(), output_attentions=True)
    real = batch.mask[:, None, :, None] & batch.mask[:, None, None, :]
    for i, layer in enumerate(expected.attentions):
        assert torch.allclose(maps[:, i], layer.masked_fill(~real, 0.0), atol=1e-6)
    # the main value is what the block gives without attentions (whose model keeps its default attention)
    plain = bert_block(tiny_bert, pooling="none")
    with torch.no_grad():
        assert torch.allclose(plain(batch).values, result.main.values, atol=1e-5)
    if hasattr(plain.model.config, "_attn_implementation"):  # transformers >= 4.36
        assert block.model.config._attn_implementation == "eager"
        default = BertModel.from_pretrained(tiny_bert.folder, add_pooling_layer=False).config._attn_implementation
        assert plain.model.config._attn_implementation == default  # the fast default stays without attentions


def test_pretrained_attentions_of_kept_layers_are_padding_invariant(tiny_bert):
    block = bert_block(tiny_bert, layers=[1, 3], pooling="mean", attentions=True)
    assert block.named_outputs["attentions"].extra == {"layers": 2, "heads": 2}
    lengths = [6, 2, 4]
    batch = piece_batch(lengths, extra=3)
    with torch.no_grad():
        result = block(batch)
        assert result.main.shape == (3, 32)  # pooled vector, unchanged by attentions
        maps = result.named["attentions"].maps
        assert maps.shape == (3, 2, 2, 9, 9)
        for i, n in enumerate(lengths):
            alone = block(Sequence(batch.values[i:i + 1, :n], batch.mask[i:i + 1, :n])).named["attentions"].maps
            assert torch.allclose(maps[i, :, :, :n, :n], alone[0], atol=1e-5)
    assert_maps_are_clean(maps, batch.mask)


def test_pretrained_attentions_in_a_config(project, tiny_bert):
    values = project.config()
    values["models"]["teacher"] = {
        "inputs": {"pieces": {"type": "pretrained", "field": "text", "tokenizer": str(tiny_bert.folder),
                              "max_length": 16}},
        "graph": [{"name": "encoder", "block": "PretrainedEncoder", "input": "pieces", "pooling": "mean",
                   "layers": [0, 2, 3], "attentions": True},
                  {"name": "logits", "block": "Linear", "input": "encoder"}],
    }
    experiment = project.prepare(values)
    graph = experiment.models["teacher"]
    node = next(n for n in graph.nodes if n.name == "encoder:attentions")
    assert node.spec.describe() == "attention[3 layers x 2 heads]"
    batch = experiment.splits["train"].collate(torch.arange(4))
    graph.eval()
    with torch.no_grad():
        value = experiment.model_values("teacher", batch)["encoder:attentions"]
    length = value.mask.shape[1]
    assert value.maps.shape == (4, 3, 2, length, length)


# -- the graph -----------------------------------------------------------------------------------
def transformer_graph(extra_nodes=(), attentions=True, output=None) -> Graph:
    nodes = [{"name": "encoder", "block": "TransformerEncoder", "input": "features", "layers": 2, "heads": 2,
              "attentions": attentions},
             {"name": "pool", "block": "Pooling", "input": "encoder"},
             *extra_nodes]
    model = {"inputs": {}, "graph": nodes}
    if output:
        model["output"] = output
    return Graph("student", model, {"features": Spec(SEQUENCE, 8)}, 2, "cfg.json", "/models/student")


def test_graph_lists_and_computes_the_named_output():
    graph = transformer_graph().eval()
    names = [n.name for n in graph.nodes]
    assert names == ["encoder", "encoder:attentions", "pool"]
    part = graph.nodes[1]
    assert part.part_of == "encoder" and part.spec.kind == ATTENTION and part.inputs == ["encoder"]
    assert graph.output_name == "pool"
    values = graph({"features": padded_batch([4, 2], 8)})
    assert isinstance(values["encoder"], Sequence)
    assert values["encoder:attentions"].maps.shape == (2, 2, 2, 4, 4)
    assert values["pool"].shape == (2, 8)
    table = graph.describe()
    assert "encoder:attentions" in table and "attention[2 layers x 2 heads]" in table and "output of encoder" in table


def test_shared_encoder_offers_the_named_output_too():
    graph = transformer_graph([{"name": "again", "share": "encoder", "input": "features"}]).eval()
    values = graph({"features": padded_batch([3, 2], 8)})
    assert torch.equal(values["again:attentions"].maps, values["encoder:attentions"].maps)


def test_graph_errors_for_named_outputs():
    with pytest.raises(ConfigError) as caught:
        transformer_graph([{"name": "x", "block": "Pooling", "input": "encoder:attentoins"}])
    message = str(caught.value)
    assert "node 'encoder' of model 'student' has no output 'attentoins'; did you mean 'attentions'" in message
    assert caught.value.path == "/models/student/graph/2/input"
    with pytest.raises(ConfigError, match="it offers none; e.g. a TransformerEncoder or PretrainedEncoder node "
                                          "offers 'attentions' with \"attentions\": true"):
        transformer_graph([{"name": "x", "block": "Pooling", "input": "encoder:attentions"}], attentions=False)
    with pytest.raises(ConfigError, match="'nowhere:attentions' is neither a node nor an input"):
        transformer_graph([{"name": "x", "block": "Pooling", "input": "nowhere:attentions"}])
    with pytest.raises(ConfigError, match=r"input 0 is a attention\[2 layers x 2 heads\] edge; expected sequence"):
        transformer_graph([{"name": "x", "block": "Pooling", "input": "encoder:attentions"}])
    with pytest.raises(ConfigError, match="output 'encoder:attentions' is not a node"):
        transformer_graph(output="encoder:attentions")


# -- the loss ------------------------------------------------------------------------------------
def attention_context(student=(3, 2), teacher=(6, 2)) -> LossContext:
    def spec(layers, heads):
        return Spec(ATTENTION, extra={"layers": layers, "heads": heads})

    return LossContext(student="student", teachers=["teacher"], output_of={"student": "logits", "teacher": "logits"},
                       node_specs={"student": {"logits": Spec(VECTOR, 2), "att": spec(*student),
                                               "h": Spec(SEQUENCE, 4)},
                                   "teacher": {"logits": Spec(VECTOR, 2), "att": spec(*teacher),
                                               "h": Spec(SEQUENCE, 4)}})


def random_maps(batch: int, layers: int, heads: int, lengths: list[int], seed: int, length: int | None = None):
    """Row-stochastic maps over each example's real positions; padded rows and columns 0."""
    generator = torch.Generator().manual_seed(seed)
    length = length or max(lengths)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    scores = torch.randn(batch, layers, heads, length, length, generator=generator)
    scores = scores.masked_fill(~mask[:, None, None, None, :], -math.inf)
    maps = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    maps = maps.masked_fill(~mask[:, None, None, :, None], 0.0)
    return AttentionMaps(maps, mask)


def outputs_of(student: AttentionMaps, teacher: AttentionMaps) -> dict:
    return {"student": {"att": student}, "teacher": {"att": teacher}}


def by_hand(student, teacher, pairs, distance, average_heads=False) -> float:
    """The loss in plain loops: per layer pair, head, real row (and real column)."""
    total, count = 0.0, 0
    for b in range(student.maps.shape[0]):
        n = int(student.mask[b].sum())
        for s_layer, t_layer in pairs:
            s_heads, t_heads = student.maps[b, s_layer], teacher.maps[b, t_layer]
            if average_heads:
                s_heads, t_heads = s_heads.mean(0, keepdim=True), t_heads.mean(0, keepdim=True)
            for s, t in zip(s_heads, t_heads):
                for i in range(n):
                    if distance == "kl":
                        total += sum(float(t[i, j]) * math.log(float(t[i, j]) / float(s[i, j])) for j in range(n))
                        count += 1
                    else:
                        total += sum((float(s[i, j]) - float(t[i, j])) ** 2 for j in range(n))
                        count += n
    return total / count


@pytest.mark.parametrize("distance", ["mse", "kl"])
def test_loss_by_hand_with_padding(distance):
    lengths = [4, 2, 3]
    student = random_maps(3, 3, 2, lengths, seed=1)
    teacher = random_maps(3, 6, 2, lengths, seed=2)
    loss = AttentionMatch(attention_context(), output="att", teacher_output="att", distance=distance)
    assert loss.layer_map == [(0, 1), (1, 3), (2, 5)]
    value = loss(outputs_of(student, teacher), None)
    assert value.item() == pytest.approx(by_hand(student, teacher, loss.layer_map, distance), rel=1e-5)
    # garbage where the mask is False changes nothing, neither does extra padding
    noisy = AttentionMaps(student.maps + (~student.mask)[:, None, None, :, None] * 5.0, student.mask)
    assert loss(outputs_of(noisy, teacher), None).item() == pytest.approx(value.item(), rel=1e-6)
    wider = AttentionMaps(torch.nn.functional.pad(student.maps, (0, 2, 0, 2)),
                          torch.nn.functional.pad(student.mask, (0, 2)))
    assert loss(outputs_of(wider, teacher), None).item() == pytest.approx(value.item(), rel=1e-6)


def test_explicit_layers_and_averaged_heads_by_hand():
    lengths = [3, 2]
    student = random_maps(2, 3, 2, lengths, seed=3)
    teacher = random_maps(2, 6, 4, lengths, seed=4)
    context = attention_context(student=(3, 2), teacher=(6, 4))
    loss = AttentionMatch(context, output="att", teacher_output="att", layers=[[0, 0], [2, 4]], average_heads=True)
    assert loss.layer_map == [(0, 0), (2, 4)]
    value = loss(outputs_of(student, teacher), None).item()
    assert value == pytest.approx(by_hand(student, teacher, [(0, 0), (2, 4)], "mse", average_heads=True), rel=1e-5)


@pytest.mark.parametrize("distance", ["mse", "kl"])
def test_identical_maps_give_zero_and_gradients_reach_the_student(distance):
    teacher = random_maps(2, 3, 2, [4, 3], seed=5)
    loss = AttentionMatch(attention_context(teacher=(3, 2)), output="att", teacher_output="att", distance=distance)
    assert loss(outputs_of(teacher, teacher), None).item() == pytest.approx(0.0, abs=1e-7)
    student = random_maps(2, 3, 2, [4, 3], seed=6)
    maps = student.maps.clone().requires_grad_(True)
    value = loss(outputs_of(AttentionMaps(maps, student.mask), teacher), None)
    assert value.item() > 0
    value.backward()
    assert maps.grad.abs().sum() > 0
    assert torch.all(maps.grad[1, :, :, 3:] == 0) and torch.all(maps.grad[1, :, :, :, 3:] == 0)


def test_kl_stays_finite_when_dropout_zeroes_student_probabilities():
    teacher = random_maps(1, 3, 2, [4], seed=7)
    student = AttentionMaps(teacher.maps.clone(), teacher.mask)
    student.maps[0, 0, 0, 0, 1] = 0.0
    loss = AttentionMatch(attention_context(teacher=(3, 2)), output="att", teacher_output="att", distance="kl")
    assert torch.isfinite(loss(outputs_of(student, teacher), None))


def test_default_layer_map():
    assert default_layer_map(4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]  # TinyBERT-4 from BERT-base
    assert default_layer_map(3, 5) == [(0, 1), (1, 3), (2, 4)]
    assert default_layer_map(2, 2) == [(0, 0), (1, 1)]
    assert default_layer_map(4, 2) == [(0, 0), (1, 0), (2, 1), (3, 1)]
    for student in range(1, 7):
        for teacher in range(1, 13):
            pairs = default_layer_map(student, teacher)
            assert pairs[-1] == (student - 1, teacher - 1)
            assert all(0 <= t < teacher for _, t in pairs)
            assert [t for _, t in pairs] == sorted(t for _, t in pairs)


def test_bad_inputs_are_clear_errors():
    context = attention_context()
    with pytest.raises(ValueError, match=r"needs two attention outputs; student 'h' is a sequence\[4\]: name an "
                                         r"encoder's \"<node>:attentions\""):
        AttentionMatch(context, output="h", teacher_output="att")
    with pytest.raises(ValueError, match=r"teacher 'logits' is a vector\[2\]"):
        AttentionMatch(context, output="att", teacher_output="logits")
    with pytest.raises(ValueError, match="has no node 'atn'; did you mean 'att'"):
        AttentionMatch(context, output="atn", teacher_output="att")
    with pytest.raises(ValueError, match="student 'att' has 2 attention heads but teacher 'att' has 4; set "
                                         "\"average_heads\": true"):
        AttentionMatch(attention_context(teacher=(6, 4)), output="att", teacher_output="att")
    with pytest.raises(ValueError, match=r"layers\[1\]: teacher layer 6 is not among the 6 layers of teacher 'att' "
                                         r"\(0\.\.5\)"):
        AttentionMatch(context, output="att", teacher_output="att", layers=[[0, 0], [1, 6]])
    with pytest.raises(ValueError, match=r"layers\[0\]: student layer 3 is not among the 3 layers"):
        AttentionMatch(context, output="att", teacher_output="att", layers=[[3, 0]])
    with pytest.raises(ValueError, match=r"layers\[0\]: expected a \[student layer, teacher layer\] pair"):
        AttentionMatch(context, output="att", teacher_output="att", layers=[[0, 1, 2]])
    with pytest.raises(ValueError, match="at least one"):
        AttentionMatch(context, output="att", teacher_output="att", layers=[])
    with pytest.raises(ValueError, match="unknown distance 'kld'; did you mean 'kl'"):
        AttentionMatch(context, output="att", teacher_output="att", distance="kld")


def test_run_time_mismatches_are_clear_errors():
    loss = AttentionMatch(attention_context(teacher=(3, 2)), output="att", teacher_output="att")
    teacher = random_maps(2, 3, 2, [3, 2], seed=8)
    with pytest.raises(ValueError, match="mask different positions; an attention match needs the same tokenization"):
        loss(outputs_of(random_maps(2, 3, 2, [3, 3], seed=9), teacher), None)
    with pytest.raises(ValueError, match="student 'att' covers 5 positions but teacher 'att' 3"):
        loss(outputs_of(random_maps(2, 3, 2, [5, 2], seed=9), teacher), None)
    with pytest.raises(ValueError, match="teacher 'att' gave a Tensor, not attention maps"):
        loss({"student": {"att": teacher}, "teacher": {"att": teacher.maps}}, None)


def test_registered_with_documented_parameters_and_no_cached_teacher_nodes():
    assert LOSSES.get("AttentionMatch") is AttentionMatch
    parameters = {p.name: p for p in LOSSES.parameters("AttentionMatch")}
    assert set(parameters) == {"output", "teacher_output", "teacher", "layers", "distance", "average_heads"}
    assert parameters["output"].required and parameters["teacher_output"].required
    assert all(p.doc for p in parameters.values())
    loss = AttentionMatch(attention_context(), output="att", teacher_output="att")
    # no teacher_nodes(): the stage runs its teachers every step instead of caching attention maps
    assert requested_nodes([(1.0, loss)], ["teacher"]) is None


# -- through the config, and training end to end -------------------------------------------------
def transformer_model(layers: int, heads: int) -> dict:
    return {"inputs": {"tokens": {"field": "text", "lowercase": True}},
            "graph": [{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
                      {"name": "encoder", "block": "TransformerEncoder", "layers": layers, "heads": heads,
                       "ffn": 16, "dropout": 0.0, "attentions": True},
                      {"name": "pool", "block": "Pooling", "mode": "mean", "input": "encoder"},
                      {"name": "logits", "block": "Linear"}]}


def attention_config(project, loss: dict) -> dict:
    values = project.config()
    values["models"]["teacher"] = transformer_model(layers=4, heads=2)
    values["models"]["student"] = transformer_model(layers=2, heads=2)
    values["stages"][1]["losses"] = [{"block": "AttentionMatch", "output": "encoder:attentions",
                                      "teacher_output": "encoder:attentions", **loss}]
    return values


def test_config_errors_name_the_loss(project):
    values = attention_config(project, {"teacher_output": "pool"})
    with pytest.raises(ConfigError) as caught:
        project.prepare(values).build_losses(1)
    assert caught.value.path == "/stages/1/losses/0"
    assert "AttentionMatch: an attention match needs two attention outputs; teacher 'pool' is a vector[8]" \
        in str(caught.value)
    values = attention_config(project, {"layers": [[0, 4]]})
    with pytest.raises(ConfigError, match=r"teacher layer 4 is not among the 4 layers of teacher 'encoder:attentions'"):
        project.prepare(values).build_losses(1)
    values = attention_config(project, {"teacher_output": "encoder:attention"})
    with pytest.raises(ConfigError, match="node 'encoder' of model 'teacher' has no output 'attention'; did you mean 'attentions'"):
        project.prepare(values).build_losses(1)
    (_, loss), = project.prepare(attention_config(project, {})).build_losses(1)
    assert loss.layer_map == [(0, 1), (1, 3)]


def test_training_end_to_end_lowers_the_attention_loss(project, tmp_path):
    from blocks.config.loader import load_config
    from blocks.engine.run import train

    values = attention_config(project, {"weight": 1.0})
    values["stages"][0]["epochs"] = 1
    values["stages"][1].update({"epochs": 6, "log_every": 1, "cache_teachers": True,
                                "optimizer": {"type": "adam", "lr": 0.01}})
    lines = []
    train(load_config(project.write(values), environ={}), run_dir=tmp_path / "run", progress=False,
          log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("teachers run every step" in line for line in lines)
    assert not (tmp_path / "run" / "cache").exists()
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["event"] == "train" and e["stage"] == "distill"]
    assert len(losses) >= 40 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.7 * first, (first, last)
