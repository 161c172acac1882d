"""Decoders: incremental decoding equals teacher forcing, masks respected, state reordering, checks."""
from __future__ import annotations

import jsonschema
import pytest
import torch

from blocks.errors import ConfigError, WidthError
from blocks.layers.decoders import RNNDecoder, TransformerDecoder
from blocks.registry import BLOCKS
from blocks.values import SEQUENCE, TOKENS, VECTOR, Sequence, Spec

WIDTH, VOCAB = 16, 13

DECODERS = {
    "transformer-pre": lambda: TransformerDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, layers=2, heads=4, pre_ln=True),
    "transformer-post-untied": lambda: TransformerDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, layers=2, heads=2,
                                                          pre_ln=False, tie_embeddings=False),
    "transformer-projected-sinusoidal": lambda: TransformerDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, layers=1,
                                                                   heads=2, width=8, positions="sinusoidal"),
    "gru-bahdanau": lambda: RNNDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, cell="gru", hidden=12, layers=2),
    "lstm-luong-tied": lambda: RNNDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, cell="lstm", hidden=12, embedding_dim=10,
                                          attention="luong", tie_embeddings=True),
    "lstm-bahdanau": lambda: RNNDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, cell="lstm", hidden=12, attention="bahdanau"),
    "gru-luong": lambda: RNNDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, cell="gru", hidden=12, layers=2,
                                    attention="luong"),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny tensor operations: extra threads only add overhead (restored after each test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def memory_and_prefix(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    memory_lengths, prefix_lengths = [7, 4, 1], [6, 3, 5]
    values = torch.randn(3, 7, WIDTH, generator=generator)
    memory_mask = torch.arange(7)[None] < torch.tensor(memory_lengths)[:, None]
    ids = torch.randint(0, VOCAB, (3, 6), generator=generator)
    prefix_mask = torch.arange(6)[None] < torch.tensor(prefix_lengths)[:, None]
    return Sequence(values, memory_mask), Sequence(ids, prefix_mask)


@pytest.mark.parametrize("name", list(DECODERS))
def test_incremental_decoding_equals_teacher_forcing(name):
    torch.manual_seed(0)
    decoder = DECODERS[name]().eval()
    memory, prefix = memory_and_prefix()
    full = decoder(memory, prefix)
    assert full.values.shape == (3, 6, VOCAB) and torch.equal(full.mask, prefix.mask)
    assert torch.all(full.values[~prefix.mask] == 0)  # logits at padded prefix positions are 0
    state = decoder.init_state(memory)
    steps = []
    for position in range(6):
        logits, state = decoder.step(prefix.values[:, position], state)
        assert logits.shape == (3, VOCAB)
        steps.append(logits)
    incremental = torch.stack(steps, dim=1)
    assert (incremental - full.values)[prefix.mask].abs().max() < 1e-5
    # a bare id tensor is a prefix without padding
    bare = decoder(memory, prefix.values).values
    assert (bare - incremental).abs().max() < 1e-5


@pytest.mark.parametrize("name", list(DECODERS))
def test_padding_and_future_tokens_have_no_influence(name):
    """Changing padded memory positions or later prefix tokens leaves earlier logits unchanged."""
    torch.manual_seed(0)
    decoder = DECODERS[name]().eval()
    memory, prefix = memory_and_prefix()
    reference = decoder(memory, prefix).values
    noisy_memory = Sequence(torch.where(memory.mask[..., None], memory.values, torch.randn_like(memory.values) * 50),
                            memory.mask)
    later = prefix.values.clone()
    later[:, 3:] = (later[:, 3:] + 1) % VOCAB
    changed = decoder(noisy_memory, Sequence(later, prefix.mask)).values
    assert (changed[:, :3] - reference[:, :3]).abs().max() < 1e-5
    assert (changed[:, 3:] - reference[:, 3:])[prefix.mask[:, 3:]].abs().max() > 1e-4  # later positions do change
    # more padding on the memory: the same logits
    wider = Sequence(torch.cat([memory.values, torch.randn(3, 4, WIDTH)], dim=1),
                     torch.cat([memory.mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1))
    assert (decoder(wider, prefix).values - reference).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["transformer-pre", "lstm-luong-tied"])
def test_reorder_state_follows_the_rows(name):
    torch.manual_seed(0)
    decoder = DECODERS[name]().eval()
    memory, prefix = memory_and_prefix()
    state = decoder.init_state(memory)
    for position in range(2):
        _, state = decoder.step(prefix.values[:, position], state)
    index = torch.tensor([2, 0, 0])
    reordered = decoder.reorder_state(state, index)
    logits, _ = decoder.step(prefix.values[index, 2], reordered)
    # the same as decoding the reordered batch from the start
    memory_rows = Sequence(memory.values[index], memory.mask[index])
    expected = decoder(memory_rows, prefix.values[index, :3]).values[:, 2]
    assert (logits - expected).abs().max() < 1e-5


def test_gradients_reach_memory_and_embeddings():
    for name in ("transformer-pre", "gru-bahdanau"):
        torch.manual_seed(0)
        decoder = DECODERS[name]()
        memory, prefix = memory_and_prefix()
        memory = Sequence(memory.values.requires_grad_(), memory.mask)
        decoder(memory, prefix).values.sum().backward()
        assert memory.values.grad[memory.mask].abs().sum() > 0
        assert torch.all(memory.values.grad[~memory.mask] == 0)
        assert decoder.embedding.weight.grad.abs().sum() > 0


def test_tied_embeddings_share_the_matrix():
    tied = TransformerDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, layers=1, heads=2)
    untied = TransformerDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, layers=1, heads=2, tie_embeddings=False)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(untied) - count(tied) == WIDTH * VOCAB + VOCAB
    rnn = RNNDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, hidden=12, embedding_dim=6, tie_embeddings=True)
    assert rnn.output is None and rnn.combine.out_features == 6


def test_registered_with_inferred_widths():
    assert {"TransformerDecoder", "RNNDecoder"} <= set(BLOCKS.names())
    block = BLOCKS.build("TransformerDecoder", [Spec(SEQUENCE, 24)], params={"vocab_size": 50, "heads": 3})
    assert block.output_spec == Spec(SEQUENCE, 50) and block.width == 24
    assert [p.name for p in BLOCKS.parameters("RNNDecoder")][:2] == ["vocab_size", "cell"]
    for name in ("TransformerDecoder", "RNNDecoder"):
        jsonschema.Draft202012Validator.check_schema(BLOCKS.schema(name))
        assert all(parameter.doc for parameter in BLOCKS.parameters(name))
        # vocab_size defaults to "labels": the task's target vocabulary size
        assert [p.name for p in BLOCKS.parameters(name) if p.required] == []
        assert BLOCKS.parameters(name)[0].default == "labels"
        BLOCKS.validate_params(name, {"vocab_size": 100}, None, "/graph/3")
    with pytest.raises(ConfigError, match="/graph/3/attention"):
        BLOCKS.validate_params("RNNDecoder", {"vocab_size": 100, "attention": "dot"}, None, "/graph/3")


def test_bad_inputs_are_width_errors():
    class Vocab:
        def __len__(self):
            return 9

    with pytest.raises(WidthError, match="expected sequence"):
        TransformerDecoder([Spec(VECTOR, 8)], VOCAB)
    with pytest.raises(WidthError, match="target prefix"):
        RNNDecoder([Spec(SEQUENCE, 8), Spec(SEQUENCE, 8)], VOCAB)
    with pytest.raises(WidthError, match="vocab_size is 13 but the target tokens' vocabulary has 9"):
        TransformerDecoder([Spec(SEQUENCE, 8), Spec(TOKENS, vocab=Vocab())], VOCAB, heads=2)
    with pytest.raises(WidthError, match="does not divide into 3 heads"):
        TransformerDecoder([Spec(SEQUENCE, 8)], VOCAB, heads=3)
    with pytest.raises(WidthError, match="takes 1 or 2 inputs"):
        RNNDecoder([], VOCAB)


def test_max_length():
    decoder = TransformerDecoder([Spec(SEQUENCE, WIDTH)], VOCAB, layers=1, heads=2, max_length=4).eval()
    memory, _ = memory_and_prefix()
    with pytest.raises(ValueError, match="max_length 4"):
        decoder(memory, torch.zeros(3, 5, dtype=torch.long))
    # only padding beyond max_length: decoded like the cropped prefix
    ids = torch.randint(0, VOCAB, (3, 6))
    mask = torch.arange(6)[None] < torch.tensor([4, 2, 3])[:, None]
    logits = decoder(memory, Sequence(ids, mask)).values
    assert logits.shape == (3, 6, VOCAB)
    assert (logits[:, :4] - decoder(memory, Sequence(ids[:, :4], mask[:, :4])).values).abs().max() < 1e-6
    state = decoder.init_state(memory)
    for position in range(4):
        _, state = decoder.step(ids[:, position], state)
    with pytest.raises(ValueError, match="beyond its max_length 4"):
        decoder.step(ids[:, 4], state)


def test_a_graph_wires_encoder_and_decoder_and_generation_reads_its_nodes():
    """Config nodes: embedding -> TransformerEncoder -> TransformerDecoder(encoder, prefix); the
    decoder node's logits come out of the graph, and beam search runs on its block and memory."""
    from blocks.generation import beam_search, greedy_search
    from blocks.graph import Graph

    class Vocab:
        pad_index, unk_index = 0, 3
        tokens = [f"t{i}" for i in range(VOCAB)]

        def __len__(self):
            return VOCAB

    torch.manual_seed(0)
    config = {"graph": [
        {"name": "embed", "block": "Embedding", "input": "source", "dim": 16},
        {"name": "encoder", "block": "TransformerEncoder", "layers": 1, "heads": 2},
        {"name": "decoder", "block": "TransformerDecoder", "input": ["encoder", "prefix"], "vocab_size": VOCAB,
         "layers": 1, "heads": 2},
    ]}
    specs = {"source": Spec(TOKENS, vocab=Vocab()), "prefix": Spec(TOKENS, vocab=Vocab())}
    graph = Graph("translator", config, specs, num_outputs=1).eval()
    assert graph.output_spec == Spec(SEQUENCE, VOCAB)
    source = Sequence(torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool())
    prefix = Sequence(torch.tensor([[1, 9, 10], [1, 11, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]).bool())
    values = graph({"source": source, "prefix": prefix})
    assert values["decoder"].values.shape == (2, 3, VOCAB)
    decoder, memory = graph.blocks["decoder"], values["encoder"]
    state = decoder.init_state(memory)
    for position in range(3):
        logits, state = decoder.step(prefix.values[:, position], state)
        assert (logits - values["decoder"].values[:, position])[prefix.mask[:, position]].abs().max() < 1e-5
    greedy = greedy_search(decoder, memory, bos_id=1, eos_id=2, pad_id=0, max_len_a=3, max_len_b=1)
    assert greedy.tokens == beam_search(decoder, memory, beam_size=1, length_penalty=0.0, bos_id=1, eos_id=2,
                                        pad_id=0, max_len_a=3, max_len_b=1).tokens
    assert [len(tokens) <= limit for tokens, limit in zip(greedy.tokens, (6, 4))] == [True, True]
