"""Data augmentation for transfer sets (Tang et al. 2019, "Distilling task-specific knowledge from
BERT into simple neural networks"; methods.md section 9).

Each training example becomes ``copies`` perturbed copies, which the stage's teachers label (the
copies carry no gold label). Per text field, with ``words`` the field split by a simple tokenizer:

1. **n-gram sampling** — with probability ``ngram`` the field is replaced by a random n-gram of
   its words, ``n`` uniform in 1..``max_ngram`` (the whole field when it is shorter);
2. then, per word, one uniform draw ``u``:
   * ``u < mask``: the word becomes the mask token (the ``[MASK]`` of a pretrained teacher, an
     unknown word for word-level models);
   * ``mask <= u < mask + swap``: the word becomes one of its nearest neighbours, chosen
     uniformly among the ``neighbours`` words of the training set closest to it by cosine in the
     teacher's input-embedding space (the paper swaps for a word of the same part of speech; no
     POS tagger is available here, and embedding neighbours of a word mostly share its kind).
     Neighbours are words the teacher reads as one token, of the same shape (see
     :func:`neighbour_table`);
   * otherwise the word is kept.

Augmentation works on the raw text (words rejoined with single spaces), so every model reads
the copies through its own tokenizer. Everything is deterministic given the seed: one
``random.Random(seed)`` stream, examples in order, copies in order.

Word vectors come from a teacher's input-embedding matrix (:func:`teacher_word_vectors`): for a
pretrained teacher (``PretrainedEncoder``, or an ``Embedding`` over word pieces) a word's vector is
the mean of its word pieces' rows; for a word-level teacher the mean of its ``Embedding`` rows
for the word's tokens. Words the teacher only knows as unknown get no vector: they are never
swapped and never chosen as a neighbour.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Words with inner apostrophes, hyphens or dots stay whole ("don't", "n't", "'s", "5.00",
# "well-made"); a run of other non-space characters is one token ("...", "--", "?!").
_WORD = re.compile(r"\w+(?:[-'’.]\w+)*|'\w+|[^\w\s]+")


def split_words(text: str | list[str]) -> list[str]:
    """The words of ``text`` (the simple tokenizer augmentation works with); a field that is
    already a list of words (a tagging file's sentence) is taken as it is."""
    if isinstance(text, list):
        return list(text)
    return _WORD.findall(text)


def join_words(words: list[str]) -> str:
    return " ".join(words)


@dataclass(frozen=True)
class AugmentOptions:
    """The probabilities of the three operations (see the module docstring)."""

    mask: float = 0.1
    swap: float = 0.1
    ngram: float = 0.25
    max_ngram: int = 5

    def __post_init__(self):
        for name in ("mask", "swap", "ngram"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.mask + self.swap > 1.0:
            raise ValueError(f"mask + swap must be at most 1 (one draw per word decides), got "
                             f"{self.mask} + {self.swap}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be at least 1, got {self.max_ngram}")


class Augmenter:
    """Perturbs word lists: n-gram sampling, then masking and neighbour swaps per word.

    Args:
        options: the probabilities.
        neighbours: word -> the words it may be swapped for (nearest first); a word not in it
            is never swapped.
        mask_token: the string a masked word becomes.
    """

    def __init__(self, options: AugmentOptions, neighbours: dict[str, list[str]] | None = None,
                 mask_token: str = "[MASK]"):
        self.options = options
        self.neighbours = neighbours or {}
        self.mask_token = mask_token

    def words(self, words: list[str], rng: random.Random) -> list[str]:
        """One perturbed copy of ``words`` (``words`` itself is not changed)."""
        options = self.options
        if not words:
            return []
        if options.ngram and rng.random() < options.ngram:
            n = min(rng.randint(1, options.max_ngram), len(words))
            start = rng.randint(0, len(words) - n)
            words = words[start:start + n]
        mask, swap = options.mask, options.mask + options.swap
        if swap <= 0.0:
            return list(words)
        out = []
        draw, neighbours, token = rng.random, self.neighbours, self.mask_token
        for word in words:
            u = draw()
            if u < mask:
                out.append(token)
            elif u < swap:
                choices = neighbours.get(word)
                out.append(choices[int(draw() * len(choices))] if choices else word)
            else:
                out.append(word)
        return out

    def text(self, text: str, rng: random.Random) -> str:
        """One perturbed copy of a text field (words rejoined with single spaces)."""
        return join_words(self.words(split_words(text), rng))


# -- nearest neighbours ---------------------------------------------------------------------------
def word_shape(word: str) -> str:
    """Which words may stand for which: ``punct`` (no letter or digit), ``number`` (a digit),
    ``letter`` (one character), else ``word``."""
    if not any(c.isalnum() for c in word):
        return "punct"
    if any(c.isdigit() for c in word):
        return "number"
    return "letter" if len(word) == 1 else "word"


def nearest_neighbours(vectors: torch.Tensor, k: int, groups: torch.Tensor | None = None,
                       candidates: torch.Tensor | None = None, classes: torch.Tensor | None = None,
                       chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of each row of ``vectors`` ``[W, D]`` by cosine similarity.

    A row is never its own neighbour, nor is a row of the same ``groups`` id (e.g. the same word
    in another casing), a row of another ``classes`` id, or a row that is not a ``candidates``
    (bool ``[W]``). Returns ``(indexes [W, k], similarities [W, k])``, nearest first; where a row
    has fewer than ``k`` candidates the missing entries have index -1 and similarity -inf.
    """
    count = vectors.shape[0]
    k = max(0, min(k, count - 1))
    if count == 0 or k == 0:
        return torch.full((count, k), -1, dtype=torch.long), torch.full((count, k), float("-inf"))
    unit = F.normalize(vectors.float(), dim=1)
    indexes, scores = [], []
    for start in range(0, count, chunk):
        rows = torch.arange(start, min(start + chunk, count))
        similarity = unit[rows] @ unit.T
        similarity[torch.arange(len(rows)), rows] = float("-inf")
        if groups is not None:
            similarity.masked_fill_(groups[rows].unsqueeze(1) == groups.unsqueeze(0), float("-inf"))
        if classes is not None:
            similarity.masked_fill_(classes[rows].unsqueeze(1) != classes.unsqueeze(0), float("-inf"))
        if candidates is not None:
            similarity.masked_fill_(~candidates.unsqueeze(0), float("-inf"))
        top = similarity.topk(k, dim=1)
        chosen = torch.where(torch.isfinite(top.values), top.indices, torch.full_like(top.indices, -1))
        indexes.append(chosen)
        scores.append(top.values)
    return torch.cat(indexes), torch.cat(scores)


def neighbour_table(words: list[str], vectors: torch.Tensor, counts: torch.Tensor, k: int
                    ) -> dict[str, list[str]]:
    """word -> its ``k`` nearest words (by cosine of ``vectors``).

    ``counts[i]`` is the number of the teacher's tokens word i is made of (0: the teacher does
    not know it). Every known word gets neighbours; the neighbours are words the teacher reads as
    one token, whose vectors are its own rather than an average of pieces (an average of "good",
    "-", "bad" is close to "good" without being a word like it), of the same shape (words swap
    with words, numbers with numbers, punctuation with punctuation, single letters with single
    letters: :func:`word_shape`). Casings of one word ("Good",
    "good") are not each other's neighbours.
    """
    counts = torch.as_tensor(counts)
    kept = [i for i, n in enumerate(counts.tolist()) if n > 0]
    if len(kept) < 2:
        return {}
    names = [words[i] for i in kept]
    folded: dict[str, int] = {}
    groups = torch.tensor([folded.setdefault(w.casefold(), len(folded)) for w in names])
    shapes = {"word": 0, "number": 1, "punct": 2, "letter": 3}
    classes = torch.tensor([shapes[word_shape(w)] for w in names])
    indexes, _ = nearest_neighbours(vectors[kept], k, groups, counts[kept] == 1, classes)
    table = {}
    for row, word in enumerate(names):
        chosen = [names[j] for j in indexes[row].tolist() if j >= 0]
        if chosen:
            table[word] = chosen
    return table


def mean_rows(matrix: torch.Tensor, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``matrix``'s rows ``ids[i]`` for each i, ``[W, D]`` (zero for an empty list),
    and the length of each list."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    flat = torch.tensor([i for x in ids for i in x], dtype=torch.long)
    offsets = torch.zeros(len(ids), dtype=torch.long)
    if len(ids) > 1:
        offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    matrix = matrix.detach().to("cpu", torch.float32)
    if flat.numel() == 0:
        return torch.zeros(len(ids), matrix.shape[1]), lengths
    vectors = F.embedding_bag(flat, matrix, offsets, mode="mean")
    return vectors, lengths


# -- a teacher's word vectors ----------------------------------------------------------------------
def embedding_source(experiment, teacher: str) -> tuple[torch.Tensor, object] | None:
    """(input-embedding matrix, the input field it reads) of a teacher, or None when it has none.

    The first node, in graph order, that is a ``PretrainedEncoder`` or an ``Embedding`` reading
    one of the model's inputs of token ids directly.
    """
    graph = experiment.models[teacher]
    inputs = experiment.model_inputs[teacher]
    for node in graph.nodes:
        if node.block_name not in ("PretrainedEncoder", "Embedding") or len(node.inputs) != 1:
            continue
        if node.inputs[0] not in inputs:
            continue
        field = experiment.fields[inputs[node.inputs[0]]]
        if field.type == "chars":
            continue
        block = graph.blocks[node.owner]
        if node.block_name == "PretrainedEncoder":
            matrix = block.model.get_input_embeddings().weight
        else:
            matrix = block.embedding.weight
        return matrix, field
    return None


def word_ids(field, vocabulary, words: list[str]) -> list[list[int]]:
    """The ids each word has under one model input (unknown and special tokens left out)."""
    if field.type == "pretrained":
        tokenizer = field.tokenizer.tokenizer
        encoded = tokenizer(words, add_special_tokens=False, return_attention_mask=False,
                            return_token_type_ids=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        return [[i for i in ids if i not in special] for ids in encoded]
    skip = {vocabulary.unk_index, vocabulary.pad_index}
    return [[i for i in vocabulary.encode(field.tokens(word)) if i not in skip] for word in words]


def teacher_word_vectors(experiment, teacher: str, words: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Vectors ``[W, D]`` of ``words`` in a teacher's input-embedding space, and the number of
    the teacher's tokens each word is made of (0: no vector); None when the teacher has no
    embedding matrix to read."""
    source = embedding_source(experiment, teacher)
    if source is None:
        return None
    matrix, field = source
    ids = word_ids(field, experiment.vocabularies[field.vocab], words)
    return mean_rows(matrix, ids)
