"""Training runtime: binarize a full-precision model, train it with QAT and distillation, deploy it.

Example:
    >>> from bitlower.models import vit_tiny
    >>> from bitlower.runtime import binarize_, convert_, preset
    >>> model = vit_tiny(img_size=32, patch_size=8, depth=2, num_classes=10)
    >>> report = binarize_(model, preset("binary_attention"))
    >>> teacher = report.teacher
"""
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import PRESETS, BinarizeConfig, preset
from .diffusion import DiffusionConfig, NoiseSchedule, ddim_sample
from .distill import DistillConfig, classification_loss, diffusion_loss
from .optim import EMA
from .absorbing import AbsorbingDiffusionConfig, sample_codes
from .vq3d_checkpoints import load_absorbing, load_vqae
from .vq3d_eval import inpaint, synthesize
from .vq3d_tasks import AbsorbingTask, VQAE3DTask, VQAELossConfig, encode_volumes, train_absorbing, train_vqae3d
from .tasks import ClassificationTask, DiffusionTask, train_classifier, train_diffusion
from .trainer import TrainConfig, Trainer
from .core import BinaryAttentionCore, Geometry
from .registry import AttentionHandler, find_handler, register_attention, registered_types, unregister_attention
from .transform import BinarizeReport, attention_cores, binarize_, convert_, make_teacher

__all__ = [
    "AbsorbingDiffusionConfig",
    "AbsorbingTask",
    "VQAE3DTask",
    "VQAELossConfig",
    "encode_volumes",
    "inpaint",
    "load_absorbing",
    "load_vqae",
    "sample_codes",
    "synthesize",
    "train_absorbing",
    "train_vqae3d",
    "EMA",
    "AttentionHandler",
    "BinarizeConfig",
    "BinarizeReport",
    "BinaryAttentionCore",
    "CheckpointError",
    "ClassificationTask",
    "DiffusionConfig",
    "DiffusionTask",
    "DistillConfig",
    "Geometry",
    "NoiseSchedule",
    "PRESETS",
    "TrainConfig",
    "Trainer",
    "classification_loss",
    "ddim_sample",
    "diffusion_loss",
    "read_checkpoint",
    "save_checkpoint",
    "train_classifier",
    "train_diffusion",
    "attention_cores",
    "binarize_",
    "convert_",
    "find_handler",
    "make_teacher",
    "preset",
    "register_attention",
    "registered_types",
    "unregister_attention",
]
