"""The data layer: reading files into rows, tokenizers, vocabularies, batching and padding.

Importing this package registers the tokenizers (``treebank``, ``wordpunct``, ``toktok``,
``tweet``, ``regexp``, ``whitespace``).
"""
from blocks.data import tokenizers  # noqa: F401  (registers the tokenizers)
from blocks.data.batching import bucket_batches, pad_chars, pad_ids, sorted_batches
from blocks.data.readers import Row, read_rows
from blocks.data.vocabulary import PAD, UNK, Vocabulary

__all__ = ["Row", "read_rows", "Vocabulary", "PAD", "UNK", "bucket_batches", "sorted_batches",
           "pad_ids", "pad_chars", "tokenizers"]
