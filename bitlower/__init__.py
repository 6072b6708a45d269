"""bitlower: 1-bit query/key attention for vision and diffusion transformers.

Public API:
    binary_attention: the operator (exact PyTorch reference on CPU, fused Triton kernels on CUDA).
    AttentionConfig: the validated description of the binary math.
    TokenWeighting, bilinear_planes: learned and sampled weighting scalars.
    binarize_, convert_, BinarizeConfig, preset, PRESETS, register_attention: the training runtime's
        transform (see ``bitlower.runtime``).
    DistillConfig, TrainConfig, train_classifier, train_diffusion: QAT and distillation loops.
    save, load, restore_: standard model files (``model.safetensors`` + ``bitlower.json``) of a
        binarized model; ``restore_`` after a Hugging Face ``from_pretrained``.
    scaled_dot_product_attention: a drop-in for ``torch.nn.functional.scaled_dot_product_attention``.
    explain, ExplainReport, BackendConfig: what ``torch.compile(backend="bitlower")`` does to a model.
"""
from bitlower.backend_config import BackendConfig
from bitlower.config import AttentionConfig
from bitlower.explain import ExplainReport, explain
from bitlower.counters import counters
from bitlower.functional import binary_attention
from bitlower.weighting import TokenWeighting, bilinear_planes
from bitlower.runtime import (  # noqa: E402  (after the operator: the runtime builds on it)
    PRESETS,
    BinarizeConfig,
    DistillConfig,
    TrainConfig,
    binarize_,
    convert_,
    preset,
    register_attention,
    train_classifier,
    train_diffusion,
)
from bitlower.model_files import load, restore_, save  # noqa: E402  (builds on the runtime)
from bitlower.sdpa import scaled_dot_product_attention  # noqa: E402
from bitlower.registration import register_without_entry_point  # noqa: E402

register_without_entry_point()

__all__ = [
    "PRESETS",
    "AttentionConfig",
    "BackendConfig",
    "ExplainReport",
    "BinarizeConfig",
    "DistillConfig",
    "TokenWeighting",
    "TrainConfig",
    "binarize_",
    "binary_attention",
    "bilinear_planes",
    "convert_",
    "counters",
    "explain",
    "preset",
    "load",
    "register_attention",
    "restore_",
    "save",
    "scaled_dot_product_attention",
    "train_classifier",
    "train_diffusion",
]
__version__ = "0.1.0"
