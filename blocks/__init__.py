"""DistilBlocks: NLP models from JSON, made small and fast by knowledge distillation."""
from blocks.block import Block, expect_inputs
from blocks.errors import ConfigError, DataError, DistilBlocksError, WidthError
from blocks.registry import register_block, register_loss, register_metric, register_tokenizer
from blocks.values import CHARS, LABELS, SEQUENCE, TOKENS, VECTOR, Sequence, Spec

__version__ = "0.1.0"

__all__ = ["Block", "expect_inputs", "ConfigError", "DataError", "DistilBlocksError", "WidthError",
           "register_block", "register_loss", "register_metric", "register_tokenizer",
           "CHARS", "LABELS", "SEQUENCE", "TOKENS", "VECTOR", "Sequence", "Spec"]
