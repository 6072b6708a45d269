"""Open registry of model adapters: how the training loops, distillation and evaluation call a model.

bitlower's own models are called ``model(images) -> logits`` and ``model(x, t, y) -> eps`` and
say their channels and classes in a dataclass ``model.config``. Third-party models differ:
Hugging Face classifiers take ``pixel_values`` and return a ``ModelOutput`` whose ``logits``
hold the result; diffusers' ``DiTTransformer2DModel`` takes ``(hidden_states, timestep,
class_labels)``, returns a ``Transformer2DModelOutput`` and keeps its config in a ``FrozenDict``.
A ``ModelAdapter`` states these facts for one model family; the tasks ask ``find_adapter(model)``
and never look at the model's type themselves.

Like the attention handlers, an adapter is keyed by a qualified class name (``module.QualName``),
so adapters for libraries that are not installed register without importing them, and lookup
walks the model's MRO (the most derived registered class wins). Register your own with
``register_adapter``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .registry import qualified_name


def _plain_classify(model: nn.Module, images: torch.Tensor):
    return model(images)


def _plain_denoise(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(x, t, labels)


def _config_attr(model: nn.Module, name: str):
    """``model.config.<name>``, or ``model.config[name]`` (diffusers' ``FrozenDict``)."""
    config = getattr(model, "config", None)
    value = getattr(config, name, None)
    if value is None and isinstance(config, dict):
        value = config.get(name)
    if value is None:
        raise ValueError(f"{type(model).__name__}: its config has no {name!r}; register a ModelAdapter "
                         "(bitlower.runtime.register_adapter) that says where it is")
    return value


def _plain_diffusion_io(model: nn.Module) -> tuple[int, int]:
    return int(_config_attr(model, "in_channels")), int(_config_attr(model, "num_classes"))


def _plain_label_dropout(model: nn.Module) -> list[nn.Module]:
    embedder = getattr(model, "y_embedder", None)
    return [embedder] if embedder is not None and hasattr(embedder, "dropout_prob") else []


@dataclass(frozen=True)
class ModelAdapter:
    """How the tasks call one model family.

    Attributes:
        name: short name used in logs.
        classify: ``(model, images (B, C, H, W)) -> logits (B, K)``, or ``(cls_logits,
            dist_logits)`` for a model with a distillation token.
        denoise: ``(model, x_t (B, C, H, W), t (B,), labels (B,)) -> prediction (B, Co, H, W)``.
        diffusion_io: ``(model) -> (noise channels C, class count)``; the null label is the
            class count.
        label_dropout_modules: ``(model) -> modules with a dropout_prob attribute``: the
            model's own classifier-free label dropout, which the diffusion task takes over
            while it trains (so student and teacher see the same labels).
    """

    name: str
    classify: Callable[[nn.Module, torch.Tensor], object] = _plain_classify
    denoise: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = _plain_denoise
    diffusion_io: Callable[[nn.Module], tuple[int, int]] = _plain_diffusion_io
    label_dropout_modules: Callable[[nn.Module], list[nn.Module]] = _plain_label_dropout


PLAIN = ModelAdapter("plain")
_ADAPTERS: dict[str, ModelAdapter] = {}


def register_adapter(target: type | str, adapter: ModelAdapter, overwrite: bool = False) -> None:
    """Map a model class (or its qualified name) to its ``ModelAdapter``.

    Raises:
        TypeError: ``adapter`` is not a ``ModelAdapter``.
        ValueError: ``target`` is registered already and ``overwrite`` is False.

    Example:
        >>> register_adapter("mylib.MyNet", ModelAdapter("mynet", classify=lambda m, x: m(x)["out"]))  # doctest: +SKIP
    """
    if not isinstance(adapter, ModelAdapter):
        raise TypeError(f"adapter must be a ModelAdapter, got {type(adapter).__name__}")
    key = target if isinstance(target, str) else qualified_name(target)
    if key in _ADAPTERS and not overwrite:
        raise ValueError(f"model type {key!r} already has an adapter ({_ADAPTERS[key].name!r})")
    _ADAPTERS[key] = adapter


def unregister_adapter(target: type | str) -> None:
    """Remove a registration (no error when absent)."""
    _ADAPTERS.pop(target if isinstance(target, str) else qualified_name(target), None)


def find_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter of the most derived registered class in the model's MRO, else ``PLAIN``.

    A ``torch.compile`` wrapper (``_orig_mod``) and a DDP wrapper (``module``) are looked through.
    """
    model = unwrap(model)
    for cls in type(model).__mro__:
        adapter = _ADAPTERS.get(qualified_name(cls))
        if adapter is not None:
            return adapter
    return PLAIN


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def classify(model: nn.Module, images: torch.Tensor):
    """Logits of a classifier (through its adapter; wrappers are called, not bypassed)."""
    return find_adapter(model).classify(model, images)


def denoise(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A diffusion model's prediction (through its adapter)."""
    return find_adapter(model).denoise(model, x, t, labels)


# ---------------------------------------------------------------- Hugging Face and diffusers

def _hf_classify(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=images).logits  # ModelOutput


def _diffusers_denoise(model: nn.Module, x, t, labels) -> torch.Tensor:
    return model(hidden_states=x, timestep=t, class_labels=labels, return_dict=False)[0]


def _diffusers_dit_io(model: nn.Module) -> tuple[int, int]:
    # DiTTransformer2DModel: classes are ``num_embeds_ada_norm`` (the label table has one more, null, row).
    return int(_config_attr(model, "in_channels")), int(_config_attr(model, "num_embeds_ada_norm"))


def _diffusers_label_embeddings(model: nn.Module) -> list[nn.Module]:
    # Every block's AdaLayerNormZero owns a LabelEmbedding (``norm1.emb.class_embedder``).
    return [m for m in unwrap(model).modules() if type(m).__name__ == "LabelEmbedding" and hasattr(m, "dropout_prob")]


HF_CLASSIFIER = ModelAdapter("transformers.ImageClassification", classify=_hf_classify)
DIFFUSERS_DIT = ModelAdapter("diffusers.DiTTransformer2DModel", denoise=_diffusers_denoise,
                             diffusion_io=_diffusers_dit_io, label_dropout_modules=_diffusers_label_embeddings)

for _name in ("transformers.models.vit.modeling_vit.ViTForImageClassification",
              "transformers.models.deit.modeling_deit.DeiTForImageClassification",
              "transformers.models.deit.modeling_deit.DeiTForImageClassificationWithTeacher",
              "transformers.models.dinov2.modeling_dinov2.Dinov2ForImageClassification"):
    register_adapter(_name, HF_CLASSIFIER)
register_adapter("diffusers.models.transformers.dit_transformer_2d.DiTTransformer2DModel", DIFFUSERS_DIT)
