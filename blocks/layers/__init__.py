"""The built-in layer blocks; importing this package registers all of them."""
from blocks.layers import (attention, characters, combination, convolution, crf, embedding, head, pooling,
                           pretrained, recurrent, regularization, transformer)

__all__ = ["attention", "characters", "combination", "convolution", "crf", "embedding", "head", "pooling",
           "pretrained", "recurrent", "regularization", "transformer"]
