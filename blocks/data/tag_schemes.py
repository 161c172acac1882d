"""Tag schemes of entity (chunk) tagging: IOB1, IOB2, BIOES (alias BILOU); check, repair, convert.

A tag is ``O`` (outside every entity) or a one-letter prefix, a hyphen and the entity type
(``B-PER``). The schemes differ in the prefixes they use and where:

* **IOB2** (also called BIO): ``B-X`` begins every entity of type X, ``I-X`` continues it.
  ``I-X`` is valid only after ``B-X`` or ``I-X``.
* **IOB1**: ``I-X`` begins and continues entities; ``B-X`` appears only where an entity begins
  right after another entity of the same type (``I-X B-X``). ``B-X`` is valid only after ``B-X``
  or ``I-X``.
* **BIOES**: ``S-X`` is a single-token entity, ``B-X`` begins a longer one, ``I-X`` continues it
  and ``E-X`` ends it. ``BILOU`` is the same scheme written with ``L`` (last) for ``E`` and ``U``
  (unit) for ``S``.

The CoNLL-2003 files in the shared data (``conll2003/{train,valid,test}.txt``) are the IOB2
version (as distributed by the Hugging Face ``conll2003`` data set, not the original IOB1 release):
every entity starts with ``B-`` and no ``I-X`` follows ``O`` or another type, in the NER column as
well as the chunk column (checked by ``tests/data/test_tag_schemes.py``).

Functions take a sentence's tags as a list of strings and the scheme's name:

* :func:`check` returns where and why the first invalid tag is, or None;
* :func:`spans` gives the entities as ``(type, start, end)`` (end exclusive);
* :func:`repair` rewrites invalid tags the usual way (an ``I-X`` that cannot continue an entity
  begins one; an entity left open is closed), :func:`convert` rewrites tags into another
  scheme; both go through :func:`spans`, which reads invalid sequences by that same rule (as
  ``seqeval`` does), so call :func:`check` first when invalid tags should be reported;
* :func:`allowed_transitions` gives the boolean start / transition / end masks that keep a CRF's
  paths valid in the scheme.

Malformed tags (``E-PER`` in IOB2, ``B_PER``, an unknown scheme) raise ``ValueError`` with a
message for the user; callers that know the file and line wrap it into a ``DataError``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

SCHEMES = ("IOB1", "IOB2", "BIOES", "BILOU")
OUTSIDE = "O"


class _Prefixes(NamedTuple):
    """The letters a scheme writes for each role (None: the scheme has no such role)."""

    begin: str
    inside: str
    end: str | None
    single: str | None


_PREFIXES = {
    "IOB1": _Prefixes("B", "I", None, None),
    "IOB2": _Prefixes("B", "I", None, None),
    "BIOES": _Prefixes("B", "I", "E", "S"),
    "BILOU": _Prefixes("B", "I", "L", "U"),
}

# roles of a parsed tag
_O, _B, _I, _E, _S = "O", "B", "I", "E", "S"


class Span(NamedTuple):
    """An entity: its ``type`` and the tokens ``start`` (inclusive) to ``end`` (exclusive)."""

    type: str
    start: int
    end: int


def _prefixes(scheme: str) -> _Prefixes:
    try:
        return _PREFIXES[scheme]
    except KeyError:
        raise ValueError(f"unknown tag scheme '{scheme}' (known: {', '.join(SCHEMES)})") from None


def _roles(prefixes: _Prefixes) -> dict[str, str]:
    """prefix letter -> role for one scheme."""
    roles = {prefixes.begin: _B, prefixes.inside: _I}
    if prefixes.end is not None:
        roles[prefixes.end] = _E
        roles[prefixes.single] = _S
    return roles


def _scheme_tags(scheme: str, prefixes: _Prefixes) -> str:
    letters = [p for p in prefixes if p is not None]
    return f"{scheme} uses O and {', '.join(p + '-TYPE' for p in letters)}"


def parse(tag: str, scheme: str) -> tuple[str, str]:
    """``(role, type)`` of a tag: role one of ``O B I E S`` (BILOU's L and U read as E and S).

    Raises ValueError for a tag the scheme does not use (``S-PER`` in IOB2) or that is not of
    the form ``O`` / ``P-TYPE``.
    """
    prefixes = _prefixes(scheme)
    if tag == OUTSIDE:
        return _O, ""
    role = _roles(prefixes).get(tag[:1])
    if role is None or len(tag) < 3 or tag[1] != "-":
        raise ValueError(f"'{tag}' is not a tag of the {scheme} scheme ({_scheme_tags(scheme, prefixes)})")
    return role, tag[2:]


def _parse_all(tags: list[str], scheme: str) -> list[tuple[str, str]]:
    parsed = []
    for position, tag in enumerate(tags):
        try:
            parsed.append(parse(tag, scheme))
        except ValueError as error:
            raise ValueError(f"tag {position + 1}: {error}") from None
    return parsed


def check(tags: list[str], scheme: str) -> tuple[int, str] | None:
    """Where the first invalid tag of a sentence is and why: ``(position, reason)``, or None.

    ``position`` is 0-based. Malformed tags are reported here too (not raised).
    """
    prefixes = _prefixes(scheme)
    previous_role, previous_type = _O, ""
    for position, tag in enumerate(tags):
        try:
            role, kind = parse(tag, scheme)
        except ValueError as error:
            return position, str(error)
        after = "at the start of the sentence" if position == 0 else f"after '{tags[position - 1]}'"
        continues = previous_role in (_B, _I) and previous_type == kind
        if scheme == "IOB2":
            if role == _I and not continues:
                return position, (f"'{tag}' {after}: in IOB2 an entity begins with "
                                  f"'{prefixes.begin}-{kind}'")
        elif scheme == "IOB1":
            if role == _B and not continues:
                return position, (f"'{tag}' {after}: in IOB1 '{prefixes.begin}-{kind}' only begins an "
                                  f"entity right after another '{kind}' entity; elsewhere one begins "
                                  f"with '{prefixes.inside}-{kind}'")
        else:
            open_entity = previous_role in (_B, _I)
            if role in (_I, _E) and not continues:
                return position, (f"'{tag}' {after}: in {scheme} an entity begins with "
                                  f"'{prefixes.begin}-{kind}' (or is a single '{prefixes.single}-{kind}')")
            if role in (_O, _B, _S) and open_entity:
                return position, (f"'{tag}' {after}: the '{previous_type}' entity is not closed "
                                  f"(in {scheme} it ends with '{prefixes.end}-{previous_type}')")
        previous_role, previous_type = role, kind
    if scheme in ("BIOES", "BILOU") and previous_role in (_B, _I):
        return len(tags) - 1, (f"'{tags[-1]}' ends the sentence: the '{previous_type}' entity is not "
                               f"closed (in {scheme} it ends with '{prefixes.end}-{previous_type}')")
    return None


def spans(tags: list[str], scheme: str) -> list[Span]:
    """The entities of a sentence's tags, in order, as ``Span(type, start, end)``, end exclusive.

    Invalid sequences are read the usual way (as :func:`repair` fixes them): a tag that cannot
    continue the open entity begins a new one, and an entity the scheme should have closed ends
    where the next tag does not continue it.
    """
    parsed = _parse_all(tags, scheme)
    iob1 = scheme == "IOB1"
    found: list[Span] = []
    start = -1  # start of the open entity, -1 when none
    open_type = ""
    for position, (role, kind) in enumerate(parsed):
        if start >= 0:
            continues = kind == open_type and (role in (_I, _E) or (iob1 and role == _B))
            if not continues or (iob1 and role == _B):
                found.append(Span(open_type, start, position))
                start = -1
        if role == _O:
            continue
        if start < 0:
            start, open_type = position, kind
        if role in (_E, _S):
            found.append(Span(open_type, start, position + 1))
            start = -1
    if start >= 0:
        found.append(Span(open_type, start, len(parsed)))
    return found


def from_spans(entities: list[Span] | list[tuple[str, int, int]], length: int, scheme: str) -> list[str]:
    """The tags of a sentence of ``length`` tokens holding the given (non-overlapping) entities."""
    prefixes = _prefixes(scheme)
    tags = [OUTSIDE] * length
    previous_end, previous_type = -1, None
    for kind, start, end in sorted(entities, key=lambda span: span[1]):
        if not 0 <= start < end <= length or start < previous_end:
            raise ValueError(f"entity ({kind}, {start}, {end}) does not fit a sentence of {length} "
                             f"tokens without overlapping the previous one")
        if scheme == "IOB1":
            first = prefixes.begin if (start == previous_end and kind == previous_type) else prefixes.inside
            tags[start] = f"{first}-{kind}"
            for i in range(start + 1, end):
                tags[i] = f"{prefixes.inside}-{kind}"
        elif prefixes.single is not None and end - start == 1:
            tags[start] = f"{prefixes.single}-{kind}"
        else:
            tags[start] = f"{prefixes.begin}-{kind}"
            for i in range(start + 1, end):
                tags[i] = f"{prefixes.inside}-{kind}"
            if prefixes.end is not None:
                tags[end - 1] = f"{prefixes.end}-{kind}"
        previous_end, previous_type = end, kind
    return tags


def convert(tags: list[str], source: str, target: str) -> list[str]:
    """A sentence's tags rewritten from scheme ``source`` into scheme ``target`` (always valid
    tags: for ``target == source`` it is :func:`repair`)."""
    return from_spans(spans(tags, source), len(tags), target)


def repair(tags: list[str], scheme: str) -> list[str]:
    """Valid tags of the same scheme: an invalid ``I-X`` (or ``E-X``) begins an entity, an
    entity left open is closed, an IOB1 ``B-X`` that follows no ``X`` entity becomes ``I-X``."""
    return from_spans(spans(tags, scheme), len(tags), scheme)


def scheme_labels(types: list[str], scheme: str) -> list[str]:
    """All tags of a scheme for the given entity types: ``O`` then each type's tags."""
    prefixes = _prefixes(scheme)
    letters = [p for p in prefixes if p is not None]
    return [OUTSIDE] + [f"{p}-{kind}" for kind in types for p in letters]


def allowed_transitions(labels: list[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which tag sequences the scheme allows, as masks for a linear-chain CRF.

    Args:
        labels: the CRF's tags in index order (every one a tag of ``scheme``).
        scheme: IOB1, IOB2, BIOES or BILOU.

    Returns:
        ``(start_allowed [T], allowed [T, T], end_allowed [T])`` bool tensors:
        ``start_allowed[j]``: a sentence may begin with tag j; ``allowed[i, j]``: tag j may follow
        tag i; ``end_allowed[i]``: a sentence may end with tag i. A tag sequence is valid in the
        scheme (:func:`check` returns None) exactly when the path uses allowed entries only.
    """
    parsed = _parse_all(list(labels), scheme)
    count = len(parsed)
    start = torch.zeros(count, dtype=torch.bool)
    allowed = torch.zeros(count, count, dtype=torch.bool)
    end = torch.zeros(count, dtype=torch.bool)
    bioes = scheme in ("BIOES", "BILOU")
    for j, (role, kind) in enumerate(parsed):
        if scheme == "IOB2":
            start[j] = role != _I
        elif scheme == "IOB1":
            start[j] = role != _B
        else:
            start[j] = role in (_O, _B, _S)
        end[j] = role in (_O, _E, _S) if bioes else True
    for i, (previous, previous_type) in enumerate(parsed):
        for j, (role, kind) in enumerate(parsed):
            continues = previous in (_B, _I) and previous_type == kind
            if scheme == "IOB2":
                ok = role != _I or continues
            elif scheme == "IOB1":
                ok = role != _B or continues
            elif role in (_I, _E):
                ok = continues
            else:  # O, B, S: no entity may be open
                ok = previous in (_O, _E, _S)
            allowed[i, j] = ok
    return start, allowed, end
