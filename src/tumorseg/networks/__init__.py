"""Networks of the bundle beyond MONAI's, pretrained-weight loading and fine-tuning helpers.

* :class:`TransUNet`: CNN encoder, transformer bottleneck, U-Net decoder (2D/3D);
* :class:`ResEncUNet`: U-Net with a MedicalNet-compatible 3D ResNet encoder;
* :func:`load_pretrained`: the one loader of pretrained weights (own checkpoints, MedicalNet,
  self-supervised Swin encoders), with a :class:`LoadReport`;
* :func:`param_groups`, :class:`FreezeEncoder`, :func:`pretrained_network`,
  :func:`pretrained_tags`: fine-tuning (``configs/finetune.json``).

The network choice of the bundle is a config file: ``configs/networks/*.json``.
"""

from __future__ import annotations

from tumorseg.networks.finetune import (
    ENCODER_PREFIXES,
    FreezeEncoder,
    encoder_parameters,
    encoder_prefix_for,
    name_map_for,
    param_groups,
    pretrained_network,
    pretrained_tags,
    with_tags,
)
from tumorseg.networks.pretrained import (
    NAME_MAPS,
    LoadReport,
    PretrainedMismatchError,
    load_pretrained,
    read_state_dict,
)
from tumorseg.networks.resenc_unet import RESNET_LAYERS, ResEncUNet
from tumorseg.networks.transunet import TransUNet

__all__ = [
    "ENCODER_PREFIXES",
    "NAME_MAPS",
    "RESNET_LAYERS",
    "FreezeEncoder",
    "LoadReport",
    "PretrainedMismatchError",
    "ResEncUNet",
    "TransUNet",
    "encoder_parameters",
    "encoder_prefix_for",
    "load_pretrained",
    "name_map_for",
    "param_groups",
    "pretrained_network",
    "pretrained_tags",
    "read_state_dict",
    "with_tags",
]
