"""Autoregressive decoders over an encoder's sequence output: Transformer and attentional RNN.

Both decoders follow one protocol (:class:`Decoder`), which generation
(:mod:`blocks.generation`) and the sequence-level losses rely on:

* ``forward(memory, prefix) -> Sequence(logits [B, T, V], prefix mask)`` — teacher forcing: the
  logits of every next token given the target prefix ``prefix`` (``<bos> y1 ... y_{T-1}``) and the
  encoder output ``memory`` (a :class:`Sequence` ``[B, S, D]`` with its mask; padded memory
  positions are never attended to). ``prefix`` is a tokens :class:`Sequence` (ids ``[B, T]`` and
  mask) or a bare ``[B, T]`` id tensor. Logits at padded prefix positions are 0.
* ``init_state(memory) -> state`` and ``step(last_ids [B], state) -> (logits [B, V], state)`` —
  incremental decoding: one position at a time, with the Transformer's self-attention keys and
  values (and the memory's projected keys and values) or the RNN's hidden state cached in
  ``state``. Feeding ``step`` the prefix token by token gives the logits of ``forward``.
* ``reorder_state(state, index [B']) -> state`` — the states of rows ``index`` (beam search keeps,
  reorders and duplicates hypotheses with it). A state is a dict of batch-first tensors (or lists
  of them), so one implementation serves both decoders.

Special token ids are not the decoder's business: generation is told which ids are ``<bos>``,
``<eos>`` and ``<pad>``. The target vocabulary size is a parameter (``vocab_size``; in a seq2seq
config its default ``"labels"`` is the task's target vocabulary size); the node's
optional second input, the target tokens edge, is checked against it when it carries a
vocabulary.

How they plug into the engine (the seq2seq task type, a later step): a seq2seq graph ends in a
decoder node whose inputs are the encoder's output node and the target-prefix input; its output
(a logits sequence, ``Spec(SEQUENCE, vocab_size)``) feeds the token-level losses, and the task's
decoding calls the protocol methods on the node's block with the memory computed by the
encoder part of the graph.
"""
from __future__ import annotations

import math
from typing import Literal, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from blocks.block import Block
from blocks.errors import WidthError
from blocks.layers.masking import attention_key_mask, masked_mean, masked_softmax, zero_padding
from blocks.layers.transformer import sinusoidal_positions
from blocks.registry import register_block
from blocks.values import SEQUENCE, TOKENS, Sequence, Spec

#: What a decoder caches between steps: batch-first tensors, or lists of them (one per layer).
DecoderState = dict[str, Union[Tensor, list[Tensor]]]


class Decoder(Block):
    """Base of the decoders: the protocol of the module docstring and the shared input checks."""

    vocab_size: int

    def _check_inputs(self, inputs: list[Spec], vocab_size: int) -> int:
        """The memory width, after checking the inputs: a sequence and optionally target tokens."""
        if not 1 <= len(inputs) <= 2:
            raise WidthError(f"takes 1 or 2 inputs (the encoder output, then the target tokens), got {len(inputs)}")
        if inputs[0].kind != SEQUENCE:
            raise WidthError(f"input 0 (the encoder output) is a {inputs[0].describe()} edge; expected {SEQUENCE}")
        if len(inputs) == 2:
            if inputs[1].kind != TOKENS:
                raise WidthError(f"input 1 (the target prefix) is a {inputs[1].describe()} edge; expected {TOKENS}")
            if inputs[1].vocab is not None and len(inputs[1].vocab) != vocab_size:
                raise WidthError(f"vocab_size is {vocab_size} but the target tokens' vocabulary has "
                                 f"{len(inputs[1].vocab)} entries")
        if vocab_size < 1:
            raise WidthError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.output_spec = Spec(SEQUENCE, vocab_size)
        return inputs[0].width

    def init_state(self, memory: Sequence) -> DecoderState:
        raise NotImplementedError

    def step(self, last_ids: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        raise NotImplementedError

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        """The state of rows ``index`` (e.g. the beams that survive a beam-search step)."""
        reordered: DecoderState = {}
        for key, value in state.items():
            if isinstance(value, list):
                reordered[key] = [tensor.index_select(0, index) for tensor in value]
            else:
                reordered[key] = value.index_select(0, index)
        return reordered


def _prefix_ids(prefix: Sequence | Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(prefix, Sequence):
        return prefix.values, prefix.mask
    return prefix, torch.ones(prefix.shape, dtype=torch.bool, device=prefix.device)


class _TransformerDecoderLayer(nn.Module):
    """Causal self-attention, attention over the memory, feed-forward; pre- or post-LN."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, pre_ln: bool):
        super().__init__()
        self.heads, self.pre_ln, self.attention_dropout = heads, pre_ln, dropout
        self.self_qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, width))
        self.norm_self, self.norm_cross, self.norm_ffn = (nn.LayerNorm(width) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def _heads(self, values: Tensor) -> Tensor:
        """``[B, T, D]`` -> ``[B, heads, T, D / heads]``."""
        batch, length, width = values.shape
        return values.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def _merge(self, values: Tensor) -> Tensor:
        batch, heads, length, size = values.shape
        return values.transpose(1, 2).reshape(batch, length, heads * size)

    def memory_keys_values(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        keys, values = self.cross_kv(memory).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(self, x: Tensor, memory_keys: Tensor, memory_values: Tensor, memory_mask: Tensor,
                cached_keys: Tensor | None, cached_values: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``[B, T, D]``: the whole prefix (no cache: causal attention within it) or the new
        positions after ``cached_keys``/``cached_values`` (which they attend to in full).
        Returns the output and the self-attention keys and values so far."""
        drop = self.attention_dropout if self.training else 0.0
        # self-attention
        inner = self.norm_self(x) if self.pre_ln else x
        query, key, value = (self._heads(part) for part in self.self_qkv(inner).chunk(3, dim=-1))
        if cached_keys is not None:
            key = torch.cat([cached_keys, key], dim=2)
            value = torch.cat([cached_values, value], dim=2)
        causal = cached_keys is None and x.shape[1] > 1
        attended = F.scaled_dot_product_attention(query, key, value, dropout_p=drop, is_causal=causal)
        x = self._residual(x, self.self_out(self._merge(attended)), self.norm_self)
        # attention over the memory
        inner = self.norm_cross(x) if self.pre_ln else x
        query = self._heads(self.cross_q(inner))
        attended = F.scaled_dot_product_attention(query, memory_keys, memory_values,
                                                  attn_mask=memory_mask[:, None, None, :], dropout_p=drop)
        x = self._residual(x, self.cross_out(self._merge(attended)), self.norm_cross)
        # feed-forward
        inner = self.norm_ffn(x) if self.pre_ln else x
        x = self._residual(x, self.ffn(inner), self.norm_ffn)
        return x, key, value

    def _residual(self, x: Tensor, update: Tensor, norm: nn.LayerNorm) -> Tensor:
        x = x + self.dropout(update)
        return x if self.pre_ln else norm(x)


@register_block("TransformerDecoder")
class TransformerDecoder(Decoder):
    """Transformer decoder over an encoder's sequence output, with cached incremental decoding.

    Inputs: the encoder output (sequence ``[batch, source length, width]``) and, optionally, the
    target tokens. Output: logits ``[batch, target length, vocab_size]`` as a sequence with the
    prefix's mask. Target embeddings are scaled by sqrt(width) and get position encodings; each
    layer runs causal self-attention, attention over the (padding-masked) memory and a
    feed-forward sublayer. Prefixes longer than ``max_length`` are refused.

    Args:
        vocab_size: size of the target vocabulary (embeddings and logits).
        layers: number of decoder layers.
        heads: number of attention heads; width must divide by it.
        width: model width; null keeps the memory's width, another width projects the memory.
        ffn: hidden size of the feed-forward sublayer; null means 4 * width.
        dropout: dropout on embeddings, attention probabilities and sublayer outputs.
        positions: position encodings of the target: "learned" or "sinusoidal".
        max_length: longest target prefix the position encodings cover.
        pre_ln: layer norm before each sublayer (and once at the end) instead of after it.
        tie_embeddings: the output projection is the target embedding matrix (no separate weights).
    """

    def __init__(self, inputs: list[Spec], vocab_size: int | Literal["labels"] = "labels", layers: int = 2, heads: int = 4,
                 width: int | None = None, ffn: int | None = None, dropout: float = 0.1,
                 positions: Literal["learned", "sinusoidal"] = "learned", max_length: int = 256,
                 pre_ln: bool = True, tie_embeddings: bool = True):
        super().__init__()
        memory_width = self._check_inputs(inputs, vocab_size)
        width = memory_width if width is None else width
        if heads < 1 or width % heads != 0:
            raise WidthError(f"width {width} does not divide into {heads} heads")
        if layers < 1:
            raise WidthError(f"layers must be at least 1, got {layers}")
        self.width, self.max_length, self.pre_ln, self.positions = width, max_length, pre_ln, positions
        self.memory_projection = nn.Linear(memory_width, width) if width != memory_width else None
        self.embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.embedding.weight, std=width ** -0.5)
        if positions == "learned":
            self.position_embedding = nn.Embedding(max_length, width)
            nn.init.normal_(self.position_embedding.weight, std=0.02)
        else:
            self.register_buffer("position_table", sinusoidal_positions(max_length, width), persistent=False)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            _TransformerDecoderLayer(width, heads, ffn if ffn is not None else 4 * width, dropout, pre_ln)
            for _ in range(layers))
        self.final_norm = nn.LayerNorm(width) if pre_ln else None
        self.output = None if tie_embeddings else nn.Linear(width, vocab_size)

    def _embed(self, ids: Tensor, start: int) -> Tensor:
        end = start + ids.shape[1]
        if end > self.max_length:
            raise ValueError(f"TransformerDecoder reached target position {end}, beyond its max_length "
                             f"{self.max_length}; raise max_length or generate shorter outputs")
        values = self.embedding(ids) * math.sqrt(self.width)
        if self.positions == "learned":
            values = values + self.position_embedding.weight[start:end]
        else:
            values = values + self.position_table[start:end]
        return self.input_dropout(values)

    def _logits(self, x: Tensor) -> Tensor:
        if self.final_norm is not None:
            x = self.final_norm(x)
        return F.linear(x, self.embedding.weight) if self.output is None else self.output(x)

    def _memory(self, memory: Sequence) -> tuple[Tensor, Tensor]:
        values, mask = memory
        if self.memory_projection is not None:
            values = self.memory_projection(values)
        return values, attention_key_mask(mask)

    def forward(self, memory: Sequence, prefix: Sequence | Tensor) -> Sequence:
        ids, mask = _prefix_ids(prefix)
        if ids.shape[1] > self.max_length:
            longest = int(mask.sum(dim=1).max())
            if longest > self.max_length:
                raise ValueError(f"TransformerDecoder got a target prefix of length {longest}, longer than "
                                 f"its max_length {self.max_length}; raise max_length or truncate the targets")
            # Only padding lies beyond max_length: decode the real part, pad the logits back.
            cropped = self.forward(memory, Sequence(ids[:, :self.max_length], mask[:, :self.max_length])).values
            padding = cropped.new_zeros(cropped.shape[0], ids.shape[1] - self.max_length, cropped.shape[2])
            return Sequence(torch.cat([cropped, padding], dim=1), mask)
        memory_values, memory_mask = self._memory(memory)
        x = self._embed(ids, 0)
        for layer in self.layers:
            keys, values = layer.memory_keys_values(memory_values)
            x, _, _ = layer(x, keys, values, memory_mask, None, None)
        return Sequence(zero_padding(self._logits(x), mask), mask)

    def init_state(self, memory: Sequence) -> DecoderState:
        memory_values, memory_mask = self._memory(memory)
        keys, values = zip(*(layer.memory_keys_values(memory_values) for layer in self.layers))
        empty = [k.new_zeros(k.shape[0], k.shape[1], 0, k.shape[3]) for k in keys]
        return {"memory_keys": list(keys), "memory_values": list(values), "memory_mask": memory_mask,
                "self_keys": empty, "self_values": list(empty)}

    def step(self, last_ids: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        position = state["self_keys"][0].shape[2]
        x = self._embed(last_ids[:, None], position)
        self_keys, self_values = [], []
        for i, layer in enumerate(self.layers):
            x, keys, values = layer(x, state["memory_keys"][i], state["memory_values"][i], state["memory_mask"],
                                    state["self_keys"][i], state["self_values"][i])
            self_keys.append(keys)
            self_values.append(values)
        return self._logits(x[:, 0]), {**state, "self_keys": self_keys, "self_values": self_values}


@register_block("RNNDecoder")
class RNNDecoder(Decoder):
    """GRU or LSTM decoder with attention over an encoder's sequence output.

    Inputs: the encoder output (sequence ``[batch, source length, width]``) and, optionally, the
    target tokens. Output: logits ``[batch, target length, vocab_size]`` as a sequence with the
    prefix's mask. The initial hidden state is tanh(linear(mean of the memory)).

    * ``bahdanau`` (additive attention, Bahdanau et al. 2015): the previous hidden state attends
      to the memory, score v·tanh(W s + U h); the context joins the embedded previous token as the
      RNN's input; the output layer reads the new state, the context and the embedding.
    * ``luong`` (multiplicative "general" attention with input feeding, Luong et al. 2015): the new
      hidden state attends, score s·W h; tanh(W [context; state]) is both the output layer's input
      and, at the next step, fed to the RNN beside the embedding.

    Args:
        vocab_size: size of the target vocabulary (embeddings and logits).
        cell: "gru" or "lstm".
        hidden: hidden size of each RNN layer.
        embedding_dim: size of the target embeddings; null means hidden.
        layers: number of stacked RNN layers.
        attention: "bahdanau" (additive) or "luong" (general, with input feeding).
        dropout: dropout on embeddings, between layers and before the output projection.
        tie_embeddings: the output projection is the target embedding matrix (the output layer
            then has embedding_dim features).
    """

    def __init__(self, inputs: list[Spec], vocab_size: int | Literal["labels"] = "labels",
                 cell: Literal["gru", "lstm"] = "gru",
                 hidden: int = 256, embedding_dim: int | None = None, layers: int = 1,
                 attention: Literal["bahdanau", "luong"] = "bahdanau", dropout: float = 0.1,
                 tie_embeddings: bool = False):
        super().__init__()
        memory_width = self._check_inputs(inputs, vocab_size)
        if layers < 1:
            raise WidthError(f"layers must be at least 1, got {layers}")
        embedding_dim = hidden if embedding_dim is None else embedding_dim
        features = embedding_dim if tie_embeddings else hidden
        self.cell, self.attention, self.hidden, self.features = cell, attention, hidden, features
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.bridge = nn.Linear(memory_width, layers * hidden)
        feed_width = memory_width if attention == "bahdanau" else features
        cell_class = nn.GRUCell if cell == "gru" else nn.LSTMCell
        self.cells = nn.ModuleList(cell_class(embedding_dim + feed_width if i == 0 else hidden, hidden)
                                   for i in range(layers))
        if attention == "bahdanau":
            self.query_projection = nn.Linear(hidden, hidden, bias=False)
            self.key_projection = nn.Linear(memory_width, hidden)
            self.score = nn.Linear(hidden, 1, bias=False)
            self.combine = nn.Linear(hidden + memory_width + embedding_dim, features)
        else:
            self.key_projection = nn.Linear(memory_width, hidden, bias=False)
            self.combine = nn.Linear(memory_width + hidden, features)
        self.dropout = nn.Dropout(dropout)
        if tie_embeddings:
            self.output = None
            self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.output = nn.Linear(features, vocab_size)

    def forward(self, memory: Sequence, prefix: Sequence | Tensor) -> Sequence:
        ids, mask = _prefix_ids(prefix)
        state = self.init_state(memory)
        steps = []
        for position in range(ids.shape[1]):
            logits, state = self.step(ids[:, position], state)
            steps.append(logits)
        if not steps:
            return Sequence(ids.new_zeros(ids.shape[0], 0, self.vocab_size, dtype=torch.float), mask)
        return Sequence(zero_padding(torch.stack(steps, dim=1), mask), mask)

    def init_state(self, memory: Sequence) -> DecoderState:
        values, mask = memory
        batch = values.shape[0]
        hidden = torch.tanh(self.bridge(masked_mean(values, mask))).view(batch, len(self.cells), self.hidden)
        state: DecoderState = {"hidden": hidden, "memory": values, "memory_keys": self.key_projection(values),
                               "memory_mask": attention_key_mask(mask)}
        if self.cell == "lstm":
            state["cell"] = torch.zeros_like(hidden)
        if self.attention == "luong":
            state["feed"] = values.new_zeros(batch, self.features)
        return state

    def _attend(self, query: Tensor, state: DecoderState) -> Tensor:
        """The context vector ``[B, memory width]`` for ``query`` ``[B, hidden]``."""
        keys = state["memory_keys"]
        if self.attention == "bahdanau":
            scores = self.score(torch.tanh(keys + self.query_projection(query)[:, None])).squeeze(-1)
        else:
            scores = torch.bmm(keys, query[:, :, None]).squeeze(-1)
        weights = masked_softmax(scores, state["memory_mask"])
        return torch.bmm(weights[:, None], state["memory"]).squeeze(1)

    def step(self, last_ids: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        embedded = self.dropout(self.embedding(last_ids))
        hidden = state["hidden"]
        if self.attention == "bahdanau":
            context = self._attend(hidden[:, -1], state)
            layer_input = torch.cat([embedded, context], dim=-1)
        else:
            layer_input = torch.cat([embedded, state["feed"]], dim=-1)
        new_state = dict(state)
        hiddens, cells = [], []
        for i, cell in enumerate(self.cells):
            if self.cell == "lstm":
                h, c = cell(layer_input, (hidden[:, i], state["cell"][:, i]))
                cells.append(c)
            else:
                h = cell(layer_input, hidden[:, i])
            hiddens.append(h)
            layer_input = self.dropout(h) if i < len(self.cells) - 1 else h
        top = hiddens[-1]
        new_state["hidden"] = torch.stack(hiddens, dim=1)
        if cells:
            new_state["cell"] = torch.stack(cells, dim=1)
        if self.attention == "bahdanau":
            features = torch.tanh(self.combine(torch.cat([top, context, embedded], dim=-1)))
        else:
            context = self._attend(top, state)
            features = torch.tanh(self.combine(torch.cat([context, top], dim=-1)))
            new_state["feed"] = features
        features = self.dropout(features)
        if self.output is None:
            logits = F.linear(features, self.embedding.weight, self.output_bias)
        else:
            logits = self.output(features)
        return logits, new_state
