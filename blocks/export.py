"""Export a trained model of a run for deployment: ONNX or TorchScript, checked against PyTorch.

``blocks export RUN_DIR --format onnx|torchscript`` writes ``RUN_DIR/export/<model>.onnx`` (or
``.pt``) and a sidecar ``<model>.onnx.json`` (``.pt.json``) that tells a deployer how to feed it.

The exported graph takes plain tensors, two per model input, in the order of the model's
``inputs`` in the config (``Graph.input_names``):

* ``<input>_ids``: int64 ids, ``[batch, length]`` for a tokens input, ``[batch, length, chars]``
  for a chars input; they index the vocabulary file copied next to the export and named in the
  sidecar (one token per line; 0 = padding, 1 = unknown), or a pretrained input's own tokenizer;
* ``<input>_mask``: bool ``[batch, length]``, True on real positions.

It returns the output node's values ``[batch, outputs]``: unnormalised scores (softmax gives the
label probabilities, labels in the sidecar's order), or ``[batch, 1]`` for regression. Batch,
length and chars are dynamic axes.

How (torch 2.13, CPU):

* TorchScript: ``torch.jit.trace`` of the wrapper. A BiLSTM/BiGRU on its default padded path
  is traced as one LSTM/GRU per direction over the padded batch and the per-row reversal index
  computed from the mask; on its packed path (``"packed": true``) as ``pack_padded_sequence``,
  the LSTM on the packed data and ``pad_packed_sequence``. Either way the lengths, the padded
  length and the initial-state batch size are computed from the inputs at run time, so a model
  traced on one batch shape gives the same numbers on any other. This is not taken on trust:
  see the check below.
* ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17),
  which maps each LSTM to the ONNX ``LSTM`` operator (with ``sequence_lens`` on the packed path)
  and needs only the ``onnx`` package. The newer ``torch.export``-based exporter (the default
  since torch 2.9, which also needs ``onnxscript``) cannot export ``pack_padded_sequence`` (the
  packed batch sizes are data-dependent), so it is used only as a fallback when the
  TorchScript-based exporter fails (or is gone from a later torch) and ``onnxscript`` is installed.

After writing, the exported file is loaded back (``torch.jit.load`` / ``onnxruntime``) and run
next to the PyTorch model on up to 64 real examples of the run's dev split (else test, else
train), in batch shapes different from the trace example (one sorted batch, batches of 7 in file
order, single examples, and a batch with extra all-padding positions). The largest absolute
difference of the outputs is printed; above :data:`TOLERANCE` the export fails.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from blocks.errors import DistilBlocksError
from blocks.values import CHARS, Sequence, TagScores

TOLERANCE = 1e-4  # largest allowed absolute difference of the outputs, exported vs PyTorch
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 17
VERIFY_EXAMPLES = 64
INSTALL_HINT = "pip install distilblocks[export]"


class ExportWrapper(nn.Module):
    """A model graph behind plain tensors: ``(ids, mask)`` per model input -> output values.

    ``forward(*tensors)`` takes, for each of ``graph.input_names`` in order, its ids
    (``[B, L]`` or ``[B, L, C]``, int64) and its mask (``[B, L]``, bool).
    """

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.model = graph  # not "graph": that name is taken on torch.fx modules (torch.export path)
        self.input_names = list(graph.input_names)
        self.output_name = graph.output_name
        self.viterbi = None
        if graph.output_spec.kind == "tag_scores":
            from blocks.layers.crf import viterbi_decode

            # scripted, so that its loops follow the run-time length inside a traced graph
            self.viterbi = torch.jit.script(viterbi_decode)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs = {name: Sequence(tensors[2 * i], tensors[2 * i + 1]) for i, name in enumerate(self.input_names)}
        output = self.model(inputs)[self.output_name]
        if isinstance(output, TagScores):  # a CRF tagger: its best tag path, [batch, length] tag ids
            return self.viterbi(output.emissions, output.mask, output.transitions, output.start, output.end)[0]
        return output.values if isinstance(output, Sequence) else output


def tensor_names(input_names: list[str]) -> list[str]:
    """Names of the exported graph's inputs, in order."""
    return [f"{name}_{part}" for name in input_names for part in ("ids", "mask")]


def default_output(run_dir: Path, model: str, fmt: str) -> Path:
    return Path(run_dir) / "export" / f"{model}{FORMATS[fmt]}"


def _first_line(error: BaseException) -> str:
    """The first line of the innermost cause of an exporter's error (its own messages are long)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _require_onnx() -> None:
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise DistilBlocksError(f"ONNX export needs the '{module}' package, which is not installed; "
                                    f"install the export extras: {INSTALL_HINT}") from None


# -- inputs -----------------------------------------------------------------------------------
def _model_tensors(experiment, model: str, batch) -> tuple[torch.Tensor, ...]:
    """A collated batch as the wrapper's positional tensors."""
    graph = experiment.models[model]
    tensors = []
    for name in graph.input_names:
        value = batch.inputs[experiment.model_inputs[model][name]]
        tensors += [value.values, value.mask]
    return tuple(tensors)


def _pad_ids(experiment, model: str) -> list[int]:
    """The padding id of each model input, in order."""
    return [getattr(experiment.vocabularies[experiment.fields[experiment.model_inputs[model][name]].vocab],
                    "pad_index", 0) for name in experiment.models[model].input_names]


def _extra_padding(tensors: tuple[torch.Tensor, ...], extra: int, pads: list[int]) -> tuple[torch.Tensor, ...]:
    """The same batch with ``extra`` more all-padding positions (padding id, mask False) at the end."""
    padded = []
    for i in range(0, len(tensors), 2):
        ids, mask = tensors[i], tensors[i + 1]
        ids = torch.cat([ids, ids.new_full((ids.shape[0], extra, *ids.shape[2:]), pads[i // 2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
        padded += [ids, mask]
    return tuple(padded)


def _verification_split(experiment, log):
    """Up to VERIFY_EXAMPLES examples of the run's dev (else test, else train) split, or None."""
    from blocks.data.dataset import encode_rows, read_split, split_sources

    try:
        sources = split_sources(experiment.config["data"])
        name = next(s for s in ("dev", "test", "train") if s in sources)
        source = sources[name]
        rows = read_split(source)[:VERIFY_EXAMPLES]
        if not rows:
            raise DistilBlocksError(f"the {name} file holds no examples")
        split = encode_rows(name, rows, experiment.fields, experiment.vocabularies, experiment.task,
                            None, None, source.fields, source.path)
        return split, f"{len(split)} examples of the {name} split ({source.path})"
    except (DistilBlocksError, OSError, StopIteration) as error:
        log(f"note: the run's data cannot be read ({error}); checking on random ids instead")
        return None, None


def _random_batches(experiment, model: str, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Random id batches (with padding) for when the run's data is not at hand."""
    generator = torch.Generator().manual_seed(seed)
    graph = experiment.models[model]
    batches = []
    for size, length in ((2, 3), (13, 9), (1, 5), (6, 17)):
        lengths = torch.randint(1, length + 1, (size,), generator=generator)
        lengths[0] = length
        mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
        tensors = []
        for name in graph.input_names:
            input_field = experiment.fields[experiment.model_inputs[model][name]]
            vocab = len(experiment.vocabularies[input_field.vocab])
            shape = (size, length, 4) if input_field.type == CHARS else (size, length)
            ids = torch.randint(min(2, vocab - 1), vocab, shape, generator=generator)
            pad = getattr(experiment.vocabularies[input_field.vocab], "pad_index", 0)
            ids = ids.masked_fill(~(mask.unsqueeze(-1) if ids.dim() == 3 else mask), pad)
            tensors += [ids, mask]
        batches.append(tuple(tensors))
    return batches


def example_batches(experiment, model: str, log=print) -> tuple[tuple, list[tuple], str]:
    """The trace example and the verification batches (of other shapes), and where they came from."""
    split, source = _verification_split(experiment, log)
    if split is None:
        batches = _random_batches(experiment, model)
        return batches[0], batches[1:], "random ids"
    from blocks.data.batching import sorted_batches

    count = len(split)
    collate = lambda index: _model_tensors(experiment, model, split.collate(index))  # noqa: E731
    example = collate(torch.arange(min(2, count)))
    everything = collate(sorted_batches(split.lengths, count)[0])
    batches = [everything]
    batches += [collate(index) for index in torch.split(torch.arange(count), 7)]
    batches += [collate(torch.tensor([i])) for i in range(min(3, count))]
    batches.append(_extra_padding(everything, 3, _pad_ids(experiment, model)))
    return example, batches, source


# -- export -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _native_output_silenced():
    """Drop what C++ code writes to stdout and stderr: the TorchScript-based ONNX exporter's
    shape-inference warnings about PackPadded (harmless here: the result is checked) and, when it
    fails, its dump of the whole graph (the Python exception says what went wrong)."""
    saved = {}
    try:
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            stream.flush()
            saved[fd] = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no real file descriptors (e.g. an embedding host)
        for copy in saved.values():
            os.close(copy)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _export_torchscript(wrapper: ExportWrapper, example: tuple, path: Path) -> str:
    with warnings.catch_warnings():
        # trace is deprecated in torch >= 2.9 but still the way to TorchScript; the tracer's
        # "might not generalize" warnings are answered by the check after export
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))
    return "torch.jit.trace"


def _export_onnx(wrapper: ExportWrapper, example: tuple, path: Path, exporter: str, log) -> str:
    names = tensor_names(wrapper.input_names)
    output = wrapper.output_name
    dynamic_axes = {}
    for name, tensor in zip(names, example):
        axes = {0: "batch", 1: "length"}
        if tensor.dim() == 3:
            axes[2] = f"{name}_chars"
        dynamic_axes[name] = axes
    dynamic_axes[output] = {0: "batch"}
    errors = []
    if exporter in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings(), _native_output_silenced():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, example, str(path), input_names=names, output_names=[output],
                                  dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
            return f"torch.onnx.export (TorchScript-based, opset {OPSET})"
        except Exception as error:  # fall back to the torch.export-based exporter
            if exporter == "torchscript":
                raise DistilBlocksError(f"ONNX export failed: {_first_line(error)}") from error
            errors.append(f"TorchScript-based exporter: {_first_line(error)}")
            log(f"note: the TorchScript-based ONNX exporter failed ({errors[-1]}); trying torch.export")
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise DistilBlocksError("ONNX export failed and the torch.export-based exporter needs 'onnxscript' "
                                f"(pip install onnxscript): {'; '.join(errors)}") from None
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    shapes = tuple({0: batch, 1: length, **({2: torch.export.Dim(f"chars{i}")} if t.dim() == 3 else {})}
                   for i, t in enumerate(example))
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    try:
        onnx_logger.setLevel(logging.ERROR)  # no notes about torchvision operators
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, example, str(path), input_names=names, output_names=[output],
                              dynamic_shapes=(shapes,), opset_version=max(OPSET, 18), dynamo=True,
                              external_data=False)
    except Exception as error:
        errors.append(f"torch.export-based exporter: {_first_line(error)}")
        raise DistilBlocksError("ONNX export failed: " + "; ".join(errors)) from error
    finally:
        onnx_logger.setLevel(level)
    return f"torch.onnx.export (torch.export-based, opset {max(OPSET, 18)})"


def _runner(fmt: str, path: Path, input_names: list[str]):
    """A function running the exported file on a tuple of tensors, returning a float tensor."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated in torch >= 2.9, still works
            loaded = torch.jit.load(str(path))
        loaded.eval()

        def run(tensors):
            with torch.no_grad():
                return loaded(*tensors).float()
        return run
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # an input the graph never reads may be pruned

    def run(tensors):
        feed = {name: tensor.numpy() for name, tensor in zip(tensor_names(input_names), tensors) if name in wanted}
        return torch.from_numpy(session.run(None, feed)[0]).float()
    return run


def verify(wrapper: ExportWrapper, fmt: str, path: Path, batches: list[tuple]) -> float:
    """Largest absolute difference of the outputs, exported file vs PyTorch, over ``batches``."""
    run = _runner(fmt, path, wrapper.input_names)
    worst = 0.0
    with torch.no_grad():
        for tensors in batches:
            expected = wrapper(*tensors).float()
            try:
                got = run(tensors)
            except Exception as error:  # e.g. a shape baked into the exported graph
                raise DistilBlocksError(f"{path}: the exported model fails on inputs of shapes "
                                        f"{[tuple(t.shape) for t in tensors]}: {_first_line(error)}") from error
            if got.shape != expected.shape:
                raise DistilBlocksError(f"{path}: the exported model gives outputs of shape {tuple(got.shape)} "
                                        f"for inputs {[tuple(t.shape) for t in tensors]}; PyTorch gives "
                                        f"{tuple(expected.shape)}")
            worst = max(worst, float((got - expected).abs().max()))
    return worst


def sidecar(experiment, model: str, fmt: str, path: Path, vocab_files: dict[str, str], example: tuple,
            how: str, check: dict) -> dict:
    """What a deployer needs to feed the exported file."""
    graph = experiment.models[model]
    definitions = experiment.config["models"][model]["inputs"]
    inputs = []
    for name in graph.input_names:
        input_field = experiment.fields[experiment.model_inputs[model][name]]
        chars = input_field.type == CHARS
        vocab = experiment.vocabularies[input_field.vocab]
        pad = getattr(vocab, "pad_index", 0)
        if chars:
            meaning = f"character ids of each word ({pad} = padding)"
        elif input_field.type == "pretrained":
            meaning = f"word-piece ids of the pretrained tokenizer ({pad} = padding)"
        else:
            meaning = f"token ids ({pad} = padding)"
        inputs.append({
            "name": f"{name}_ids", "input": name, "dtype": "int64",
            "shape": ["batch", "length", "chars"] if chars else ["batch", "length"], "meaning": meaning,
            "definition": definitions[name], "vocab": input_field.vocab,
            "vocab_file": vocab_files.get(input_field.vocab),
            "tokenizer_location": (str(input_field.tokenizer.location)
                                   if getattr(input_field.tokenizer, "location", None) else None),
            "vocab_size": len(vocab), "pad_id": pad, "unk_id": getattr(vocab, "unk_index", None)})
        inputs.append({"name": f"{name}_mask", "input": name, "dtype": "bool", "shape": ["batch", "length"],
                       "meaning": "True on real positions (words), False on padding"})
    task = experiment.task
    if graph.output_spec.kind == "tag_scores":
        output = {"name": graph.output_name, "dtype": "int64", "shape": ["batch", "length"],
                  "meaning": "the CRF's best tag path (Viterbi): one tag id per word in 'labels' order, 0 on padding"}
    elif task.per_token:
        output = {"name": graph.output_name, "dtype": "float32", "shape": ["batch", "length", task.num_outputs],
                  "meaning": "unnormalised scores per word, one per tag in 'labels' order; the arg-max is the tag"}
    else:
        output = {"name": graph.output_name, "dtype": "float32", "shape": ["batch", task.num_outputs],
                  "meaning": ("unnormalised scores, one per label in 'labels' order; softmax gives probabilities"
                              if task.name == "classification" else "the predicted value")}
    return {"format": fmt, "file": path.name, "model": model, "parameters": graph.parameter_count(),
            "task": task.name, "labels": task.labels if task.name in ("classification", "tagging") else None,
            "tag_scheme": getattr(task, "model_scheme", None),
            "inputs": inputs, "outputs": [output],
            "vocab_format": "UTF-8, one token per line; line i (counting from 0) holds the token of id i; a "
                            "backslash, newline, carriage return or tab inside a token is written as "
                            "\\\\, \\n, \\r, \\t",
            "dynamic_axes": ["batch", "length", "chars"],
            "exported_with": how, "torch": torch.__version__,
            "trace_example_shapes": [list(t.shape) for t in example],
            "check": check}


def export_model(run_dir: str | Path, fmt: str, model: str | None = None, output: str | Path | None = None,
                 onnx_exporter: str = "auto", log=print, trust_imports: bool = False) -> dict:
    """Export one model of a run, check it against PyTorch and write the sidecar; its contents.

    The run's ``imports`` (user code) are refused unless ``trust_imports`` (see
    :func:`blocks.engine.run.load_run`).

    Raises:
        DistilBlocksError: unknown or unfinished model, missing ONNX packages, a failed export,
            or outputs differing by more than :data:`TOLERANCE`.
    """
    from blocks.engine.checkpoint import file_in_the_way
    from blocks.engine.run import final_model, load_run, open_run

    if fmt not in FORMATS:
        raise DistilBlocksError(f"unknown export format '{fmt}' (formats: {', '.join(FORMATS)})")
    if fmt == "onnx":
        _require_onnx()
    directory, config = open_run(run_dir)
    state = directory.progress()
    if model is None:
        model = final_model(config)
    if model not in config["models"]:
        raise DistilBlocksError(f"{directory.config}: the run has no model '{model}' "
                                f"(models: {', '.join(config['models'])})")
    if model not in state["models"]:
        finished = ", ".join(state["models"]) or "none"
        raise DistilBlocksError(f"{directory.progress_file}: model '{model}' has not finished training in this run "
                                f"(finished: {finished}); finish it with `blocks train CONFIG --resume`")
    directory, experiment, state = load_run(directory.root, log=lambda *a: None, trust_imports=trust_imports)
    if experiment.task.generates and fmt != "torchscript":
        raise DistilBlocksError(f"{directory.task}: a {experiment.task.name} model generates its output step by "
                                f"step (encoder, then the decoder once per token); it is exported as two TorchScript "
                                f"graphs: use --format torchscript")
    path = Path(output) if output else default_output(directory.root, model, fmt)
    if path.is_dir():
        path = path / f"{model}{FORMATS[fmt]}"
    if file_in_the_way(path):
        raise DistilBlocksError(f"{path}: cannot be written: {file_in_the_way(path)} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    if experiment.task.generates:
        from blocks.export_seq2seq import export_translator

        return export_translator(directory, experiment, model, path, log)
    graph = experiment.models[model].cpu()
    graph.eval()
    wrapper = ExportWrapper(graph).eval()
    example, batches, source = example_batches(experiment, model, log)
    with torch.no_grad():
        if fmt == "torchscript":
            how = _export_torchscript(wrapper, example, path)
        else:
            how = _export_onnx(wrapper, example, path, onnx_exporter, log)
    sidecar_path = path.with_name(path.name + ".json")
    sidecar_path.unlink(missing_ok=True)  # a stale one from an earlier export
    try:
        difference = verify(wrapper, fmt, path, batches)
    except DistilBlocksError:
        path.unlink(missing_ok=True)
        raise
    shapes = sorted({tuple(t.shape) for b in batches for t in b[:1]}, key=lambda s: (-s[0], s))
    check = {"max_abs_diff": difference, "tolerance": TOLERANCE, "examples": source,
             "batch_shapes": [list(s) for s in shapes]}
    log(f"exported {model} ({graph.parameter_count():,} parameters) to {path} with {how}")
    log(f"check against PyTorch on {source}, {len(batches)} batches (ids shapes "
        f"{', '.join('x'.join(map(str, s)) for s in shapes)}; traced on "
        f"{'x'.join(map(str, example[0].shape))}): max abs diff {difference:.3g} (tolerance {TOLERANCE:g})")
    if not difference <= TOLERANCE:  # also catches NaN
        path.unlink()
        raise DistilBlocksError(f"{path}: the exported model's outputs differ from PyTorch's by up to "
                                f"{difference:.3g}, more than the tolerance {TOLERANCE:g}; the export is not "
                                f"faithful and was removed")

    vocab_files = {}  # vocabulary name -> copy next to the export (pretrained inputs bring their own)
    for name in {experiment.fields[experiment.model_inputs[model][i]].vocab for i in graph.input_names}:
        source_file = directory.vocab / f"{name}.txt"
        if source_file.is_file():
            target = path.with_name(f"{path.stem}.vocab.{name}.txt")
            shutil.copyfile(source_file, target)
            vocab_files[name] = target.name
    record = sidecar(experiment, model, fmt, path, vocab_files, example, how, check)
    sidecar_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {sidecar_path} (inputs: {', '.join(i['name'] for i in record['inputs'])}; "
        f"output: {record['outputs'][0]['name']})"
        + (f" and vocabulary file(s) {', '.join(sorted(vocab_files.values()))}" if vocab_files else ""))
    return {**record, "path": str(path), "sidecar": str(sidecar_path)}
