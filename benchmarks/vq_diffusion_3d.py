"""3D VQ absorbing diffusion, inpainting quality per attention method (BinaryFormer Table 3).

Question: does binary attention in the absorbing transformer inpaint 3D volumes as well as softmax
attention, at the seed's long sequence (N = 1680 tokens)?

Setup (defaults = the seed's, Appendix A.2, on generated head phantoms instead of OASIS):
phantoms of 160 x 224 x 192 voxels (``models.phantom3d``; 250 train, 20 test volumes); one VQ-AE
(32^3 patches, 2^3 codes each, 8 x 64 EMA codebooks, C = 384, L1 + commitment + random-feature slice
perceptual) trained once, 8000 steps at batch 64 (lr 3e-4: lr 1e-3 collapsed the codes, see
``models/vq_codebook.py``); then per method and seed one absorbing transformer (10 x 14 x 12 latent
grid, 8 blocks, width 384, 6 heads of 64; T = 256, reweighted ELBO; 21000 steps at batch 12, lr 2e-4,
500 warmup steps, bf16 autocast on CUDA). Methods: base (softmax), sign (STE), sign st.gr., Hamming,
HammingG, HammingB, BinaryAttention (per-head bias: the 2D relative-position table does not apply to
a 3D grid), and "random" (the VQ-AE alone: the box filled with uniform random codes).

Metric: each test volume's codes are masked on the centred half-side box of the latent grid (1/8 of
the tokens) and inpainted (200 steps, temperature 0.8, the same sampler seed for every method); PSNR
and SSIM (3D) of the decoded result against the decoded unmasked codes, over the whole volume. Table:
mean ± sample std over seeds of the per-seed test means; training steps/s per method; fused-kernel
fallbacks counted during training (``bitlower.counters["fallback"]``; must be 0 on the GPU: the
binary methods run the fused kernels at N = 1680).

Run (one GPU; not yet run, time not measured): ``python benchmarks/vq_diffusion_3d.py --out $OUT``.
CPU smoke run (under a minute, numbers meaningless): ``python benchmarks/vq_diffusion_3d.py --smoke
--out runs/vq3d_smoke``.

Writes ``vq_diffusion_3d.{json,md}``, ``inpaint_<method>_seed<k>.png`` (rows: ground-truth
reconstruction, masked input, the method's inpainting) and ``inpaint_methods.png`` (rows: ground truth,
then every method, seed of the first), and the runs' checkpoints and metrics under ``runs/``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

from bitlower.counters import counters
from bitlower.counters import reset as reset_counters
from bitlower.models.absorbing3d import AbsorbingConfig, AbsorbingTransformer3D
from bitlower.models.phantom3d import SEED_SHAPE, PhantomConfig, PhantomPatches, PhantomVolumes
from bitlower.models.volume_io import save_slice_grid
from bitlower.models.vqae3d import VQAE3DConfig, VQAutoEncoder3D
from bitlower.runtime import TrainConfig, binarize_, preset
from bitlower.runtime.absorbing import AbsorbingDiffusionConfig
from bitlower.runtime.vq3d_eval import inpaint
from bitlower.runtime.vq3d_tasks import VQAELossConfig, encode_volumes, train_absorbing, train_vqae3d

log = logging.getLogger("vq_diffusion_3d")

METHODS = {  # key -> (table label, preset name or None for softmax)
    "base": ("base", None),
    "sign": ("sign", "sign_ste"),
    "sign_stopgrad": ("sign st.gr.", "sign_stopgrad"),
    "hamming": ("Hamming", "hamming"),
    "hamming_g": ("HammingG", "hamming_g"),
    "hamming_b": ("HammingB", "hamming_b"),
    "binary_attention": ("BinaryAttention", "binary_attention"),
}
SMOKE = dict(shape="16,16,16", patch=8, train_volumes=2, test_volumes=2, vqae_steps=3, vqae_batch=4, steps=3,
             batch=2, sample_steps=4, width=16, depth=1, heads=2, codebook_heads=2, codebook_size=8, embed_dim=16,
             base_channels=4, max_channels=8, warmup=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/vq_diffusion_3d")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shape", default=",".join(map(str, SEED_SHAPE)), help="phantom grid D,H,W")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--train-volumes", type=int, default=250)
    p.add_argument("--test-volumes", type=int, default=20)
    p.add_argument("--vqae-steps", type=int, default=8000)
    p.add_argument("--vqae-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=21000, help="transformer steps per method and seed")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--sample-steps", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    for name, default in (("width", 384), ("depth", 8), ("heads", 6), ("codebook-heads", 8),
                          ("codebook-size", 64), ("embed-dim", 384), ("base-channels", 32), ("max-channels", 256)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--compile-backend", default=None, help="torch.compile backend of the transformers")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--smoke", action="store_true", help="tiny CPU settings (numbers meaningless)")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.seeds = args.seeds[:2]
    args.shape = tuple(int(v) for v in args.shape.split(","))
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def train_vqae(args, out: Path, phantoms: PhantomConfig, device) -> VQAutoEncoder3D:
    torch.manual_seed(0)
    cfg = VQAE3DConfig(patch_size=args.patch, embed_dim=args.embed_dim, codebook_heads=args.codebook_heads,
                       codebook_size=args.codebook_size, base_channels=args.base_channels,
                       max_channels=args.max_channels)
    model = VQAutoEncoder3D(cfg)
    render = device if device.type == "cuda" else None
    config = TrainConfig(steps=args.vqae_steps, batch_size=args.vqae_batch, lr=3e-4, warmup_steps=args.warmup,
                         weight_decay=0.0, out_dir=str(out / "runs" / "vqae"), progress=False, log_every=50,
                         device=device.type)
    result = train_vqae3d(model, PhantomPatches(phantoms, "train", args.patch, render), config,
                          loss=VQAELossConfig(), eval_set=PhantomVolumes(phantoms, "test", render),
                          extra_config={"vqae": cfg.__dict__}, resume="auto")
    log.info("VQ-AE: %s", result)
    return model.eval()


def train_method(args, key: str, seed: int, codes, out: Path, device) -> tuple[torch.nn.Module, dict]:
    _, name = METHODS[key]
    torch.manual_seed(seed)
    cfg = AbsorbingConfig(latent_grid=codes["grid"], codebook_heads=args.codebook_heads,
                          codebook_size=args.codebook_size, width=args.width, depth=args.depth,
                          num_heads=args.heads)
    model = AbsorbingTransformer3D(cfg)
    if name is not None:
        binarize_(model, preset(name, keep_teacher=False, **({"bias": "head"} if name == "binary_attention" else {})))
    config = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup, seed=seed,
                         weight_decay=0.0, out_dir=str(out / "runs" / f"{key}_seed{seed}"), progress=False,
                         log_every=50, compile_backend=args.compile_backend, device=device.type)
    reset_counters()
    diffusion = AbsorbingDiffusionConfig(sample_steps=args.sample_steps, temperature=args.temperature)
    result = train_absorbing(model, codes["train"], config, diffusion=diffusion, eval_set=codes["test"],
                             extra_config={"method": key}, resume="auto")
    result["fallbacks"] = sum(counters["fallback"].values())
    result["fallback_reasons"] = dict(counters["fallback"])
    return model.eval(), result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_table(rows: dict, out: Path, args) -> None:
    lines = ["| method | PSNR (dB) | SSIM | train steps/s | fallbacks |", "|---|---|---|---|---|"]
    for key, row in rows.items():
        psnr_m, psnr_s = _mean_std(row["psnr"])
        ssim_m, ssim_s = _mean_std(row["ssim"])
        rate = f"{statistics.mean(row['steps_per_s']):.2f}" if row.get("steps_per_s") else "-"
        falls = str(sum(row["fallbacks"])) if row.get("fallbacks") else ("0" if key != "random" else "-")
        lines.append(f"| {row['label']} | {psnr_m:.2f} ± {psnr_s:.2f} | {ssim_m:.3f} ± {ssim_s:.3f} | {rate} | {falls} |")
    seeds = ", ".join(map(str, args.seeds))
    header = (f"Inpainting of a centred 1/8 box of the latent grid, {args.test_volumes} test phantoms "
              f"{'x'.join(map(str, args.shape))}, mean ± std over seeds {seeds}.\n\n")
    (out / "vq_diffusion_3d.md").write_text(header + "\n".join(lines) + "\n")
    (out / "vq_diffusion_3d.json").write_text(json.dumps({"args": {k: (list(v) if isinstance(v, tuple) else v)
                                                                    for k, v in vars(args).items()},
                                                           "rows": rows}, indent=2))


def _decode(vqae, codes, grid, device) -> torch.Tensor:
    grid_codes = codes.reshape(1, *grid, -1)  # (1, N, G) -> (1, Ld, Lh, Lw, G)
    return vqae.decode_codes(grid_codes.to(device)).float().clamp(0, 1)[0].cpu()  # (1, D, H, W)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    phantoms = PhantomConfig(shape=args.shape, train_volumes=args.train_volumes, test_volumes=args.test_volumes)
    vqae = train_vqae(args, out, phantoms, device).to(device)
    render = device if device.type == "cuda" else None
    codes = {"train": encode_volumes(vqae, PhantomVolumes(phantoms, "train", render), device),
             "test": encode_volumes(vqae, PhantomVolumes(phantoms, "test", render), device),
             "grid": vqae.config.latent_grid(args.shape)}
    test_codes, grid = codes["test"].tensors[0], codes["grid"]
    diffusion = AbsorbingDiffusionConfig(sample_steps=args.sample_steps, temperature=args.temperature)
    truth = _decode(vqae, test_codes[:1], grid, device)
    rows, panels = {}, [truth]
    for key in args.methods:
        row = rows.setdefault(key, {"label": METHODS[key][0], "psnr": [], "ssim": [], "steps_per_s": [],
                                    "fallbacks": []})
        for seed in args.seeds:
            model, result = train_method(args, key, seed, codes, out, device)
            scores = inpaint(vqae, model, test_codes, grid, diffusion, seed=seed, batch=4)
            row["psnr"].append(float(scores.psnr.mean()))
            row["ssim"].append(float(scores.ssim.mean()))
            row["steps_per_s"].append(result["steps_per_s"])
            row["fallbacks"].append(result["fallbacks"])
            filled = _decode(vqae, scores.codes[:1], grid, device)
            region = scores.region.view(*grid).float()[None, None]
            box = torch.nn.functional.interpolate(region, scale_factor=args.patch // 2, mode="nearest")[0]
            save_slice_grid([truth, truth * (1 - box), filled], out / f"inpaint_{key}_seed{seed}.png")
            if seed == args.seeds[0]:
                panels.append(filled)
            log.info("%s seed %d: PSNR %.2f SSIM %.3f, %.2f steps/s, %d fallbacks", key, seed, row["psnr"][-1],
                     row["ssim"][-1], result["steps_per_s"], result["fallbacks"])
            write_table(rows, out, args)
    random_row = rows.setdefault("random", {"label": "random (VQ-AE alone)", "psnr": [], "ssim": []})
    for seed in args.seeds:
        scores = inpaint(vqae, None, test_codes, grid, diffusion, seed=seed)
        random_row["psnr"].append(float(scores.psnr.mean()))
        random_row["ssim"].append(float(scores.ssim.mean()))
    save_slice_grid(panels, out / "inpaint_methods.png")
    write_table(rows, out, args)
    print((out / "vq_diffusion_3d.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
