"""Sequence to sequence: a target sentence per source sentence (translation).

**Data.** Each example is a pair of a source field (``task.source``) and a target field
(``data.label``): two line-aligned files read with the ``parallel`` reader format
(``{"format": "parallel", "languages": ["en", "de"]}`` reads ``<path>.en`` and ``<path>.de``, one
field per language; files of different lengths are an error naming both; a pair with an empty
side is skipped and counted in the log, or refused with ``"empty": "error"``), or two columns of
any other format (an empty target there is an error naming the line).

**Vocabularies.** Subword tokenizers (BPE or unigram, :mod:`blocks.data.subword`) are trained on
the train split (``task.subword``: ``model``, ``vocab_size``, ``shared``, ``min_frequency``) and
saved into the run directory (``vocab/subword/``), so ``test`` and ``predict`` work from the run
alone.

**Inputs and labels.** A model reads the source through an input of type ``source`` (subword ids
and ``<eos>``, cut to the input's ``max_length``, default 512, with a count in the log) and the
decoder's teacher-forcing prefix through an input of type ``target`` (``<bos>`` and the target's
ids). The labels are the target's ids and ``<eos>``, position by position: the prefix shifted by
one. Targets longer than ``task.max_target_length`` (default 256 tokens with ``<eos>``) are cut,
prefix and labels alike, and counted in the log.

**Model.** The output node is a decoder block (``TransformerDecoder``, ``RNNDecoder``: see
:mod:`blocks.layers.decoders`) whose first input is the encoder's output and whose second is the
``target`` input; its ``vocab_size`` defaults to the target vocabulary's size. Its per-position
logits feed ``CrossEntropy`` (with ``label_smoothing``) during training.

**A model with vocabularies of its own.** A model taken from a run trained with other subword
vocabularies (a teacher with 8,000 pieces for a student with 4,000) keeps the run's vocabularies:
its inputs are encoded with them, its decoder predicts their pieces, its translations are decoded
with them. Such a model can only teach through its translations (sequence-level KD,
``transfer.generate``): the losses that compare next-token distributions (``KD``,
``GenerationKD``) need one target vocabulary, so a stage that lists it among its ``teachers`` or
trains it is a config error.

**Predictions and metrics.** Predictions are generated (:mod:`blocks.generation`): greedily for
the dev evaluations during training (checkpoint selection), with ``task.generation`` (``beam``,
``max_length_a``, ``max_length_b``, ``length_penalty``) for the final evaluation, ``blocks test``
and ``blocks predict``. They are decoded to detokenized text and scored against the references
as read from the data by sacreBLEU (:mod:`blocks.generation_metrics`: ``bleu``, ``chrf``,
``bleu_lc``; 0–100 scale).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from blocks.data.batching import pad_ids
from blocks.errors import ConfigError, DataError
from blocks.generation_metrics import TEXT_METRICS
from blocks.tasks.base import UNLABELLED, TaskType, register_task_type
from blocks.values import SEQUENCE, Sequence

#: The subword vocabularies' folder inside a run directory's ``vocab/``.
SUBWORD_FOLDER = "subword"
DEFAULT_SUBWORD = {"model": "bpe", "vocab_size": 8000, "shared": True, "min_frequency": 2}
DEFAULT_GENERATION = {"beam": 5, "max_length_a": 10.0, "max_length_b": 1.5, "length_penalty": 1.0}
DEFAULT_MAX_LENGTH = 256


class SubwordIds:
    """A subword tokenizer's id space seen as a vocabulary (its size and padding id) by the
    blocks that read an input's vocabulary (``Embedding``, the decoders)."""

    def __init__(self, tokenizer):
        from blocks.data.subword import PAD_ID, UNK_ID

        self.tokenizer = tokenizer
        self.pad_index, self.unk_index = PAD_ID, UNK_ID

    def __len__(self) -> int:
        return self.tokenizer.vocab_size


class TargetLabels(list):
    """Per-example label tensors (target ids and ``<eos>``) with the target sentences as read
    (``texts``: the references BLEU is computed against)."""

    def __init__(self, labels=(), texts: list[str] | None = None):
        super().__init__(labels)
        self.texts = list(texts) if texts is not None else [""] * len(self)


@register_task_type
class Seq2Seq(TaskType):
    name = "seq2seq"
    output_kinds = (SEQUENCE,)
    per_token = True  # one label per target position
    input_types = ("source", "target")
    own_metrics = tuple(TEXT_METRICS)
    generates = True

    def __init__(self, source: str | None, subword: dict | None = None, generation: dict | None = None,
                 max_target_length: int | None = None):
        self.source = source
        self.subword = {**DEFAULT_SUBWORD, **(subword or {})}
        self.generation = {**DEFAULT_GENERATION, **(generation or {})}
        self.max_target_length = max_target_length or DEFAULT_MAX_LENGTH
        self.labels = []
        self.positive = 0
        self.vocabularies = None  # SubwordVocabularies: trained (from_config) or loaded (load_files)
        #: models taken from runs with other subword vocabularies: model name -> the run's vocabularies
        self.model_vocabularies: dict = {}
        self.signatures: dict[str, str] = {}  # metric -> sacreBLEU signature, of the metrics computed

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, task_config, train_rows, label_field, mapping, file=None):
        from blocks.data.dataset import field_value
        from blocks.data.subword import SubwordVocabularies

        task = cls.from_values(task_config)
        if not task.source:
            raise ConfigError("a seq2seq task names its source field (\"source\"; data.label is the target field)",
                              file, "/task")
        sources = [field_value(row, task.source, mapping) for row in train_rows]
        targets = [field_value(row, label_field, mapping) for row in train_rows]
        options = task.subword
        task.vocabularies = SubwordVocabularies.train(sources, targets, options["model"], options["vocab_size"],
                                                      options["shared"], options["min_frequency"])
        return task

    @classmethod
    def from_values(cls, values):
        return cls(values.get("source"), values.get("subword"), values.get("generation"),
                   values.get("max_target_length"))

    def to_json(self):
        return {"type": self.name, "labels": [], "source": self.source, "subword": self.subword,
                "generation": self.generation, "max_target_length": self.max_target_length}

    def describe(self):
        sizes = ""
        if self.vocabularies is not None:
            v = self.vocabularies
            sizes = (f"shared {v.model} vocabulary of {v.target.vocab_size:,}" if v.shared else
                     f"{v.model} vocabularies of {v.source.vocab_size:,} / {v.target.vocab_size:,}") + "; "
        return f"seq2seq ({sizes}source field '{self.source}')"

    @property
    def num_outputs(self) -> int:
        return self.num_outputs_of(None)

    def num_outputs_of(self, model: str | None) -> int:
        return self.vocabularies_of(model).target.vocab_size if self.vocabularies is not None else 2

    def vocabularies_of(self, model: str | None):
        """The subword vocabularies ``model`` reads and predicts: its run's own, else the task's."""
        return self.model_vocabularies.get(model, self.vocabularies)

    def save_files(self, run_dir) -> None:
        self.vocabularies.save(Path(run_dir) / SUBWORD_FOLDER)

    def load_files(self, run_dir) -> None:
        from blocks.data.subword import SubwordVocabularies

        self.vocabularies = SubwordVocabularies.load(Path(run_dir) / SUBWORD_FOLDER)

    def check_files(self, run_dir) -> None:
        from blocks.data.subword import META_FILE, SubwordVocabularies
        from blocks.errors import CheckpointError

        folder = Path(run_dir) / SUBWORD_FOLDER
        if not (folder / META_FILE).is_file():
            return  # not written yet: the set-up writes it
        saved, trained = SubwordVocabularies.load(folder), self.vocabularies
        if (saved.source.to_json(), saved.target.to_json()) != (trained.source.to_json(), trained.target.to_json()):
            raise CheckpointError("the training data or task.subword changed since the run started (the subword "
                                  "vocabularies trained again differ from the run's)", str(folder / META_FILE))

    def check_model(self, graph, file: str | None) -> None:
        """The output node must be a decoder reading the target prefix, and cover the longest
        target prefix (a ConfigError otherwise)."""
        node, decoder = self.decoder_node(graph, file)
        limit = getattr(decoder, "max_length", None)
        if limit is not None and limit < self.max_target_length:
            raise ConfigError(f"the decoder's max_length {limit} is shorter than the task's max_target_length "
                              f"{self.max_target_length} (target tokens kept, with <eos>): raise max_length or set "
                              f"task.max_target_length to at most {limit}", file, f"{node.path}/max_length")

    def adopt_run_vocabularies(self, name: str, run: str | Path) -> bool:
        """A model taken from ``run`` keeps the run's subword vocabularies when they differ from
        the task's (see the module docstring); True when they do. A run without saved vocabularies
        is left to the loading of its weights."""
        from blocks.data.subword import META_FILE, SubwordVocabularies

        folder = Path(run) / "vocab" / SUBWORD_FOLDER
        if self.vocabularies is None or not (folder / META_FILE).is_file():
            return False
        theirs, ours = SubwordVocabularies.load(folder), self.vocabularies
        if (theirs.source.to_json(), theirs.target.to_json()) == (ours.source.to_json(), ours.target.to_json()):
            return False
        self.model_vocabularies[name] = theirs
        return True

    def check_own_vocabularies(self, config) -> None:
        """A model with vocabularies of its own teaches only through its translations: a stage
        that trains it or lists it among its ``teachers`` is a ConfigError at that place."""
        for index, stage in enumerate(config["stages"]):
            if stage.get("train") in self.model_vocabularies:
                name = stage["train"]
                raise ConfigError(f"model '{name}' reads the subword vocabularies of its run "
                                  f"({self.describe_own_vocabularies(name)}), not this task's, so it cannot train on "
                                  f"this task's data; train it on its own data, or train a model of this config",
                                  config.file, f"/stages/{index}/train")
            for position, teacher in enumerate(stage.get("teachers") or []):
                if teacher in self.model_vocabularies:
                    raise ConfigError(f"teacher '{teacher}' reads the subword vocabularies of its run "
                                      f"({self.describe_own_vocabularies(teacher)}), not this task's; only "
                                      f"sequence-level KD (transfer.generate, which passes translations as text) "
                                      f"works across vocabularies: word-level KD and ImitKD compare next-token "
                                      f"distributions over one target vocabulary", config.file,
                                      f"/stages/{index}/teachers/{position}")

    def describe_own_vocabularies(self, model: str) -> str:
        """How the vocabularies of ``model`` (one with its own) compare with the task's."""
        theirs, ours = self.model_vocabularies[model].target.vocab_size, self.vocabularies.target.vocab_size
        return f"{theirs:,} target pieces against the task's {ours:,}"

    def decoder_node(self, graph, file: str | None = None):
        """The decoder node of a model: its output node, a decoder with the target input."""
        from blocks.layers.decoders import Decoder

        node = next(n for n in graph.nodes if n.name == graph.output_name)
        block = graph.blocks[node.owner]
        if not isinstance(block, Decoder) or len(node.inputs) != 2 or node.inputs[1] not in graph.input_names:
            raise ConfigError(f"model '{graph.name}' ends in node '{node.name}'; a seq2seq model ends in a decoder "
                              f"(TransformerDecoder, RNNDecoder) whose inputs are the encoder output and the "
                              f"target prefix (an input of type \"target\")", file, node.path)
        return node, block

    # -- inputs and labels ----------------------------------------------------------------------
    def input_vocabulary(self, input_type, owner=None):
        v = self.vocabularies_of(owner)
        return SubwordIds(v.source if input_type == "source" else v.target)

    def encode_input(self, input_type, texts, max_length, owner=None):
        from blocks.data.subword import BOS_ID, EOS_ID

        vocabularies = self.vocabularies_of(owner)
        if input_type == "source":
            from blocks.data.dataset import DEFAULT_MAX_TOKENS

            limit = max_length or DEFAULT_MAX_TOKENS
            pieces = vocabularies.source.encode_batch(texts)
            cut = sum(len(ids) + 1 > limit for ids in pieces)
            return [torch.tensor(ids[:limit - 1] + [EOS_ID], dtype=torch.long) for ids in pieces], cut, limit
        limit = self.max_target_length
        pieces = vocabularies.target.encode_batch(texts)
        cut = sum(len(ids) + 1 > limit for ids in pieces)
        return [torch.tensor([BOS_ID] + ids[:limit - 1], dtype=torch.long) for ids in pieces], cut, limit

    def parse_labels(self, rows, label_field, mapping):
        from blocks.data.dataset import field_value
        from blocks.data.subword import EOS_ID

        texts = [field_value(row, label_field, mapping).strip() for row in rows]
        for row, text in zip(rows, texts):
            if not text:
                raise DataError(f"an empty target sentence (field '{label_field}'); a parallel corpus read with "
                                f"the parallel format skips such pairs", row.file, row.line)
        limit = self.max_target_length
        pieces = self.vocabularies.target.encode_batch(texts)
        labels = [torch.tensor(ids[:limit - 1] + [EOS_ID], dtype=torch.long) for ids in pieces]
        return TargetLabels(labels, texts)

    def unlabelled(self, lengths):
        return TargetLabels([torch.full((length,), UNLABELLED, dtype=torch.long) for length in lengths])

    def concat_labels(self, parts):
        return TargetLabels([t for part in parts for t in part], [text for part in parts for text in part.texts])

    def select_labels(self, labels, index):
        positions = index.tolist()
        return TargetLabels([labels[i] for i in positions], [labels.texts[i] for i in positions])

    def collate_labels(self, labels, index):
        return pad_ids([labels[i] for i in index.tolist()], UNLABELLED)[0]

    # -- predictions and metrics ---------------------------------------------------------------
    def decode_batch(self, output, batch):
        """Teacher-forced argmax ids per real target position (predictions are generated: see
        :meth:`predict_batch`)."""
        ids, lengths = output.values.argmax(dim=-1).cpu(), output.mask.sum(dim=1).tolist()
        return [ids[i, :length].tolist() for i, length in enumerate(lengths)]

    def generation_settings(self, final: bool):
        from blocks.generation import GenerationSettings

        g = self.generation
        strategy = "beam" if final and g["beam"] > 1 else "greedy"
        return GenerationSettings(strategy, beam_size=g["beam"], length_penalty=g["length_penalty"],
                                  max_len_a=g["max_length_a"], max_len_b=g["max_length_b"])

    def predict_batch(self, experiment, model_name, batch, final):
        """Generated target ids (without ``<bos>`` and ``<eos>``) of each example of the batch."""
        return self.generate_batch(experiment, model_name, batch, self.generation_settings(final)).tokens

    def generate_batch(self, experiment, model_name, batch, settings):
        """What the model generates from the batch's sources with ``settings`` (a
        :class:`blocks.generation.GenerationSettings`): ids and scores (:class:`blocks.generation.Generated`)."""
        from blocks.data.subword import BOS_ID, EOS_ID, PAD_ID
        from blocks.generation import generate

        graph = experiment.models[model_name]
        node, decoder = self.decoder_node(graph, experiment.config.file)
        # the target prefix is generated: absent when predicting, replaced by <bos> otherwise
        inputs = {local: batch.inputs[key] for local, key in experiment.model_inputs[model_name].items()
                  if key in batch.inputs}
        reference = next(iter(batch.inputs.values())).values
        bos = torch.full((len(batch), 1), BOS_ID, dtype=torch.long, device=reference.device)
        inputs[node.inputs[1]] = Sequence(bos, torch.ones_like(bos, dtype=torch.bool))
        memory = graph(inputs)[node.inputs[0]]  # the encoder's output (the decoder also ran one step)
        return generate(decoder, memory, settings, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID)

    def join_predictions(self, chunks, order):
        flat = [ids for chunk in chunks for ids in chunk]
        result: list = [None] * len(flat)
        for position, ids in zip(torch.cat(order).tolist(), flat):
            result[position] = ids
        return result

    def translations(self, predictions: list[list[int]], model: str | None = None) -> list[str]:
        """Generated ids as detokenized text, with the target vocabulary ``model`` predicts."""
        return self.vocabularies_of(model).target.decode_batch(predictions)

    @classmethod
    def config_default_metrics(cls, task_config):
        return ["bleu", "chrf", "bleu_lc"]

    def metric_problem(self, name):
        if name not in TEXT_METRICS:
            return f"metric '{name}' does not apply to a seq2seq task (seq2seq metrics: {', '.join(TEXT_METRICS)})"
        return None

    def metrics(self, predictions, split, names, model=None):
        from blocks.generation_metrics import TextPredictions, compute_text_metrics

        scores = compute_text_metrics(names, TextPredictions(self.translations(predictions, model),
                                                             split.labels.texts))
        self.signatures.update({name: score.signature for name, score in scores.items()})
        return {name: score.value for name, score in scores.items()}

    def summary_extras(self):
        """sacreBLEU's signature of each metric computed (to compare like with like) and the final
        evaluation's decoding settings."""
        return {"metric_signatures": dict(self.signatures), "generation": dict(self.generation)}

    def format_prediction(self, prediction, example, output_format, model=None):
        """The translation (detokenized), or a JSON object with the source and the translation."""
        text = self.translations([prediction], model)[0]
        if output_format == "jsonl":
            return json.dumps({"source": example.get(self.source, next(iter(example.values()), "")),
                               "translation": text}, ensure_ascii=False)
        return text
