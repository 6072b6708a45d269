"""PSNR and SSIM (2D and 3D) against closed forms and an independent float64 SciPy implementation."""
import math

import numpy as np
import pytest
import torch

from bitlower.models.volume_metrics import K1, K2, psnr, ssim

scipy_ndimage = pytest.importorskip("scipy.ndimage", reason="the SSIM reference uses scipy.ndimage")


def ssim_scipy(x: np.ndarray, y: np.ndarray, data_range=1.0) -> float:
    """Wang et al. SSIM with scipy's Gaussian filter (sigma 1.5, radius 5), cropped to the valid region."""
    blur = lambda a: scipy_ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5)  # radius int(3.5 * 1.5 + 0.5) = 5
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s[(slice(5, -5),) * x.ndim].mean())


@pytest.mark.parametrize("shape", [(23, 17), (13, 16, 12)])
def test_ssim_matches_the_scipy_reference(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    expected = ssim_scipy(x.numpy(), y.numpy())
    got = ssim(x[None, None], y[None, None]).item()
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_ssim_of_constant_volumes_is_the_luminance_term():
    a, b = 0.3, 0.7
    x, y = torch.full((2, 1, 12, 12, 12), a), torch.full((2, 1, 12, 12, 12), b)
    c1 = (K1 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # the contrast-structure term is c2 / c2 = 1
    got = ssim(x, y, reduction="none")
    torch.testing.assert_close(got, torch.full((2,), expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_psnr_known_values():
    x = torch.zeros(3, 1, 4, 4, 4)
    y = x + torch.tensor([0.1, 0.01, 0.5]).view(3, 1, 1, 1, 1)
    torch.testing.assert_close(psnr(x, y, reduction="none"), torch.tensor([20.0, 40.0, 20 * math.log10(2)],
                                                                          dtype=torch.float64))
    assert psnr(x, y * 2, data_range=2.0, reduction="none")[0].item() == pytest.approx(20.0)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 1, 12, 12), torch.zeros(1, 1, 12, 13))
    with pytest.raises(ValueError, match="win_size"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ssim(torch.zeros(12, 12), torch.zeros(12, 12))
