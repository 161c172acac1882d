"""Export a translation model: its encoder and one decoder step as two TorchScript files.

A translation is a loop: the encoder runs once per sentence, then the decoder once per generated
token, reading the keys and values it cached at the earlier positions. ``blocks export RUN
--format torchscript`` on a seq2seq run therefore writes two traced graphs and what a runtime
needs to drive them (``RUN/export/`` by default)::

    <model>.encoder.pt        source_ids [B, S] int64, source_mask [B, S] bool
                              -> memory [B, 2, L, H, S, D/H]: each decoder layer's keys (0) and
                                 values (1) over the encoder output; memory_mask [B, S] bool
    <model>.decoder_step.pt   last_ids [B] int64, position [1] int64 (tokens decoded so far),
                              cache [B, 2, L, H, T, D/H], memory, memory_mask
                              -> logits [B, V] of the next token, cache [B, 2, L, H, T + 1, D/H]
    <model>.pt.json           the sidecar: these shapes, the special ids, the generation settings
    <model>.subword/          the run's subword tokenizers (Hugging Face ``tokenizers`` JSON)

Decoding starts with ``last_ids`` = ``<bos>`` (1), ``position`` 0 and an empty cache (T = 0);
each step appends one position to the cache. Every tensor is batch-first, so a beam search
reorders the cache and the memory with one ``index_select`` on dimension 0. ``<pad>`` is 0,
``<eos>`` 2. The source ids are the source tokenizer's ids followed by ``<eos>``.

:class:`ExportedTranslator` drives the two files with the greedy, beam and sampling searches of
:mod:`blocks.generation` (the same code the run uses), so an export is checked by translating the
dev sentences with both and comparing the token ids, which must be identical, and the first
step's logits, which must agree within :data:`blocks.export.TOLERANCE`. Only models whose decoder
is a ``TransformerDecoder`` are exported; an ``RNNDecoder`` is refused with that reason, and so is
ONNX (the cache grows at every step, which the TorchScript trace follows and the ONNX path of
this project does not yet check).
"""
from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from blocks.errors import DistilBlocksError
from blocks.layers.masking import attention_key_mask
from blocks.values import Sequence

SUFFIXES = {"encoder": ".encoder.pt", "decoder_step": ".decoder_step.pt"}
SUBWORD_SUFFIX = ".subword"


def load_traced(path: str | Path):
    """A TorchScript file (``torch.jit.load`` is deprecated in torch >= 2.9 and still the way)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path)).eval()


class EncoderExport(nn.Module):
    """The graph up to the encoder output, then each decoder layer's keys and values over it."""

    def __init__(self, graph, decoder_node, decoder):
        super().__init__()
        self.model, self.decoder = graph, decoder
        self.memory_node = decoder_node.inputs[0]
        self.source_names = [name for name in graph.input_names if name != decoder_node.inputs[1]]
        for node in graph.nodes:
            if node.name != decoder_node.name and decoder_node.inputs[1] in node.inputs:
                raise DistilBlocksError(f"node '{node.name}' reads the target prefix '{decoder_node.inputs[1]}'; "
                                        f"only the decoder may read it for the encoder to be exported apart")

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        inputs = {name: Sequence(tensors[2 * i], tensors[2 * i + 1]) for i, name in enumerate(self.source_names)}
        memory = self.model(inputs, stop_at=self.memory_node)[self.memory_node]
        values, mask = self.decoder._memory(memory)
        pairs = [layer.memory_keys_values(values) for layer in self.decoder.layers]
        keys = torch.stack([k for k, _ in pairs], dim=1)  # [B, L, H, S, D/H]
        values = torch.stack([v for _, v in pairs], dim=1)
        return torch.stack([keys, values], dim=1), mask


class DecoderStepExport(nn.Module):
    """One step of a ``TransformerDecoder`` over batch-first cache tensors (see the module docstring)."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, last_ids: Tensor, position: Tensor, cache: Tensor, memory: Tensor,
                memory_mask: Tensor) -> tuple[Tensor, Tensor]:
        d = self.decoder
        x = d.embedding(last_ids[:, None]) * math.sqrt(d.width)
        if d.positions == "learned":
            x = x + d.position_embedding(position)[None]
        else:
            x = x + d.position_table.index_select(0, position)[None]
        keys, values = [], []
        for i, layer in enumerate(d.layers):
            x, k, v = layer(x, memory[:, 0, i], memory[:, 1, i], memory_mask, cache[:, 0, i], cache[:, 1, i])
            keys.append(k)
            values.append(v)
        return d._logits(x[:, 0]), torch.stack([torch.stack(keys, dim=1), torch.stack(values, dim=1)], dim=1)


class StepDecoder:
    """A decoder-step callable (the traced file, or :class:`DecoderStepExport`) behind the
    decoder protocol of :mod:`blocks.generation` (``init_state`` / ``step`` / ``reorder_state``).
    ``init_state`` takes the encoder export's memory as the values of a :class:`Sequence` whose
    mask is the source mask."""

    def __init__(self, step, layers: int, heads: int, head_size: int, max_length: int):
        self.step_fn, self.layers, self.heads, self.head_size = step, layers, heads, head_size
        self.max_length = max_length

    def init_state(self, memory: Sequence) -> dict:
        kv, mask = memory
        empty = kv.new_zeros(kv.shape[0], 2, self.layers, self.heads, 0, self.head_size)
        return {"memory": kv, "memory_mask": attention_key_mask(mask), "cache": empty}

    def step(self, last_ids: Tensor, state: dict) -> tuple[Tensor, dict]:
        position = torch.tensor([state["cache"].shape[4]], dtype=torch.long)
        logits, cache = self.step_fn(last_ids, position, state["cache"], state["memory"], state["memory_mask"])
        return logits, {**state, "cache": cache}

    @staticmethod
    def reorder_state(state: dict, index: Tensor) -> dict:
        return {key: value.index_select(0, index) for key, value in state.items()}


class ExportedTranslator:
    """Translate with an exported model: ``ExportedTranslator("runs/m30k/export/student.pt.json")``.

    ``translate(["A dog runs."])`` uses the run's generation settings (beam search);
    ``strategy="greedy"`` (or ``"sample"``) another search. Needs only the export folder.
    """

    def __init__(self, sidecar: str | Path):
        from blocks.data.subword import SubwordVocabularies
        from blocks.generation import GenerationSettings

        self.sidecar = Path(sidecar)
        self.record = json.loads(self.sidecar.read_text(encoding="utf-8"))
        folder = self.sidecar.parent
        self.encoder = load_traced(folder / self.record["files"]["encoder"])
        step = load_traced(folder / self.record["files"]["decoder_step"])
        shape = self.record["decoder"]
        self.decoder = StepDecoder(step, shape["layers"], shape["heads"], shape["head_size"], shape["max_length"])
        self.vocabularies = SubwordVocabularies.load(folder / self.record["files"]["subword"])
        g = self.record["generation"]
        self.settings = GenerationSettings("beam" if g["beam"] > 1 else "greedy", beam_size=g["beam"],
                                           length_penalty=g["length_penalty"], max_len_a=g["max_length_a"],
                                           max_len_b=g["max_length_b"])
        self.max_source = self.record["source_max_length"]

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        from blocks.data.batching import pad_ids
        from blocks.data.subword import EOS_ID, PAD_ID

        pieces = self.vocabularies.source.encode_batch(texts)
        ids = [torch.tensor(p[:self.max_source - 1] + [EOS_ID], dtype=torch.long) for p in pieces]
        return pad_ids(ids, PAD_ID)

    def generate(self, ids: Tensor, mask: Tensor, strategy: str | None = None):
        """The :class:`blocks.generation.Generated` of a batch of source ids and masks."""
        from dataclasses import replace

        from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID
        from blocks.generation import generate

        settings = self.settings if strategy is None else replace(self.settings, strategy=strategy)
        with torch.inference_mode():
            memory, _ = self.encoder(ids, mask)
            return generate(self.decoder, Sequence(memory, mask), settings, bos_id=BOS_ID, eos_id=EOS_ID,
                            pad_id=PAD_ID)

    def translate(self, texts: list[str], strategy: str | None = None) -> list[str]:
        ids, mask = self.encode(texts)
        return self.vocabularies.target.decode_batch(self.generate(ids, mask, strategy).tokens)


def export_translator(directory, experiment, model: str, path: Path, log=print) -> dict:
    """Trace, check and write the export of seq2seq ``model`` (see the module docstring); the sidecar."""
    from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID, UNK_ID
    from blocks.export import TOLERANCE, _verification_split
    from blocks.generation import generate
    from blocks.layers.decoders import TransformerDecoder

    graph = experiment.models[model].cpu().eval()
    node, decoder = experiment.task.decoder_node(graph)
    if not isinstance(decoder, TransformerDecoder):
        raise DistilBlocksError(f"{directory.config}: model '{model}' decodes with {type(decoder).__name__}; only "
                                f"a TransformerDecoder is exported yet (its step is one traced graph with a growing "
                                f"key/value cache): use the run directory with `blocks predict` or the Predictor")
    encoder = EncoderExport(graph, node, decoder).eval()
    if len(encoder.source_names) != 1:
        raise DistilBlocksError(f"{directory.config}: model '{model}' reads {len(encoder.source_names)} inputs besides "
                                f"the target prefix ({', '.join(encoder.source_names)}); a translator is exported "
                                f"with one source input")
    step = DecoderStepExport(decoder).eval()
    split, source = _verification_split(experiment, log)
    if split is None:
        raise DistilBlocksError(f"{directory.config}: the run's data cannot be read, and a translator is checked by "
                                f"translating dev sentences; put the data back where the config says")
    key = experiment.model_inputs[model][encoder.source_names[0]]
    batches = [split.collate(torch.arange(start, min(start + 16, len(split)))) for start in range(0, len(split), 16)]
    first = batches[0].inputs[key]
    layers, heads = len(decoder.layers), decoder.layers[0].heads
    head_size = decoder.width // heads
    files = {name: path.with_name(path.stem + suffix) for name, suffix in SUFFIXES.items()}
    with torch.no_grad(), warnings.catch_warnings():
        # trace is deprecated in torch >= 2.9 but still the way to TorchScript; the tracer's
        # "might not generalize" warnings are answered by the check below
        warnings.simplefilter("ignore")
        memory, key_mask = encoder(first.values, first.mask)
        cache = torch.randn(len(first.values), 2, layers, heads, 3, head_size)  # 3 positions decoded
        example = (torch.full((len(first.values),), 1, dtype=torch.long), torch.tensor([3]), cache, memory, key_mask)
        traced_encoder = torch.jit.trace(encoder, (first.values, first.mask), check_trace=False)
        traced_step = torch.jit.trace(step, example, check_trace=False)
    for name, traced in (("encoder", traced_encoder), ("decoder_step", traced_step)):
        files[name].unlink(missing_ok=True)
        traced.save(str(files[name]))
    reference = StepDecoder(step, layers, heads, head_size, decoder.max_length)
    exported = StepDecoder(load_traced(files["decoder_step"]), layers, heads, head_size, decoder.max_length)
    loaded_encoder = load_traced(files["encoder"])
    settings = experiment.task.generation_settings(final=False)
    difference, mismatched, sentences = 0.0, 0, 0
    with torch.inference_mode():
        for batch in batches:
            source_ids = batch.inputs[key]
            ours, _ = encoder(source_ids.values, source_ids.mask)
            theirs, _ = loaded_encoder(source_ids.values, source_ids.mask)
            start = torch.full((len(source_ids.values),), BOS_ID, dtype=torch.long)
            logits_ours, _ = reference.step(start, reference.init_state(Sequence(ours, source_ids.mask)))
            logits_theirs, _ = exported.step(start, exported.init_state(Sequence(theirs, source_ids.mask)))
            difference = max(difference, float((logits_ours - logits_theirs).abs().max()))
            want = experiment.task.generate_batch(experiment, model, batch, settings).tokens
            got = generate(exported, Sequence(theirs, source_ids.mask), settings, bos_id=BOS_ID, eos_id=EOS_ID,
                           pad_id=PAD_ID).tokens
            mismatched += sum(a != b for a, b in zip(want, got))
            sentences += len(want)
    log(f"check against PyTorch on {source}: {sentences} greedy translations, {mismatched} differ; first-step "
        f"logits max abs diff {difference:.3g} (tolerance {TOLERANCE:g})")
    if mismatched or not difference <= TOLERANCE:
        for file in files.values():
            file.unlink(missing_ok=True)
        raise DistilBlocksError(f"{path.parent}: the exported translator differs from PyTorch ({mismatched} of "
                                f"{sentences} greedy translations, logits by up to {difference:.3g}); the export is "
                                f"not faithful and was removed")
    subword = path.with_name(path.stem + SUBWORD_SUFFIX)
    shutil.rmtree(subword, ignore_errors=True)
    experiment.task.vocabularies_of(model).save(subword)
    source_field = experiment.fields[key]
    record = {
        "format": "torchscript", "task": "seq2seq", "model": model,
        "files": {"encoder": files["encoder"].name, "decoder_step": files["decoder_step"].name,
                  "subword": subword.name},
        "encoder": {"inputs": [{"name": "source_ids", "dtype": "int64", "shape": ["batch", "source"]},
                               {"name": "source_mask", "dtype": "bool", "shape": ["batch", "source"]}],
                    "outputs": [{"name": "memory", "dtype": "float32",
                                 "shape": ["batch", 2, layers, heads, "source", head_size]},
                                {"name": "memory_mask", "dtype": "bool", "shape": ["batch", "source"]}]},
        "decoder_step": {"inputs": [{"name": "last_ids", "dtype": "int64", "shape": ["batch"]},
                                    {"name": "position", "dtype": "int64", "shape": [1]},
                                    {"name": "cache", "dtype": "float32",
                                     "shape": ["batch", 2, layers, heads, "decoded", head_size]},
                                    {"name": "memory"}, {"name": "memory_mask"}],
                         "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", decoder.vocab_size]},
                                     {"name": "cache", "shape": ["batch", 2, layers, heads, "decoded + 1",
                                                                 head_size]}]},
        "decoder": {"layers": layers, "heads": heads, "head_size": head_size, "max_length": decoder.max_length},
        "special_ids": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": UNK_ID},
        "source_max_length": source_field.token_limit,
        "generation": dict(experiment.task.generation),
        "check": {"examples": source, "greedy_translations": sentences, "differing": mismatched,
                  "first_step_max_abs_diff": difference, "tolerance": TOLERANCE},
    }
    sidecar_path = path.with_name(path.name + ".json")
    sidecar_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"exported {model} ({graph.parameter_count():,} parameters) to {files['encoder']} and "
        f"{files['decoder_step']} with torch.jit.trace")
    log(f"wrote {sidecar_path} and the subword tokenizers in {subword}; translate with "
        f"blocks.export_seq2seq.ExportedTranslator('{sidecar_path}')")
    return {**record, "path": str(path), "sidecar": str(sidecar_path)}
