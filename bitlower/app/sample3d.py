"""``bitlower sample3d``: inpaint or synthesise 3D volumes from the checkpoints of the 3D VQ tasks.

``--mode inpaint`` masks a centred box of every test volume's latent grid and fills it with the
transformer (200 steps, temperature 0.8 by default); it writes, per volume, a PNG of the central
orthogonal slices (rows: ground-truth reconstruction, the masked input with the box blanked, the
inpainting, the VQ-AE-only random fill) and, with nibabel installed, NIfTI files of the
reconstruction and the inpainting, plus ``inpaint.json`` with PSNR/SSIM per volume for the
transformer and the random baseline. ``--mode synthesize`` writes ``--count`` unconditional samples
as PNG (and NIfTI).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bitlower.runtime.absorbing import AbsorbingDiffusionConfig
from bitlower.runtime.checkpoint import CheckpointError
from bitlower.runtime.vq3d_checkpoints import load_absorbing, load_vqae
from bitlower.runtime.vq3d_eval import DEFAULT_FRACTION, inpaint, synthesize
from bitlower.runtime.vq3d_tasks import encode_volumes


def _nifti_available() -> bool:
    try:
        import nibabel  # noqa: F401
    except ImportError:
        return False
    return True


def _load(args):
    for name in ("checkpoint", "vqae"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{name} checkpoint not found: {path}")
    try:
        transformer, extra = load_absorbing(args.checkpoint)
        vqae, vq_extra = load_vqae(args.vqae or extra["vqae_checkpoint"])
    except CheckpointError as err:
        raise ValueError(str(err)) from err
    return transformer, extra, vqae, vq_extra


def _write_volumes(out: Path, stem: str, volumes: dict[str, torch.Tensor], nifti: bool) -> None:
    from bitlower.models.volume_io import save_nifti, save_slice_grid

    save_slice_grid(list(volumes.values()), out / f"{stem}.png")
    if nifti:
        for name, vol in volumes.items():
            save_nifti(vol, out / f"{stem}_{name}.nii.gz")


def _masked_view(volume: torch.Tensor, region: torch.Tensor, grid, patch_voxels: int) -> torch.Tensor:
    """The volume (1, D, H, W) with the voxels of the masked latent tokens set to 0."""
    box = region.view(*grid).float()[None, None]  # (1, 1, Ld, Lh, Lw)
    up = torch.nn.functional.interpolate(box, scale_factor=patch_voxels, mode="nearest")[0]  # (1, D, H, W)
    return volume * (1 - up)


def _inpaint(args, transformer, extra, vqae, device, out: Path, nifti: bool) -> dict:
    from .task_vq3d import volume_data

    data = extra["data"]
    _, test, _ = volume_data(extra["volumes"], tuple(extra["volume_shape"]), data.get("train_volumes", 1),
                             data.get("test_volumes", 1), data.get("seed", 0))
    codes = encode_volumes(vqae, test, device).tensors[0][: args.count]  # (V, N, G)
    grid = transformer.config.latent_grid
    config = AbsorbingDiffusionConfig(sample_steps=args.steps, temperature=args.temperature)
    result = inpaint(vqae, transformer, codes, grid, config, args.fraction, args.seed, args.batch)
    baseline = inpaint(vqae, None, codes, grid, config, args.fraction, args.seed, args.batch)
    voxels = vqae.config.patch_size // vqae.config.latent_per_patch
    for i in range(codes.shape[0]):
        grids = {"truth": codes[i:i + 1], "inpainted": result.codes[i:i + 1], "random": baseline.codes[i:i + 1]}
        decoded = {k: vqae.decode_codes(v.reshape(1, *grid, -1).to(device)).float().clamp(0, 1)[0].cpu()
                   for k, v in grids.items()}  # codes (1, N, G) -> (1, Ld, Lh, Lw, G) -> volume (1, D, H, W)
        masked = _masked_view(decoded["truth"], result.region, grid, voxels)
        views = {"truth": decoded["truth"], "masked": masked, "inpainted": decoded["inpainted"],
                 "random": decoded["random"]}
        _write_volumes(out, f"inpaint_{i}", views, nifti)
    report = {"transformer": {**result.summary(), "psnr_per_volume": result.psnr.tolist(),
                              "ssim_per_volume": result.ssim.tolist()},
              "random": {**baseline.summary(), "psnr_per_volume": baseline.psnr.tolist(),
                         "ssim_per_volume": baseline.ssim.tolist()},
              "preset": extra.get("preset"), "steps": args.steps, "temperature": args.temperature,
              "fraction": args.fraction, "seed": args.seed}
    (out / "inpaint.json").write_text(json.dumps(report, indent=2))
    return report


def run_sample3d(args) -> int:
    """``bitlower sample3d``: see ``add_sample3d_parser``."""
    transformer, extra, vqae, _ = _load(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    transformer.to(device)
    vqae.to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nifti = _nifti_available()
    if not nifti:
        print("nibabel is not installed: writing PNG slice grids only (pip install nibabel for NIfTI)")
    if args.mode == "inpaint":
        report = _inpaint(args, transformer, extra, vqae, device, out, nifti)
        print(f"inpainted {len(report['transformer']['psnr_per_volume'])} volumes ({report['preset']}): "
              f"PSNR {report['transformer']['psnr']:.2f} SSIM {report['transformer']['ssim']:.3f}; "
              f"VQ-AE random fill PSNR {report['random']['psnr']:.2f} SSIM {report['random']['ssim']:.3f}")
    else:
        config = AbsorbingDiffusionConfig(sample_steps=args.steps, temperature=args.temperature)
        codes = synthesize(transformer, args.count, config, args.seed, args.batch, device)
        grid = transformer.config.latent_grid
        for i in range(codes.shape[0]):
            grid_codes = codes[i:i + 1].reshape(1, *grid, -1)  # (1, N, G) -> (1, Ld, Lh, Lw, G)
            vol = vqae.decode_codes(grid_codes.to(device)).float().clamp(0, 1)[0]  # (1, D, H, W)
            _write_volumes(out, f"sample_{i}", {"sample": vol.cpu()}, nifti)
        print(f"synthesised {codes.shape[0]} volumes")
    print(f"wrote {out}")
    return 0


def add_sample3d_parser(sub, formatter_class) -> None:
    """Register ``sample3d`` on the subparsers ``sub``."""
    p = sub.add_parser("sample3d", help="inpaint or synthesise 3D volumes from --task vqae3d/absorbing checkpoints",
                       description=__doc__.split("\n\n", 1)[1].replace("\n", " "), formatter_class=formatter_class)
    p.add_argument("--checkpoint", required=True, help="checkpoint of `bitlower train --task absorbing`")
    p.add_argument("--vqae", default=None, help="VQ-AE checkpoint (default: the one the transformer was trained on)")
    p.add_argument("--mode", choices=("inpaint", "synthesize"), default="inpaint", help="what to do")
    p.add_argument("--count", type=int, default=4, help="volumes to inpaint (the first test volumes) or synthesise")
    p.add_argument("--steps", type=int, default=200, help="sampling steps")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                   help="inpaint: side fraction of the centred latent box that is masked")
    p.add_argument("--batch", type=int, default=4, help="volumes sampled at once")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: CUDA when available)")
    p.add_argument("--out", default="runs/sample3d", help="output folder")
    p.set_defaults(func=run_sample3d)
