"""Training runtime: binarize a full-precision model, train it with QAT and distillation, deploy it.

Example:
    >>> from bitlower.models import vit_tiny
    >>> from bitlower.runtime import binarize_, convert_, preset
    >>> model = vit_tiny(img_size=32, patch_size=8, depth=2, num_classes=10)
    >>> report = binarize_(model, preset("binary_attention"))
    >>> teacher = report.teacher
"""
from .adapters import ModelAdapter, find_adapter, register_adapter, unregister_adapter
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
from .seg_loss import SegLossConfig, segmentation_loss
from .seg_metrics import confusion_matrix, segmentation_metrics
from .seg_task import SegmentationTask, train_segmentation
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
    "ModelAdapter",
    "find_adapter",
    "register_adapter",
    "unregister_adapter",
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
    "SegLossConfig",
    "SegmentationTask",
    "TrainConfig",
    "Trainer",
    "classification_loss",
    "confusion_matrix",
    "ddim_sample",
    "diffusion_loss",
    "read_checkpoint",
    "save_checkpoint",
    "segmentation_loss",
    "segmentation_metrics",
    "train_classifier",
    "train_diffusion",
    "train_segmentation",
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
