"""Diffusion quality on digits: a small class-conditional DiT, full precision vs binary attention.

Question: does QAT + distillation give a binary-attention DiT whose samples are as good as the
full-precision one's?

Model: DiT on 8x8 one-channel digits, patch 2 (16 tokens), width 128, 4 blocks, 4 heads (D 32),
DDPM objective (linear schedule, 1000 steps), DDIM sampling (50 steps, guidance 2). The binary
model starts from the trained full-precision model (BinaryAttention preset: mean_abs scalars,
relative-position bias, STE) and is QAT-trained with the teacher's prediction distilled in (MSE).

Metrics per model: denoising loss (MSE of the predicted noise on the test split); Fréchet
distance between classifier features of 1,000 class-conditional samples (100 per class) and of
the test split; accuracy of that classifier on the samples w.r.t. the class asked for. The
classifier (a small CNN trained here on the digits train split; its test accuracy is reported)
is the project's own. A PNG grid of samples per model (rows = classes).

Run: ``python benchmarks/diffusion_digits.py --out runs/diffusion`` (GPU: a few minutes;
CPU: ``--steps 300 --qat-steps 200`` for a quick look). Writes ``diffusion_digits.{json,md}``
and ``samples_<model>.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitlower.models import DiT, DiTConfig, load_digits_tensors
from bitlower.runtime import DiffusionConfig, NoiseSchedule, TrainConfig, binarize_, ddim_sample, preset, train_diffusion
from bitlower.runtime.distributed import DistContext
from bitlower.runtime.tasks import DiffusionTask
from torch.utils.data import TensorDataset

log = logging.getLogger("diffusion_digits")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="full-precision training steps")
    parser.add_argument("--qat-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile-backend", default=None)
    parser.add_argument("--out", default="runs/diffusion")
    return parser.parse_args()


class DigitsClassifier(nn.Module):
    """Small CNN on 8x8 digits; ``features`` (64-d) is the Fréchet-distance space."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.GELU(),  # (B, 64, 4, 4)
            nn.Flatten(), nn.Linear(64 * 16, 64), nn.GELU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier_net(x, y, device, steps=1500, seed=0) -> DigitsClassifier:
    torch.manual_seed(seed)
    net = DigitsClassifier().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=gen)  # mild noise: robust to sample noise
        loss = nn.functional.cross_entropy(net(xb.to(device)), y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca Cb)^(1/2))`` on float64 features."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigvals = np.linalg.eigvals(cov_a @ cov_b)
    sqrt_trace = np.sqrt(np.clip(eigvals.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * sqrt_trace)


def small_dit() -> DiT:
    return DiT(DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4,
                         class_dropout_prob=0.1, num_classes=10, learn_sigma=False))


@torch.no_grad()
def sample_grid(model, schedule, per_class: int, device, seed: int):
    labels = torch.arange(10, device=device).repeat_interleave(per_class)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for chunk in labels.split(500):
        out.append(ddim_sample(model.eval(), schedule, (len(chunk), 1, 8, 8), chunk, generator=gen))
    return torch.cat(out), labels


def evaluate(name, model, schedule, classifier, test, args, device, out: Path) -> dict:
    model.eval()
    samples, labels = sample_grid(model, schedule, args.samples_per_class, device, args.seed)
    with torch.no_grad():
        feats = classifier.features(samples.float()).double().cpu().numpy()
        ref = classifier.features(test[0].to(device)).double().cpu().numpy()
        acc = (classifier(samples.float()).argmax(-1) == labels).float().mean().item()
    save_grid(samples, args.samples_per_class, out / f"samples_{name}.png", name)
    return {"frechet_distance": frechet_distance(feats, ref), "sample_accuracy": acc}


def save_grid(samples, per_class, path: Path, title: str, cols: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = samples.view(10, per_class, 8, 8)[:, :cols].cpu()  # (classes, cols, 8, 8)
    image = grid.permute(0, 2, 1, 3).reshape(10 * 8, cols * 8)
    plt.figure(figsize=(cols * 0.5, 5.2))
    plt.imshow(image, cmap="gray")
    plt.axis("off")
    plt.title(title)
    plt.savefig(path, dpi=100, bbox_inches="tight")
    plt.close()


def main():
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_x, train_y = load_digits_tensors("train")
    test_x, test_y = load_digits_tensors("test")
    classifier = train_classifier_net(train_x, train_y, device, seed=args.seed)
    with torch.no_grad():
        clf_acc = (classifier(test_x.to(device)).argmax(-1).cpu() == test_y).float().mean().item()
    train_set = TensorDataset(train_x.to(device), train_y.to(device))
    test_set = TensorDataset(test_x.to(device), test_y.to(device))
    diffusion = DiffusionConfig(cfg_scale=args.cfg_scale)
    schedule = NoiseSchedule(diffusion)
    common = dict(batch_size=args.batch_size, seed=args.seed, progress=False, log_every=0, ema_decay=None,
                  compile_backend=args.compile_backend)

    torch.manual_seed(args.seed)
    fp = small_dit().to(device)
    fp_metrics = train_diffusion(fp, train_set, TrainConfig(steps=args.steps, lr=1e-3, warmup_steps=100, **common),
                                 diffusion=diffusion, eval_set=test_set)
    student = copy.deepcopy(fp)
    binarize_(student, preset("binary_attention", keep_teacher=False))
    ptq = DiffusionTask(diffusion, 1, 10, eval_set=test_set).evaluate(student, DistContext(device=device))
    qat_metrics = train_diffusion(student, train_set, TrainConfig(steps=args.qat_steps, lr=3e-4, **common),
                                  diffusion=diffusion, teacher=fp, eval_set=test_set)
    results = {"classifier_test_accuracy": clf_acc, "args": vars(args)}
    for name, model, metrics in (("full_precision", fp, fp_metrics), ("binary_qat_distilled", student, qat_metrics)):
        results[name] = {"denoising_mse": metrics["eval_mse"], **evaluate(name, model, schedule, classifier,
                                                                          (test_x, test_y), args, device, out)}
    results["post_training_binarized"] = {"denoising_mse": ptq["eval_mse"]}
    table = "\n".join([
        f"Digits classifier test accuracy: {100 * clf_acc:.2f}%", "",
        "| model | denoising MSE (test) | Fréchet distance | sample accuracy (%) |", "|---|---|---|---|",
        *(f"| {n} | {results[n]['denoising_mse']:.4f} | {results[n].get('frechet_distance', float('nan')):.3f} | "
          f"{100 * results[n].get('sample_accuracy', float('nan')):.1f} |"
          for n in ("full_precision", "post_training_binarized", "binary_qat_distilled")),
    ])
    print(table, flush=True)
    (out / "diffusion_digits.md").write_text(table + "\n")
    (out / "diffusion_digits.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
