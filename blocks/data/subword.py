"""Subword tokenizers for sequence-to-sequence tasks, trained on the training split.

A :class:`SubwordTokenizer` wraps one ``tokenizers.Tokenizer`` (BPE or unigram) trained with the
Hugging Face ``tokenizers`` library. Text is cut into words at whitespace the way SentencePiece
does it: every word starts with the marker ``▁`` (pre-tokenizer and decoder ``Metaspace``), so
decoding restores the words and the single spaces between them exactly, and the decoded text is
plain detokenized text, ready for sacreBLEU. Text is normalised first: Unicode NFC, every run of
whitespace (no-break spaces included) one space, none at either end.

Every vocabulary starts with the four special tokens, at fixed ids: ``<pad>`` 0, ``<bos>`` 1,
``<eos>`` 2, ``<unk>`` 3 (:data:`SPECIAL_TOKENS`). Characters never seen in training become
``<unk>``; decoding drops special tokens, so an ``<unk>`` leaves nothing in the text.

:class:`SubwordVocabularies` holds the source and the target tokenizer: one shared tokenizer
trained on both sides (``shared=True``, the usual choice for related languages and a condition
for tied source/target embeddings) or two trained separately. It is saved to and loaded from a
folder holding ``subword.json`` (model, size, sharing) and each tokenizer's own JSON file, all
written atomically, no pickles.

How it plugs into the engine (the seq2seq task type, a later step): on a fresh run the task
trains the vocabularies on the train split's sentences (:mod:`blocks.data.parallel_reader`) and
saves them into the run directory; ``test``, ``predict``, ``export`` and ``--resume`` load them
from there. Source ids feed the encoder graph, target ids (``<bos>`` + pieces as the decoder's
prefix, pieces + ``<eos>`` as its targets) the decoder; generated ids go back through
:meth:`SubwordTokenizer.decode` before BLEU is computed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from blocks.errors import CheckpointError, ConfigError

SubwordModel = Literal["bpe", "unigram"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: The special tokens, in the order of their ids (0, 1, 2, 3).
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

META_FILE = "subword.json"
FORMAT_VERSION = 1
_MARKER = "\u2581"  # ▁, the word-start marker of SentencePiece


class SubwordTokenizer:
    """A trained subword tokenizer: text to ids and back.

    Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the learned pieces.
    """

    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, tokenizer: Tokenizer):
        for expected, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != expected:
                raise ValueError(f"a subword tokenizer needs '{token}' at id {expected}")
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """The piece ids of ``text``, optionally after ``<bos>`` and before ``<eos>``."""
        ids = self.tokenizer.encode(text).ids
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def encode_batch(self, texts: list[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """:meth:`encode` of many texts (in parallel, in the library's native code)."""
        prefix, suffix = [BOS_ID] if bos else [], [EOS_ID] if eos else []
        return [prefix + encoding.ids + suffix for encoding in self.tokenizer.encode_batch(texts)]

    def pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` as strings (for logs and tests)."""
        return self.tokenizer.encode(text).tokens

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenized text of ``ids``: stops at the first ``<eos>``, drops the special tokens."""
        kept = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            kept.append(token)
        # a word-start marker before a dropped <unk> would leave a stray space: normalise spacing
        return " ".join(self.tokenizer.decode(kept, skip_special_tokens=True).split())

    def decode_batch(self, sequences: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in sequences]

    def to_json(self) -> str:
        """The tokenizer in the ``tokenizers`` library's JSON format."""
        return self.tokenizer.to_str()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SubwordTokenizer":
        """Load a tokenizer saved by :meth:`to_json`; :class:`CheckpointError` if unreadable."""
        file = str(path)
        if not os.path.isfile(file):
            raise CheckpointError("subword tokenizer file not found", file)
        try:
            return cls(Tokenizer.from_file(file))
        except Exception as error:  # the library raises plain Exceptions for malformed JSON
            raise CheckpointError(f"not a readable subword tokenizer: {error}", file) from None


def train_subword(texts: Iterable[str], model: SubwordModel = "bpe", vocab_size: int = 8000,
                  min_frequency: int = 2) -> SubwordTokenizer:
    """Train a subword tokenizer on ``texts``.

    Args:
        texts: the training sentences (any iterable; a list is read once).
        model: ``bpe`` (byte-pair merges) or ``unigram`` (a unigram language model over pieces).
        vocab_size: size of the vocabulary, special tokens included. BPE stops earlier when no
            pair occurs ``min_frequency`` times; unigram may also end a little smaller.
        min_frequency: BPE: the fewest occurrences for a pair to be merged.
    """
    if model not in ("bpe", "unigram"):
        raise ConfigError(f"unknown subword model '{model}' (known: bpe, unigram)")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"a subword vocabulary needs more than {len(SPECIAL_TOKENS)} entries, got {vocab_size}")
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                          unk_token=UNK, show_progress=False)
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                 normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_MARKER, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=_MARKER, prepend_scheme="always")
    texts = list(texts)
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    return SubwordTokenizer(tokenizer)


@dataclass
class SubwordVocabularies:
    """The source and target tokenizers of a seq2seq model (the same object when shared)."""

    source: SubwordTokenizer
    target: SubwordTokenizer
    model: SubwordModel
    vocab_size: int
    shared: bool

    @classmethod
    def train(cls, sources: list[str], targets: list[str], model: SubwordModel = "bpe",
              vocab_size: int = 8000, shared: bool = True, min_frequency: int = 2) -> "SubwordVocabularies":
        """Train on the training split: one tokenizer on both sides, or one per side."""
        if shared:
            tokenizer = train_subword(list(sources) + list(targets), model, vocab_size, min_frequency)
            return cls(tokenizer, tokenizer, model, vocab_size, True)
        return cls(train_subword(sources, model, vocab_size, min_frequency),
                   train_subword(targets, model, vocab_size, min_frequency), model, vocab_size, False)

    def save(self, folder: str | os.PathLike) -> None:
        """Write the tokenizers and ``subword.json`` into ``folder`` (created if needed)."""
        from blocks.engine.checkpoint import atomic_write_json, atomic_write_text

        folder = Path(folder)
        files = {"source": "shared.json", "target": "shared.json"} if self.shared else \
            {"source": "source.json", "target": "target.json"}
        atomic_write_text(folder / files["source"], self.source.to_json())
        if not self.shared:
            atomic_write_text(folder / files["target"], self.target.to_json())
        # the meta file last: a folder with it is complete
        atomic_write_json(folder / META_FILE, {"format": FORMAT_VERSION, "model": self.model,
                                               "vocab_size": self.vocab_size, "shared": self.shared,
                                               "files": files})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SubwordVocabularies":
        """Load what :meth:`save` wrote; :class:`CheckpointError` naming the file otherwise."""
        meta_file = Path(folder) / META_FILE
        if not meta_file.is_file():
            raise CheckpointError("no subword vocabularies here (subword.json is missing)", str(meta_file))
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            files, shared = meta["files"], bool(meta["shared"])
            model, vocab_size = meta["model"], int(meta["vocab_size"])
            source_name, target_name = str(files["source"]), str(files["target"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"unreadable subword metadata ({type(error).__name__}: {error})",
                                  str(meta_file)) from None
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"subword format {meta.get('format')!r}, this version reads {FORMAT_VERSION}",
                                  str(meta_file))
        source = SubwordTokenizer.from_file(Path(folder) / source_name)
        target = source if shared else SubwordTokenizer.from_file(Path(folder) / target_name)
        return cls(source, target, model, vocab_size, shared)
