"""Standard model files of a binarized model: ``model.safetensors`` plus ``bitlower.json``.

``save(model, folder)`` writes
- ``model.safetensors``: the whole state dict (the model's weights and every binary core's
  learned parts), no optimizer, no pickle;
- ``bitlower.json``: which modules are binarized with which ``BinarizeConfig``, whether the model
  was converted, and how to rebuild the architecture (``MODEL_FORMATS``);
- for a Hugging Face or diffusers model also its ``config.json``, so the folder is a
  ``from_pretrained`` folder too.

``load(folder)`` rebuilds the architecture, binarizes it as saved and loads the weights strictly.
The Hugging Face route: ``model = ViTForImageClassification.from_pretrained(folder)`` brings the
weights back full precision (it reports the binary parts as unexpected keys) and
``restore_(model, folder)`` then restores the binarization and those parts in one call.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from torch import nn

from bitlower.runtime.adapters import unwrap
from bitlower.runtime.config import BinarizeConfig
from bitlower.runtime.registry import qualified_name
from bitlower.runtime.transform import attention_cores, binarize_, convert_

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "bitlower.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelFormat:
    """How one library's models are described in ``bitlower.json`` and rebuilt from it.

    Attributes:
        name: the library (``"bitlower"``, ``"transformers"``, ``"diffusers"``).
        matches: ``(model) -> bool``: the model is one of this library's.
        describe: ``(model, folder) -> dict`` of plain types (may write the library's own config file).
        build: ``(description) -> model`` with freshly initialised weights.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    describe: Callable[[nn.Module, Path], dict]
    build: Callable[[dict], nn.Module]


def _import(path: str, library: str):
    """The object at ``package.module.Name``, only inside ``library`` (no arbitrary imports from a file)."""
    if not path.startswith(library + "."):
        raise ValueError(f"{CONFIG_NAME}: class {path!r} is not from {library}")
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _encode(value):
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _describe_dataclass_config(model: nn.Module, folder: Path) -> dict:
    config = model.config
    return {"class": qualified_name(type(model)), "config_class": qualified_name(type(config)),
            "config": {f.name: _encode(getattr(config, f.name)) for f in dataclasses.fields(config)}}


def _build_dataclass_config(desc: dict) -> nn.Module:
    config_cls = _import(desc["config_class"], "bitlower")
    return _import(desc["class"], "bitlower")(config_cls(**{k: _decode(v) for k, v in desc["config"].items()}))


def _describe_transformers(model: nn.Module, folder: Path) -> dict:
    model.config.save_pretrained(folder)  # config.json: the folder also opens with from_pretrained
    return {"class": f"transformers.{type(model).__name__}", "config": model.config.to_dict()}


def _build_transformers(desc: dict) -> nn.Module:
    cls = _import(desc["class"], "transformers")
    return cls(cls.config_class.from_dict(desc["config"]))


def _describe_diffusers(model: nn.Module, folder: Path) -> dict:
    model.save_config(folder)
    return {"class": f"diffusers.{type(model).__name__}", "config": dict(model.config)}


def _build_diffusers(desc: dict) -> nn.Module:
    return _import(desc["class"], "diffusers").from_config(desc["config"])


def _subclass_of(base: str) -> Callable[[nn.Module], bool]:
    return lambda model: any(qualified_name(cls) == base for cls in type(model).__mro__)


def _bitlower_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("bitlower.") and dataclasses.is_dataclass(getattr(model, "config", None))


# Tried in order; the first that matches describes the model. Append to add a library.
MODEL_FORMATS: list[ModelFormat] = [
    ModelFormat("transformers", _subclass_of("transformers.modeling_utils.PreTrainedModel"),
                _describe_transformers, _build_transformers),
    ModelFormat("diffusers", _subclass_of("diffusers.models.modeling_utils.ModelMixin"),
                _describe_diffusers, _build_diffusers),
    ModelFormat("bitlower", _bitlower_model, _describe_dataclass_config, _build_dataclass_config),
]


def _format_of(model: nn.Module) -> ModelFormat | None:
    return next((f for f in MODEL_FORMATS if f.matches(model)), None)


def _binarized(model: nn.Module) -> dict[str, dict]:
    """``{attention module name: BinarizeConfig.to_dict()}`` (the module owning each core)."""
    out = {}
    for name, core in attention_cores(model).items():
        config = getattr(core, "binarize_config", None)
        if config is None:
            raise ValueError(f"{name}: core without its BinarizeConfig (made outside binarize_); cannot describe it")
        out[name.rpartition(".")[0]] = config.to_dict()  # "a.b.binary" -> the module "a.b"
    return out


def save(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``bitlower.json`` (and a library ``config.json``) into ``folder``.

    Also the weights-only export of a trained model: no optimizer, no training state.

    Args:
        model: a model, binarized or not (``torch.compile``/DDP wrappers are looked through).
        folder: created if missing; existing files of these names are replaced.

    Returns:
        the folder.

    Example:
        >>> save(model, "runs/export")  # doctest: +SKIP
    """
    from safetensors.torch import save_model

    model, folder = unwrap(model), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fmt = _format_of(model)
    meta = {"format_version": FORMAT_VERSION, "binarized": _binarized(model),
            "converted": any(c.converted for c in attention_cores(model).values()),
            "model": None if fmt is None else {"library": fmt.name, **fmt.describe(model, folder)}}
    save_model(model, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})  # "pt": what from_pretrained expects
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    log.info("bitlower: saved %s to %s", type(model).__name__, folder)
    return folder


def _read_meta(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a folder written by bitlower.save")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return meta


def restore_(model: nn.Module, folder: str | Path) -> nn.Module:
    """Binarize ``model`` as saved in ``folder`` and load every weight from ``model.safetensors``.

    The Hugging Face route: call it on the result of ``from_pretrained(folder)``.

    Raises:
        FileNotFoundError: ``folder`` lacks ``bitlower.json`` or ``model.safetensors``.
        ValueError: ``model`` is binarized already, or the saved modules are not in it.
        RuntimeError: the weights do not fit the model (missing or unexpected keys, shapes).
    """
    from safetensors.torch import load_model

    folder = Path(folder)
    meta = _read_meta(folder)
    groups: dict[str, list[str]] = {}
    for name, config in meta["binarized"].items():
        groups.setdefault(json.dumps(config, sort_keys=True), []).append(name)
    for config_json, names in groups.items():
        config = replace(BinarizeConfig.from_dict(json.loads(config_json)), keep_teacher=False)
        report = binarize_(model, config, filter_fn=lambda n, m, wanted=set(names): n in wanted)
        if sorted(report.binarized) != sorted(names):
            missing = sorted(set(names) - set(report.binarized))
            raise ValueError(f"{folder}: saved binarized modules not found in this model: {missing[:5]}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    load_model(model, str(weights), strict=True)
    if meta["converted"]:
        convert_(model)
    return model.eval()


def load(folder: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The model saved in ``folder`` by ``save``, binarized as it was, in eval mode.

    Args:
        folder: a folder written by ``save``.
        model: an architecture to load into (freshly built, not binarized); needed when the
            saved model is not from bitlower, transformers or diffusers.

    Raises:
        FileNotFoundError, ValueError, RuntimeError: as ``restore_``; ValueError when the
            architecture is not described and ``model`` is None.

    Example:
        >>> model = load("runs/export")  # doctest: +SKIP
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    if model is None:
        desc = meta["model"]
        if desc is None:
            raise ValueError(f"{folder}: the architecture is not described; pass model= (built as when saved)")
        fmt = next((f for f in MODEL_FORMATS if f.name == desc["library"]), None)
        if fmt is None:
            raise ValueError(f"{folder}: unknown model library {desc['library']!r}")
        model = fmt.build(desc)
    return restore_(model, folder)
