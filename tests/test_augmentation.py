"""Augmentation for transfer sets (blocks/augmentation.py): the three operations, their
probabilities, determinism, and nearest neighbours in a teacher's embedding space."""
from __future__ import annotations

import collections
import random

import pytest
import torch
import torch.nn.functional as F

from blocks.augmentation import (AugmentOptions, Augmenter, embedding_source, join_words, mean_rows,
                                 nearest_neighbours, neighbour_table, split_words, teacher_word_vectors, word_shape)

WORDS = "the movie was really quite good and the plot was fine".split()


def augmenter(mask=0.0, swap=0.0, ngram=0.0, max_ngram=5, neighbours=None, token="[MASK]"):
    return Augmenter(AugmentOptions(mask, swap, ngram, max_ngram), neighbours, token)


# -- words ---------------------------------------------------------------------------------------


def test_simple_tokenizer_keeps_contractions_and_compounds_whole():
    assert split_words("it 's a well-made film , is n't it ?!") == \
        ["it", "'s", "a", "well-made", "film", ",", "is", "n't", "it", "?!"]
    assert split_words("Don't pay $5.00 ... really") == ["Don't", "pay", "$", "5.00", "...", "really"]
    assert split_words("") == [] and join_words(["a", "b"]) == "a b"
    text = "the movie was good ."  # already tokenized text (SST-2) comes back unchanged
    assert join_words(split_words(text)) == text


def test_nothing_changes_with_zero_probabilities():
    rng = random.Random(0)
    for _ in range(50):
        assert augmenter().words(WORDS, rng) == WORDS
    assert augmenter(mask=0.5).words([], rng) == []


@pytest.mark.parametrize("values, message", [
    ((1.5, 0.0, 0.0), "mask must be a probability in [0, 1]"),
    ((0.0, -0.1, 0.0), "swap must be a probability in [0, 1]"),
    ((0.0, 0.0, 2.0), "ngram must be a probability in [0, 1]"),
    ((0.6, 0.5, 0.0), "mask + swap must be at most 1"),
])
def test_probabilities_are_checked(values, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        AugmentOptions(*values)
    with pytest.raises(ValueError, match="max_ngram"):
        AugmentOptions(max_ngram=0)


def test_mask_and_swap_rates_follow_their_probabilities():
    neighbours = {w: [w.upper()] for w in WORDS}  # a swapped word is recognisable
    aug = augmenter(mask=0.3, swap=0.2, neighbours=neighbours, token="<M>")
    rng = random.Random(7)
    counts = collections.Counter()
    for _ in range(2000):
        for before, after in zip(WORDS, aug.words(WORDS, rng)):
            counts["mask" if after == "<M>" else "swap" if after == before.upper() else "keep"] += 1
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.3) < 0.01
    assert abs(counts["swap"] / total - 0.2) < 0.01
    assert abs(counts["keep"] / total - 0.5) < 0.01
    every = augmenter(mask=1.0).words(WORDS, rng)
    assert every == ["[MASK]"] * len(WORDS)


def test_swaps_choose_uniformly_among_the_neighbours_and_keep_words_without_any():
    aug = augmenter(swap=1.0, neighbours={"good": ["fine", "great", "nice"]})
    rng = random.Random(1)
    chosen = collections.Counter(aug.words(["good"], rng)[0] for _ in range(3000))
    assert set(chosen) == {"fine", "great", "nice"}
    assert all(abs(n / 3000 - 1 / 3) < 0.03 for n in chosen.values())
    assert aug.words(["plot"], rng) == ["plot"]  # no neighbours: never swapped


def test_ngram_sampling_keeps_a_contiguous_span_of_1_to_max_words():
    aug = augmenter(ngram=1.0, max_ngram=5)
    rng = random.Random(3)
    lengths = collections.Counter()
    text = " ".join(WORDS)
    for _ in range(3000):
        out = aug.words(WORDS, rng)
        lengths[len(out)] += 1
        assert f" {' '.join(out)} " in f" {text} "  # a contiguous n-gram of the example
    assert set(lengths) == {1, 2, 3, 4, 5}
    assert all(abs(n / 3000 - 0.2) < 0.03 for n in lengths.values())  # n uniform in 1..5
    short = [len(aug.words(["a", "b"], rng)) for _ in range(500)]
    assert set(short) == {1, 2}  # an n beyond the example keeps it whole
    rate = sum(len(augmenter(ngram=0.25).words(WORDS, rng)) < len(WORDS) for _ in range(4000)) / 4000
    assert abs(rate - 0.25) < 0.03  # every n <= 5 cuts an 11-word example


def test_augmentation_is_deterministic_given_the_seed():
    aug = augmenter(mask=0.2, swap=0.2, ngram=0.3, neighbours={w: ["x", "y", "z"] for w in WORDS})

    def copies(seed):
        rng = random.Random(seed)
        return [aug.text(" ".join(WORDS), rng) for _ in range(30)]

    assert copies(5) == copies(5)
    assert copies(5) != copies(6)


# -- neighbours ----------------------------------------------------------------------------------


def brute_force_neighbours(vectors, k, allowed):
    """The k nearest rows by cosine, computed one pair at a time."""
    result = []
    for i in range(len(vectors)):
        scored = [(F.cosine_similarity(vectors[i], vectors[j], dim=0).item(), j)
                  for j in range(len(vectors)) if j != i and allowed(i, j)]
        scored.sort(key=lambda pair: -pair[0])
        result.append([j for _, j in scored[:k]])
    return result


def test_nearest_neighbours_are_the_nearest_by_cosine():
    matrix = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.9, 0.2],
                           [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [5.0, 0.2, 0.0]])
    indexes, scores = nearest_neighbours(matrix, 2)
    assert indexes[0].tolist() == [6, 1]  # by cosine, not distance: row 6 is long but points the same way
    assert indexes[2].tolist() == [3, 1]  # cosine 0.98, then 0.11 (row 6: 0.04)
    assert set(indexes[5].tolist()) == {2, 4}  # the least dissimilar rows: cosine 0 > -0.11 (row 3)
    assert 5 not in indexes[5].tolist()  # never itself
    assert torch.all(scores[:, 0] >= scores[:, 1])
    torch.manual_seed(0)
    random_matrix = torch.randn(40, 6)
    assert nearest_neighbours(random_matrix, 5, chunk=7)[0].tolist() == \
        brute_force_neighbours(random_matrix, 5, lambda i, j: True)


def test_neighbour_exclusions_groups_classes_candidates():
    torch.manual_seed(1)
    matrix = torch.randn(12, 4)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # rows 0 and 1 are one word
    classes = torch.tensor([0] * 8 + [1] * 4)
    candidates = torch.tensor([True] * 10 + [False] * 2)
    indexes, _ = nearest_neighbours(matrix, 3, groups, candidates, classes)

    def allowed(i, j):
        return groups[i] != groups[j] and classes[i] == classes[j] and bool(candidates[j])

    expected = brute_force_neighbours(matrix, 3, allowed)
    for row, want in enumerate(expected):
        got = [j for j in indexes[row].tolist() if j >= 0]
        assert got == want, row
    assert indexes[8].tolist() == [9, -1, -1]  # class 1 has one other candidate (10, 11 are not candidates)


def test_neighbour_table_over_words():
    words = ["good", "Good", "great", "awful", "goods", ",", ";", "5", "a"]
    vectors = torch.tensor([[1.0, 0.1], [1.0, 0.1], [0.9, 0.2], [-1.0, 0.0], [1.0, 0.12], [0.0, 1.0],
                            [0.1, 1.0], [1.0, 0.1], [1.0, 0.1]])
    counts = torch.tensor([1, 1, 1, 1, 2, 1, 1, 1, 0])  # "goods" is two pieces; "a" unknown to the teacher
    table = neighbour_table(words, vectors, counts, 2)
    assert table["good"] == ["great", "awful"]  # not "Good" (same word), not "goods" (pieces), not "5"
    assert set(table["goods"]) == {"good", "Good"}  # a word of pieces gets neighbours, is never one
    assert table[","] == [";"] and "5" not in table and "a" not in table
    assert [word_shape(w) for w in ("good", "5.00", "...", "x", "n't")] == ["word", "number", "punct", "letter", "word"]


def test_mean_rows():
    matrix = torch.arange(12, dtype=torch.float).view(6, 2)
    vectors, counts = mean_rows(matrix, [[1], [2, 4], [], [0, 0, 5]])
    assert counts.tolist() == [1, 2, 0, 3]
    assert torch.allclose(vectors[0], matrix[1]) and torch.allclose(vectors[1], (matrix[2] + matrix[4]) / 2)
    assert torch.equal(vectors[2], torch.zeros(2))
    assert torch.allclose(vectors[3], (2 * matrix[0] + matrix[5]) / 3)


def test_word_vectors_of_a_word_level_teacher_are_its_embedding_rows(project):
    experiment = project.prepare()
    matrix, field = embedding_source(experiment, "teacher")
    vocab = experiment.vocabularies[field.vocab]
    vectors, counts = teacher_word_vectors(experiment, "teacher", ["Good", "movie", "unseenword"])
    assert counts.tolist() == [1, 1, 0]  # the teacher lowercases; an unknown word has no vector
    assert torch.equal(vectors[0], matrix[vocab.index("good")].detach())
    assert torch.equal(vectors[1], matrix[vocab.index("movie")].detach())
