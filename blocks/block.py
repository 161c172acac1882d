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

    def init_from(self, source: "Block") -> str:
        """Copy the weights of ``source``, a node of another model (``"init_from"`` in the config).

        Called once, when the first stage that trains this model starts. This default asks for a
        block of the same type with the same tensors; a block whose layout can differ from its
        source's (a transformer keeping fewer layers) overrides it. Returns what was copied, for
        the log; raises :class:`WidthError` when the weights do not fit.
        """
        if type(source) is not type(self):
            raise WidthError(f"is a {type(self).__name__}, its source a {type(source).__name__}")
        mine, theirs = self.state_dict(), source.state_dict()
        if set(mine) != set(theirs):
            key = sorted(set(mine) ^ set(theirs))[0]
            raise WidthError(f"has other tensors than its source (first difference: '{key}')")
        for key, tensor in mine.items():
            if theirs[key].shape != tensor.shape:
                raise WidthError(f"'{key}' is {tuple(tensor.shape)} here but {tuple(theirs[key].shape)} "
                                 f"in the source")
        self.load_state_dict(theirs)
        return f"{len(mine)} tensors"


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
