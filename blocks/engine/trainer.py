"""One stage: train one model, with frozen teachers, against a weighted sum of loss blocks.

The loop keeps Python work per step small: batches are collated from pre-indexed tensors, the
loss is read back (``.item()``) only every ``log_every`` steps, and a NaN/inf check accumulates on
the device between those reads. Every evaluation writes a resumable checkpoint (weights,
optimizer, schedule, RNG, position in the epoch), so a killed run continues to the same result.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from blocks.data.batching import bucket_batches
from blocks.engine.checkpoint import (atomic_write_json, load_checkpoint, optimizer_from_tensors,
                                      optimizer_to_tensors, rng_from_tensors, rng_to_tensors, save_checkpoint)
from blocks.engine.evaluation import autocast, evaluate
from blocks.engine.optim import build_optimizer, build_schedule
from blocks.engine.run_dir import RunDir
from blocks.errors import CheckpointError, TrainingError
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


class StageTrainer:
    def __init__(self, experiment, stage_index: int, run_dir: RunDir, device: torch.device, log=print,
                 progress: bool = True):
        self.experiment = experiment
        self.config = experiment.config.values
        self.stage_index = stage_index
        self.stage = self.config["stages"][stage_index]
        self.run_dir = run_dir
        self.device = device
        self.precision = self.config["precision"]
        self.log = log
        self.show_progress = progress
        self.model_name = self.stage["train"]
        self.model = experiment.models[self.model_name]
        self.teachers = list(self.stage["teachers"])
        self.losses = experiment.build_losses(stage_index)
        self.loss_modules = nn.ModuleList([loss for _, loss in self.losses])
        self.select = self.stage["select"] or self.config["task"]["metrics"][0]
        self.maximize = higher_is_better(self.select)
        train = experiment.splits["train"]
        self.train_split = train
        self.dev_split = experiment.splits.get("dev")
        batches_per_epoch = math.ceil(len(train) / self.stage["batch_size"])
        self.steps_per_epoch = math.ceil(batches_per_epoch / self.stage["accumulate"])
        total = self.steps_per_epoch * self.stage["epochs"]
        self.total_steps = min(total, self.stage["max_steps"] or total)
        self.state = StageState()

    # -- set-up -------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.model.to(self.device).train()
        self.loss_modules.to(self.device)
        for name in self.teachers:
            teacher = self.experiment.models[name].to(self.device)
            teacher.eval()
            teacher.requires_grad_(False)
        trainable = self.experiment.trainable[self.model_name]
        for parameter_name, parameter in self.model.named_parameters():
            parameter.requires_grad_(trainable[parameter_name])
        parameters = [p for p in list(self.model.parameters()) + list(self.loss_modules.parameters())
                      if p.requires_grad]
        where = f"/stages/{self.stage_index}"
        self.optimizer = build_optimizer(parameters, self.stage["optimizer"], where=f"{where}/optimizer")
        self.schedule = build_schedule(self.optimizer, self.stage["schedule"], self.total_steps,
                                       where=f"{where}/schedule")
        use_scaler = self.device.type == "cuda" and self.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"losses/{k}": v for k, v in self.loss_modules.state_dict().items()})
        return tensors

    def save(self) -> None:
        tensors = self._trainable_state()
        optimizer_tensors, optimizer_meta = optimizer_to_tensors(self.optimizer.state_dict())
        tensors.update({f"optimizer/{k}": v for k, v in optimizer_tensors.items()})
        rng_tensors, rng_meta = rng_to_tensors()
        tensors.update({f"rng/{k}": v for k, v in rng_tensors.items()})
        state = {"stage": self.stage["name"], "model": self.model_name, "position": self.state.to_json(),
                 "optimizer": optimizer_meta, "rng": rng_meta, "schedule": self.schedule.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None}
        stage_dir = self.run_dir.stage_dir(self.stage["name"])
        stage_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.run_dir.stage_checkpoint(self.stage["name"]), tensors, state)
        atomic_write_json(stage_dir / "state.json", {k: v for k, v in state.items() if k != "rng"})

    def save_best(self) -> None:
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
        try:
            self._load_trainable(tensors)
            optimizer = {k[len("optimizer/"):]: v for k, v in tensors.items() if k.startswith("optimizer/")}
            self.optimizer.load_state_dict(optimizer_from_tensors(optimizer, state["optimizer"]))
            self.schedule.load_state_dict(state["schedule"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            rng_from_tensors({k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}, state["rng"])
            self.state = StageState(**state["position"])
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
                 + f", {self.total_steps:,} steps" + (f", resuming at step {self.state.step:,}" if self.state.step else ""))
        accumulate = stage["accumulate"]
        bar = tqdm(total=self.total_steps, initial=self.state.step, desc=name, unit="step", leave=False,
                   disable=not self.show_progress, dynamic_ncols=True)
        running = torch.zeros((), device=self.device)
        running_count = 0
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        started = time.perf_counter()
        examples = 0
        stop = False
        while self.state.epoch < stage["epochs"] and not stop:
            batches = bucket_batches(self.train_split.lengths, stage["batch_size"],
                                     epoch_generator(self.config["seed"], self.stage_index, self.state.epoch))
            first = self.state.batch_in_epoch
            for position in range(first, len(batches)):
                batch = self.train_split.collate(batches[position])
                if self.device.type == "cuda":
                    batch = batch.pin_memory()
                batch = batch.to(self.device)
                loss = self._loss(batch)
                (loss / accumulate).backward() if self.scaler is None else self.scaler.scale(loss / accumulate).backward()
                detached = loss.detach()
                nonfinite |= ~torch.isfinite(detached)
                running += detached
                running_count += 1
                examples += len(batch)
                boundary = (position + 1) % accumulate == 0 or position == len(batches) - 1
                if not boundary:
                    continue
                self._optimizer_step()
                self.state.step += 1
                self.state.batch_in_epoch = position + 1
                bar.update(1)
                if self.state.step % stage["log_every"] == 0:
                    value = self._check_finite(running, running_count, nonfinite)
                    bar.set_postfix(loss=f"{value:.4f}", **self._best_postfix())
                    self.run_dir.append_metrics({"event": "train", "stage": name, "step": self.state.step,
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
        result = self._finish(already_done=False)
        result["train_seconds"] = round(elapsed, 2)
        result["train_examples_per_second"] = round(examples / elapsed, 1) if elapsed > 0 else None
        return result

    def _loss(self, batch) -> torch.Tensor:
        experiment = self.experiment
        with autocast(self.device, self.precision):
            outputs = {self.model_name: experiment.model_values(self.model_name, batch)}
            if self.teachers:
                with torch.no_grad():
                    for teacher in self.teachers:
                        outputs[teacher] = experiment.model_values(teacher, batch)
            total = None
            for weight, loss in self.losses:
                term = weight * loss(outputs, batch)
                total = term if total is None else total + term
        return total

    def _optimizer_step(self) -> None:
        clip = self.stage["grad_clip"]
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _check_finite(self, running: torch.Tensor, count: int, nonfinite: torch.Tensor) -> float:
        value = running.item() / max(count, 1)
        if bool(nonfinite) or not math.isfinite(value):
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
            metrics = evaluate(self.experiment, self.model_name, self.dev_split, stage["eval_batch_size"],
                               self.device, self.precision)
            value = metrics[self.select]
            best = self.state.best
            improved = best is None or (value > best if self.maximize else value < best)
        if improved:
            self.state.best = metrics.get(self.select)
            self.state.best_step = self.state.step
            self.state.evaluations_without_improvement = 0
            self.save_best()
        else:
            self.state.evaluations_without_improvement += 1
        self.state.history.append({"step": self.state.step, "epoch": self.state.epoch, **metrics})
        self.run_dir.append_metrics({"event": "eval", "stage": stage["name"], "model": self.model_name,
                                     "split": "dev", "step": self.state.step, "epoch": self.state.epoch,
                                     "metrics": metrics})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        bar.write(f"  {stage['name']} step {self.state.step:,} (epoch {self.state.epoch}): dev {shown}"
                  + (" *" if improved and metrics else ""))
        bar.set_postfix(**self._best_postfix())
        patience = stage["early_stopping"]
        stop = bool(patience) and self.state.evaluations_without_improvement >= patience
        if stop:
            bar.write(f"  early stopping: no improvement of {self.select} in {patience} evaluations")
        self.save()
        return stop

    def _finish(self, already_done: bool) -> dict:
        """Load the best weights into the model and publish them as the model's weights."""
        best_path = self.run_dir.stage_dir(self.stage["name"]) / "best.safetensors"
        tensors, _ = load_checkpoint(best_path)
        self._load_trainable(tensors)
        model_tensors = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        path = self.run_dir.model_weights(self.model_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model_tensors, {"model": self.model_name, "stage": self.stage["name"],
                                              "step": self.state.best_step, "metric": self.select,
                                              "value": self.state.best})
        return {"stage": self.stage["name"], "model": self.model_name, "select": self.select,
                "best": self.state.best, "best_step": self.state.best_step, "steps": self.state.step,
                "history": self.state.history}
