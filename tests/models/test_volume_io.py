"""NIfTI reading/writing on small generated files, PNG slice grids, patches of in-memory volumes."""
import builtins

import numpy as np
import pytest
import torch

from bitlower.models.volume_io import (NiftiVolumes, VolumePatches, fit_to_grid, load_nifti, nifti_files,
                                       normalise_intensity, save_nifti, save_slice_grid, slice_grid)

try:
    import nibabel
except ImportError:  # the optional extra
    nibabel = None
needs_nibabel = pytest.mark.skipif(nibabel is None, reason="nibabel (the optional NIfTI extra) is not installed")


def write(path, data, spacing=(1.0, 1.0, 1.0)):
    image = nibabel.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([*spacing, 1.0]))
    image.header.set_zooms(tuple(spacing) + (1.0,) * (np.ndim(data) - 3))
    nibabel.save(image, str(path))
    return path


@needs_nibabel
def test_nifti_round_trip(tmp_path):
    volume = torch.rand(1, 12, 10, 8)
    path = save_nifti(volume, tmp_path / "v.nii.gz", spacing=(1.0, 1.0, 1.0))
    assert np.array_equal(nibabel.load(str(path)).get_fdata(dtype=np.float32), volume[0].numpy())
    loaded = load_nifti(path, (12, 10, 8))  # same grid, unit voxels: normalisation only
    expected = torch.from_numpy(normalise_intensity(volume[0].numpy()))
    torch.testing.assert_close(loaded[0], expected, rtol=0, atol=1e-6)
    assert loaded.shape == (1, 12, 10, 8) and loaded.min() == 0 and loaded.max() == 1


@needs_nibabel
def test_anisotropic_volume_is_fitted_and_padded(tmp_path):
    data = np.ones((4, 16, 8), dtype=np.float32)
    data[:, :, :2] = 0.0  # a quarter at 0: the normalisation range is [0, 1]
    path = write(tmp_path / "a.nii", data, spacing=(2.0, 1.0, 1.0))  # extent 8 x 16 x 8
    out = load_nifti(path, (16, 16, 16))[0]  # fitted: 8 x 16 x 8, padded by 4 on D and W
    assert out.shape == (16, 16, 16)
    assert out[:4].abs().max() == 0 and out[12:].abs().max() == 0 and out[:, :, :4].abs().max() == 0
    assert out[6, 8, 8] == pytest.approx(1.0)


def test_fit_to_grid_keeps_the_aspect_ratio():
    out = fit_to_grid(torch.ones(10, 20, 10), (1.0, 1.0, 1.0), (8, 8, 8))  # factor 0.4: 4 x 8 x 4
    assert out.shape == (8, 8, 8)
    assert out[2:6, :, 2:6].min() == 1 and out.sum() == 4 * 8 * 4


@needs_nibabel
def test_bad_files_fail_naming_the_file(tmp_path):
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(ValueError, match="junk.nii"):
        load_nifti(junk, (8, 8, 8))
    flat = write(tmp_path / "flat.nii", np.zeros((8, 8, 2, 3)))
    with pytest.raises(ValueError, match="flat.nii: expected a 3D volume"):
        load_nifti(flat, (8, 8, 8))
    nan = np.zeros((8, 8, 8))
    nan[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="bad.nii: holds non-finite"):
        load_nifti(write(tmp_path / "bad.nii", nan), (8, 8, 8))


@needs_nibabel
def test_folder_split_and_dataset(tmp_path):
    for i in range(11):
        write(tmp_path / f"s{i:02d}.nii.gz", np.random.default_rng(i).random((8, 8, 8)))
    (tmp_path / "notes.txt").write_text("ignored")
    test = nifti_files(tmp_path, "test")
    assert [p.name for p in test] == ["s09.nii.gz"]  # every 10th file by name
    assert len(nifti_files(tmp_path, "train")) == 10
    ds = NiftiVolumes(tmp_path, "train", (8, 8, 8))
    patches = VolumePatches(ds, 4)
    assert len(patches) == 10 * 8 and patches[9][0].shape == (1, 4, 4, 4)
    assert torch.equal(patches[9][0], ds[1][0][:, 0:4, 0:4, 4:8])
    with pytest.raises(FileNotFoundError, match="no .nii"):
        nifti_files(_empty(tmp_path), "train")


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_without_nibabel_the_error_says_what_to_install(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel":
            raise ImportError("no nibabel here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    with pytest.raises(ImportError, match="pip install nibabel"):
        load_nifti(tmp_path / "x.nii", (8, 8, 8))


def test_slice_grid_png(tmp_path):
    volumes = [torch.zeros(1, 4, 6, 8), torch.ones(4, 6, 8)]
    grid = slice_grid(volumes, gap=1)
    # one row per volume: slices (6 x 8), (4 x 8), (4 x 6) side by side, padded to height 6, 1-pixel gaps
    assert grid.shape == (2 * (6 + 1), 8 + 1 + 8 + 1 + 6 + 1)
    assert grid[0, 0] == 0 and grid[7, 0] == 255 and grid[6, 0] == 128
    path = save_slice_grid(volumes, tmp_path / "g.png", zoom=2)
    from PIL import Image

    full = slice_grid(volumes)  # the default 2-pixel gaps
    assert Image.open(path).size == (2 * full.shape[1], 2 * full.shape[0])
    assert np.array_equal(np.asarray(Image.open(path))[::2, ::2], full)
