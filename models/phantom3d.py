"""Procedural 3D head-like phantoms: the embedded default data of the 3D VQ diffusion tasks.

Each volume is an analytic field in the spirit of the 3D Shepp-Logan phantom: a sum of soft-edged
ellipsoids (scalp/skull shell, brain, white matter, two ventricles, ``BLOBS`` random structures),
times a smooth multiplicative bias field, plus Gaussian noise, clamped to [0, 1]. Every volume's
parameters come from a NumPy generator seeded by ``(seed, split, index)``; the noise of a voxel is a
hash of ``(volume key, voxel index)``, so any box of a volume renders identically on its own or as
part of the whole volume (the VQ-AE trains on patches, the transformer on whole volumes).

Grid: the seed's OASIS grid is 160 x 224 x 192 voxels (``SEED_SHAPE``); with 32^3 patches that is
5 x 7 x 6 = 210 patches per volume and, at 2 x 2 x 2 codes per patch, a 10 x 14 x 12 latent grid
(N = 1680). ``SMALL_SHAPE`` (80 x 112 x 96) with 16^3 patches gives the same latent grid at 1/8 of
the voxels. Axes are (D, H, W) = (left-right, anterior-posterior, inferior-superior).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

SEED_SHAPE = (160, 224, 192)
SMALL_SHAPE = (80, 112, 96)
SPLITS = {"train": 0, "test": 1}
BLOBS = 6  # random inner structures per volume (a fixed count keeps every volume's parameter array one shape)
EDGE = 0.04  # soft edge of an ellipsoid in units of its squared normalised radius (~1.3 voxels at 160)
MASK32 = 0xFFFFFFFF
HASH_MULT = 0x45D9F3B  # 32-bit integer hash multiplier (< 2**27, so products stay below 2**63 in int64)


@dataclass(frozen=True)
class PhantomConfig:
    """Phantom set: grid, seed and split sizes.

    Args:
        shape: volume grid (D, H, W) in voxels.
        seed: seeds every volume's parameters and noise.
        train_volumes, test_volumes: sizes of the fixed splits (disjoint parameter streams).
        noise_std: standard deviation of the additive Gaussian noise.

    Raises:
        ValueError: a non-positive size or a negative noise level.
    """

    shape: tuple[int, int, int] = SMALL_SHAPE
    seed: int = 0
    train_volumes: int = 64
    test_volumes: int = 8
    noise_std: float = 0.02

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive ints (D, H, W), got {self.shape}")
        object.__setattr__(self, "shape", shape)
        if self.train_volumes < 1 or self.test_volumes < 1:
            raise ValueError(f"train_volumes and test_volumes must be positive, got {self.train_volumes}, "
                             f"{self.test_volumes}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    def volumes(self, split: str) -> int:
        return self.train_volumes if _split_id(split) == 0 else self.test_volumes


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _hash32(x):
    """A 32-bit integer mix (works on Python ints and int64 tensors holding values < 2**32)."""
    x = (((x >> 16) ^ x) * HASH_MULT) & MASK32
    x = (((x >> 16) ^ x) * HASH_MULT) & MASK32
    return (x >> 16) ^ x


def volume_key(seed: int, split: str, index: int) -> int:
    """The 32-bit key of one volume (its parameters' seed and its noise's salt)."""
    return _hash32(_hash32(_hash32(seed & MASK32) ^ _split_id(split)) ^ (index & MASK32))


def _rotation(yaw: float, tilt: float) -> np.ndarray:
    """Rotation by ``yaw`` in the (H, W) plane then ``tilt`` in the (D, W) plane, (3, 3)."""
    cy, sy, ct, st = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
    r_yaw = np.array([[1, 0, 0], [0, cy, -sy], [0, sy, cy]])
    r_tilt = np.array([[ct, 0, -st], [0, 1, 0], [st, 0, ct]])
    return r_tilt @ r_yaw


@lru_cache(maxsize=1024)
def phantom_parameters(key: int) -> dict:
    """Parameters of one volume: ellipsoids (E, 3+3+9+1) [centre, semi-axes, rotation, value] in the
    head frame, the head pose and the bias field. Deterministic in ``key``."""
    rng = np.random.default_rng(key)
    head = np.array([0.80, 0.86, 0.82]) * rng.uniform(0.92, 1.04, 3)
    rows = [(np.zeros(3), head, 0.0, 1.0),  # scalp and skull
            (np.zeros(3), head * 0.93, 0.0, -0.75),  # inside the skull: CSF level 0.25
            (np.zeros(3), head * 0.89, 0.0, 0.35),  # brain (grey matter) 0.6
            (rng.normal(0, 0.02, 3), head * rng.uniform(0.7, 0.8, 3), rng.normal(0, 0.1), 0.25)]  # white matter
    spread = rng.uniform(0.10, 0.16)
    for side in (-1, 1):  # lateral ventricles
        centre = np.array([side * spread, rng.normal(0.0, 0.03), rng.normal(0.05, 0.03)])
        axes = np.array([0.06, 0.26, 0.11]) * rng.uniform(0.8, 1.2, 3)
        rows.append((centre, axes, side * rng.uniform(0.1, 0.35), -0.55))
    for _ in range(BLOBS):
        direction = rng.normal(size=3)
        centre = direction / np.linalg.norm(direction) * rng.uniform(0.0, 0.55) * head
        value = rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.2)
        rows.append((centre, rng.uniform(0.05, 0.2, 3), rng.uniform(-math.pi, math.pi), value))
    ellipsoids = np.stack([np.concatenate([c, a, _rotation(angle, 0.0).ravel(), [v]]) for c, a, angle, v in rows])
    return {
        "ellipsoids": ellipsoids,  # (E, 16)
        "rotation": _rotation(rng.normal(0, 0.12), rng.normal(0, 0.06)),  # head pose (3, 3)
        "shift": rng.normal(0, 0.03, 3),
        "bias_freq": rng.uniform(-1.5, 1.5, (3, 3)),  # three cosines of the bias field
        "bias_phase": rng.uniform(0, 2 * math.pi, 3),
        "bias_amp": rng.uniform(0.03, 0.08),
    }


def _voxel_noise(keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Standard normal noise per voxel from a hash of the volume keys (B,) and voxel indices (B, M, 3)."""
    def chain(salt: int) -> torch.Tensor:
        h = _hash32((keys * 2 + salt) & MASK32)[:, None].expand(index.shape[:2])  # (B, M)
        for axis in range(3):
            h = _hash32(h ^ index[..., axis])
        return h

    u1 = (chain(0).double() + 0.5) / 2.0 ** 32  # uniform in (0, 1)
    u2 = (chain(1).double() + 0.5) / 2.0 ** 32
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()  # (B, M), Box-Muller


def _stacked(keys: list[int], device) -> dict[str, torch.Tensor]:
    """The parameters of several volumes stacked along a leading batch axis, float64 on ``device``."""
    params = [phantom_parameters(k) for k in keys]
    return {name: torch.as_tensor(np.stack([np.asarray(p[name]) for p in params]), dtype=torch.float64,
                                  device=device) for name in params[0]}


def render_points(config: PhantomConfig, keys: list[int], grid: torch.Tensor) -> torch.Tensor:
    """Phantom values at integer voxel indices ``grid`` (B, M, 3) of the volumes ``keys``, float32 (B, M).

    Vectorised over the batch: one pass per ellipsoid row, whatever B is. Runs on ``grid``'s device.
    """
    p = _stacked(keys, grid.device)
    extent = torch.tensor(config.shape, dtype=torch.float64, device=grid.device)
    u = (grid.double() + 0.5) * 2 / extent - 1  # (B, M, 3) normalised to [-1, 1]
    x = (u - p["shift"][:, None]) @ p["rotation"]  # (B, M, 3) head frame
    value = torch.zeros(x.shape[:2], dtype=torch.float64, device=grid.device)
    for row in p["ellipsoids"].unbind(1):  # (B, 16) per ellipsoid
        centre, semi, v = row[:, None, :3], row[:, None, 3:6], row[:, 15:16]
        rot = row[:, 6:15].view(-1, 3, 3)  # (B, 3, 3)
        q = (((x - centre) @ rot) / semi).pow(2).sum(-1)  # (B, M) squared normalised radius
        value += v * torch.sigmoid((1 - q) / EDGE)
    phase = x @ p["bias_freq"].transpose(1, 2) * math.pi + p["bias_phase"][:, None]  # (B, M, 3)
    value *= 1 + p["bias_amp"][:, None] * torch.cos(phase).mean(-1)
    keys_t = torch.tensor(keys, dtype=torch.int64, device=grid.device)
    value = value.float() + config.noise_std * _voxel_noise(keys_t, grid)
    return value.clamp(0.0, 1.0)  # (B, M)


def _box_indices(starts: list[tuple[int, int, int]], size: tuple[int, int, int], device) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.int64, device=device) for n in size]
    local = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, 3)  # (1, M, 3)
    return local + torch.tensor(starts, dtype=torch.int64, device=device)[:, None]  # (B, M, 3)


def _check_box(config: PhantomConfig, split: str, index: int, start, size) -> None:
    if any(s < 0 or s + n > g or n < 1 for s, n, g in zip(start, size, config.shape)):
        raise ValueError(f"box start {start} size {size} is outside the volume {config.shape}")
    if not 0 <= index < config.volumes(split):
        raise ValueError(f"volume index {index} outside the {split} split of {config.volumes(split)} volumes")


def render_box(config: PhantomConfig, split: str, index: int, start, size, device=None) -> torch.Tensor:
    """Voxels ``start .. start + size`` (per axis) of one volume, float32 (size_D, size_H, size_W).

    Raises:
        ValueError: a box outside the volume or an index outside the split.
    """
    start, size = tuple(int(s) for s in start), tuple(int(s) for s in size)
    _check_box(config, split, index, start, size)
    grid = _box_indices([start], size, device)  # (1, M, 3)
    return render_points(config, [volume_key(config.seed, split, index)], grid).view(*size)  # (sD, sH, sW)


def render_volume(config: PhantomConfig, split: str, index: int, device=None) -> torch.Tensor:
    """A whole volume, (1, D, H, W)."""
    return render_box(config, split, index, (0, 0, 0), config.shape, device).unsqueeze(0)


class PhantomVolumes(Dataset):
    """Whole phantom volumes of one split: item ``i`` is ``(volume (1, D, H, W),)``.

    Args:
        config: the ``PhantomConfig``.
        split: ``"train"`` or ``"test"``.
        device: where volumes are rendered (a GPU renders a 160 x 224 x 192 volume in milliseconds).

    Example:
        >>> ds = PhantomVolumes(PhantomConfig(shape=(16, 16, 16), train_volumes=2), "train")
        >>> ds[0][0].shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(self, config: PhantomConfig, split: str = "train", device=None):
        self.config, self.split, self.device = config, split, device
        self.shape = config.shape
        self.length = config.volumes(split)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return (render_volume(self.config, self.split, int(i), self.device),)


class PhantomPatches(Dataset):
    """Non-overlapping ``patch``^3 boxes of every volume of a split: item ``i`` is ``(patch (1, P, P, P),)``.

    Item ``i`` is patch ``i % per_volume`` (row-major over the patch grid) of volume ``i // per_volume``.
    ``get_batch`` renders a whole batch in one vectorised pass (the trainer's ``collate`` calls it).

    Raises:
        ValueError: ``patch`` does not divide the grid.
    """

    def __init__(self, config: PhantomConfig, split: str, patch: int, device=None):
        if patch < 1 or any(g % patch for g in config.shape):
            raise ValueError(f"patch {patch} must divide the phantom grid {config.shape}")
        self.config, self.split, self.patch, self.device = config, split, patch, device
        self.grid = tuple(g // patch for g in config.shape)
        self.per_volume = self.grid[0] * self.grid[1] * self.grid[2]
        self.length = config.volumes(split) * self.per_volume

    def __len__(self) -> int:
        return self.length

    def locate(self, i: int) -> tuple[int, tuple[int, int, int]]:
        """``(volume index, voxel start of the patch)`` of item ``i``."""
        if not 0 <= i < self.length:
            raise IndexError(f"patch index {i} outside [0, {self.length})")
        volume, rest = divmod(int(i), self.per_volume)
        a, rest = divmod(rest, self.grid[1] * self.grid[2])
        b, c = divmod(rest, self.grid[2])
        return volume, (a * self.patch, b * self.patch, c * self.patch)

    def __getitem__(self, i: int):
        return tuple(t[0] for t in self.get_batch(torch.tensor([int(i)])))

    def get_batch(self, indices: torch.Tensor):
        located = [self.locate(int(i)) for i in indices]
        keys = [volume_key(self.config.seed, self.split, v) for v, _ in located]
        grid = _box_indices([start for _, start in located], (self.patch,) * 3, self.device)  # (B, P^3, 3)
        values = render_points(self.config, keys, grid)  # (B, P^3)
        return (values.view(len(located), 1, self.patch, self.patch, self.patch),)  # (B, 1, P, P, P)
