"""NIfTI volumes read slice-wise (optional extra: skipped, with the reason shown, when nibabel is missing)."""
from __future__ import annotations

import numpy as np
import pytest

from bitlower.models import load_segmentation, nifti_slices

nib = pytest.importorskip("nibabel", reason="nibabel (optional extra) is not installed: NIfTI tests skipped")


def _write_nifti(path, data):
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _nifti_set(root, cases=("c1", "c2"), shape=(6, 5, 3)):
    rng = np.random.default_rng(0)
    for tag in ("Tr", "Va"):
        (root / f"images{tag}").mkdir(parents=True)
        (root / f"labels{tag}").mkdir(parents=True)
        for case in cases:
            _write_nifti(root / f"images{tag}" / f"{case}_0000.nii.gz", rng.normal(size=shape).astype(np.float32))
            labels = rng.integers(0, 3, shape).astype(np.int16)
            _write_nifti(root / f"labels{tag}" / f"{case}.nii.gz", labels)
    return root


def test_nifti_volumes_are_read_slice_wise(tmp_path):
    root = _nifti_set(tmp_path)
    ds = nifti_slices(root, "train", image_size=(6, 5), axis=2)
    assert len(ds) == 2 * 3 and ds.num_classes == 3
    labels = np.asarray(nib.load(str(root / "labelsTr/c1.nii.gz")).dataobj)
    assert ds.masks[1].tolist() == labels[:, :, 1].tolist()  # case c1, slice 1 (sorted cases)
    x, _ = ds[0]
    assert x.shape == (1, 6, 5) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(load_segmentation(str(root), "test", 4)) == 6  # bare path: NIfTI layout detected


@pytest.mark.parametrize("breakage,match", [
    ("missing_label", "c2_0000.nii.gz has no label volume"),
    ("corrupt", "cannot read NIfTI volume .*c1.nii.gz"),
    ("shape", "c1_0000.nii.gz is \\(6, 5, 3\\) but labels"),
    ("fractional", "c1.nii.gz holds values"),
])
def test_nifti_bad_inputs_name_the_file(tmp_path, breakage, match):
    root = _nifti_set(tmp_path)
    labels = root / "labelsTr"
    if breakage == "missing_label":
        (labels / "c2.nii.gz").unlink()
    elif breakage == "corrupt":
        (labels / "c1.nii.gz").write_bytes(b"\x1f\x8b broken")
    elif breakage == "shape":
        _write_nifti(labels / "c1.nii.gz", np.zeros((6, 5, 2), np.int16))
    elif breakage == "fractional":
        _write_nifti(labels / "c1.nii.gz", np.full((6, 5, 3), 0.5, np.float32))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        nifti_slices(root, "train", image_size=4)
