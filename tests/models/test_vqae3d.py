"""3D VQ-AE: encoder/decoder shapes, patch layout, whole volumes encoded patch by patch."""
import pytest
import torch

from bitlower.models.vqae3d import (VQAE3DConfig, VQAutoEncoder3D, patches_to_volume, volume_to_patches,
                                    vqae3d)


def tiny(patch=8, **kw):
    torch.manual_seed(0)
    cfg = dict(patch_size=patch, latent_per_patch=2, base_channels=4, max_channels=8, embed_dim=8,
               codebook_heads=2, codebook_size=4)
    return VQAutoEncoder3D(VQAE3DConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("patch, stages", [(8, 2), (16, 3)])
def test_encoder_decoder_shapes(patch, stages):
    model = tiny(patch)
    assert model.config.stages == stages
    x = torch.rand(3, 1, patch, patch, patch)
    z = model.encoder(x)
    assert z.shape == (3, 8, 2, 2, 2)
    assert model.decoder(z).shape == x.shape
    out = model(x)
    assert out["recon"].shape == x.shape and out["codes"].shape == (3, 2, 2, 2, 2)
    assert out["codes"].min() >= 0 and out["codes"].max() < 4


def test_the_seed_configuration():
    model = vqae3d()
    cfg = model.config
    assert (cfg.patch_size, cfg.latent_per_patch, cfg.embed_dim, cfg.codebook_heads, cfg.codebook_size) == \
        (32, 2, 384, 8, 64)
    assert cfg.latent_grid((160, 224, 192)) == (10, 14, 12)  # N = 1680
    assert sum(p.numel() for p in model.decoder.parameters()) == 13_830_081  # the module docstring's 13.8M


def test_patch_layout_round_trips_and_is_row_major():
    x = torch.arange(2 * 1 * 8 * 12 * 4, dtype=torch.float32).view(2, 1, 8, 12, 4)
    patches = volume_to_patches(x, 4)  # grid (2, 3, 1) per volume
    assert patches.shape == (12, 1, 4, 4, 4)
    assert torch.equal(patches[6 + 4], x[1:2, :, 4:8, 4:8, 0:4][0])  # volume 1, patch (1, 1, 0)
    assert torch.equal(patches_to_volume(patches, (2, 3, 1)), x)
    with pytest.raises(ValueError, match="must divide"):
        volume_to_patches(x, 5)


def test_whole_volume_codes_equal_the_codes_of_each_patch():
    model = tiny().eval()
    x = torch.rand(2, 1, 16, 8, 24)
    grid = model.encode_volume(x, chunk=5)  # (2, 4, 2, 6, heads)
    assert grid.shape == (2, 4, 2, 6, 2)
    patches = volume_to_patches(x, 8)  # (12, 1, 8, 8, 8)
    per_patch = model(patches)["codes"]  # (12, 2, 2, 2, heads)
    for n in range(12):
        b, rest = divmod(n, 6)
        i, rest = divmod(rest, 3)
        j, k = divmod(rest, 3)
        assert torch.equal(grid[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2], per_patch[n])
    decoded = model.decode_codes(grid, chunk=7)
    assert decoded.shape == x.shape
    expected = patches_to_volume(model.decoder(model.codebook.lookup(per_patch).permute(0, 4, 1, 2, 3)), (2, 1, 3))
    torch.testing.assert_close(decoded, expected.view_as(decoded))


def test_bad_inputs_raise():
    model = tiny()
    with pytest.raises(ValueError, match="must divide"):
        model.encode_volume(torch.zeros(1, 1, 12, 8, 8))
    with pytest.raises(ValueError, match="expected volumes"):
        model.encode_volume(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="expected codes"):
        model.decode_codes(torch.zeros(1, 2, 2, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="power of two"):
        VQAE3DConfig(patch_size=24, latent_per_patch=2)
    with pytest.raises(ValueError, match="codebook_heads"):
        VQAE3DConfig(embed_dim=30, codebook_heads=8)
