"""Users' 3D volumes as NIfTI files (``nibabel``, optional) and PNG grids of orthogonal slices.

Reading (``load_nifti``): the image's data as float32, a 3D array (a 4D one with one frame is
accepted), intensities clipped to the [0.5, 99.5] percentile range and scaled to [0, 1]; then the
field of view is fitted into the model's grid: the volume is resampled (trilinear) by one factor
chosen from the voxel sizes in the header so that the whole field of view fits with isotropic
output voxels (aspect ratio kept), and zero-padded symmetrically to the grid. A file that cannot be
read, is not 3D, or holds non-finite values fails with a ``ValueError`` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PERCENTILES = (0.5, 99.5)  # robust intensity range: a few hot voxels do not set the scale
TEST_EVERY = 10  # without train/ and test/ subfolders, every 10th file (sorted by name) is a test volume


def _nibabel():
    try:
        import nibabel
    except ImportError as err:  # the optional extra
        raise ImportError("reading and writing NIfTI needs nibabel: pip install nibabel") from err
    return nibabel


def fit_to_grid(volume: torch.Tensor, spacing, shape) -> torch.Tensor:
    """Resample (D, H, W) with voxel sizes ``spacing`` so its field of view fits ``shape``; zero-pad to it."""
    extent = [n * s for n, s in zip(volume.shape, spacing)]  # physical size per axis
    factor = min(t / e for t, e in zip(shape, extent))  # output voxels per physical unit
    size = [max(1, min(t, round(e * factor))) for t, e in zip(shape, extent)]
    out = F.interpolate(volume[None, None].float(), size=size, mode="trilinear", align_corners=False)[0, 0]
    pads = []
    for t, n in reversed(list(zip(shape, size))):  # F.pad wants the last axis first
        pads += [(t - n) // 2, t - n - (t - n) // 2]
    return F.pad(out, pads)  # (D, H, W) == shape


def normalise_intensity(data: np.ndarray) -> np.ndarray:
    """Clip to the ``PERCENTILES`` range and scale to [0, 1] (a constant volume becomes zeros)."""
    lo, hi = np.percentile(data, PERCENTILES)
    if hi <= lo:
        return np.zeros_like(data, dtype=np.float32)
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def load_nifti(path: str | Path, shape) -> torch.Tensor:
    """One NIfTI file as a (1, D, H, W) float32 volume in [0, 1] on ``shape``; see the module docstring.

    Raises:
        ImportError: nibabel is not installed.
        ValueError: the file cannot be read, is not 3D, or holds non-finite values (the message names it).
    """
    nib = _nibabel()
    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise ValueError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got an array of shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: holds non-finite values (NaN or inf)")
    if min(spacing) <= 0:
        raise ValueError(f"{path}: voxel sizes in the header must be positive, got {spacing}")
    volume = torch.from_numpy(normalise_intensity(data))
    return fit_to_grid(volume, spacing, tuple(shape)).unsqueeze(0)  # (1, D, H, W)


def save_nifti(volume: torch.Tensor, path: str | Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write a (D, H, W) or (1, D, H, W) volume as NIfTI-1 (float32, diagonal affine of ``spacing``)."""
    nib = _nibabel()
    data = volume.detach().float().cpu().reshape(volume.shape[-3:]).numpy()
    image = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    image.header.set_zooms(tuple(spacing))
    path = Path(path)
    nib.save(image, str(path))
    return path


def nifti_files(folder: str | Path, split: str) -> list[Path]:
    """The files of a split: ``folder/<split>/*.nii[.gz]`` when that exists, else every ``TEST_EVERY``-th
    file of ``folder`` (sorted by name) for ``"test"`` and the others for ``"train"``.

    Raises:
        FileNotFoundError: no folder or no NIfTI file in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"NIfTI folder not found: {root}")
    sub = root / split
    files = sorted(p for p in (sub if sub.is_dir() else root).iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no .nii or .nii.gz files in {sub if sub.is_dir() else root}")
    if sub.is_dir():
        return files
    test = files[TEST_EVERY - 1::TEST_EVERY] or files[-1:]
    return test if split == "test" else ([f for f in files if f not in test] or files)


class NiftiVolumes(Dataset):
    """A split of a folder of NIfTI files, read once into memory: item ``i`` is ``(volume (1, D, H, W),)``.

    Raises:
        ImportError, FileNotFoundError, ValueError: see ``load_nifti`` and ``nifti_files``.
    """

    def __init__(self, folder: str | Path, split: str, shape):
        self.files = nifti_files(folder, split)
        self.shape = tuple(shape)
        self.volumes = torch.stack([load_nifti(f, self.shape) for f in self.files])  # (V, 1, D, H, W)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return (self.volumes[int(i)],)


def slice_grid(volumes: list[torch.Tensor], gap: int = 2) -> np.ndarray:
    """One row per volume of its three central orthogonal slices (D, H and W axes), uint8 (rows, cols).

    Every volume (D, H, W) or (1, D, H, W) holds values in [0, 1] (clipped); a grey gap separates panels.
    """
    rows = []
    for vol in volumes:
        v = vol.detach().float().cpu().reshape(vol.shape[-3:]).clamp(0, 1).numpy()
        d, h, w = v.shape
        panels = [v[d // 2], v[:, h // 2], v[:, :, w // 2]]  # (H, W), (D, W), (D, H)
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap)), constant_values=0.5) for p in panels]
        rows.append(np.pad(np.concatenate(padded, axis=1), ((0, gap), (0, 0)), constant_values=0.5))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=0.5) for r in rows]
    return (255 * np.concatenate(rows, axis=0)).round().astype(np.uint8)


def save_slice_grid(volumes: list[torch.Tensor], path: str | Path, zoom: int = 2) -> Path:
    """``slice_grid`` written as an 8-bit greyscale PNG, each pixel ``zoom`` x ``zoom``."""
    from PIL import Image

    image = np.kron(slice_grid(volumes), np.ones((zoom, zoom), dtype=np.uint8))
    path = Path(path)
    Image.fromarray(image, mode="L").save(path)
    return path


class VolumePatches(Dataset):
    """Non-overlapping ``patch``^3 boxes of in-memory volumes (a dataset of ``(volume (C, D, H, W),)``).

    Item ``i`` is patch ``i % per_volume`` (row-major over the patch grid) of volume ``i // per_volume``,
    as in ``PhantomPatches``.

    Raises:
        ValueError: ``patch`` does not divide the volumes' grid.
    """

    def __init__(self, volumes: Dataset, patch: int):
        first = volumes[0][0]
        if patch < 1 or any(s % patch for s in first.shape[1:]):
            raise ValueError(f"patch {patch} must divide the volume grid {tuple(first.shape[1:])}")
        self.volumes, self.patch = volumes, patch
        self.grid = tuple(s // patch for s in first.shape[1:])
        self.per_volume = self.grid[0] * self.grid[1] * self.grid[2]
        self.length = len(volumes) * self.per_volume

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        volume, rest = divmod(int(i), self.per_volume)
        a, rest = divmod(rest, self.grid[1] * self.grid[2])
        b, c = divmod(rest, self.grid[2])
        p = self.patch
        v = self.volumes[volume][0]  # (C, D, H, W)
        return (v[:, a * p:(a + 1) * p, b * p:(b + 1) * p, c * p:(c + 1) * p],)  # (C, P, P, P)
