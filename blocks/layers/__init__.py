"""The built-in layer blocks; importing this package registers all of them."""
from blocks.layers import (attention, characters, combination, convolution, crf, decoders, embedding, head,
                           pooling, pretrained, recurrent, regularization, transformer, word_alignment)

__all__ = ["attention", "characters", "combination", "convolution", "crf", "decoders", "embedding", "head",
           "pooling", "pretrained", "recurrent", "regularization", "transformer", "word_alignment"]
