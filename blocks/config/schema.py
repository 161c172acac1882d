"""The JSON Schema of a DistilBlocks config file.

The top-level structure is validated here. Each graph node and loss is then validated against
the schema its registry generates from the block's constructor (see :mod:`blocks.registry`), so
an editor gets the whole picture from :func:`full_schema` (written by ``blocks schema``).
"""
from __future__ import annotations

_PATH_OR_SPLIT = {
    "anyOf": [
        {"type": "string", "description": "path relative to data.root"},
        {"type": "object", "required": ["path"], "additionalProperties": False,
         "properties": {"path": {"type": "string"},
                        "reader": {"$ref": "#/$defs/reader"},
                        "fields": {"$ref": "#/$defs/fields"},
                        "max_examples": {"type": "integer", "minimum": 1,
                                         "description": "keep at most this many rows of the file: a random "
                                                        "sample drawn with a fixed seed (the same rows in every "
                                                        "run), in file order"}}},
        {"type": "null"},
    ]
}

_DEV_FROM_TRAIN = {
    "type": "object", "required": ["from_train"], "additionalProperties": False,
    "description": "a dev split carved from the train file (those rows leave train), stratified by the label",
    "properties": {
        "from_train": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                       "description": "the share of the train file's rows that become dev, e.g. 0.1"},
        "seed": {"type": "integer", "default": 0,
                 "description": "seed of the choice (independent of the config's seed, so the runs of an "
                                "experiment share their dev split)"},
    },
}

READER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "description": "How to read the data files (each split may override any key).",
    "properties": {
        "format": {"enum": ["auto", "tsv", "csv", "jsonl", "json", "columns", "parallel"], "default": "auto",
                   "description": "file format; auto = from the extension; columns = CoNLL-style "
                                  "(one token per line, a blank line between sentences); parallel = two "
                                  "line-aligned files <path>.<language>, one field per language"},
        "languages": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2, "maxItems": 2,
                      "description": "parallel format: the two file suffixes (and field names), e.g. [\"en\", \"de\"]"},
        "empty": {"enum": ["skip", "error"], "default": "skip",
                  "description": "parallel format: a sentence pair with an empty side is skipped (counted in the "
                                 "log) or an error"},
        "header": {"type": "boolean", "default": True, "description": "first line names the columns"},
        "columns": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                    "default": None, "description": "column names (for files without a header, or to rename)"},
        "quoting": {"enum": ["none", "csv"], "default": "none",
                    "description": "none: quote characters are text; csv: fields may be CSV-quoted"},
        "encoding": {"type": "string", "default": "utf-8-sig",
                     "description": "text encoding; utf-8-sig also strips a byte-order mark"},
        "delimiter": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 1}, {"type": "null"}],
                      "default": None, "description": "field separator; default from the format"},
        "skip_blank": {"type": "boolean", "default": True},
        "comment": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                    "description": "skip lines starting with this prefix"},
        "maxsplit": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                     "description": "tsv/csv without CSV quoting: split each line on its first N delimiters only, "
                                    "the last field keeps the rest (delimiter \" \" and maxsplit 1 read "
                                    "label<space>text lines)"},
        "extra_columns": {"enum": ["error", "ignore"], "default": "error",
                          "description": "tsv/csv: a row with more fields than the header or columns is an error, "
                                         "or its extra trailing fields are dropped (ignore; counted in the log)"},
        "document_separator": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": "-DOCSTART-",
                               "description": "columns format: skip lines starting with this text "
                                              "(and the blank line after them)"},
    },
}

FIELDS_SCHEMA = {
    "type": "object",
    "description": "logical field name -> column name (or 0-based column index)",
    "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "null"}]},
}
# null: the field is absent from these files (a pair input's second text, in a task of single sentences)

DATA_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["train"],
    "properties": {
        "root": {"type": "string", "default": ".",
                 "description": "folder the split paths are relative to; overridden by the "
                                "DISTILBLOCKS_DATA environment variable and by --set data.root=..."},
        "train": _PATH_OR_SPLIT,
        "dev": {"anyOf": _PATH_OR_SPLIT["anyOf"] + [_DEV_FROM_TRAIN]},
        "test": _PATH_OR_SPLIT,
        "reader": {"$ref": "#/$defs/reader"},
        "fields": {"$ref": "#/$defs/fields"},
        "label": {"type": "string", "default": "label", "description": "field holding the gold label"},
        "group": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                  "description": "field grouping examples for ranking metrics (e.g. a question id)"},
    },
}

TASK_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["classification", "regression", "tagging", "seq2seq"], "default": "classification",
                 "description": "classification: a class per example; regression: a score per example; "
                                "tagging: a tag per word; seq2seq: a target sentence per source sentence "
                                "(see docs/tasks.md)"},
        "labels": {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "null"}],
                   "default": None, "description": "label set in order; default: discovered from train"},
        "positive_label": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                           "description": "label treated as positive by binary metrics; default: the second label"},
        "metrics": {"type": "array", "items": {"type": "string"}, "minItems": 1, "default": ["accuracy"],
                    "description": "default: accuracy (classification); pearson, spearman, mse (regression); "
                                   "entity_f1, entity_precision, entity_recall, token_accuracy (tagging)"},
        "label_range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
                        "description": "regression: [low, high]; predictions are clamped into it"},
        "scheme": {"enum": ["IOB1", "IOB2", "BIOES", "none"],
                   "description": "tagging: how the file's tags mark entities, default IOB2 (none: tags without "
                                  "entities, e.g. part-of-speech)"},
        "model_scheme": {"anyOf": [{"enum": ["IOB1", "IOB2", "BIOES", "none"]}, {"type": "null"}],
                         "description": "tagging: the scheme the model predicts in (tags are converted on read); "
                                        "default: the file's"},
        "source": {"type": "string",
                   "description": "seq2seq: the source-sentence field (data.label is the target field)"},
        "subword": {"type": "object", "additionalProperties": False,
                    "description": "seq2seq: the subword vocabularies trained on the train split",
                    "properties": {"model": {"enum": ["bpe", "unigram"]},
                                   "vocab_size": {"type": "integer", "minimum": 8, "maximum": 1000000},
                                   "shared": {"type": "boolean"},
                                   "min_frequency": {"type": "integer", "minimum": 1}}},
        "generation": {"type": "object", "additionalProperties": False,
                       "description": "seq2seq: decoding for test, predict and the final evaluation (dev "
                                      "evaluations during training decode greedily)",
                       "properties": {"beam": {"type": "integer", "minimum": 1, "maximum": 1000},
                                      "max_length_a": {"type": "number", "minimum": 0},
                                      "max_length_b": {"type": "number", "minimum": 0},
                                      "length_penalty": {"type": "number"}}},
        "max_target_length": {"type": "integer", "minimum": 2,
                              "description": "seq2seq: subword tokens kept of a target (with <eos>), default 256; "
                                             "longer targets are cut and counted in the log"},
        "repair": {"type": "boolean",
                   "description": "tagging (default false): repair tags that break the scheme (I-X after O starts an entity) "
                                  "instead of reporting them"},
    },
}

INPUT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["field"],
    "properties": {
        "field": {"type": "string", "description": "logical data field to read"},
        "type": {"enum": ["tokens", "chars", "pretrained", "source", "target"], "default": "tokens",
                 "description": "tokens: [batch, length] ids; chars: [batch, length, characters] ids; "
                                "pretrained: the word-piece ids of a pretrained model's own tokenizer; "
                                "source / target (seq2seq): the task's subword ids of the source sentence "
                                "(with <eos>), of the target prefix (<bos> + target: the decoder's input)"},
        "tokenizer": {"anyOf": [{"type": "string"},
                                {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}],
                      "default": "treebank",
                      "description": "tokenizer name, or {type, ...parameters}; for pretrained inputs the model "
                                     "folder (relative to the config), pkg://package/folder, or a Hub id"},
        "pair_field": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                       "description": "pretrained inputs: a second field, encoded with the first as a sentence pair"},
        "lowercase": {"type": "boolean", "default": False},
        "max_length": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                       "description": "keep this many tokens of each example (null: 512; a pretrained input: "
                                      "128 word pieces); how many examples were cut is logged"},
        "vocab": {"type": "string", "default": "words",
                  "description": "named vocabulary (inputs naming the same one share it)"},
        "max_word_length": {"type": "integer", "minimum": 1, "default": 20,
                            "description": "chars inputs: characters kept per word"},
    },
    "if": {"properties": {"type": {"const": "pretrained"}}, "required": ["type"]},
    "then": {"required": ["tokenizer"], "properties": {"tokenizer": {"type": "string"}}},
    "else": {"properties": {"pair_field": {"type": "null"}}},
}

# Integer block parameters are widths, counts and indexes: a bound keeps a typo (an extra zero or
# five) from allocating terabytes, and a negative one from reaching torch.
MAX_BLOCK_INTEGER = 1 << 20
_BOUNDED_INTEGER = {"if": {"type": "integer"}, "then": {"minimum": 0, "maximum": MAX_BLOCK_INTEGER}}
BLOCK_PARAMETER_SCHEMA = {**_BOUNDED_INTEGER, "else": {"if": {"type": "array"}, "then": {"items": _BOUNDED_INTEGER}}}

NODE_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": BLOCK_PARAMETER_SCHEMA,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]*$"},
        "block": {"type": "string", "description": "registered block name (see `blocks list`)"},
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                  "description": "input name(s) or earlier node name(s); default: the previous node"},
        "share": {"type": "string", "description": "reuse the block instance (and weights) of this node"},
        "init_from": {"type": "string", "pattern": "^[^/]+(/[^/]+)?$",
                      "description": "start from the weights of a node of another model, \"<model>\" (its node "
                                     "of the same name) or \"<model>/<node>\", once that model is trained"},
    },
    "oneOf": [{"required": ["block"], "not": {"required": ["share"]}},
              {"required": ["share"], "not": {"required": ["block"]}}],
}

MODEL_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["inputs", "graph"]}, {"required": ["run"]}],
    "dependentRequired": {"model": ["run"], "node_options": ["run"], "recipe": ["run"]},
    "properties": {
        "description": {"type": "string"},
        "run": {"type": "string",
                "description": "a finished run directory (relative to the config) that trained this model: its "
                               "inputs, graph, vocabularies and weights are taken from there"},
        "model": {"type": "string", "description": "with run: which model of that run; default: the one it delivers"},
        "recipe": {"type": "string",
                   "description": "with run: the config that makes that run (relative to the file that states it); "
                                  "blocks validate checks the model with that recipe's graph while the run does "
                                  "not exist yet"},
        "node_options": {"type": "object", "additionalProperties": {"type": "object"},
                         "description": "with run: block parameters to change on nodes of that model, by node name, "
                                        "e.g. {\"encoder\": {\"hidden_states\": true}} for named outputs the run "
                                        "did not compute; its weights must still fit"},
        "inputs": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/input"}},
        "graph": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/node"}},
        "output": {"type": "string", "description": "node whose value is the model's prediction (logits); "
                                                    "default: the last node"},
    },
}

LOSS_SCHEMA = {
    "type": "object",
    "required": ["block"],
    "properties": {
        "block": {"type": "string", "description": "registered loss name (see `blocks list --kind loss`)"},
        "weight": {"anyOf": [{"type": "number"}, {"type": "object", "required": ["type"]}], "default": 1.0,
                   "description": "a number, or a schedule over optimizer steps, e.g. "
                                  "{\"type\": \"linear\", \"start\": 0, \"end\": 1, \"steps\": 1000}"},
    },
}

AUGMENT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "description": "augmented copies of the train examples (Tang et al. 2019), labelled by the teachers; generated "
                   "once when the stage starts, deterministically from the seed",
    "properties": {
        "copies": {"type": "integer", "minimum": 0, "default": 20,
                   "description": "perturbed copies of each train example"},
        "mask": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                 "description": "per word: probability of the mask token ([MASK] for a pretrained model, an "
                                "unknown word for word-level models)"},
        "swap": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                 "description": "per word: probability of a swap for one of its nearest words (cosine in the "
                                "teacher's input-embedding space); mask + swap <= 1"},
        "ngram": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.25,
                  "description": "per field: probability of keeping only a random n-gram of it"},
        "max_ngram": {"type": "integer", "minimum": 1, "default": 5,
                      "description": "n-gram sampling draws n uniformly from 1..max_ngram"},
        "neighbours": {"type": "integer", "minimum": 1, "default": 10,
                       "description": "a swapped word is replaced by one of its this many nearest words"},
        "teacher": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                    "description": "the teacher whose input embeddings define the nearest words; default: the "
                                   "stage's first teacher"},
        "fields": {"anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "null"}],
                   "default": None,
                   "description": "the text fields to perturb (each independently); default: every field the "
                                  "stage's models read"},
        "unique": {"type": "boolean", "default": True,
                   "description": "drop a copy identical to its example or to an earlier copy of it"},
        "seed": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None,
                 "description": "seed of the perturbations; default: the config's seed"},
        "show": {"type": "integer", "minimum": 0, "default": 2,
                 "description": "augmented examples shown in the log when the stage starts"},
    },
}

TRANSFER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "description": "the examples the stage trains on, when they are not just the train split: the train split, "
                   "unlabelled files and augmented copies, labelled by the stage's teachers",
    "properties": {
        "train": {"type": "boolean", "default": True,
                  "description": "include the train split (the only examples with gold labels)"},
        "files": {"type": "array", "default": [],
                  "description": "unlabelled files, each a path relative to data.root or {path, reader, fields} "
                                 "(reader and fields merged over data.reader and data.fields, as for a split)",
                  "items": {"anyOf": [
                      {"type": "string"},
                      {"type": "object", "required": ["path"], "additionalProperties": False,
                       "properties": {"path": {"type": "string"},
                                      "reader": {"$ref": "#/$defs/reader"},
                                      "fields": {"$ref": "#/$defs/fields"},
                                      "tokenizer": {
                                          "anyOf": [{"type": "string"},
                                                    {"type": "object", "required": ["type"],
                                                     "properties": {"type": {"type": "string"}}}],
                                          "description": "split each field the models read into words with "
                                                         "this tokenizer (name or {type, ...parameters}), "
                                                         "joined by single spaces: raw sentences as the "
                                                         "words of a tagging task"}}}]}},
        "augment": {"$ref": "#/$defs/augment"},
        "seed": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None,
                 "description": "seed of the max_examples sample (and of augment, unless it has its own); default: "
                                "the config's seed. Fix it to keep the transfer set, and so its teacher cache, the "
                                "same across the seeds of an experiment"},
        "max_examples": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                         "description": "keep at most this many examples: the train split's first, then a seeded "
                                        "random sample of the others"},
        "generate": {
            "type": "object", "additionalProperties": False,
            "description": "seq2seq, sequence-level KD: train on a teacher's translations of the train split's "
                           "sources instead of the gold targets (decoded once, kept as text in the teacher "
                           "cache's folder and reused while sources, teacher, vocabularies and settings stay "
                           "the same); decoding options default to task.generation",
            "properties": {
                "teacher": {"type": "string",
                            "description": "the model that decodes (trained by an earlier stage or taken from a "
                                           "run); default: the stage's only teacher"},
                "beam": {"type": "integer", "minimum": 1, "maximum": 1000,
                         "description": "beam size; 1 = greedy search"},
                "length_penalty": {"type": "number", "description": "beam search: alpha of the length penalty"},
                "max_length_a": {"type": "number", "minimum": 0,
                                 "description": "outputs have at most a + b x source length tokens"},
                "max_length_b": {"type": "number", "minimum": 0},
                "batch_size": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                               "description": "sentences per decoding batch; default: the stage's eval_batch_size"},
                "include_gold": {"type": "boolean", "default": False,
                                 "description": "train on the gold pairs too (twice as many examples)"},
            },
        },
    },
}

STAGE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "train"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "train": {"type": "string", "description": "the model this stage trains"},
        "teachers": {"type": "array", "items": {"type": "string"}, "default": [],
                     "description": "models that teach, frozen, in inference mode"},
        "losses": {"type": "array", "items": {"$ref": "#/$defs/loss"}, "minItems": 1,
                   "default": [{"block": "CrossEntropy"}], "description": "summed with their weights"},
        "epochs": {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000, "default": 3,
                   "description": "passes over the training set; a fraction (0.5, 1.5) stops partway "
                                  "through the last pass"},
        "max_steps": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1 << 40}, {"type": "null"}],
                      "default": None},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BLOCK_INTEGER, "default": 32},
        "eval_batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_BLOCK_INTEGER, "default": 256},
        # Their options are the parameters of registered entries (blocks.optimizers,
        # blocks.lr_schedules), which the loader checks and full_schema() spells out. No default
        # here: the loader picks adam (lr 1e-3, constant) or, for a model with a PretrainedEncoder,
        # fine-tuning defaults (adamw, lr 2e-5, linear warm-up 10%).
        "optimizer": {"type": "object", "x-fill-defaults": False,
                      "description": "the optimizer: a registered type (adam, adamw, sgd) and its options"},
        "schedule": {"type": "object", "x-fill-defaults": False,
                     "description": "how the learning rate changes per optimizer step: a registered type"
                                    " (constant, linear) and its options"},
        "block_lr": {"type": "object", "x-fill-defaults": False,
                     "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                     "description": "learning rates of some graph nodes of the trained model, {node name: lr}, "
                                    "e.g. a pretrained encoder fine-tuned slowly under a head trained from "
                                    "scratch; the other parameters use the optimizer's lr and the schedule "
                                    "scales every rate alike"},
        "grad_clip": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}], "default": None,
                      "description": "clip the gradient norm to this value"},
        "accumulate": {"type": "integer", "minimum": 1, "default": 1,
                       "description": "gradient accumulation: batches per optimizer step"},
        "eval_every": {"type": "integer", "minimum": 0, "default": 0,
                       "description": "evaluate every N optimizer steps; 0 = at the end of every epoch"},
        "select": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                   "description": "dev metric choosing the best checkpoint; default: the first task metric"},
        "early_stopping": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                           "description": "stop after this many evaluations without improvement"},
        "log_every": {"type": "integer", "minimum": 1, "default": 50,
                      "description": "steps between loss reports (and NaN checks)"},
        "cache_teachers": {"enum": ["auto", True, False], "default": "auto",
                           "description": "compute the teachers' outputs the losses read once and keep them on "
                                          "disk (RUN/cache) instead of running the teachers every step. auto: "
                                          "cache unless the stage sees fewer examples than one epoch; true: "
                                          "always; false: never (e.g. data augmentation that changes every epoch)"},
        "cache_dtype": {"enum": ["float16", "float32"], "default": "float16",
                        "description": "storage type of cached teacher hidden states (the teachers' output "
                                       "nodes, the logits, are always stored as float32)"},
        "cache_top_k": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 8,
                        "description": "seq2seq: a generating teacher's decoder logits are cached as the k most "
                                       "likely tokens per target position (ids and log-probabilities; a loss "
                                       "renormalises over them); 0, the full distribution, is refused"},
        "find_unused_parameters": {"type": "boolean", "default": False,
                                   "description": "multi-process training (torchrun): let DistributedDataParallel "
                                                  "allow parameters that get no gradient in a step"},
        "transfer": {"$ref": "#/$defs/transfer"},
    },
}

CONFIG_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "DistilBlocks config",
    "type": "object",
    "additionalProperties": False,
    "required": ["data", "models", "stages"],
    "properties": {
        "$schema": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "imports": {"type": "array", "items": {"type": "string"}, "default": [],
                    "description": "modules (dotted names or .py paths relative to the config) defining custom blocks"},
        "seed": {"type": "integer", "default": 13},
        "device": {"type": "string", "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$", "default": "auto"},
        "precision": {"enum": ["fp32", "bf16", "fp16"], "default": "fp32",
                      "description": "autocast precision on CUDA (CPU always runs fp32)"},
        "threads": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                    "description": "CPU threads PyTorch computes with (train, test, predict, bench; --threads "
                                   "overrides it); default: OMP_NUM_THREADS if set, else half the usable cores, "
                                   "at least 1, which keeps a busy machine from slowing every step"},
        "run_dir": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                    "description": "default: runs/<config file name>"},
        "cache_dir": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                      "description": "a teacher-output cache folder shared by several runs (relative to the "
                                     "config), e.g. the seeds of one experiment; default: RUN/cache"},
        "keep_checkpoints": {"type": "boolean", "default": False,
                             "description": "keep each completed stage's resumable state (stages/<stage>/"
                                            "last.safetensors and best.safetensors); by default they are "
                                            "deleted once the stage's best weights are in models/"},
        "task": {"$ref": "#/$defs/task"},
        "data": {"$ref": "#/$defs/data"},
        "vocabularies": {"type": "object", "default": {},
                         "additionalProperties": {"$ref": "#/$defs/vocabulary"}},
        "models": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/model"}},
        "stages": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/stage"}},
        "stage_defaults": {"type": "object",
                           "description": "stage settings every stage gets unless it states its own (merged under "
                                          "each stage when the config is loaded)"},
    },
    "$defs": {
        "task": TASK_SCHEMA,
        "data": DATA_SCHEMA,
        "reader": READER_SCHEMA,
        "fields": FIELDS_SCHEMA,
        "vocabulary": {
            "type": "object", "additionalProperties": False,
            "properties": {"file": {"type": "string",
                                    "description": "read the vocabulary from this file (one token per line, as "
                                                   "RUN/vocab/ holds them) instead of building it from train"},
                           "min_freq": {"type": "integer", "minimum": 1, "default": 1},
                           "max_size": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}],
                                        "default": None}},
        },
        "input": INPUT_SCHEMA,
        "node": NODE_SCHEMA,
        "model": MODEL_SCHEMA,
        "loss": LOSS_SCHEMA,
        "stage": STAGE_SCHEMA,
        "transfer": TRANSFER_SCHEMA,
        "augment": AUGMENT_SCHEMA,
    },
}


def full_schema() -> dict:
    """The config schema with every registered block, loss, optimizer and schedule spelled out (for editors)."""
    import copy

    from blocks.lr_schedules import DEFAULT_SCHEDULE
    from blocks.optimizers import DEFAULT_OPTIMIZER
    from blocks.registry import BLOCKS, LOSSES, OPTIMIZERS, SCHEDULES

    schema = copy.deepcopy(CONFIG_SCHEMA)
    schema["$defs"]["node"]["anyOf"] = (
        [BLOCKS.schema(name) for name in BLOCKS.names()]
        + [{"type": "object", "required": ["name", "share"],
            "properties": {"name": {}, "input": {}, "share": {"type": "string"}}, "additionalProperties": False}]
    )
    schema["$defs"]["loss"]["anyOf"] = [LOSSES.schema(name) for name in LOSSES.names()]
    stage = schema["$defs"]["stage"]["properties"]
    stage["optimizer"]["anyOf"] = _typed_options(OPTIMIZERS, DEFAULT_OPTIMIZER)
    stage["schedule"]["anyOf"] = _typed_options(SCHEDULES, DEFAULT_SCHEDULE)
    return schema


def _typed_options(registry, default: str) -> list[dict]:
    """One schema per registered entry of a node chosen by its ``type``; only ``default`` may omit it."""
    options = []
    for name in registry.names():
        option = registry.schema(name, key="type")
        if name != default:
            option["required"] = ["type", *option.get("required", [])]
        options.append(option)
    return options
