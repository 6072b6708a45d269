"""Models and data for ``bitlower train`` and ``bitlower explain``: ``--model``, ``--model-arg``,
``--image-size``, ``--data``; which config fields the data fills in is the task's (``train_tasks``)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from bitlower.models import create_model, list_models, load_dataset

from .arguments import UsageError, key_value, positive_int

DEFAULT_MODEL = "vit_tiny_patch8"
# Digits are 8x8; `train` upsamples them to 32 so that the default patch-8 ViT sees a 4x4 grid.
DEFAULT_IMAGE_SIZES = {"digits": 32}
# Datasets up to this size (as float32) are converted once into tensors: per-item conversion
# made a digits training step of a small ViT take ~600 ms instead of ~45 ms (measured, 2-core CPU).
# CIFAR-10's train split is 614 MB as float32.
TENSOR_DATA_MAX_BYTES = 1 << 30


def check_model_name(name: str) -> None:
    """KeyError naming the closest registered names, unless ``name`` is registered."""
    if name not in list_models():
        create_model(name)  # raises KeyError naming the closest registered names


def normalized_model_args(model_args: list) -> list[tuple[str, object]]:
    """``--model-arg`` pairs sorted by key, the last of a repeated key kept: the same settings in
    any order are one configuration (resume compares them)."""
    return sorted(dict(model_args).items())


def build_model(name: str, model_args: list, data_fields: tuple = (), data_values: tuple | None = None):
    """``create_model(name, ...)``: data-decided fields first, then ``--model-arg`` overrides.

    Raises:
        KeyError: an unknown name.
        UsageError: a ``--model-arg`` that is no field of the model's config or has a bad value.
    """
    check_model_name(name)
    overrides = dict(zip(data_fields, data_values)) if data_values else {}
    overrides.update(dict(model_args))
    try:
        return create_model(name, **overrides)
    except (TypeError, ValueError) as err:
        given = ", ".join(f"{k}={v!r}" for k, v in model_args)
        strings = [f"{k}={v}" for k, v in model_args if isinstance(v, str)]
        hint = (f"; {', '.join(strings)}: not a Python literal (a number, tuple, True/False), taken as a string"
                if strings else "")
        raise UsageError(f"model {name!r} rejects --model-arg {given or '(none)'}: {err}{hint}") from err


def example_inputs(model, batch: int) -> tuple:
    """One call's inputs: images (B, C, H, W), plus timesteps and labels (B,) for a DiT."""
    cfg = model.config
    if hasattr(cfg, "in_channels"):  # DiT: model(x, t, y)
        size = cfg.input_size if isinstance(cfg.input_size, tuple) else (cfg.input_size, cfg.input_size)
        zeros = torch.zeros(batch, dtype=torch.long)
        return torch.randn(batch, cfg.in_channels, *size), zeros, zeros
    size = cfg.img_size if isinstance(cfg.img_size, tuple) else (cfg.img_size, cfg.img_size)
    return (torch.randn(batch, cfg.in_chans, *size),)


def image_datasets(spec: str, image_size: int | None):
    """``((train, test), (image_size, in_chans, num_classes))`` of an image dataset: each split as
    a tensor dataset where it fits in memory (normalised and resized once, not every batch).

    Raises:
        UsageError: the data path does not exist.
    """
    kind, sep, path = spec.partition(":")
    folder = Path(path if sep and kind in ("cifar10", "cifar100", "imagefolder") else spec)
    if spec != "digits" and not folder.exists():
        raise UsageError(f"data path not found: {folder}")
    size = image_size if image_size is not None else DEFAULT_IMAGE_SIZES.get(spec)
    splits, full = [], None
    for split in ("train", "test"):
        if split == "test" and not (folder / "test").is_dir() and (folder / "val").is_dir():
            split = "val"  # image folders often name their evaluation split so
        ds = load_dataset(spec, split, size)
        full = ds if full is None else full
        x, _ = ds[0]
        in_memory = callable(getattr(ds, "tensors", None))  # image folders read files per item
        if in_memory and len(ds) * x.numel() * x.element_size() <= TENSOR_DATA_MAX_BYTES:
            splits.append(TensorDataset(*ds.tensors()))
        else:  # too large to hold as float32: converted per batch (ImageDataset.get_batch)
            splits.append(ds)
    return tuple(splits), (full.image_size, full.in_chans, full.num_classes)


def add_model_args(p, model_help: str, image_help: str) -> None:
    """``--model``, ``--list-models``, ``--image-size`` and ``--model-arg`` of ``train`` and ``explain``."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{model_help} (see --list-models)")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    p.add_argument("--image-size", type=positive_int, default=None, help=image_help)
    p.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable, e.g. depth=2 embed_dim=64 patch_size=4")


def print_models() -> int:
    """Print the registered model names (``--list-models``)."""
    print("\n".join(list_models()))
    return 0
