"""bitlower: 1-bit query/key attention for vision and diffusion transformers.

Public API:
    binary_attention: the operator (exact PyTorch reference on CPU, fused Triton kernels on CUDA).
    AttentionConfig: the validated description of the binary math.
    TokenWeighting, bilinear_planes: learned and sampled weighting scalars.
"""
from bitlower.config import AttentionConfig
from bitlower.counters import counters
from bitlower.functional import binary_attention
from bitlower.weighting import TokenWeighting, bilinear_planes

__all__ = ["AttentionConfig", "TokenWeighting", "binary_attention", "bilinear_planes", "counters"]
__version__ = "0.1.0"
