"""Tag schemes: check, spans, repair, convert and CRF transition masks, on examples, on every short
tag sequence, and on the real CoNLL-2003 tags (compared with seqeval)."""
from __future__ import annotations

import itertools
import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from blocks.data import tag_schemes
from blocks.data.column_reader import read_column_rows
from blocks.data.tag_schemes import (Span, allowed_transitions, check, convert, from_spans, repair,
                                     scheme_labels, spans)

TYPES = ["PER", "LOC"]


@pytest.mark.parametrize("scheme, tags, position, reason", [
    ("IOB2", ["O", "I-PER"], 1, "'I-PER' after 'O': in IOB2 an entity begins with 'B-PER'"),
    ("IOB2", ["I-PER"], 0, "'I-PER' at the start of the sentence"),
    ("IOB2", ["B-PER", "I-LOC"], 1, "'I-LOC' after 'B-PER'"),
    ("IOB2", ["B-PER", "E-PER"], 1, "'E-PER' is not a tag of the IOB2 scheme (IOB2 uses O and B-TYPE, I-TYPE)"),
    ("IOB2", ["B_PER"], 0, "'B_PER' is not a tag of the IOB2 scheme"),
    ("IOB2", ["B-"], 0, "'B-' is not a tag"),
    ("IOB1", ["O", "B-PER"], 1, "in IOB1 'B-PER' only begins an entity right after another 'PER' entity"),
    ("IOB1", ["I-LOC", "B-PER"], 1, "'B-PER' after 'I-LOC'"),
    ("BIOES", ["B-PER", "O"], 1, "'O' after 'B-PER': the 'PER' entity is not closed (in BIOES it ends with 'E-PER')"),
    ("BIOES", ["O", "E-PER"], 1, "in BIOES an entity begins with 'B-PER' (or is a single 'S-PER')"),
    ("BIOES", ["B-PER", "I-PER"], 1, "'I-PER' ends the sentence: the 'PER' entity is not closed"),
    ("BIOES", ["B-PER", "S-PER"], 1, "the 'PER' entity is not closed"),
    ("BIOES", ["B-PER", "E-LOC"], 1, "'E-LOC' after 'B-PER'"),
    ("BILOU", ["B-PER", "O"], 1, "(in BILOU it ends with 'L-PER')"),
    ("BILOU", ["E-PER"], 0, "'E-PER' is not a tag of the BILOU scheme (BILOU uses O and B-TYPE, I-TYPE, L-TYPE, U-TYPE)"),
])
def test_check_reports_the_first_invalid_tag(scheme, tags, position, reason):
    found = check(tags, scheme)
    assert found is not None and found[0] == position
    assert reason in found[1]


@pytest.mark.parametrize("scheme, tags", [
    ("IOB2", ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]),
    ("IOB1", ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC"]),
    ("BIOES", ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "I-LOC", "E-LOC"]),
    ("BILOU", ["B-PER", "L-PER", "U-LOC"]),
    ("IOB2", []),
])
def test_check_accepts_valid_tags(scheme, tags):
    assert check(tags, scheme) is None
    assert repair(tags, scheme) == tags


def test_spans_and_conversions_on_an_example():
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-PER"]
    expected = [Span("PER", 0, 2), Span("LOC", 3, 4), Span("LOC", 4, 6), Span("PER", 6, 7)]
    assert spans(iob2, "IOB2") == expected
    assert convert(iob2, "IOB2", "IOB1") == ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-PER"]
    assert convert(iob2, "IOB2", "BIOES") == ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "S-PER"]
    assert convert(iob2, "IOB2", "BILOU") == ["B-PER", "L-PER", "O", "U-LOC", "B-LOC", "L-LOC", "U-PER"]
    for scheme in ("IOB1", "BIOES", "BILOU"):
        assert spans(convert(iob2, "IOB2", scheme), scheme) == expected
        assert convert(convert(iob2, "IOB2", scheme), scheme, "IOB2") == iob2


def test_repair_the_usual_way():
    assert repair(["O", "I-PER", "I-PER", "I-LOC"], "IOB2") == ["O", "B-PER", "I-PER", "B-LOC"]
    assert repair(["O", "B-PER", "I-PER"], "IOB1") == ["O", "I-PER", "I-PER"]
    assert repair(["B-PER", "O", "I-LOC", "E-LOC", "B-PER"], "BIOES") == ["S-PER", "O", "B-LOC", "E-LOC", "S-PER"]
    assert repair(["E-PER"], "BIOES") == ["S-PER"]


def test_unknown_scheme_and_bad_tags_raise():
    with pytest.raises(ValueError, match=r"unknown tag scheme 'BIO' \(known: IOB1, IOB2, BIOES, BILOU\)"):
        spans(["O"], "BIO")
    with pytest.raises(ValueError, match="tag 2: 'S-PER' is not a tag of the IOB2 scheme"):
        convert(["O", "S-PER"], "IOB2", "BIOES")
    with pytest.raises(ValueError, match="does not fit a sentence of 2 tokens"):
        from_spans([("PER", 0, 2), ("LOC", 1, 2)], 2, "IOB2")


def all_sequences(scheme: str, length: int):
    labels = scheme_labels(["PER", "LOC"], scheme)
    return labels, itertools.product(range(len(labels)), repeat=length)


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "BIOES", "BILOU"])
def test_every_short_sequence(scheme):
    """On every sequence of up to 3 tags over two types: check agrees with the transition masks,
    repair makes valid tags with the same spans, conversions to every scheme keep the spans,
    and the spans equal seqeval's entities (for IOB1/IOB2/BIOES, which seqeval reads)."""
    for length in range(1, 4):
        labels, sequences = all_sequences(scheme, length)
        start, allowed, end = allowed_transitions(labels, scheme)
        for path in sequences:
            tags = [labels[i] for i in path]
            by_masks = bool(start[path[0]]) and bool(end[path[-1]]) and all(
                bool(allowed[a, b]) for a, b in zip(path, path[1:]))
            assert (check(tags, scheme) is None) == by_masks, tags
            found = spans(tags, scheme)
            fixed = repair(tags, scheme)
            assert check(fixed, scheme) is None and spans(fixed, scheme) == found, tags
            for target in tag_schemes.SCHEMES:
                converted = convert(tags, scheme, target)
                assert check(converted, target) is None and spans(converted, target) == found, (tags, target)
            if scheme != "BILOU":
                assert [(t, s, e + 1) for t, s, e in get_entities(tags)] == found, tags


def test_allowed_transitions_on_iob2_and_bioes():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    start, allowed, end = allowed_transitions(labels, "IOB2")
    assert start.tolist() == [True, True, False, True, False] and end.all()
    assert allowed[:, 2].tolist() == [False, True, True, False, False]  # I-PER only after B-PER, I-PER
    assert allowed[:, [0, 1, 3]].all()
    labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    start, allowed, end = allowed_transitions(labels, "BIOES")
    assert start.tolist() == [True, True, False, False, True]
    assert end.tolist() == [True, False, False, True, True]
    assert allowed[1].tolist() == [False, False, True, True, False]  # after B: I or E
    assert allowed[3].tolist() == [True, True, False, False, True]  # after E: O, B, S
    with pytest.raises(ValueError, match="tag 2: '<pad>' is not a tag"):
        allowed_transitions(["O", "<pad>"], "IOB2")


@pytest.fixture(scope="module")
def conll_train(data_dir):
    path = data_dir / "conll2003" / "train.txt"
    if not path.is_file():
        pytest.skip(f"conll2003/train.txt not found in {data_dir}")
    return read_column_rows(path, columns=["tokens", "pos", "chunk", "ner"])


@pytest.mark.parametrize("column", ["ner", "chunk"])
def test_conll2003_train_is_iob2_and_round_trips(conll_train, column):
    sentences = [row.fields[column] for row in conll_train]
    assert all(check(tags, "IOB2") is None for tags in sentences)  # the files are IOB2, not IOB1
    iob1_invalid = sum(check(tags, "IOB1") is not None for tags in sentences)
    assert iob1_invalid > 1000  # a B- after O is everywhere: read as IOB1, most entities would be invalid
    if column == "chunk":
        return  # the conversions below are checked on the NER column; on chunks they add seconds
    entities = 0
    for tags in sentences:
        found = spans(tags, "IOB2")
        entities += len(found)
        assert [(t, s, e + 1) for t, s, e in get_entities(tags)] == found
        for target in ("IOB1", "BIOES"):  # BILOU is BIOES with other letters (checked above)
            converted = convert(tags, "IOB2", target)
            assert spans(converted, target) == found
            assert convert(converted, target, "IOB2") == tags
    assert entities == 23_499  # B- tags of the train file: 7140 LOC + 3438 MISC + 6321 ORG + 6600 PER


def test_random_invalid_sequences_agree_with_seqeval():
    rng = random.Random(0)
    labels = scheme_labels(["PER", "LOC", "ORG"], "IOB2")
    for _ in range(2000):
        tags = [rng.choice(labels) for _ in range(rng.randint(1, 12))]
        assert [(t, s, e + 1) for t, s, e in get_entities(tags)] == spans(tags, "IOB2"), tags
