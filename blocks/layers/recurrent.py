"""Recurrent encoders (LSTM and GRU) over masked sequences."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from blocks.block import Block, expect_inputs
from blocks.layers.masking import zero_padding
from blocks.registry import register_block
from blocks.values import SEQUENCE, Sequence, Spec


class RecurrentEncoder(Block):
    """A recurrent network run on the real positions only.

    Subclasses choose the ``nn.RNNBase`` class; the rest is shared. Two ways to compute the same
    outputs (equal up to float rounding):

    * padded (the default): each layer's left-to-right direction runs over the padded batch (a
      padded position comes after every real one, so it cannot reach a real one's output); the
      right-to-left direction runs as a left-to-right pass over the batch with each row's real
      positions reversed in place, and its output is reversed back. A plain padded batch is
      what the fused RNN kernels take (oneDNN on CPU, cuDNN on GPU).
    * packed (``"packed": true``): torch's ``PackedSequence`` path, which on CPU loops over time
      steps with a shrinking batch; slower there (see docs/results.md), kept because runs made
      before the padded path reproduce their trajectories bit for bit only with it.
    """

    rnn_class: type[nn.RNNBase]

    def __init__(self, inputs: list[Spec], hidden: int = 128, layers: int = 1, dropout: float = 0.0,
                 bidirectional: bool = True, packed: bool = False):
        super().__init__()
        expect_inputs(inputs, 1, (SEQUENCE,))
        self.rnn = self.rnn_class(inputs[0].width, hidden, num_layers=layers, batch_first=True,
                                  dropout=dropout if layers > 1 else 0.0,
                                  bidirectional=bidirectional)
        self.packed = packed
        self.output_spec = Spec(SEQUENCE, hidden * (2 if bidirectional else 1))

    def forward(self, sequence: Sequence) -> Sequence:
        values, mask = sequence
        if self.packed:
            output = self._run_packed(values, mask)
        else:
            output = self._run_padded(values, mask)
        return Sequence(zero_padding(output, mask), mask)

    def _run_packed(self, values: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(values, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=values.shape[1])
        return output

    def _run_padded(self, values: Tensor, mask: Tensor) -> Tensor:
        rnn = self.rnn
        directions = [""] + (["_reverse"] if rnn.bidirectional else [])
        reverse = _reversal_index(mask) if rnn.bidirectional else None
        state = values.new_zeros(1, values.shape[0], rnn.hidden_size)
        layer_input = values
        for layer in range(rnn.num_layers):
            outputs = []
            for suffix in directions:
                weights = [getattr(rnn, f"{name}_l{layer}{suffix}")
                           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                steps = layer_input if suffix == "" else _reverse_rows(layer_input, reverse)
                output = self._run_direction(steps, state, weights)
                outputs.append(output if suffix == "" else _reverse_rows(output, reverse))
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if layer < rnn.num_layers - 1 and rnn.dropout > 0:
                layer_input = nn.functional.dropout(layer_input, rnn.dropout, self.training)
        return layer_input

    def _run_direction(self, steps: Tensor, state: Tensor, weights: list[Tensor]) -> Tensor:
        raise NotImplementedError


def _reversal_index(mask: Tensor) -> Tensor:
    """``[B, L]`` positions that reverse each row's real positions and leave its padding in place."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    lengths = mask.sum(dim=1, keepdim=True)
    return torch.where(mask, lengths - 1 - positions, positions)


def _reverse_rows(values: Tensor, index: Tensor) -> Tensor:
    return values.gather(1, index.unsqueeze(-1).expand_as(values))


@register_block("BiLSTM")
class BiLSTM(RecurrentEncoder):
    """LSTM encoder (bidirectional by default) over the real positions of a sequence.

    Input: sequence ``[batch, length, width]``. Output: sequence
    ``[batch, length, hidden * 2]`` (``hidden`` when not bidirectional), zero beyond each length.

    Args:
        hidden: hidden size of each direction.
        layers: number of stacked LSTM layers.
        dropout: dropout between stacked layers (used when layers > 1).
        bidirectional: also run a right-to-left LSTM and concatenate both directions.
        packed: run torch's ``PackedSequence`` path instead of the padded one (same outputs up to
            float rounding; slower on CPU; for reproducing runs made before the padded path).
    """

    rnn_class = nn.LSTM

    def _run_direction(self, steps: Tensor, state: Tensor, weights: list[Tensor]) -> Tensor:
        output, _, _ = torch.lstm(steps, (state, state), weights, True, 1, 0.0, self.training, False, True)
        return output


@register_block("BiGRU")
class BiGRU(RecurrentEncoder):
    """GRU encoder (bidirectional by default) over the real positions of a sequence.

    Input: sequence ``[batch, length, width]``. Output: sequence
    ``[batch, length, hidden * 2]`` (``hidden`` when not bidirectional), zero beyond each length.

    Args:
        hidden: hidden size of each direction.
        layers: number of stacked GRU layers.
        dropout: dropout between stacked layers (used when layers > 1).
        bidirectional: also run a right-to-left GRU and concatenate both directions.
        packed: run torch's ``PackedSequence`` path instead of the padded one (same outputs up to
            float rounding; slower on CPU; for reproducing runs made before the padded path).
    """

    rnn_class = nn.GRU

    def _run_direction(self, steps: Tensor, state: Tensor, weights: list[Tensor]) -> Tensor:
        output, _ = torch.gru(steps, state, weights, True, 1, 0.0, self.training, False, True)
        return output
