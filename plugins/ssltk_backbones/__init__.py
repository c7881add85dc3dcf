"""Built-in backbones: MONAI ResNet-10/18/34/50 and DenseNet-121, 2D and 3D."""

from ssltk import hookimpl
from ssltk_backbones.densenet import DenseNet121
from ssltk_backbones.resnet import ResNet10, ResNet18, ResNet34, ResNet50

__all__ = ["DenseNet121", "ResNet10", "ResNet18", "ResNet34", "ResNet50"]


@hookimpl
def register_backbones(register):
    for cls in (ResNet10, ResNet18, ResNet34, ResNet50, DenseNet121):
        register(cls)
