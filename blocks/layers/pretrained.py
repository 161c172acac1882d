"""Pretrained transformer encoders (``transformers.AutoModel``) as a block."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch

from blocks.block import Block, NamedOutputs, expect_inputs
from blocks.errors import ConfigError, WidthError
from blocks.layers.masking import masked_mean, zero_padding
from blocks.registry import register_block
from blocks.values import ATTENTION, SEQUENCE, TOKENS, VECTOR, AttentionMaps, Sequence, Spec

_LAYER_KEY = re.compile(r"(^|\.)layer\.(\d+)\.")


def pretrained_location(spec: Spec) -> str:
    location = spec.extra.get("pretrained")
    if location is None:
        raise WidthError('reads the ids of a pretrained tokenizer: give it an input with "type": "pretrained"')
    return location


def load_config(location: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"'{location}' holds no pretrained model config: {str(error).splitlines()[0]}") from None


def load_model(location: str):
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own log line reports the load

    try:
        return AutoModel.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load pretrained weights from '{location}': {str(error).splitlines()[0]}") from None


@register_block("PretrainedEncoder")
class PretrainedEncoder(Block):
    """A pretrained transformer encoder (BERT, MiniLM, ...) fine-tuned as part of a graph.

    Input: tokens from an input of ``"type": "pretrained"`` (the model's own tokenizer; sentence
    pairs get their segment ids from the separator token). Output: vector ``[batch, hidden]``
    (``cls`` or ``mean`` pooling) or the sequence ``[batch, length, hidden]`` (``none``). The
    weights come from the tokenizer's model folder when training starts; afterwards they live in
    the run directory. With ``attentions`` the node also offers the named output
    ``"<node>:attentions"``: the attention probabilities of the kept layers,
    ``[batch, kept layers, heads, length, length]`` as ``transformers`` returns them
    (``output_attentions``; in training mode after the model's attention dropout), with padded
    rows and columns 0. The model then runs the "eager" attention implementation, which can
    return them; without ``attentions`` it keeps its faster default. With ``hidden_states`` it
    offers ``"<node>:layer0"`` ... ``"<node>:layer<K-1>"``: the output of each of the K kept
    layers, pooled like the main value (the last one is the main value). A student matches them
    to a teacher's layers with ``RepresentationMatch`` (PKD's patient distillation, Sun et al.
    2019); as vectors they fit in the teacher cache.

    Args:
        pooling: cls (first token), mean (over real tokens) or none (the whole sequence).
        layers: indexes of the pretrained layers to keep, in order (e.g. [0, 2, 4] keeps three of
            six, PKD style); default: all.
        freeze_embeddings: keep the embedding layer fixed.
        freeze_layers: keep the first N kept layers fixed.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        attentions: also offer the kept layers' attention probabilities as the named output
            "<node>:attentions" (computed only when set).
        hidden_states: also offer each kept layer's pooled output as the named outputs
            "<node>:layer<i>", i indexing the kept layers (computed only when set).
    """

    def __init__(self, inputs: list[Spec], pooling: Literal["cls", "mean", "none"] = "cls",
                 layers: list[int] | None = None, freeze_embeddings: bool = False, freeze_layers: int = 0,
                 gradient_checkpointing: bool = False, attentions: bool = False, hidden_states: bool = False):
        super().__init__()
        from transformers import AutoModel

        expect_inputs(inputs, 1, (TOKENS,))
        self.location = pretrained_location(inputs[0])
        config = load_config(self.location)
        total = config.num_hidden_layers
        self.kept_layers = list(range(total)) if layers is None else list(layers)
        if not self.kept_layers or any(not 0 <= i < total for i in self.kept_layers):
            raise WidthError(f"layers must be indexes in 0..{total - 1} of the pretrained model's {total} layers")
        if not 0 <= freeze_layers <= len(self.kept_layers):
            raise WidthError(f"freeze_layers must be between 0 and the {len(self.kept_layers)} kept layers")
        vocab_size = self.vocab_size = len(inputs[0].vocab)
        if vocab_size > config.vocab_size:
            raise WidthError(f"the tokenizer has {vocab_size:,} tokens but the model's embeddings only "
                             f"{config.vocab_size:,}: tokenizer and weights do not match")
        config.num_hidden_layers = len(self.kept_layers)
        self.model = self._build_model(AutoModel, config, attentions)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        if freeze_embeddings:
            self.model.get_input_embeddings().requires_grad_(False)
            embeddings = getattr(self.model, "embeddings", None)
            if embeddings is not None:
                embeddings.requires_grad_(False)
        for name, parameter in self.model.named_parameters():
            match = _LAYER_KEY.search(name)
            if match and int(match.group(2)) < freeze_layers:
                parameter.requires_grad_(False)
        self.pooling = pooling
        self.sep_index = getattr(inputs[0].vocab, "sep_index", None)
        self.use_segments = getattr(config, "type_vocab_size", 0) >= 2 and self.sep_index is not None
        self.output_spec = Spec(SEQUENCE if pooling == "none" else VECTOR, config.hidden_size)
        self.attentions = attentions
        self.hidden_states = hidden_states
        named = {}
        if attentions:
            heads = getattr(config, "num_attention_heads", None)
            if heads is None:
                raise WidthError(f"attentions: the model config of '{self.location}' names no num_attention_heads")
            named["attentions"] = Spec(ATTENTION, extra={"layers": len(self.kept_layers), "heads": heads})
        if hidden_states:
            named.update({f"layer{i}": self.output_spec for i in range(len(self.kept_layers))})
        if named:
            self.named_outputs = named

    @staticmethod
    def _build_model(auto_model, config, attentions: bool):
        """The (randomly initialised) model: the "eager" attention implementation only when
        attentions are wanted (the default one, often sdpa, returns no attention probabilities)."""
        options = [{"add_pooling_layer": False}, {}]  # {}: models without a pooler
        if attentions:  # transformers before attn_implementation (4.36) have eager only
            options = [{**option, "attn_implementation": "eager"} for option in options] + options
        for option in options[:-1]:
            try:
                return auto_model.from_config(config, **option)
            except TypeError:
                pass
        return auto_model.from_config(config, **options[-1])

    def forward(self, tokens: Sequence):
        ids, mask = tokens.values, tokens.mask  # a Sequence, or the WordPieces of a word-level task
        arguments = {"input_ids": ids, "attention_mask": mask.long()}
        if self.use_segments:
            # [CLS] a [SEP] b [SEP]: everything after the first separator is segment 1.
            separators = (ids == self.sep_index).long()
            arguments["token_type_ids"] = ((separators.cumsum(dim=1) - separators) > 0).long() * mask.long()
        if self.attentions:
            arguments["output_attentions"] = True
        if self.hidden_states:
            arguments["output_hidden_states"] = True
        result = self.model(**arguments)
        value = self._pooled(result.last_hidden_state, mask)
        if not (self.attentions or self.hidden_states):
            return value
        named = {}
        if self.attentions:
            layers = result.attentions
            if not layers or len(layers) != len(self.kept_layers):
                raise RuntimeError(f"PretrainedEncoder: the model returned {len(layers or ())} attention maps for "
                                   f"{len(self.kept_layers)} layers (its attention implementation may not return them)")
            maps = torch.stack(layers, dim=1)  # [batch, layers, heads, length, length]
            real = mask[:, None, None, :, None] & mask[:, None, None, None, :]
            named["attentions"] = AttentionMaps(maps.masked_fill(~real, 0.0), mask)
        if self.hidden_states:
            states = result.hidden_states  # the embeddings' output, then each layer's
            if not states or len(states) != len(self.kept_layers) + 1:
                raise RuntimeError(f"PretrainedEncoder: the model returned {len(states or ())} hidden states for "
                                   f"{len(self.kept_layers)} layers and the embeddings")
            named.update({f"layer{i}": self._pooled(state, mask) for i, state in enumerate(states[1:])})
        return NamedOutputs(value, named)

    def _pooled(self, hidden: torch.Tensor, mask: torch.Tensor):
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            return masked_mean(hidden, mask)
        return Sequence(zero_padding(hidden, mask), mask)

    def load_pretrained(self, base_dir: Path) -> str | None:
        """Copy the pretrained weights in, renumbering the kept layers."""
        source = load_model(self.location).state_dict()
        loaded = self._renumbered(source, {layer: layer for layer in self.kept_layers})
        missing = [k for k in self.model.state_dict() if k not in loaded and not k.endswith("position_ids")]
        if missing:
            raise ConfigError(f"pretrained weights in '{self.location}' lack {len(missing)} tensors the model "
                              f"needs (first: {missing[0]})")
        self.model.load_state_dict(loaded, strict=False)
        total = len({int(m.group(2)) for k in source for m in [_LAYER_KEY.search(k)] if m})
        return (f"PretrainedEncoder: {self.location} loaded, {len(self.kept_layers)} of {total} layers "
                f"({', '.join(map(str, self.kept_layers))})")

    def init_from(self, source: Block) -> str:
        """Start from another PretrainedEncoder (e.g. the fine-tuned teacher): its embeddings and,
        for each kept layer, the source's copy of the same pretrained layer."""
        if not isinstance(source, PretrainedEncoder):
            raise WidthError(f"is a PretrainedEncoder, its source a {type(source).__name__}")
        at = {layer: i for i, layer in enumerate(source.kept_layers)}
        absent = [layer for layer in self.kept_layers if layer not in at]
        if absent:
            raise WidthError(f"keeps pretrained layers {absent} that its source does not (it keeps "
                             f"{source.kept_layers})")
        loaded = self._renumbered(source.model.state_dict(), at)
        target = self.model.state_dict()
        if set(loaded) != set(target):
            key = sorted(set(target) - set(loaded))[0]
            raise WidthError(f"its source has no tensor of the shape of '{key}' (a different model?)")
        self.model.load_state_dict(loaded)
        return f"layers {self.kept_layers} from the source's {[at[layer] for layer in self.kept_layers]}"

    def _renumbered(self, source: dict, position: dict[int, int]) -> dict:
        """The tensors of ``source`` that fill this model, by key: kept layer i reads the source's
        layer ``position[kept_layers[i]]``; tensors missing or of another shape are left out."""
        target = self.model.state_dict()
        loaded = {}
        for key in target:
            match = _LAYER_KEY.search(key)
            source_key = key
            if match:
                original = position[self.kept_layers[int(match.group(2))]]
                source_key = key[:match.start(2)] + str(original) + key[match.end(2):]
            if source_key in source and source[source_key].shape == target[key].shape:
                loaded[key] = source[source_key]
        return loaded


def input_embedding_matrix(location: str) -> torch.Tensor:
    """The input (word-piece) embedding matrix of a pretrained model."""
    return load_model(location).get_input_embeddings().weight.detach().clone()

