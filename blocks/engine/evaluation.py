"""Running a model over a split: predictions in the original example order, metrics, speed."""
from __future__ import annotations

import contextlib
import time

import torch

from blocks.data.batching import sorted_batches
from blocks.data.dataset import EncodedSplit


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA; a no-op elsewhere (CPU runs fp32)."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(experiment, model_name: str, split: EncodedSplit, batch_size: int, device: torch.device,
            precision: str = "fp32", progress: bool = False, final: bool = True):
    """The predictions of every example of ``split``, in the split's order, as the task decodes
    them: probabilities ``[N, C]`` (classification), scores ``[N]`` (regression), a list of tag-id
    tensors (tagging), generated token ids (seq2seq: the config's search when ``final``, greedy
    for a dev evaluation during training)."""
    from tqdm import tqdm

    task = experiment.task
    model = experiment.models[model_name].to(device)  # a model read from a run directory is on the CPU
    was_training = model.training
    model.eval()
    output_name = model.output_name
    chunks, order = [], []
    batches = sorted_batches(split.lengths, batch_size)
    bar = tqdm(total=len(split), desc=f"{model_name} on {split.name}", unit="ex", leave=False,
               disable=not progress, dynamic_ncols=True)
    try:
        for index in batches:
            batch = split.collate(index).to(device)
            with autocast(device, precision):
                if task.generates:
                    chunks.append(task.predict_batch(experiment, model_name, batch, final))
                else:
                    values = experiment.model_values(model_name, batch)
                    chunks.append(task.decode_batch(values[output_name], batch))
            order.append(index)
            bar.update(len(index))
    finally:
        bar.close()
        model.train(was_training)
    return task.join_predictions(chunks, order)


def evaluate(experiment, model_name: str, split: EncodedSplit, batch_size: int, device: torch.device,
             precision: str = "fp32", metrics: list[str] | None = None, progress: bool = False,
             final: bool = True) -> dict[str, float]:
    predictions = predict(experiment, model_name, split, batch_size, device, precision, progress, final)
    return experiment.task.metrics(predictions, split, metrics or experiment.config["task"]["metrics"], model_name)


@torch.no_grad()
def throughput(experiment, model_name: str, split: EncodedSplit, batch_size: int, device: torch.device,
               max_examples: int = 2048, repeats: int = 3) -> float:
    """Inference examples per second over (up to ``max_examples`` of) a split, best of ``repeats``.

    Batches are collated beforehand so that only the model's forward pass is timed — and, for a
    word-level task, its decoding (Viterbi for a CRF), which is part of a tagger's inference.
    """
    decode = experiment.task.per_token
    model = experiment.models[model_name].to(device)
    was_training = model.training
    model.eval()
    count = min(len(split), max_examples)
    lengths = split.lengths[:count]
    batches = [split.collate(index).to(device) for index in sorted_batches(lengths, batch_size)]
    experiment.model_values(model_name, batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for batch in batches:
            if experiment.task.generates:  # a generating task's inference is its decoding
                experiment.task.predict_batch(experiment, model_name, batch, True)
                continue
            values = experiment.model_values(model_name, batch)
            if decode:
                experiment.task.decode_batch(values[model.output_name], batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    model.train(was_training)
    return count / best
