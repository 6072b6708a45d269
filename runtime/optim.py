"""AdamW with decay groups, warmup + cosine learning-rate schedule, and an exponential moving average."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

# Parameters that get no weight decay: biases, norms, tokens, position tables and the learned
# binary-attention parts (tables, per-head bias), as in DeiT (1-d parameters and named tokens).
NO_DECAY_NAMES = ("cls_token", "dist_token", "pos_embed", "rel_pos_table", "head_bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices and undecayed 1-d parameters/tokens/tables."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.dim() <= 1 or any(token in name for token in NO_DECAY_NAMES)
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``foreach=False`` keeps the update order the same on every device."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), foreach=False)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate: linear from 0 over ``warmup`` steps, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, warmup: int, total: int, min_ratio: float = 0.0):
    """``LambdaLR`` of ``warmup_cosine``, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))


class EMA:
    """Exponential moving average of a model's parameters and buffers (DiT: decay 0.9999).

    ``shadow`` is a frozen copy of the model; ``update`` runs after each optimizer step:
    ``shadow = decay * shadow + (1 - decay) * param``; buffers are copied.

    Example:
        >>> ema = EMA(nn.Linear(2, 2), decay=0.9)
        >>> ema.update(nn.Linear(2, 2))
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.named_parameters():
            shadow.lerp_(params[name].detach(), 1.0 - self.decay)
        buffers = dict(model.named_buffers())
        for name, shadow in self.shadow.named_buffers():
            shadow.copy_(buffers[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.shadow.load_state_dict(state["shadow"])
