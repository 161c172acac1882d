"""The base class of graph blocks.

A block is an ``nn.Module`` whose constructor takes ``inputs`` — the :class:`~blocks.values.Spec`
of each incoming edge, supplied by the graph builder — followed by its configurable parameters.
It sets ``self.output_spec`` so that the next block can size itself, and its ``forward`` takes
one run-time value per input (a :class:`~blocks.values.Sequence` or a ``[batch, width]`` tensor)
and returns one value.

A block may also offer *named outputs* besides its main one (e.g. an encoder's attention maps):
it lists their Specs in ``named_outputs`` (usually only when a parameter asks for them, so that
the plain path stays as fast as before), and its ``forward`` then returns
``NamedOutputs(main value, {name: value})``. In a graph, the named output ``name`` of node
``node`` is the value ``"node:name"`` (see :mod:`blocks.graph`).
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple
from typing import Sequence as SequenceType

from torch import nn

from blocks.errors import WidthError
from blocks.values import Spec


class NamedOutputs(NamedTuple):
    """What ``forward`` returns for a block with named outputs: the main value and the others."""

    main: Any
    named: dict[str, Any]


class Block(nn.Module):
    output_spec: Spec
    #: Spec of each named output besides the main one (set by a block that offers some).
    named_outputs: Mapping[str, Spec] = MappingProxyType({})

    def load_pretrained(self, base_dir: Path) -> str | None:
        """Initialise from external files (e.g. word vectors) at the start of training.

        Called once on a fresh run, never when weights come from a checkpoint. Relative file
        paths in the block's parameters resolve against ``base_dir`` (the config file's folder).
        Returns a line for the log (e.g. a coverage report), or None.
        """
        return None


def expect_inputs(inputs: SequenceType[Spec], count: int | tuple[int, int],
                  kinds: tuple[str, ...] | None = None) -> None:
    """Raise :class:`WidthError` unless there are ``count`` inputs of the allowed ``kinds``.

    ``count`` is an exact number or an inclusive ``(min, max)`` range.
    """
    low, high = (count, count) if isinstance(count, int) else count
    if not low <= len(inputs) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise WidthError(f"takes {wanted} input(s), got {len(inputs)}")
    if kinds is not None:
        for i, spec in enumerate(inputs):
            if spec.kind not in kinds:
                raise WidthError(f"input {i} is a {spec.describe()} edge; expected {' or '.join(kinds)}")
