"""Built-in augmentations: batched, seeded, 2D and 3D, including the Models Genesis family.

Spatial (fused by :class:`ssltk.augment.Pipeline`): random_resized_crop, flip, affine.
Filters: gaussian_blur, gaussian_noise, cutout. Intensity: gamma, contrast, bias_field,
intensity, zscore. Models Genesis: genesis_nonlinear, genesis_local_shuffle, genesis_inpaint,
genesis_outpaint, genesis_paint. See docs/augmentations.md.
"""

from ssltk import hookimpl
from ssltk_augment.erase import Cutout
from ssltk_augment.filters import GaussianBlur, GaussianNoise
from ssltk_augment.genesis import GenesisLocalShuffle, GenesisNonlinear
from ssltk_augment.genesis_paint import GenesisInpaint, GenesisOutpaint, GenesisPaint
from ssltk_augment.intensity import BiasField, Contrast, Gamma, Intensity, ZScore
from ssltk_augment.spatial import Affine, Flip, RandomResizedCrop

AUGMENTATIONS = (
    RandomResizedCrop, Flip, Affine, GaussianBlur, GaussianNoise, Cutout,
    Gamma, Contrast, BiasField, Intensity, ZScore,
    GenesisNonlinear, GenesisLocalShuffle, GenesisInpaint, GenesisOutpaint, GenesisPaint,
)

__all__ = [cls.__name__ for cls in AUGMENTATIONS] + ["AUGMENTATIONS"]


@hookimpl
def register_augmentations(register):
    for cls in AUGMENTATIONS:
        register(cls)
