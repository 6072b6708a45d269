"""Diffusion Transformer (DiT) with adaLN-Zero conditioning.

Parameter names match the public DiT checkpoints (``x_embedder.proj``, ``t_embedder.mlp.0/2``,
``y_embedder.embedding_table``, ``pos_embed``, ``blocks.i.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2,
adaLN_modulation.1}``, ``final_layer.{linear,adaLN_modulation.1}``). DiT-XL/2 at 256px (32x32x4
latent, 1000 classes, learned sigma) has 675,129,632 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .attention import Attention, set_attention_metadata
from .layers import Mlp, PatchEmbed, sincos_2d_pos_embed, timestep_embedding


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a DiT.

    Args:
        input_size: latent height and width (int or pair); 32 for 256px images.
        patch_size: patch size (2, 4 or 8 in the published models).
        in_channels: latent channels.
        hidden_size: token width C.
        depth: number of blocks.
        num_heads: heads per block.
        mlp_ratio: MLP hidden width / C.
        class_dropout_prob: probability of replacing a label by the null class while training
            (classifier-free guidance); > 0 adds the null row to the label table.
        num_classes: number of class labels.
        learn_sigma: predict the variance too (output channels = 2 x in_channels).
    """

    input_size: int | tuple[int, int] = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample (B, C) shift/scale over (B, N, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Timesteps (B,) → sinusoidal features (B, 256) → MLP → (B, C)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))  # (B, C)


class LabelEmbedder(nn.Module):
    """Class labels (B,) → (B, C); label ``num_classes`` is the null class of guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        has_null = int(dropout_prob > 0)
        self.embedding_table = nn.Embedding(num_classes + has_null, hidden_size)

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None):
        """Replace labels by the null class: at random while training, or where ids == 1."""
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids=None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (B, C)


class DiTBlock(nn.Module):
    """Transformer block whose norms are modulated by the conditioning (adaLN-Zero)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + gate_mlp.unsqueeze(1) * self.mlp(h)  # (B, N, C)


class FinalLayer(nn.Module):
    """Modulated norm then a Linear to ``patch_size**2 * out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, C)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*Co)


class DiT(nn.Module):
    """Class-conditional diffusion transformer over latents.

    Args:
        config: a ``DiTConfig``.

    Example:
        >>> cfg = DiTConfig(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
        ...                 num_classes=10)
        >>> model = DiT(cfg)
        >>> model(torch.zeros(2, 4, 8, 8), torch.tensor([1., 500.]), torch.tensor([0, 3])).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = config.patch_size
        C = config.hidden_size
        self.x_embedder = PatchEmbed(config.input_size, config.patch_size, config.in_channels, C)
        self.grid_size = self.x_embedder.grid_size
        self.t_embedder = TimestepEmbedder(C)
        self.y_embedder = LabelEmbedder(config.num_classes, C, config.class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos table, kept as a frozen Parameter because the public checkpoints store it.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, C), requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(C, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(C, config.patch_size, self.out_channels)
        set_attention_metadata(self, self.grid_size, num_prefix_tokens=0)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation; adaLN modulations and the final Linear start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        table = sincos_2d_pos_embed(self.config.hidden_size, self.grid_size)  # (N, C)
        self.pos_embed.data.copy_(table.unsqueeze(0))  # (1, N, C)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # (C, Cin*p*p), initialised as a Linear
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zeroed = [blk.adaLN_modulation[-1] for blk in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, Gh*Gw, p*p*Co) → images (B, Co, Gh*p, Gw*p)."""
        p, c = self.patch_size, self.out_channels
        gh, gw = self.grid_size
        x = x.reshape(x.shape[0], gh, gw, p, p, c)  # (B, Gh, Gw, p, p, Co)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, Co, Gh, p, Gw, p)
        return x.reshape(x.shape[0], c, gh * p, gw * p)  # (B, Co, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latents (B, Cin, H, W), timesteps (B,), labels (B,) → (B, Co, H, W)."""
        x = self.x_embedder(x) + self.pos_embed  # (B, N, C)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (B, C)
        for block in self.blocks:
            x = block(x, c)  # (B, N, C)
        x = self.final_layer(x, c)  # (B, N, p*p*Co)
        return self.unpatchify(x)  # (B, Co, H, W)

    def forward_with_cfg(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float
    ) -> torch.Tensor:
        """Classifier-free guidance over a doubled batch.

        The batch holds the conditional half first and the unconditional half (labels equal to
        the null class ``num_classes``) second; the first half of ``x`` is used for both.
        Guidance ``uncond + cfg_scale * (cond - uncond)`` is applied to the first
        ``in_channels`` output channels (the noise prediction); the learned-sigma channels pass
        through unchanged.

        Raises:
            ValueError: if the batch size is odd.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch, got {x.shape[0]}")
        half = x[: x.shape[0] // 2]  # (B/2, Cin, H, W)
        out = self.forward(torch.cat([half, half], dim=0), t, y)  # (B, Co, H, W)
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels :]
        cond, uncond = eps.chunk(2, dim=0)  # 2 x (B/2, Cin, H, W)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)  # (B, Co, H, W)


_DIT_SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}


def dit_config(size: str, patch_size: int, **overrides) -> DiTConfig:
    """Published DiT shape by size (``S``, ``B``, ``L``, ``XL``) and patch size.

    Raises:
        KeyError: for an unknown size.
    """
    key = size.upper()
    if key not in _DIT_SIZES:
        raise KeyError(f"unknown DiT size {size!r}; known: {sorted(_DIT_SIZES)}")
    return replace(DiTConfig(**_DIT_SIZES[key]), patch_size=patch_size, **overrides)


def _factory(size: str, patch_size: int):
    def build(**overrides) -> DiT:
        return DiT(dit_config(size, patch_size, **overrides))

    build.__name__ = f"dit_{size.lower()}_{patch_size}"
    build.__doc__ = f"DiT-{size}/{patch_size}; keyword overrides go to ``DiTConfig``."
    return build


dit_s_2, dit_s_4, dit_s_8 = (_factory("S", p) for p in (2, 4, 8))
dit_b_2, dit_b_4, dit_b_8 = (_factory("B", p) for p in (2, 4, 8))
dit_l_2, dit_l_4, dit_l_8 = (_factory("L", p) for p in (2, 4, 8))
dit_xl_2, dit_xl_4, dit_xl_8 = (_factory("XL", p) for p in (2, 4, 8))
