"""Recurrent encoders (LSTM and GRU) over masked sequences."""
from __future__ import annotations

from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from blocks.block import Block, expect_inputs
from blocks.layers.masking import zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, Sequence, Spec


class _Recurrent(Block):
    """A recurrent network run on the real positions only (packed by the mask).

    Subclasses choose the ``nn.RNNBase`` class; the rest is shared.
    """

    rnn_class: type[nn.RNNBase]

    def __init__(self, inputs: list[Spec], hidden: int = 128, layers: int = 1, dropout: float = 0.0,
                 bidirectional: bool = True):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        self.rnn = self.rnn_class(inputs[0].width, hidden, num_layers=layers, batch_first=True,
                                  dropout=dropout if layers > 1 else 0.0,
                                  bidirectional=bidirectional)
        self.output_spec = Spec(SEQUENCE, hidden * (2 if bidirectional else 1))

    def forward(self, sequence: Sequence) -> Sequence:
        values, mask = sequence
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(values, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=values.shape[1])
        return Sequence(zero_padding(output, mask), mask)


@register_block("BiLSTM")
class BiLSTM(_Recurrent):
    """LSTM encoder (bidirectional by default) over the real positions of a sequence.

    Input: sequence ``[batch, length, width]``. Output: sequence
    ``[batch, length, hidden * 2]`` (``hidden`` when not bidirectional), zero beyond each length.

    Args:
        hidden: hidden size of each direction.
        layers: number of stacked LSTM layers.
        dropout: dropout between stacked layers (used when layers > 1).
        bidirectional: also run a right-to-left LSTM and concatenate both directions.
    """

    rnn_class = nn.LSTM


@register_block("BiGRU")
class BiGRU(_Recurrent):
    """GRU encoder (bidirectional by default) over the real positions of a sequence.

    Input: sequence ``[batch, length, width]``. Output: sequence
    ``[batch, length, hidden * 2]`` (``hidden`` when not bidirectional), zero beyond each length.

    Args:
        hidden: hidden size of each direction.
        layers: number of stacked GRU layers.
        dropout: dropout between stacked layers (used when layers > 1).
        bidirectional: also run a right-to-left GRU and concatenate both directions.
    """

    rnn_class = nn.GRU
