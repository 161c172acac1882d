"""Model graphs: width inference, "labels", sharing, node order, describe(), graph-level errors."""
from __future__ import annotations

import pytest
import torch

from blocks.catalog import load_builtin_entries
from blocks.data.vocabulary import Vocabulary
from blocks.errors import ConfigError
from blocks.graph import Graph
from blocks.values import SEQUENCE, TOKENS, VECTOR, Sequence, Spec

load_builtin_entries()

VOCAB = Vocabulary(["good", "bad", "movie", "the"])  # 6 entries with <pad> and <unk>


def tokens_spec() -> Spec:
    return Spec(TOKENS, None, VOCAB)


def build(graph: list[dict], inputs=("tokens",), num_outputs: int = 3, output: str | None = None) -> Graph:
    model = {"inputs": {}, "graph": graph}
    if output:
        model["output"] = output
    return Graph("student", model, {name: tokens_spec() for name in inputs}, num_outputs, "cfg.json",
                 "/models/student")


def token_batch() -> Sequence:
    ids = torch.tensor([[2, 3, 4, 0], [5, 2, 0, 0]])
    return Sequence(ids, ids != 0)


CHAIN = [
    {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
    {"name": "encoder", "block": "BiLSTM", "hidden": 5},
    {"name": "pool", "block": "Pooling"},
    {"name": "logits", "block": "Linear", "out": "labels"},
]


def test_widths_are_inferred_along_the_chain():
    graph = build(CHAIN)
    specs = {node.name: node.spec for node in graph.nodes}
    assert specs["embed"] == Spec(SEQUENCE, 8)
    assert specs["encoder"] == Spec(SEQUENCE, 10)  # hidden 5, both directions
    assert specs["pool"] == Spec(VECTOR, 10)
    assert specs["logits"] == Spec(VECTOR, 3)  # "labels" -> the label count
    assert graph.output_name == "logits" and graph.output_spec == Spec(VECTOR, 3)
    # the blocks were sized from those widths
    assert sum(p.numel() for p in graph.blocks["embed"].parameters()) == len(VOCAB) * 8
    assert graph.blocks["encoder"].rnn.input_size == 8
    linear_weights = [p for p in graph.blocks["logits"].parameters() if p.dim() == 2]
    assert linear_weights[0].shape == (3, 10)
    values = graph({"tokens": token_batch()})
    assert values["pool"].shape == (2, 10)
    assert values["logits"].shape == (2, 3)
    assert set(values) == {"tokens", "embed", "encoder", "pool", "logits"}


def test_labels_follow_the_label_count():
    assert build(CHAIN, num_outputs=2).output_spec.width == 2
    assert build(CHAIN, num_outputs=7).output_spec.width == 7
    assert build(CHAIN, num_outputs=7).params["logits"]["out"] == 7


def test_default_output_and_explicit_output():
    graph = build(CHAIN, output="pool")
    assert graph.output_name == "pool" and graph.output_spec == Spec(VECTOR, 10)
    with pytest.raises(ConfigError) as caught:
        build(CHAIN, output="logit")
    assert caught.value.path == "/models/student/output"
    assert "output 'logit' is not a node of model 'student'; did you mean 'logits'?" in caught.value.message


SHARED = [
    {"name": "embed_a", "block": "Embedding", "input": "a", "dim": 8},
    {"name": "embed_b", "share": "embed_a", "input": "b"},
    {"name": "enc_a", "block": "BiLSTM", "input": "embed_a", "hidden": 4},
    {"name": "enc_b", "share": "enc_a", "input": "embed_b"},
    {"name": "pool_a", "block": "Pooling", "input": "enc_a"},
    {"name": "pool_b", "share": "pool_a", "input": "enc_b"},
    {"name": "both", "block": "Combine", "input": ["pool_a", "pool_b"], "parts": ["a", "b"]},
    {"name": "logits", "block": "Linear"},
]


def test_shared_nodes_use_one_block_and_count_parameters_once():
    graph = build(SHARED, inputs=("a", "b"), num_outputs=2)
    assert set(graph.blocks) == {"embed_a", "enc_a", "pool_a", "both", "logits"}
    owners = {node.name: node.owner for node in graph.nodes}
    assert owners["embed_b"] == "embed_a" and owners["enc_b"] == "enc_a" and owners["pool_b"] == "pool_a"
    embedding = 6 * 8
    lstm = 2 * (4 * 4 * 8 + 4 * 4 * 4 + 2 * 4 * 4)  # two directions: W_ih, W_hh, b_ih, b_hh
    combine = 0
    linear = 16 * 2 + 2
    assert graph.parameter_count() == embedding + lstm + combine + linear
    keys = list(graph.state_dict())
    assert len(keys) == len(set(keys))
    assert not any("embed_b" in k or "enc_b" in k for k in keys)
    # the same weights run on both branches: equal inputs give equal outputs
    batch = token_batch()
    values = graph({"a": batch, "b": batch})
    assert torch.equal(values["pool_a"], values["pool_b"])
    assert values["both"].shape == (2, 16)
    assert "shared with embed_a" in graph.describe()


def test_a_share_of_a_share_resolves_to_the_original():
    nodes = [
        {"name": "e1", "block": "Embedding", "input": "a", "dim": 8},
        {"name": "e2", "share": "e1", "input": "b"},
        {"name": "e3", "share": "e2", "input": "a"},
        {"name": "pool", "block": "Pooling", "input": "e3"},
    ]
    graph = build(nodes, inputs=("a", "b"))
    assert {n.name: n.owner for n in graph.nodes}["e3"] == "e1"
    assert set(graph.blocks) == {"e1", "pool"}


def test_sharing_with_different_input_widths_is_an_error():
    nodes = [
        {"name": "e8", "block": "Embedding", "input": "tokens", "dim": 8},
        {"name": "e6", "block": "Embedding", "input": "tokens", "dim": 6},
        {"name": "enc", "block": "BiLSTM", "input": "e8", "hidden": 4},
        {"name": "enc6", "share": "enc", "input": "e6"},
    ]
    with pytest.raises(ConfigError) as caught:
        build(nodes)
    assert caught.value.path == "/models/student/graph/3/input"
    assert "shares 'enc' but its inputs (sequence[6]) differ from that node's (sequence[8])" in caught.value.message


def test_nodes_listed_out_of_order_still_build():
    nodes = [
        {"name": "logits", "block": "Linear", "input": "pool"},
        {"name": "pool", "block": "Pooling", "input": "encoder"},
        {"name": "encoder", "block": "BiLSTM", "input": "embed", "hidden": 5},
        {"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
    ]
    graph = build(nodes, output="logits")
    assert [node.name for node in graph.nodes] == ["embed", "encoder", "pool", "logits"]
    assert graph.output_spec == Spec(VECTOR, 3)
    assert graph({"tokens": token_batch()})["logits"].shape == (2, 3)
    # the default output is the last node *listed*, not the last one run
    assert build(nodes).output_name == "embed"


def test_same_seed_builds_the_same_weights():
    torch.manual_seed(5)
    first = build(CHAIN).state_dict()
    torch.manual_seed(5)
    second = build(CHAIN).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_describe_lists_every_node_with_its_width():
    graph = build(CHAIN)
    text = graph.describe()
    lines = text.splitlines()
    assert lines[0].split() == ["node", "block", "inputs", "output", "parameters"]
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert "(input)" in rows["tokens"]
    assert "Embedding" in rows["embed"] and "sequence[8]" in rows["embed"] and "48" in rows["embed"]
    assert "BiLSTM" in rows["encoder"] and "sequence[10]" in rows["encoder"]
    assert "Pooling" in rows["pool"] and "vector[10]" in rows["pool"]
    assert "Linear" in rows["logits"] and "vector[3]" in rows["logits"] and "33" in rows["logits"]
    total = graph.parameter_count()
    assert lines[-1] == f"total parameters: {total:,} ({total:,} trainable); output: logits vector[3]"


@pytest.mark.parametrize("nodes, path, fragment", [
    ([{"name": "embed", "block": "Embedding", "input": "tokns", "dim": 8}],
     "/models/student/graph/0/input", "'tokns' is neither a node nor an input of model 'student'; did you mean 'tokens'?"),
    ([{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
      {"name": "both", "block": "Concat", "input": ["embed", "embd"]}],
     "/models/student/graph/1/input/1", "'embd' is neither a node nor an input"),
    ([{"name": "embed", "block": "Embedding", "dim": 8}],
     "/models/student/graph/0", "node 'embed' has no input; name one of the model inputs (tokens)"),
    ([{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
      {"name": "embed", "block": "Pooling"}],
     "/models/student/graph/1/name", "node name 'embed' is used twice"),
    ([{"name": "tokens", "block": "Embedding", "input": "tokens", "dim": 8}],
     "/models/student/graph/0/name", "node name 'tokens' is also an input name"),
    ([{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
      {"name": "x", "share": "embedd", "input": "tokens"}],
     "/models/student/graph/1/share", "shared node 'embedd' does not exist; did you mean 'embed'?"),
    ([{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
      {"name": "a", "block": "BiLSTM", "input": "b", "hidden": 4},
      {"name": "b", "block": "BiLSTM", "input": "a", "hidden": 4}],
     "/models/student/graph/1", "the graph has a cycle: a -> b -> a"),
    ([{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
      {"name": "attend", "block": "MultiHeadSelfAttention", "heads": 3}],
     "/models/student/graph/1", "MultiHeadSelfAttention 'attend' input width 8 does not divide into 3 heads "
                                "(inputs: embed: sequence[8])"),
    ([{"name": "embed", "block": "Embedding", "input": "tokens", "dim": 8},
      {"name": "pool", "block": "Pooling"}, {"name": "enc", "block": "BiLSTM"}],
     "/models/student/graph/2", "BiLSTM 'enc' input 0 is a vector[8] edge; expected sequence"),
])
def test_graph_errors_name_the_node(nodes, path, fragment):
    with pytest.raises(ConfigError) as caught:
        build(nodes)
    assert caught.value.file == "cfg.json"
    assert caught.value.path == path
    assert fragment in caught.value.message
