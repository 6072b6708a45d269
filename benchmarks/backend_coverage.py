"""Does ``torch.compile(backend="bitlower")`` rewrite every attention site of real models? (H100)

Builds, without weights, a timm ViT-S/16 (``vit_small_patch16_224``) and a diffusers DiT
(``DiTTransformer2DModel`` with DiT-XL/2's width: 16 heads x 72 = 1152 channels, patch 2,
32x32 latents = 256 tokens, but ``--dit-layers`` blocks instead of 28 to keep compile
time short), runs each in bf16 on CUDA and prints:

* every attention site (``bitlower.explain``) with its module path and status,
* the counts found / rewritten / skipped from ``bitlower.counters``,
* the max error of the compiled model against the binary reference: the same model run
  eagerly with ``F.scaled_dot_product_attention`` replaced by ``bitlower.binary_attention``
  (both models call SDPA), and, for scale, against the unmodified full-precision attention,
* median forward time of ``backend="inductor"`` and ``backend="bitlower"``.

Run: ``python benchmarks/backend_coverage.py`` (needs timm and diffusers; exits 1 if a site
is skipped). No results are committed.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys

import torch
import torch.nn.functional as F

import bitlower
from bitlower.counters import counters
from bitlower.explain import explain


@contextlib.contextmanager
def binary_sdpa():
    """``F.scaled_dot_product_attention`` replaced by the binary operator (no causal, no dropout)."""
    original = F.scaled_dot_product_attention

    def binary(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **unused):
        assert not is_causal and dropout_p == 0.0
        return bitlower.binary_attention(q, k, v, scale=scale, bias=attn_mask)

    F.scaled_dot_product_attention = binary
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def timm_vit(batch: int):
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False)
    return model, (torch.randn(batch, 3, 224, 224),), {}


def diffusers_dit(batch: int, layers: int):
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                  num_layers=layers, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    kwargs = {"timestep": torch.randint(0, 1000, (batch,)), "class_labels": torch.randint(0, 1000, (batch,))}
    return model, (torch.randn(batch, 4, 32, 32),), kwargs


def _output(out):
    return out.sample if hasattr(out, "sample") else out


def median_ms(fn, repeats: int = 20) -> float:
    """Median of ``repeats`` CUDA-event timings of ``fn()`` after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_model(name: str, model, args, kwargs) -> bool:
    """Print the sites, counts, errors and timings of one model; True when every site is rewritten."""
    dev, dtype = "cuda", torch.bfloat16
    model = model.to(dev, dtype).eval()
    args = tuple(a.to(dev, dtype) if a.is_floating_point() else a.to(dev) for a in args)
    kwargs = {k: v.to(dev) for k, v in kwargs.items()}
    print(f"\n== {name}")
    torch._dynamo.reset()
    with torch.no_grad():
        report = explain(model, *args, **kwargs)
    print(report)
    counters.clear()
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="bitlower", fullgraph=True)
        got = _output(compiled(*args, **kwargs)).float()
        with binary_sdpa():
            want = _output(model(*args, **kwargs)).float()
        full = _output(model(*args, **kwargs)).float()
        print("counters:", {group: dict(c) for group, c in counters.items()})
        print(f"max |compiled - binary reference| = {(got - want).abs().max().item():.4g} "
              f"(max |reference| {want.abs().max().item():.4g}); "
              f"max |compiled - full precision| = {(got - full).abs().max().item():.4g}")
        inductor = torch.compile(model, backend="inductor", fullgraph=True)
        t_ind = median_ms(lambda: inductor(*args, **kwargs))
        t_bin = median_ms(lambda: compiled(*args, **kwargs))
    print(f"forward median: inductor {t_ind:.3f} ms, bitlower {t_bin:.3f} ms")
    return report.counts["skipped"] == 0 and report.counts["found"] > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dit-layers", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=["timm", "dit"], choices=["timm", "dit"])
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    ok = True
    builders = {
        "timm": ("timm vit_small_patch16_224", lambda: timm_vit(opts.batch)),
        "dit": (f"diffusers DiTTransformer2DModel (DiT-XL/2 width, {opts.dit_layers} layers)",
                lambda: diffusers_dit(opts.batch, opts.dit_layers)),
    }
    for name, build in (builders[key] for key in opts.models):
        try:
            model, args, kwargs = build()
        except ImportError as err:
            print(f"\n== {name}: cannot build ({err})")
            ok = False
            continue
        ok = check_model(name, model, args, kwargs) and ok
    print("\nall sites rewritten" if ok else "\nSOME SITES NOT REWRITTEN (see tables above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
