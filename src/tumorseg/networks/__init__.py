"""Networks of the bundle beyond MONAI's, pretrained-weight loading and fine-tuning helpers.

* :class:`TransUNet`: CNN encoder, transformer bottleneck, U-Net decoder (2D/3D);
* :class:`ResEncUNet`: U-Net with a MedicalNet-compatible 3D ResNet encoder;
* :class:`MobileNetV2Encoder`: torchvision-named MobileNetV2 encoders, registered on import as
  MONAI ``FlexibleUNet`` backbones ``mobilenetv2_035`` ... ``mobilenetv2_140``;
* :class:`ProbabilityMeanEnsemble`, :func:`pack_members`: trained copies of one network as one
  network and one checkpoint (a released ensemble);
* :class:`AutocastInferer`: bfloat16 autocast on CPUs that compute it natively;
* :func:`load_pretrained`: the one loader of pretrained weights (own checkpoints, MedicalNet,
  self-supervised Swin encoders), with a :class:`LoadReport`;
* :func:`param_groups`, :class:`FreezeEncoder`, :func:`pretrained_network`: fine-tuning
  (``configs/finetune.json``; its MLflow tags are :func:`tumorseg.tracking.pretrained_tags`).

The network choice of the bundle is a config file: ``configs/networks/*.json``.
"""

from __future__ import annotations

from tumorseg.networks.ensemble import (
    ENSEMBLE_SETTING,
    ProbabilityMeanEnsemble,
    ensemble_of_checkpoint,
    pack_members,
)
from tumorseg.networks.finetune import (
    ENCODER_PREFIXES,
    FreezeEncoder,
    encoder_parameters,
    encoder_prefix_for,
    name_map_for,
    param_groups,
    pretrained_network,
)
from tumorseg.networks.mobilenet import (
    INVERTED_RESIDUAL_SETTINGS,
    MOBILENETV2_WIDTHS,
    MobileNetV2Encoder,
    register_flexible_unet_backbones,
)
from tumorseg.networks.precision import (
    INFERENCE_PRECISIONS,
    PRECISIONS,
    AutocastInferer,
    autocast_dtype,
    cpu_bf16_supported,
    float32_norms,
    inference_dtype,
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
    "ENSEMBLE_SETTING",
    "INFERENCE_PRECISIONS",
    "INVERTED_RESIDUAL_SETTINGS",
    "MOBILENETV2_WIDTHS",
    "NAME_MAPS",
    "PRECISIONS",
    "RESNET_LAYERS",
    "AutocastInferer",
    "FreezeEncoder",
    "LoadReport",
    "MobileNetV2Encoder",
    "PretrainedMismatchError",
    "ProbabilityMeanEnsemble",
    "ResEncUNet",
    "TransUNet",
    "autocast_dtype",
    "cpu_bf16_supported",
    "encoder_parameters",
    "ensemble_of_checkpoint",
    "float32_norms",
    "inference_dtype",
    "encoder_prefix_for",
    "load_pretrained",
    "name_map_for",
    "pack_members",
    "param_groups",
    "pretrained_network",
    "read_state_dict",
    "register_flexible_unet_backbones",
]
