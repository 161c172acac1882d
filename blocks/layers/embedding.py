"""Blocks that turn token ids and character ids into feature sequences."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from blocks.block import Block, expect_inputs
from blocks.errors import DataError, WidthError
from blocks.layers.masking import masked_max, zero_padding
from blocks.registry import register_block
from blocks.values import CHARS, SEQUENCE, TOKENS, Sequence, Spec


def _vocabulary(spec: Spec):
    if spec.vocab is None:
        raise WidthError(f"the {spec.kind} input has no vocabulary")
    return spec.vocab


def _is_header(parts: list[str]) -> bool:
    """Whether a first line is a word2vec text header ``count dim``."""
    return len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _vector_size(parts: list[str]) -> int:
    """How many numbers end a line's fields (the word is at least the first field)."""
    size = 0
    while size < len(parts) - 1 and _is_number(parts[-size - 1]):
        size += 1
    return size


@register_block("Embedding")
class Embedding(Block):
    """Word embeddings: a learned (optionally pretrained) vector per vocabulary token.

    Input: tokens ``[batch, length]`` of ids. Output: sequence ``[batch, length, dim]`` with the
    same mask, zero at padded positions. The padding token's row is zero and stays zero.

    Args:
        dim: size of each word vector.
        trainable: whether the vectors are updated during training (false keeps them frozen).
        pretrained: path of a GloVe-format text file (``word v1 v2 ...`` per line; a word2vec
            ``count dim`` header line is skipped), relative to the config file; vocabulary tokens
            found there (exactly, else lowercased) start from those vectors.
        init_from_pretrained: start from the input-embedding matrix of the pretrained model whose
            tokenizer produced the input (an input of "type": "pretrained"; dim must equal that
            model's embedding size), so a student reads the teacher's word pieces with the
            teacher's vectors. To start from the fine-tuned teacher's vectors instead, give the node
            ``"init_from": "<teacher>/<its PretrainedEncoder node>"``.
        sparse: sparse gradients: a step touches only the rows of the batch's tokens (the
            optimizer updates them with lazy Adam, torch's ``SparseAdam``, or SGD), instead of
            computing, clipping and applying a dense gradient over the whole table. Several times
            cheaper for a large vocabulary (a 30k-word-piece table); the update differs from dense
            Adam in that rows absent from a batch keep their moments and get no weight decay.
            Not under torchrun (DDP); needs a trainable table.
    """

    def __init__(self, inputs: list[Spec], dim: int = 300, trainable: bool = True,
                 pretrained: str | None = None, init_from_pretrained: bool = False, sparse: bool = False):
        super().__init__()
        expect_inputs(inputs, 1, (TOKENS,))
        self.vocab = _vocabulary(inputs[0])
        self.pad_index = getattr(self.vocab, "pad_index", 0)
        self.dim = dim
        self.pretrained = pretrained
        self.pretrained_model = None
        self.pieces_of = inputs[0].extra.get("pretrained")  # the pretrained tokenizer of the input, if any
        if init_from_pretrained:
            if pretrained is not None:
                raise WidthError("give either 'pretrained' (a vectors file) or 'init_from_pretrained', not both")
            from blocks.layers.pretrained import load_config, pretrained_location

            self.pretrained_model = pretrained_location(inputs[0])
            config = load_config(self.pretrained_model)
            size = getattr(config, "embedding_size", None) or config.hidden_size
            if size != dim:
                raise WidthError(f"init_from_pretrained needs dim {size} (the embedding size of "
                                 f"{self.pretrained_model}), got dim {dim}")
        if sparse and not trainable:
            raise WidthError("'sparse' gradients need a trainable embedding (trainable: false has no update)")
        self.embedding = nn.Embedding(len(self.vocab), dim, padding_idx=self.pad_index, sparse=sparse)
        self.embedding.weight.requires_grad_(trainable)
        self.output_spec = Spec(SEQUENCE, dim)

    def forward(self, tokens: Sequence) -> Sequence:
        return Sequence(zero_padding(self.embedding(tokens.values), tokens.mask), tokens.mask)

    def init_from(self, source: Block) -> str:
        """From another Embedding of the same size, or from the input embeddings of a
        PretrainedEncoder (e.g. the fine-tuned teacher) whose tokenizer this embedding reads."""
        from blocks.layers.pretrained import PretrainedEncoder

        if not isinstance(source, PretrainedEncoder):
            return super().init_from(source)
        if self.pieces_of is None:
            raise WidthError("reads word-level tokens; it can start from a PretrainedEncoder only when its input "
                             "has \"type\": \"pretrained\" with that encoder's tokenizer")
        if self.embedding.num_embeddings != source.vocab_size:
            raise WidthError(f"reads {self.embedding.num_embeddings:,} word pieces, its source {source.vocab_size:,}: "
                             f"the two inputs use different tokenizers")
        matrix = source.model.get_input_embeddings().weight.detach()
        if matrix.shape[1] != self.dim:
            raise WidthError(f"has dim {self.dim}, its source's input embeddings {matrix.shape[1]}")
        return f"{self._copy_rows(matrix):,} word-piece vectors"

    def _copy_rows(self, matrix: torch.Tensor) -> int:
        """Start the table from the rows of ``matrix`` (the padding row stays zero); returns how many."""
        rows = min(len(matrix), self.embedding.num_embeddings)
        with torch.no_grad():
            self.embedding.weight[:rows] = matrix[:rows].to(self.embedding.weight)
            self.embedding.weight[self.pad_index] = 0
        return rows

    def load_pretrained(self, base_dir: Path) -> str | None:
        """Copy the vectors of ``pretrained`` into the rows of the tokens it contains."""
        if self.pretrained_model is not None:
            from blocks.layers.pretrained import input_embedding_matrix

            rows = self._copy_rows(input_embedding_matrix(self.pretrained_model))
            return f"Embedding: {rows:,} word-piece vectors from {self.pretrained_model}"
        if self.pretrained is None:
            return None
        path = Path(self.pretrained)
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.is_file():
            raise DataError("pretrained embedding file not found", str(path))

        tokens = list(self.vocab.tokens)
        exact = {token: i for i, token in enumerate(tokens) if i != self.pad_index}
        lowered: dict[str, list[int]] = {}
        for token, i in exact.items():
            if token.lower() != token:
                lowered.setdefault(token.lower(), []).append(i)

        vectors: dict[int, list[float]] = {}
        source: dict[int, str] = {}  # row -> "exact" or "lower"
        first_vector = True
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                parts = line.rstrip().split(" ")
                if parts == [""]:
                    continue
                if number == 1 and _is_header(parts):
                    if int(parts[1]) != self.dim:
                        raise DataError(f"the file holds {parts[1]}-dimensional vectors but the"
                                        f" Embedding dim is {self.dim}", str(path), number)
                    continue
                if first_vector:
                    first_vector = False
                    if _vector_size(parts) != self.dim:
                        raise DataError(f"the file holds {_vector_size(parts)}-dimensional vectors"
                                        f" but the Embedding dim is {self.dim}", str(path), number)
                if len(parts) < self.dim + 1:
                    raise DataError(f"expected a word and {self.dim} numbers, found"
                                    f" {len(parts)} fields", str(path), number)
                # Words may contain spaces (as in glove.840B): the last dim fields are the vector.
                word = " ".join(parts[:-self.dim])
                rows = []
                if word in exact and source.get(exact[word]) != "exact":
                    rows.append((exact[word], "exact"))
                for row in lowered.get(word, ()):
                    if row not in source:
                        rows.append((row, "lower"))
                if not rows:
                    continue
                try:
                    vector = [float(v) for v in parts[-self.dim:]]
                except ValueError:
                    raise DataError(f"malformed vector for '{word}': expected {self.dim} numbers",
                                    str(path), number) from None
                for row, how in rows:
                    vectors[row] = vector
                    source[row] = how

        if vectors:
            weight = self.embedding.weight
            rows = torch.tensor(list(vectors), device=weight.device)
            with torch.no_grad():
                weight[rows] = torch.tensor(list(vectors.values())).to(weight)
        found, total = len(source), len(tokens)
        share = 100.0 * found / total if total else 0.0
        return (f"Embedding: {found:,} of {total:,} vocabulary tokens found in {self.pretrained}"
                f" ({share:.1f}%)")


@register_block("CharCNN")
class CharCNN(Block):
    """Character CNN word features: convolutions over each word's characters, max-pooled.

    Input: chars ``[batch, length, chars]`` of character ids (0 = padding), masked over words.
    Output: sequence ``[batch, length, filters * len(windows)]``; padding words give zeros. Each
    window is a full convolution (so a word shorter than the window still counts) whose maximum
    is taken over the positions that touch at least one real character.

    Args:
        char_dim: size of each character embedding.
        filters: number of filters per window size.
        windows: convolution window sizes, in characters.
    """

    def __init__(self, inputs: list[Spec], char_dim: int = 16, filters: int = 50,
                 windows: list[int] = (3,)):
        super().__init__()
        expect_inputs(inputs, 1, (CHARS,))
        vocab = _vocabulary(inputs[0])
        self.windows = [int(w) for w in windows]
        if not self.windows or min(self.windows) < 1:
            raise WidthError(f"windows must be a non-empty list of sizes >= 1, got {list(windows)}")
        self.pad_index = getattr(vocab, "pad_index", 0)
        self.embedding = nn.Embedding(len(vocab), char_dim, padding_idx=self.pad_index)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(char_dim, filters, window, padding=window - 1) for window in self.windows)
        self.output_spec = Spec(SEQUENCE, filters * len(self.windows))

    def forward(self, chars: Sequence) -> Sequence:
        ids, word_mask = chars.values, chars.mask
        batch, length, width = ids.shape
        real = word_mask.reshape(-1)
        ids = ids.reshape(batch * length, width)[real]  # the real words only: [N, C]
        char_mask = ids != self.pad_index
        embedded = zero_padding(self.embedding(ids), char_mask)  # [N, C, char_dim]
        pooled = torch.cat([self._convolve_and_pool(embedded, char_mask, window, convolution)
                            for window, convolution in zip(self.windows, self.convolutions)], dim=-1)
        values = pooled.new_zeros(batch * length, pooled.shape[-1]).masked_scatter(real.unsqueeze(-1), pooled)
        return Sequence(values.reshape(batch, length, -1), word_mask)

    @staticmethod
    def _convolve_and_pool(embedded: torch.Tensor, char_mask: torch.Tensor, window: int,
                           convolution: nn.Conv1d) -> torch.Tensor:
        """The full convolution of ``convolution``'s weights over each word, max-pooled.

        Computed as one matrix product of the ``window`` shifted copies of the characters side by
        side (``[N * positions, window * char_dim]``) with the kernel, which is faster
        on the CPU than ``nn.Conv1d`` for these narrow channels (tools/profile_nodes.py) and gives the
        same values.
        """
        count, width, char_dim = embedded.shape
        positions = width + window - 1
        padded = nn.functional.pad(embedded, (0, 0, window - 1, window - 1))  # [N, C + 2(w - 1), d]
        shifted = torch.cat([padded[:, k:k + positions] for k in range(window)], dim=2)  # [N, P, w * d]
        kernel = convolution.weight.permute(2, 1, 0).reshape(window * char_dim, -1)  # [w * d, filters]
        features = torch.addmm(convolution.bias, shifted.reshape(count * positions, window * char_dim), kernel)
        # An output position is real when its window covers at least one real character.
        covered = nn.functional.pad(char_mask, (window - 1, window - 1))
        valid = covered[:, :positions]
        for k in range(1, window):
            valid = valid | covered[:, k:k + positions]
        return masked_max(features.reshape(count, positions, -1), valid, dim=1)
