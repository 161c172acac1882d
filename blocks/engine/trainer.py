"""One stage: train one model, with frozen teachers, against a weighted sum of loss blocks.

The loop keeps Python work per step small: batches are collated from pre-indexed tensors, the
loss is read back (``.item()``) only every ``log_every`` steps, and a NaN/inf check accumulates on
the device between those reads. Every evaluation writes a resumable checkpoint (weights,
optimizer, schedule, RNG, position in the epoch), so a killed run continues to the same result.

Teachers either run in the loop (every step, under ``no_grad`` in eval mode) or once per stage
into the teacher cache on disk (:mod:`blocks.engine.teacher_cache`), which each step then slices
by the batch's example indexes: ``"cache_teachers": "auto"`` (the default) caches when the stage
sees at least one epoch (a shorter stage still reads a valid cache already on disk), ``true``
always, ``false`` never.

With several processes (``torchrun``, see :mod:`blocks.engine.distributed`) the trained model is
wrapped in ``DistributedDataParallel``; every rank builds the same global batches of
``batch_size * world_size`` examples and takes its slice of each; rank 0 alone evaluates on dev
(the metrics are broadcast, so every rank takes the same early-stopping decision) and writes
logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from blocks.data.batching import bucket_batches
from blocks.data.dev_split import NO_DEV_HINT
from blocks.transfer_set import build_transfer_set
from blocks.engine.checkpoint import (atomic_write_json, load_checkpoint, optimizer_from_tensors,
                                      optimizer_to_tensors, rng_from_tensors, rng_to_tensors, save_checkpoint)
from blocks.engine.distributed import SINGLE, Distributed, batches_per_epoch, epoch_slices
from blocks.engine.evaluation import autocast, evaluate
from blocks.engine.optim import (build_optimizer, build_schedule, clip_grad_norm, parameter_groups,
                                 sparse_parameters)
from blocks.engine.plots import write_stage_plots
from blocks.engine.run_dir import RunDir
from blocks.engine.teacher_cache import (DEFAULT_TOP_K, CacheRequest, CachedOutputs, open_existing, open_or_build,
                                         requested_nodes)
from blocks.errors import CheckpointError, TrainingError
from blocks.distill.losses import BatchContext, Loss
from blocks.metrics import higher_is_better


@dataclass
class StageState:
    """Where a stage stands; stored in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    step: int = 0  # optimizer steps taken
    best: float | None = None
    best_step: int = 0
    evaluations_without_improvement: int = 0
    finished: bool = False
    history: list = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def epoch_generator(seed: int, stage_index: int, epoch: int) -> torch.Generator:
    """The batch order of an epoch depends on (seed, stage, epoch) only, so a resume can replay it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 10_007 + epoch)


def _quiet(*args, **kwargs) -> None:
    pass


def _overrides(loss: nn.Module, hook: str) -> bool:
    """Whether a loss block does something at ``hook`` (a method of :class:`Loss`, a no-op
    there); a custom ``nn.Module`` loss not derived from it may define the method itself."""
    method = getattr(type(loss), hook, None)
    return method is not None and method is not getattr(Loss, hook)


class StageTrainer:
    #: keep the weights after the last step rather than those of the best dev evaluation
    keep_last = False

    def __init__(self, experiment, stage_index: int, run_dir: RunDir, device: torch.device, log=print,
                 progress: bool = True, dist: Distributed = SINGLE):
        self.experiment = experiment
        self.config = experiment.config.values
        self.stage_index = stage_index
        self.stage = self.config["stages"][stage_index]
        self.run_dir = run_dir
        self.device = device
        self.precision = self.config["precision"]
        self.dist = dist
        self.main = dist.is_main  # rank 0 (or the only process) logs and writes
        self.log = log if self.main else _quiet
        self.show_progress = progress and self.main
        self.model_name = self.stage["train"]
        self.model = experiment.models[self.model_name]
        self.teachers = list(self.stage["teachers"])
        self.losses = experiment.build_losses(stage_index)
        self.loss_modules = nn.ModuleList([loss for _, loss in self.losses])
        # losses that learn from the updated student after each optimizer step (the RL selector)
        self.after_step_losses = [loss for _, loss in self.losses if _overrides(loss, "after_step")]
        # the loss that changes each training batch before the forward pass (student rollouts as
        # decoder prefixes); check_stages refuses a stage with two
        self.batch_preparer = next((loss for _, loss in self.losses if getattr(loss, "prepares_batch", False)), None)
        self.select = self.stage["select"] or self.config["task"]["metrics"][0]
        self.maximize = higher_is_better(self.select)
        # the examples this stage trains on: the train split, or the stage's transfer set
        shared_root = Path(self.config["cache_dir"]) if self.config.get("cache_dir") else None
        train = build_transfer_set(experiment, stage_index, log=self.log, cache_root=shared_root or run_dir.cache,
                                   shared=shared_root is not None, device=device, progress=self.show_progress)
        self.train_split = train
        self.dev_split = experiment.splits.get("dev")
        # losses that learn from each dev evaluation (the RL selector with reward "dev")
        self.after_evaluation_losses = [loss for _, loss in self.losses if _overrides(loss, "after_evaluation")]
        for index, (_, loss) in enumerate(self.losses):
            if getattr(loss, "needs_dev", False) and self.dev_split is None:
                raise TrainingError(f"/stages/{stage_index}/losses/{index}: {type(loss).__name__} with reward "
                                    f"'dev' learns from the dev metric at each evaluation, but the config has no "
                                    f"dev split (data.dev)")
        batches = batches_per_epoch(len(train), self.stage["batch_size"], dist.world_size)
        if batches == 0:
            raise TrainingError(f"stage '{self.stage['name']}': {len(train)} training example(s) cannot be shared "
                                f"by {dist.world_size} processes")
        self.batches_per_epoch = batches
        self.steps_per_epoch = math.ceil(batches / self.stage["accumulate"])
        # a fractional number of epochs (0.5) stops partway through the last one
        total = max(1, math.ceil(self.steps_per_epoch * self.stage["epochs"]))
        self.total_steps = min(total, self.stage["max_steps"] or total)
        self.state = StageState()
        self.ddp = None  # the model wrapped in DistributedDataParallel (several processes only)
        self.teacher_cache = None
        self.cache_seconds = 0.0

    # -- set-up -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.model.to(self.device).train()
        self.loss_modules.to(self.device)
        for teacher in self._teacher_models():
            teacher.to(self.device).eval()
            teacher.requires_grad_(False)
        self._set_trainable()
        # Trainable parameters of loss blocks (projections) train with the student, except those a
        # block trains itself (a teacher-selection policy: ``student_parameters`` leaves them out).
        # They are outside the DDP-wrapped model: their gradients are averaged over the ranks by
        # hand before each optimizer step.
        self.loss_parameters = [p for loss in self.loss_modules
                                for p in (loss.student_parameters() if hasattr(loss, "student_parameters")
                                          else loss.parameters()) if p.requires_grad]
        parameters = [p for p in self.model.parameters() if p.requires_grad] + self.loss_parameters
        where = f"/stages/{self.stage_index}"
        sparse = sparse_parameters(self.model)
        if sparse and self.dist.enabled:
            raise TrainingError(f"{where}: model '{self.model_name}' has an Embedding with 'sparse': true, "
                                "which trains in one process only (its sparse gradients are not averaged "
                                "over processes); set 'sparse': false to train with torchrun")
        if self.dist.enabled and any(p.requires_grad for p in self.model.parameters()):
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(self.stage.get("find_unused_parameters", False)))
        parameters = parameter_groups(self.model, parameters, self.stage.get("block_lr"), f"{where}/block_lr")
        self.optimizer = build_optimizer(parameters, self.stage["optimizer"], where=f"{where}/optimizer",
                                         sparse=sparse)
        self.schedule = build_schedule(self.optimizer, self.stage["schedule"], self.total_steps,
                                       where=f"{where}/schedule")
        use_scaler = self.device.type == "cuda" and self.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _teacher_models(self) -> list[nn.Module]:
        return [self.experiment.models[name] for name in self.teachers]

    def _set_trainable(self) -> None:
        """The trained model's parameters train unless the config froze them."""
        trainable = self.experiment.trainable[self.model_name]
        for parameter_name, parameter in self.model.named_parameters():
            parameter.requires_grad_(trainable[parameter_name])

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"losses/{k}": v for k, v in self.loss_modules.state_dict().items()})
        return tensors

    def save(self) -> None:
        """Write the resumable checkpoint (rank 0; with several processes every rank must call it:
        each one's random state is gathered into the file)."""
        rng_tensors, rng_meta = rng_to_tensors()
        ranks = self.dist.all_gather((rng_tensors, rng_meta)) if self.dist.enabled else []
        if not self.main:
            return
        tensors = self._trainable_state()
        optimizer_tensors, optimizer_meta = optimizer_to_tensors(self.optimizer.state_dict())
        tensors.update({f"optimizer/{k}": v for k, v in optimizer_tensors.items()})
        tensors.update({f"rng/{k}": v for k, v in rng_tensors.items()})
        state = {"stage": self.stage["name"], "model": self.model_name, "position": self.state.to_json(),
                 "optimizer": optimizer_meta, "rng": rng_meta, "schedule": self.schedule.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None,
                 "world_size": self.dist.world_size}
        if ranks:  # the other ranks' random states, under rng/rank<r>.*
            state["rng_ranks"] = {}
            for rank, (other_tensors, other_meta) in enumerate(ranks):
                if rank == 0:
                    continue
                prefix = f"rank{rank}"
                tensors.update({f"rng/{prefix}.{k}": v for k, v in other_tensors.items()})
                state["rng_ranks"][str(rank)] = {**other_meta, "prefix": f"{prefix}.{other_meta['prefix']}"}
        stage_dir = self.run_dir.stage_dir(self.stage["name"])
        stage_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.run_dir.stage_checkpoint(self.stage["name"]), tensors, state)
        atomic_write_json(stage_dir / "state.json", {k: v for k, v in state.items() if k != "rng"})

    def save_best(self) -> None:
        if not self.main:
            return
        path = self.run_dir.stage_dir(self.stage["name"]) / "best.safetensors"
        save_checkpoint(path, {k: v for k, v in self._trainable_state().items()},
                        {"stage": self.stage["name"], "model": self.model_name, "step": self.state.step,
                         "metric": self.select, "value": self.state.best})

    def restore(self) -> bool:
        """Load the stage's last checkpoint if there is one; True when the stage resumes."""
        path = self.run_dir.stage_checkpoint(self.stage["name"])
        if not path.is_file():
            return False
        tensors, state = load_checkpoint(path)
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"was written by a run of {saved_world} process(es); resume it with as many "
                                  f"(this run has {self.dist.world_size}: the batches, and so the steps, depend "
                                  f"on the number of processes)", str(path))
        try:
            self._load_trainable(tensors)
            optimizer = {k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")}
            self.optimizer.load_state_dict(optimizer_from_tensors(optimizer, state["optimizer"]))
            self.schedule.load_state_dict(state["schedule"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            rng_meta = state.get("rng_ranks", {}).get(str(self.dist.rank), state["rng"])
            rng_from_tensors({k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}, rng_meta)
            self.state = StageState(**state["position"])
            if self.main:
                self.run_dir.drop_metrics_after(self.stage["name"], self.state.step)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"does not match this stage's model or optimizer ({error})", str(path)) from None
        return True

    def _load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        losses = {k[len("losses/"):]: v for k, v in tensors.items() if k.startswith("losses/")}
        self.model.load_state_dict(model)
        self.loss_modules.load_state_dict(losses)

    # -- the loop -----------------------------------------------------------------------------
    def run(self, resume: bool) -> dict:
        self._prepare()
        if not (resume and self.restore()):
            torch.manual_seed(self.config["seed"] + self.stage_index)
        if self.state.finished:
            return self._finish(already_done=True)
        stage = self.stage
        name = stage["name"]
        self.log(f"stage '{name}': training '{self.model_name}'"
                 + (f" with teacher(s) {', '.join(self.teachers)}" if self.teachers else "")
                 + f", {self.total_steps:,} steps" + (f", resuming at step {self.state.step:,}" if self.state.step else "")
                 + (f", {self.dist.world_size} processes" if self.dist.enabled else ""))
        if self.dev_split is None:
            self.log(f"stage '{name}': no dev split, so the weights after the last step are kept "
                     f"(for checkpoint selection {NO_DEV_HINT})")
        self._open_teacher_cache()
        for _, loss in self.losses:
            if _overrides(loss, "start"):  # e.g. AnnealingKD spreads its temperatures over the stage
                loss.start(self.total_steps)
        accumulate = stage["accumulate"]
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc=name, unit="step", leave=False,
                   disable=not self.show_progress, dynamic_ncols=True)
        running = torch.zeros((), device=self.device)
        running_count = 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        started = time.perf_counter()
        examples = 0
        stop = False
        while self.state.epoch < math.ceil(stage["epochs"]) and not stop:
            batches = self.epoch_batches(self.state.epoch)
            first = self.state.batch_in_epoch
            for position in range(first, len(batches)):
                batch = self.train_split.collate(batches[position])
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                batch = batch.to(self.device)
                boundary = (position + 1) % accumulate == 0 or position == len(batches) - 1
                # with several processes, gradients are averaged over the ranks at the last
                # micro-batch of an optimizer step only
                sync = self.ddp.no_sync() if self.ddp is not None and not boundary else contextlib.nullcontext()
                with sync:
                    loss = self._loss(batch)
                    (loss / accumulate).backward() if self.scaler is None else self.scaler.scale(loss / accumulate).backward()
                detached = loss.detach()
                nonfinite |= ~torch.isfinite(detached)
                running += detached
                running_count += 1
                examples += len(batch)
                if not boundary:
                    continue
                self._optimizer_step()
                self._after_step(batch)
                self.state.step += 1
                self.state.batch_in_epoch = position + 1
                bar.update(1)
                if self.state.step % stage["log_every"] == 0:
                    value = self._check_finite(running, running_count, nonfinite)
                    bar.set_postfix(loss=f"{value:.4f}", **self._best_postfix())
                    self._append_metrics({"event": "train", "stage": name, "step": self.state.step,
                                          "epoch": self.state.epoch, "loss": value,
                                          "lr": self.schedule.get_last_lr()[0]})
                    running.zero_()
                    running_count = 0
                if stage["eval_every"] and self.state.step % stage["eval_every"] == 0:
                    self._check_finite(running, max(running_count, 1), nonfinite)
                    stop = self._evaluate_and_save(bar)
                if stop or self.state.step >= self.total_steps:
                    stop = True
                    break
            if self.state.batch_in_epoch >= len(batches):
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
            if not stage["eval_every"] and not self._evaluated_now():
                self._check_finite(running, max(running_count, 1), nonfinite)
                stop = self._evaluate_and_save(bar) or stop
        if not self._evaluated_now():
            self._check_finite(running, max(running_count, 1), nonfinite)
            self._evaluate_and_save(bar)
        bar.close()
        elapsed = time.perf_counter() - started
        self.state.finished = True
        self.save()
        if self.main:
            self.run_dir.tensorboard.close(name)
            plots = write_stage_plots(self.run_dir.metrics, name, self.run_dir.root / "plots")
            if plots:
                self.log(f"stage '{name}': plotted {', '.join(p.name for p in plots)} in {plots[0].parent}")
        result = self._finish(already_done=False)
        result["train_seconds"] = round(elapsed, 2)
        examples *= self.dist.world_size
        result["train_examples_per_second"] = round(examples / elapsed, 1) if elapsed > 0 else None
        if self.teacher_cache is not None:
            result["teacher_cache_seconds"] = round(self.cache_seconds, 2)
        if self.dist.enabled:
            result["processes"] = self.dist.world_size
        self.ddp = None
        return result

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """This process's batches of ``epoch``, in order: the bucketed batches of the whole epoch
        (``batch_size * world_size`` examples each), then this rank's slice of each."""
        size = self.stage["batch_size"] * self.dist.world_size
        batches = bucket_batches(self.train_split.lengths, size,
                                 epoch_generator(self.config["seed"], self.stage_index, epoch))
        return epoch_slices(batches, self.dist)

    def _open_teacher_cache(self) -> None:
        """Compute (or reuse) the teacher outputs the losses read, when the stage caches them."""
        self.teacher_cache = None
        policy = self.stage.get("cache_teachers", "auto")
        if not self.teachers or policy is False:
            return
        nodes = requested_nodes(self.losses, self.teachers)
        if nodes is None:
            reasons = [loss.uncached_reason for _, loss in self.losses if getattr(loss, "uncached_reason", None)]
            self.log(f"stage '{self.stage['name']}': teachers run every step ("
                     + (reasons[0] if reasons else "a loss block does not declare the teacher nodes it reads") + ")")
            return
        if not nodes:
            self.log(f"stage '{self.stage['name']}': teachers run every step (no loss block declares a teacher "
                     f"node it reads)")
            return
        shared_root = Path(self.config["cache_dir"]) if self.config.get("cache_dir") else None
        examples_seen = self.total_steps * self.stage["batch_size"] * self.stage["accumulate"]
        cache_dtype = self.stage.get("cache_dtype", "float16")
        request = CacheRequest(self.experiment, self.train_split, nodes, self.run_dir.root, self.device, self.precision,
                               cache_dtype, self.stage["eval_batch_size"], shared_root, self.show_progress, self.log,
                               self.dist, self.stage.get("cache_top_k", DEFAULT_TOP_K))
        started = time.perf_counter()
        if policy == "auto" and examples_seen < len(self.train_split):
            # too short to pay for building a cache; one already on disk is read all the same (a
            # single process decides alone; several would have to agree, so they keep the teachers)
            if not self.dist.enabled:
                self.teacher_cache = open_existing(request)
            if self.teacher_cache is None:
                self.log(f"stage '{self.stage['name']}': teachers run every step (the stage sees {examples_seen:,} "
                         f"examples, fewer than the {len(self.train_split):,} a cache would compute)")
        else:
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # teachers in eval mode draw nothing; make sure of it
                self.teacher_cache = open_or_build(request)
        self.cache_seconds = time.perf_counter() - started

    def _student_values(self, batch) -> dict:
        if self.ddp is None:
            return self.experiment.model_values(self.model_name, batch)
        inputs = {local: batch.inputs[key] for local, key in self.experiment.model_inputs[self.model_name].items()}
        return self.ddp(inputs)

    def _loss(self, batch) -> torch.Tensor:
        experiment = self.experiment
        with autocast(self.device, self.precision):
            if self.batch_preparer is not None:  # the student and the teachers see the prepared batch
                batch = self.batch_preparer.prepare_batch(
                    batch, BatchContext(experiment, self.model_name, self.device, self.state.step))
            outputs = {self.model_name: self._student_values(batch)}
            if self.teacher_cache is not None:
                cached = self.teacher_cache.outputs(batch.index, self.device)
                for teacher in self.teachers:
                    outputs[teacher] = cached.get(teacher) or CachedOutputs(teacher, {})
            elif self.teachers:
                with torch.no_grad():
                    for teacher in self.teachers:
                        outputs[teacher] = experiment.model_values(teacher, batch)
            for _, loss in self.losses:
                if hasattr(loss, "set_step"):  # a custom nn.Module loss may not derive from Loss
                    loss.set_step(self.state.step)
            total = None
            for weight, loss in self.losses:
                factor = weight(self.state.step) if callable(weight) else weight  # a weight schedule
                term = factor * loss(outputs, batch)
                total = term if total is None else total + term
        return total

    def _after_step(self, batch) -> None:
        """Loss blocks that learn from the updated student (the RL teacher selector) see it here."""
        if not self.after_step_losses:
            return

        def student_outputs() -> dict:
            self.model.eval()
            try:
                with torch.no_grad(), autocast(self.device, self.precision):
                    return self.experiment.model_values(self.model_name, batch)
            finally:
                self.model.train()

        for loss in self.after_step_losses:
            loss.after_step(batch, student_outputs)

    def _optimizer_step(self) -> None:
        if self.dist.enabled and self.loss_parameters:
            self._average_loss_gradients()
        clip = self.stage["grad_clip"]
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                clip_grad_norm(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                clip_grad_norm(self.model.parameters(), clip)
            self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _average_loss_gradients(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.loss_parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_sum(flat)
        flat /= self.dist.world_size
        offset = 0
        for parameter in self.loss_parameters:
            count = parameter.numel()
            parameter.grad = flat[offset:offset + count].view_as(parameter).clone()
            offset += count

    def _append_metrics(self, record: dict) -> None:
        if self.main:
            self.run_dir.append_metrics(record)

    def _write(self, bar, text: str) -> None:
        if self.main:
            bar.write(text)

    def _check_finite(self, running: torch.Tensor, count: int, nonfinite: torch.Tensor) -> float:
        """The mean loss since the last check (over every rank); stops every rank on NaN/inf."""
        if self.dist.enabled:
            packed = torch.stack([running.detach().float(), nonfinite.float()])
            self.dist.all_sum(packed)
            value = packed[0].item() / self.dist.world_size / max(count, 1)
            bad = packed[1].item() > 0
        else:
            value = running.item() / max(count, 1)
            bad = bool(nonfinite)
        if bad or not math.isfinite(value):
            kept = self.run_dir.stage_checkpoint(self.stage["name"])
            where = f"the last good checkpoint is kept at {kept}" if kept.is_file() else "no checkpoint had been written yet"
            raise TrainingError(f"stage '{self.stage['name']}': the loss became NaN or infinite before step "
                                f"{self.state.step}; {where}. Lower the learning rate, set grad_clip, or check "
                                f"the data.")
        return value

    def _evaluated_now(self) -> bool:
        return bool(self.state.history) and self.state.history[-1]["step"] == self.state.step

    def _best_postfix(self) -> dict:
        if self.state.best is None:
            return {}
        return {self.select: f"{self.state.best:.4f}"}

    def _evaluate_and_save(self, bar) -> bool:
        """Evaluate on dev, keep the best weights, write the checkpoint; True = stop early."""
        stage = self.stage
        if self.dev_split is None:
            metrics = {}
            improved = True
        else:
            # rank 0 evaluates; the others take its metrics, so every rank decides the same
            metrics = self.dist.broadcast(self._dev_metrics() if self.main else None)
            value = metrics[self.select]
            best = self.state.best
            improved = self.keep_last or best is None or (value > best if self.maximize else value < best)
            for loss in self.after_evaluation_losses:
                loss.after_evaluation(value if self.maximize else -value)
        if improved:
            self.state.best = metrics.get(self.select)
            self.state.best_step = self.state.step
            self.state.evaluations_without_improvement = 0
            self.save_best()
        else:
            self.state.evaluations_without_improvement += 1
        epoch = self.epochs_done()
        self.state.history.append({"step": self.state.step, "epoch": epoch, **metrics})
        loss_values = self._loss_log_values()
        self._append_metrics({"event": "eval", "stage": stage["name"], "model": self.model_name,
                              "split": "dev", "step": self.state.step, "epoch": epoch,
                              "metrics": metrics, **loss_values})
        shown = "dev " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) if metrics else "checkpoint (no dev split)"
        if "teacher_weights" in loss_values:
            shown += "; teacher weights " + ", ".join(f"{k} {v:.3f}" for k, v in loss_values["teacher_weights"].items())
        self._write(bar, f"  {stage['name']} step {self.state.step:,} (epoch {epoch:g}): {shown}"
                    + (" *" if improved and metrics else ""))
        bar.set_postfix(**self._best_postfix())
        patience = stage["early_stopping"]
        stop = bool(patience) and self.state.evaluations_without_improvement >= patience
        if stop:
            self._write(bar, f"  early stopping: no improvement of {self.select} in {patience} evaluations")
        self.save()
        return stop

    def _dev_metrics(self) -> dict[str, float]:
        names = list(dict.fromkeys(self.config["task"]["metrics"] + [self.select]))
        return evaluate(self.experiment, self.model_name, self.dev_split, self.stage["eval_batch_size"], self.device,
                        self.precision, metrics=names, progress=self.show_progress,
                        final=False)  # a generating task decodes greedily here

    def epochs_done(self) -> float:
        """Passes over the training set completed so far: 1 at the end of the first epoch, whether
        the evaluation there comes from ``eval_every`` or from the epoch's end; 0.5 halfway."""
        done = self.state.epoch + self.state.batch_in_epoch / self.batches_per_epoch
        return int(done) if done == int(done) else round(done, 2)

    def _loss_log_values(self) -> dict:
        """What loss blocks report at an evaluation (mean teacher weights, a temperature)."""
        values: dict = {}
        for _, loss in self.losses:
            if _overrides(loss, "log_values"):
                values.update(loss.log_values())
        return values

    def _finish(self, already_done: bool) -> dict:
        """Load the best weights into the model and publish them as the model's weights."""
        best_path = self.run_dir.stage_dir(self.stage["name"]) / "best.safetensors"
        self.dist.barrier()  # rank 0 has written it
        tensors, _ = load_checkpoint(best_path)
        self._load_trainable(tensors)
        model_tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        if self.main:
            path = self.run_dir.model_weights(self.model_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, model_tensors, {"model": self.model_name, "stage": self.stage["name"],
                                                  "step": self.state.best_step, "metric": self.select,
                                                  "value": self.state.best})
        return {"stage": self.stage["name"], "model": self.model_name, "select": self.select,
                "best": self.state.best, "best_step": self.state.best_step, "steps": self.state.step,
                "history": self.state.history}
