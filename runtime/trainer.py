"""The training loop shared by classification and diffusion: AdamW, warmup + cosine, clipping,
mixed precision, EMA, DDP, progress bars, JSON-lines metrics and exact-resume checkpoints.

What a task contributes (``tasks.py``): the loss of a batch and the evaluation. The rest is here.
"""
from __future__ import annotations

import copy
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ck
from .distributed import DistContext, ResumableBatches, all_reduce_sum, collate, setup
from .metrics import MetricsWriter
from .optim import EMA, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "off")
# Fields that may differ between a run and its resumption (they do not change the numbers).
RESUME_FREE_FIELDS = ("eval_every", "checkpoint_every", "log_every", "out_dir", "progress")
CHECKPOINT_NAME = "checkpoint.pt"
# What 0 means for an interval field.
INTERVAL_ZERO = {"eval_every": "at the end only", "checkpoint_every": "at the end only", "log_every": "never",
                 "warmup_steps": "no warmup"}
# Progress lines when the output is not a terminal (a bar's redraws would flood a log file).
progress_log = logging.getLogger("bitlower.progress")
# Types of a checkpoint's entries, checked before any is read.
CONTAINER_TYPES = {"model": dict, "optimizer": dict, "scheduler": dict, "ema": (dict, type(None)), "data": dict,
                   "rng": list, "config": dict, "step": int, "world_size": int}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run.

    Args:
        steps: optimizer steps of the whole run (the schedule's length).
        batch_size: global batch, split evenly over processes.
        lr, min_lr_ratio, weight_decay, betas: AdamW and the cosine floor (``lr * min_lr_ratio``).
        warmup_steps: linear warmup steps.
        grad_clip: max global gradient norm, or None.
        amp: ``"auto"`` (bf16 autocast on CUDA, off on CPU), ``"bf16"`` or ``"off"``.
        seed: seeds model-independent randomness (data order, dropout, noise).
        ema_decay: keep an EMA of the weights (diffusion: 0.9999), or None.
        eval_every, checkpoint_every, log_every: in steps; 0 means only at the end.
        out_dir: folder of ``checkpoint.pt`` and ``metrics.jsonl``; None writes nothing.
        progress: report progress on the main process: a tqdm bar when stdout and stderr are
            terminals, else one ``bitlower.progress`` log line (INFO) per ``log_every`` steps.
        compile_backend: ``torch.compile`` backend of the training model (e.g. ``"bitlower"``), or None.
        find_unused_parameters: DDP flag, for models where some parameters get no gradient.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).

    Raises:
        ValueError: non-positive steps or batch size, an unknown amp mode.
    """

    steps: int
    batch_size: int
    lr: float = 5e-4
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    amp: str = "auto"
    seed: int = 0
    ema_decay: float | None = None
    eval_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    out_dir: str | None = None
    progress: bool = True
    compile_backend: str | None = None
    find_unused_parameters: bool = False
    device: str | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        for name in ("eval_every", "checkpoint_every", "log_every", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: {INTERVAL_ZERO.get(name, 'none')}), "
                                 f"got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr {self.lr}, weight_decay {self.weight_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


def _move(batch, device):
    return tuple(t.to(device, non_blocking=True) for t in batch)


class Trainer:
    """Runs a task's loss over resumable batches; see the module docstring.

    Args:
        model: the (binarized) model; moved to the run's device.
        task: a task from ``tasks.py`` (``loss``, ``evaluate``, ``config_dict``).
        train_set: a dataset of tuples of tensors.
        config: the ``TrainConfig``.
        teacher: frozen full-precision model for distillation, or None.
        extra_config: plain dict stored in checkpoints and compared on resume (e.g. the
            ``BinarizeConfig.to_dict()``).
    """

    def __init__(self, model: nn.Module, task, train_set, config: TrainConfig, *, teacher: nn.Module | None = None,
                 extra_config: dict | None = None):
        self.ctx: DistContext = setup(config.device)
        seed_everything(config.seed + self.ctx.rank)
        self.config, self.task, self.train_set = config, task, train_set
        self.model = model.to(self.ctx.device)
        self.teacher = teacher.to(self.ctx.device).eval() if teacher is not None else None
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.betas)
        self.scheduler = build_scheduler(self.optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.batches = ResumableBatches(len(train_set), config.batch_size, config.seed, self.ctx.rank,
                                        self.ctx.world_size)
        self.step = 0
        self.run_config = {"train": config.to_dict(), "task": task.config_dict(), "extra": extra_config or {}}
        self.metrics = MetricsWriter(config.out_dir, enabled=self.ctx.is_main)
        self.train_model = self._wrap(self.model)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.config.find_unused_parameters)
        if self.config.compile_backend is not None:
            model = torch.compile(model, backend=self.config.compile_backend)
        return model

    @property
    def autocast(self):
        amp = self.config.amp
        enabled = amp == "bf16" or (amp == "auto" and self.ctx.device.type == "cuda")
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next global batch; returns the losses averaged over processes."""
        batch = _move(collate(self.train_set, self.batches.next_indices()), self.ctx.device)
        self.train_model.train()
        with self.autocast:
            losses = self.task.loss(self.train_model, batch, self.teacher)
        losses["loss"].backward()
        if self.config.grad_clip is not None:
            losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        values = torch.stack([v.detach().float() for v in losses.values()])
        values = all_reduce_sum(values, self.ctx) / self.ctx.world_size
        return dict(zip(losses.keys(), values.tolist()))

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation on the EMA weights when kept, else the model's."""
        model = self.ema.shadow if self.ema is not None else self.model
        devices = [self.ctx.device] if self.ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.autocast:  # evaluation leaves training's RNG alone
            result = self.task.evaluate(model, self.ctx)
        self.metrics.write(self.step, "eval", **result)
        log.info("bitlower: step %d eval %s", self.step, result)
        return result

    def run(self, resume: str | Path | None = None, stop_at: int | None = None) -> dict[str, float]:
        """Train to ``config.steps`` (or ``stop_at``), evaluating and checkpointing on schedule.

        Args:
            resume: a checkpoint to continue from, ``"auto"`` (``out_dir/checkpoint.pt`` when it
                exists) or None.
            stop_at: stop after this step (a checkpoint is written when ``out_dir`` is set).

        Returns:
            the last evaluation's metrics plus ``step`` and ``steps_per_s``.
        """
        self._maybe_resume(resume)
        cfg = self.config
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        interactive = sys.stdout.isatty() and sys.stderr.isatty()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.ctx.is_main and interactive),
                   desc=self.task.name, dynamic_ncols=True)
        lines = cfg.progress and self.ctx.is_main and not interactive
        start_step, start = self.step, time.perf_counter()
        result: dict[str, float] = {}
        while self.step < end:
            losses = self.train_step()
            bar.update(1)
            if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == end):  # the last step always
                lr = self.scheduler.get_last_lr()[0]
                self.metrics.write(self.step, "train", lr=lr, **losses)
                bar.set_postfix(loss=f"{losses['loss']:.4f}")
                if lines:
                    progress_log.info("%s step %d/%d loss %.4f lr %.3g", self.task.name, self.step, cfg.steps,
                                      losses["loss"], lr)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < end:
                result = self.evaluate()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                self.save()
        bar.close()
        elapsed = time.perf_counter() - start
        self.save()
        result = self.evaluate()
        return {**result, "step": self.step, "steps_per_s": (self.step - start_step) / max(elapsed, 1e-9)}

    def _maybe_resume(self, resume) -> None:
        if resume is None:
            return
        path = Path(self.config.out_dir or ".") / CHECKPOINT_NAME if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            return
        self.load(path)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "step": self.step,
            "rng": self._gather_rng(),
            "data": self.batches.state_dict(),
            "world_size": self.ctx.world_size,
            "config": self.run_config,
        }

    def _gather_rng(self) -> list[dict]:
        state = ck.capture_rng()
        if not self.ctx.distributed:
            return [state]
        states = [None] * self.ctx.world_size
        dist.all_gather_object(states, state)
        return states

    def save(self) -> Path | None:
        """Write ``out_dir/checkpoint.pt`` (main process; every process takes part in the RNG gather)."""
        if self.config.out_dir is None:
            return None
        state = self.state_dict()
        if not self.ctx.is_main:
            return None
        return ck.save_checkpoint(Path(self.config.out_dir) / CHECKPOINT_NAME, state)

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint: every part is validated before anything is changed.

        Validation covers the configuration, the world size, the model, optimizer, scheduler
        and EMA state dicts (types, keys, shapes, dtypes), every random state (set on fresh
        generators first), the step and the data position. Should applying still fail, the
        state from before the call is put back, so the run is untouched either way.

        Raises:
            CheckpointError: corrupt file, or any part that does not fit this run.
        """
        state = ck.read_checkpoint(path)
        self._check(state)
        before = copy.deepcopy(self._applicable_state())
        before["rng"] = [ck.capture_rng()] * self.ctx.world_size
        try:
            self._apply(state)
        except Exception as err:
            self._apply(before)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ck.CheckpointError(f"{path}: could not be applied ({first}); the run is unchanged") from err
        self.metrics.truncate_after(self.step)
        log.info("bitlower: resumed from %s at step %d", path, self.step)

    def _applicable_state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
                "data": self.batches.state_dict(), "step": self.step}

    def _apply(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["data"])
        ck.restore_rng(state["rng"][self.ctx.rank])
        self.step = int(state["step"])

    def _check(self, state: dict) -> None:
        try:
            self._check_parts(state)
        except KeyError as err:
            raise ck.CheckpointError(f"checkpoint lacks {err}") from err

    def _check_parts(self, state: dict) -> None:
        for key, kind in CONTAINER_TYPES.items():
            if not isinstance(state[key], kind):
                raise ck.CheckpointError(f"checkpoint entry {key!r} is a {type(state[key]).__name__}, "
                                         f"expected {kind.__name__ if isinstance(kind, type) else kind[0].__name__}")
        mine, theirs = _comparable(self.run_config), _comparable(state["config"])
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ck.CheckpointError("configuration differs from the checkpoint's: " + ", ".join(
                f"{k}: {mine.get(k)!r} here, {theirs.get(k)!r} saved" for k in diff[:8]))
        if state["world_size"] != self.ctx.world_size or len(state["rng"]) != self.ctx.world_size:
            raise ck.CheckpointError(f"checkpoint of {state['world_size']} processes ({len(state['rng'])} random "
                                     f"states), this run has {self.ctx.world_size}")
        ck.check_state_dict("model", self.model.state_dict(), state["model"])
        ck.check_optimizer_state(self.optimizer, state["optimizer"])
        ck.check_state_dict("scheduler", self.scheduler.state_dict(), state["scheduler"])
        if (state["ema"] is None) != (self.ema is None):
            raise ck.CheckpointError("EMA kept in one of the run and the checkpoint only")
        if self.ema is not None:
            ck.check_state_dict("ema", self.ema.shadow.state_dict(), state["ema"]["shadow"])
        for rng in state["rng"]:
            ck.check_rng(rng)
        if not 0 <= int(state["step"]) <= self.config.steps:
            raise ck.CheckpointError(f"checkpoint step {state['step']} outside [0, {self.config.steps}]")
        self._check_data(state["data"])

    def _check_data(self, data: dict) -> None:
        mine = self.batches.state_dict()
        for key in ("seed", "global_batch", "length"):
            if data[key] != mine[key]:
                raise ck.CheckpointError(f"data order: {key} is {mine[key]} here, {data[key]} saved")
        epoch, position = data["epoch"], data["position"]
        if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0
                and 0 <= position < self.batches.per_epoch):
            raise ck.CheckpointError(f"data position: epoch {epoch!r}, position {position!r}; need integers, "
                                     f"epoch >= 0 and 0 <= position < {self.batches.per_epoch}")


def _comparable(run_config: dict) -> dict:
    """Flatten a run configuration to ``{"section.key": value}`` without the resume-free fields."""
    flat = {}
    for section, values in run_config.items():
        for key, value in values.items():
            if section == "train" and key in RESUME_FREE_FIELDS:
                continue
            flat[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return flat
