"""Reference models (ViT/DeiT, DiT, pixel transformer, segmentation ViT) and datasets for bitlower.

Every model's attention is ``bitlower.models.attention.Attention``, whose math is one
``F.scaled_dot_product_attention`` call; see ``registry.py`` for the model names.

Example:
    >>> from bitlower.models import create_model, load_dataset
    >>> model = create_model("pixel_tiny", img_size=8, in_chans=1, depth=1)
    >>> x, y = load_dataset("digits", "train")[0]
    >>> model(x[None]).shape
    torch.Size([1, 10])
"""

from .absorbing3d import AbsorbingConfig, AbsorbingTransformer3D, absorbing3d
from .attention import Attention, set_attention_metadata
from .cifar import load_cifar
from .data import detect_format, load_dataset
from .digits import digits_dataset, load_digits_tensors
from .dit import (
    DiT,
    DiTConfig,
    dit_b_2,
    dit_b_4,
    dit_b_8,
    dit_config,
    dit_l_2,
    dit_l_4,
    dit_l_8,
    dit_s_2,
    dit_s_4,
    dit_s_8,
    dit_xl_2,
    dit_xl_4,
    dit_xl_8,
)
from .image_dataset import ImageDataset
from .imagefolder import ImageFolderDataset
from .layers import resample_pos_embed, sincos_2d_pos_embed
from .phantom3d import PhantomConfig, PhantomPatches, PhantomVolumes
from .pixel import PixelConfig, PixelTransformer, pixel_config, pixel_small, pixel_tiny
from .registry import create_model, list_models, register_model
from .seg_data import load_segmentation
from .seg_dataset import SegmentationTensors
from .seg_decoder import SegmentationDecoder
from .seg_digits import digit_canvases
from .seg_folder import SegmentationFolder
from .seg_nifti import nifti_slices
from .seg_pretrained import NO_REINIT, SEED_REINIT, ReinitConfig, load_encoder, reinitialise_
from .segmentation import SegmentationConfig, SegmentationViT, seg_vit
from .volume_io import NiftiVolumes, VolumePatches, load_nifti, save_nifti, save_slice_grid
from .volume_metrics import psnr, ssim
from .vqae3d import VQAE3DConfig, VQAutoEncoder3D, vqae3d
from .vit import (
    ViTConfig,
    VisionTransformer,
    deit_base_distilled,
    deit_small_distilled,
    deit_tiny_distilled,
    vit_base,
    vit_config,
    vit_large,
    vit_small,
    vit_tiny,
)

__all__ = [
    "AbsorbingConfig",
    "AbsorbingTransformer3D",
    "NiftiVolumes",
    "PhantomConfig",
    "PhantomPatches",
    "PhantomVolumes",
    "VQAE3DConfig",
    "VQAutoEncoder3D",
    "VolumePatches",
    "absorbing3d",
    "load_nifti",
    "psnr",
    "save_nifti",
    "save_slice_grid",
    "ssim",
    "vqae3d",
    "Attention",
    "DiT",
    "DiTConfig",
    "ImageDataset",
    "ImageFolderDataset",
    "NO_REINIT",
    "PixelConfig",
    "PixelTransformer",
    "ReinitConfig",
    "SEED_REINIT",
    "SegmentationConfig",
    "SegmentationDecoder",
    "SegmentationFolder",
    "SegmentationTensors",
    "SegmentationViT",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "deit_base_distilled",
    "deit_small_distilled",
    "deit_tiny_distilled",
    "detect_format",
    "digit_canvases",
    "digits_dataset",
    "dit_b_2",
    "dit_b_4",
    "dit_b_8",
    "dit_config",
    "dit_l_2",
    "dit_l_4",
    "dit_l_8",
    "dit_s_2",
    "dit_s_4",
    "dit_s_8",
    "dit_xl_2",
    "dit_xl_4",
    "dit_xl_8",
    "list_models",
    "load_cifar",
    "load_dataset",
    "load_digits_tensors",
    "load_encoder",
    "load_segmentation",
    "nifti_slices",
    "pixel_config",
    "pixel_small",
    "pixel_tiny",
    "register_model",
    "reinitialise_",
    "resample_pos_embed",
    "set_attention_metadata",
    "seg_vit",
    "sincos_2d_pos_embed",
    "vit_base",
    "vit_config",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
