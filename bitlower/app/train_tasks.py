"""The open registry of ``bitlower train --task NAME``.

A ``TrainTask`` says what the command line needs of a task: which model config fields its
data fills in, how its data is loaded and how one run is trained (usually one call into
``bitlower.runtime``). Built in: ``classification`` and ``diffusion``. Without ``--task`` the
model name chooses (a task's ``model_prefixes``; ``dit_*`` trains as diffusion, the rest as
classification).

Adding a task is one registration: ``register_train_task(TrainTask(...))`` from Python, or one
entry ``"NAME": "package.module:ATTRIBUTE"`` in ``LAZY_TASKS`` (imported only when chosen, so
``bitlower --help`` stays fast and a task's heavy imports are not paid by others).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from bitlower.runtime import DiffusionConfig, DistillConfig, TrainConfig, train_classifier, train_diffusion

from .arguments import UsageError
from .model_args import image_datasets


@dataclass
class TaskRun:
    """Everything the command line prepared for one run of a task.

    Attributes:
        model: the model (binarized when a preset was given).
        train_set, eval_set: the task's datasets (``TrainTask.load_data``).
        config: the ``TrainConfig``.
        teacher: the frozen full-precision teacher, or None (no distillation).
        distill: the ``DistillConfig`` (kind, alpha, tau).
        extra_config: stored in the checkpoint and compared on resume.
        resume: checkpoint path or None. stop_at: stop after this step, or None.
    """

    model: nn.Module
    train_set: object
    eval_set: object
    config: TrainConfig
    teacher: nn.Module | None
    distill: DistillConfig
    extra_config: dict
    resume: str | None = None
    stop_at: int | None = None


@dataclass(frozen=True)
class TrainTask:
    """One ``--task``.

    Attributes:
        name: the ``--task`` value.
        help: one line for ``--help``.
        run: ``(TaskRun) -> metrics dict``: trains and returns the final metrics (None with ``main``).
        model_prefixes: registered model names starting so default to this task.
        data_fields: model config fields filled from ``load_data``'s info, in its order.
        load_data: ``(data spec, image size or None) -> ((train, eval), info tuple)``.
        add_arguments: ``(parser) -> None``: the task's own options of ``bitlower train``, or None.
        main: ``(args, folder, resume) -> exit status``: a task that builds its data and model itself
            (``run`` and ``load_data`` unused); ``bitlower train`` has prepared the run folder.
        default_model: the ``--model`` of ``--task NAME`` without ``--model`` (None: the command's).
    """

    name: str
    help: str
    run: Callable[[TaskRun], dict] | None = None
    model_prefixes: tuple[str, ...] = ()
    data_fields: tuple[str, ...] = ("img_size", "in_chans", "num_classes")
    load_data: Callable = field(default=image_datasets)
    add_arguments: Callable | None = None
    main: Callable | None = None
    default_model: str | None = None


def _run_classification(r: TaskRun) -> dict:
    return train_classifier(r.model, r.train_set, r.config, teacher=r.teacher, distill=r.distill,
                            eval_set=r.eval_set, extra_config=r.extra_config, resume=r.resume, stop_at=r.stop_at)


def _run_diffusion(r: TaskRun) -> dict:
    return train_diffusion(r.model, r.train_set, r.config, diffusion=DiffusionConfig(distill_alpha=r.distill.alpha),
                           teacher=r.teacher, eval_set=r.eval_set, extra_config=r.extra_config, resume=r.resume,
                           stop_at=r.stop_at)


CLASSIFICATION = TrainTask("classification", "cross-entropy (+ distillation); accuracy on the test split",
                           _run_classification)
DIFFUSION = TrainTask("diffusion", "DDPM noise prediction (+ MSE to the teacher); denoising MSE", _run_diffusion,
                      model_prefixes=("dit_",), data_fields=("input_size", "in_channels", "num_classes"))

def _run_segmentation(args, folder, resume) -> int:
    from .task_segmentation import run_segmentation

    return run_segmentation(args, folder, resume)


def _segmentation_arguments(parser) -> None:
    from .task_segmentation import add_segmentation_args

    add_segmentation_args(parser)


SEGMENTATION = TrainTask("segmentation", "per-pixel cross-entropy (+ Dice, + distillation); mean Dice and mIoU",
                         model_prefixes=("seg_",), add_arguments=_segmentation_arguments,
                         main=_run_segmentation, default_model="seg_vit_small_patch8")

def _run_vq3d(args, folder, resume) -> int:
    from .task_vq3d import run_vq3d_task

    return run_vq3d_task(args, folder, resume)


def _vq3d_arguments(parser) -> None:
    from .task_vq3d import add_vq3d_train_args

    add_vq3d_train_args(parser)


VQAE3D = TrainTask("vqae3d", "3D VQ auto-encoder on volume patches; PSNR/SSIM of whole test volumes",
                   add_arguments=_vq3d_arguments, main=_run_vq3d)
ABSORBING = TrainTask("absorbing", "absorbing diffusion over a --vqae run's latent grid; masked-token accuracy",
                      add_arguments=_vq3d_arguments, main=_run_vq3d)

_TASKS: dict[str, TrainTask] = {t.name: t for t in (CLASSIFICATION, DIFFUSION, SEGMENTATION, VQAE3D, ABSORBING)}
# Tasks imported when chosen: "NAME": "package.module:ATTRIBUTE" (a TrainTask).
LAZY_TASKS: dict[str, str] = {}
DEFAULT_TASK = "classification"


def register_train_task(task: TrainTask, overwrite: bool = False) -> None:
    """Add ``task`` under ``task.name``.

    Raises:
        TypeError: not a ``TrainTask``. ValueError: the name is taken and ``overwrite`` is False.
    """
    if not isinstance(task, TrainTask):
        raise TypeError(f"task must be a TrainTask, got {type(task).__name__}")
    if (task.run is None) == (task.main is None):
        raise ValueError(f"train task {task.name!r} needs exactly one of run and main")
    if (task.name in _TASKS or task.name in LAZY_TASKS) and not overwrite:
        raise ValueError(f"train task {task.name!r} is already registered")
    _TASKS[task.name] = task


def registered_tasks() -> list[TrainTask]:
    """The loaded tasks (lazy ones are not imported), in registration order."""
    return list(_TASKS.values())


def task_names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(set(_TASKS) | set(LAZY_TASKS))


def get_train_task(name: str) -> TrainTask:
    """The task named ``name`` (importing a lazy one), or ``UsageError`` listing the known names."""
    if name not in _TASKS and name in LAZY_TASKS:
        module, _, attribute = LAZY_TASKS[name].partition(":")
        _TASKS[name] = getattr(importlib.import_module(module), attribute)
    if name not in _TASKS:
        raise UsageError(f"unknown task {name!r}; tasks: {', '.join(task_names())}")
    return _TASKS[name]


def task_for_model(model_name: str) -> str:
    """The task whose longest ``model_prefixes`` entry starts ``model_name`` (loaded tasks only), else the default."""
    best = max(((len(p), t.name) for t in _TASKS.values() for p in t.model_prefixes if model_name.startswith(p)),
               default=(0, DEFAULT_TASK))
    return best[1]
