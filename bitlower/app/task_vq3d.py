"""``bitlower train --task vqae3d`` and ``--task absorbing``: the 3D VQ diffusion tasks (BinaryFormer §3.2).

One builder per task turns the parsed arguments into data, model, task config and a Trainer run;
``TRAIN_TASKS`` maps the two names to their builders; ``train_tasks`` registers both as ``TrainTask``s
whose ``main`` is ``run_vq3d_task`` and whose ``add_arguments`` is ``add_vq3d_train_args``.

Data (``--volumes``): ``phantom`` (procedural head phantoms, no download; ``--volume-shape``,
``--train-volumes``, ``--test-volumes``) or ``nifti:<folder>`` (needs nibabel). The VQ-AE trains on
``--patch-size``^3 patches (2^3 codes each); the transformer on the codes of whole volumes encoded by
the ``--vqae`` checkpoint, whose data settings it reuses unless given again.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bitlower.models.absorbing3d import AbsorbingConfig, AbsorbingTransformer3D
from bitlower.models.phantom3d import SMALL_SHAPE, PhantomConfig, PhantomPatches, PhantomVolumes
from bitlower.models.volume_io import NiftiVolumes, VolumePatches
from bitlower.models.vqae3d import VQAE3DConfig, VQAutoEncoder3D
from bitlower.runtime import PRESETS, TrainConfig, binarize_, preset
from bitlower.runtime.absorbing import LOSS_KINDS, AbsorbingDiffusionConfig
from bitlower.runtime.checkpoint import CheckpointError
from bitlower.runtime.vq3d_checkpoints import load_vqae
from bitlower.runtime.vq3d_tasks import VQAELossConfig, encode_volumes, train_absorbing, train_vqae3d

from .arguments import UsageError

DEFAULT_PATCH = 16  # with SMALL_SHAPE (80 x 112 x 96): the seed's 10 x 14 x 12 latent grid
PERCEPTUAL_KINDS = ("random", "ssim", "none")
VQAE_SAFE_LR = 3e-4  # lr 1e-3 collapsed the codes of a 16-patch overfit; 3e-4 learned (models/vq_codebook.py)


class VQ3DUsageError(UsageError):
    """A bad argument of a 3D task (``bitlower`` reports it as a one-line usage error)."""


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise VQ3DUsageError(f"--volume-shape must be D,H,W (three positive ints), got {text!r}")
    return shape


def plain(config) -> dict:
    """A dataclass as JSON-plain values (tuples become lists), as stored in checkpoints."""
    return json.loads(json.dumps(asdict(config)))


def volume_data(spec: str, shape, train: int, test: int, seed: int, device=None):
    """``(train volumes, test volumes, description)`` of ``phantom`` or ``nifti:<folder>``.

    Raises:
        VQ3DUsageError: an unknown spec.
    """
    kind, sep, path = spec.partition(":")
    if spec == "phantom":
        cfg = PhantomConfig(shape=shape, seed=seed, train_volumes=train, test_volumes=test)
        return PhantomVolumes(cfg, "train", device), PhantomVolumes(cfg, "test", device), plain(cfg)
    if kind == "nifti" and sep and path:
        return NiftiVolumes(path, "train", shape), NiftiVolumes(path, "test", shape), {"nifti": path}
    raise VQ3DUsageError(f"--volumes must be 'phantom' or 'nifti:<folder>', got {spec!r}")


def _train_config(args) -> TrainConfig:
    from .cli_train import _train_config as shared

    return shared(args)  # the flags every task shares (TrainConfig's fields)


def _model_config(cls, base: dict, model_args):
    try:
        return cls(**{**base, **dict(model_args)})
    except TypeError as err:  # an unknown field from --model-arg
        raise VQ3DUsageError(f"{cls.__name__}: {err}") from err


def _render_device(args):
    """Phantoms render where the run trains: a GPU renders a 160 x 224 x 192 volume in milliseconds."""
    import torch

    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    return "cuda" if cuda else None


def train_vqae3d_from_args(args, resume: str | None) -> tuple[dict, str]:
    """Build and train the VQ-AE; returns ``(metrics, one-line description)``."""
    import torch

    shape = _shape(args.volume_shape)
    train, test, data = volume_data(args.volumes, shape, args.train_volumes, args.test_volumes, args.seed,
                                    _render_device(args))
    cfg = _model_config(VQAE3DConfig, {"patch_size": args.patch_size}, args.model_arg)
    cfg.latent_grid(shape)  # the patch must divide the grid
    patches = (PhantomPatches(train.config, "train", cfg.patch_size, _render_device(args))
               if isinstance(train, PhantomVolumes) else VolumePatches(train, cfg.patch_size))
    torch.manual_seed(args.seed)  # model initialisation; the trainer seeds the rest
    model = VQAutoEncoder3D(cfg)
    loss = VQAELossConfig(perceptual=args.perceptual, perceptual_weight=args.perceptual_weight)
    extra = {"task": "vqae3d", "vqae": plain(cfg), "volumes": args.volumes, "volume_shape": list(shape),
             "data": data, "latent_grid": list(cfg.latent_grid(shape))}
    metrics = train_vqae3d(model, patches, _train_config(args), loss=loss, eval_set=test, extra_config=extra,
                           resume=resume, stop_at=args.stop_after)
    return metrics, f"vqae3d on {args.volumes} {shape}, {len(patches)} patches of {cfg.patch_size}^3"


def _vqae_checkpoint(args):
    if args.vqae is None:
        raise VQ3DUsageError("--task absorbing needs --vqae CHECKPOINT (a checkpoint of --task vqae3d)")
    if not Path(args.vqae).is_file():
        raise VQ3DUsageError(f"--vqae checkpoint not found: {args.vqae}")
    try:
        return load_vqae(args.vqae)
    except CheckpointError as err:
        raise VQ3DUsageError(f"--vqae {args.vqae}: {err}") from err


def _absorbing_binarize(args):
    if args.preset == "none":
        return None
    if args.preset not in PRESETS:
        raise VQ3DUsageError(f"unknown preset {args.preset!r}; presets: none, {', '.join(sorted(PRESETS))}")
    # The latent grid is 3D: BinaryAttention's 2D relative-position table does not apply; a per-head bias does.
    overrides = {"bias": "head"} if args.preset == "binary_attention" else {}
    return preset(args.preset, keep_teacher=False, **overrides)


def train_absorbing_from_args(args, resume: str | None) -> tuple[dict, str]:
    """Encode the volumes with the ``--vqae`` model, build, binarize and train the transformer."""
    import torch

    if args.distill not in ("auto", "none"):
        raise VQ3DUsageError("--task absorbing trains without distillation; leave --distill at auto or none")
    binarize = _absorbing_binarize(args)
    vqae, vq_extra = _vqae_checkpoint(args)
    shape = _shape(args.volume_shape) if args.volume_shape else tuple(vq_extra["volume_shape"])
    spec = args.volumes or vq_extra["volumes"]
    train_n = args.train_volumes if args.train_volumes else vq_extra["data"].get("train_volumes", 0)
    test_n = args.test_volumes if args.test_volumes else vq_extra["data"].get("test_volumes", 0)
    seed = vq_extra["data"].get("seed", args.seed) if spec == vq_extra["volumes"] else args.seed
    train, test, data = volume_data(spec, shape, train_n, test_n, seed, _render_device(args))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_codes, test_codes = encode_volumes(vqae, train, device), encode_volumes(vqae, test, device)
    vcfg = vqae.config
    base = {"latent_grid": vcfg.latent_grid(shape), "codebook_heads": vcfg.codebook_heads,
            "codebook_size": vcfg.codebook_size}
    cfg = _model_config(AbsorbingConfig, base, args.model_arg)
    torch.manual_seed(args.seed)
    model = AbsorbingTransformer3D(cfg)
    if binarize is not None:
        binarize_(model, binarize)
    diffusion = AbsorbingDiffusionConfig(steps=args.diffusion_steps, loss=args.diffusion_loss)
    extra = {"task": "absorbing", "transformer": plain(cfg), "preset": args.preset,
             "binarize": None if binarize is None else binarize.to_dict(), "vqae_checkpoint": str(args.vqae),
             "vqae": plain(vcfg), "volumes": spec, "volume_shape": list(shape), "data": data}
    metrics = train_absorbing(model, train_codes, _train_config(args), diffusion=diffusion, eval_set=test_codes,
                              extra_config=extra, resume=resume, stop_at=args.stop_after)
    return metrics, f"absorbing ({args.preset}) on {cfg.num_tokens} tokens of {spec} {shape}"


TRAIN_TASKS = {"vqae3d": train_vqae3d_from_args, "absorbing": train_absorbing_from_args}


def add_vq3d_train_args(p) -> None:
    """The 3D tasks' options on the ``train`` parser (``--task`` itself is added by ``cli_train``)."""
    g = p.add_argument_group("3D VQ diffusion (--task vqae3d / absorbing)")
    g.add_argument("--volumes", default=None,
                   help="'phantom' (generated, no download) or 'nifti:<folder>' (needs nibabel); "
                        "default: phantom for vqae3d, the --vqae run's for absorbing")
    g.add_argument("--volume-shape", default=None, metavar="D,H,W",
                   help=f"volume grid (default {','.join(map(str, SMALL_SHAPE))}; the seed's: 160,224,192 with "
                        "--patch-size 32); absorbing: the --vqae run's")
    g.add_argument("--patch-size", type=int, default=DEFAULT_PATCH, help="VQ-AE patch side (2^3 codes per patch)")
    g.add_argument("--train-volumes", type=int, default=None, help="phantom training volumes (default 64)")
    g.add_argument("--test-volumes", type=int, default=None, help="phantom test volumes (default 8)")
    g.add_argument("--perceptual", choices=PERCEPTUAL_KINDS, default="random",
                   help="VQ-AE slice-perceptual term: fixed random features, 1 - SSIM, or none")
    g.add_argument("--perceptual-weight", type=float, default=0.1, help="weight of the slice-perceptual term")
    g.add_argument("--vqae", default=None, metavar="CHECKPOINT", help="absorbing: the trained VQ-AE's checkpoint")
    g.add_argument("--diffusion-steps", type=int, default=256, help="absorbing: time steps T")
    g.add_argument("--diffusion-loss", choices=LOSS_KINDS, default="reweighted_elbo", help="absorbing: loss weighting")


def run_vq3d_task(args, folder: Path, resume: str | None) -> int:
    """Run ``TRAIN_TASKS[args.task]`` in the prepared ``folder`` and print its result (``cli_train.run_train``)."""
    if args.task == "vqae3d":
        args.volumes = args.volumes or "phantom"
        args.volume_shape = args.volume_shape or ",".join(map(str, SMALL_SHAPE))
        args.train_volumes = args.train_volumes or PhantomConfig.train_volumes
        args.test_volumes = args.test_volumes or PhantomConfig.test_volumes
        if args.preset not in ("none", "binary_attention"):
            raise VQ3DUsageError("--task vqae3d has no attention to binarize; leave --preset out")
        if args.lr > VQAE_SAFE_LR:
            print(f"note: --lr {args.lr:g} is above {VQAE_SAFE_LR:g}; at 1e-3 the VQ-AE's codes collapsed in tests "
                  "(see bitlower/models/vq_codebook.py)")
    metrics, what = TRAIN_TASKS[args.task](args, resume)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"{what}: {shown}")
    print(f"checkpoint {folder / 'checkpoint.pt'}, metrics {folder / 'metrics.jsonl'}, arguments {folder / 'run_args.json'}")
    return 0
