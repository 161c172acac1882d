"""DistilBlocks: NLP models from JSON, made small and fast by knowledge distillation.

``import blocks`` is light (no PyTorch): the names below are loaded when first used, so the
``blocks`` command starts fast. The built-in blocks, losses, tokenizers and metrics are
registered the first time a registry is asked for an entry it does not hold.
"""
from __future__ import annotations

import importlib

from blocks.errors import ConfigError, DataError, DistilBlocksError, WidthError
from blocks.registry import register_block, register_loss, register_metric, register_tokenizer

__version__ = "0.1.0"

# name -> module that defines it (imported on first access: they need PyTorch)
_LAZY = {"Block": "blocks.block", "expect_inputs": "blocks.block",
         "CHARS": "blocks.values", "LABELS": "blocks.values", "SEQUENCE": "blocks.values", "TOKENS": "blocks.values",
         "VECTOR": "blocks.values", "Sequence": "blocks.values", "Spec": "blocks.values"}

__all__ = ["Block", "expect_inputs", "ConfigError", "DataError", "DistilBlocksError", "WidthError",
           "register_block", "register_loss", "register_metric", "register_tokenizer",
           "CHARS", "LABELS", "SEQUENCE", "TOKENS", "VECTOR", "Sequence", "Spec"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'blocks' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
