"""Models: a registry of classifiers and checkpoint save/load.

>>> from saliencekit import models
>>> m = models.create("effusion_cnn", in_channels=1, num_classes=2)
>>> models.count_parameters(m)
54627
"""

from saliencekit.models.io import CheckpointInfo, load_checkpoint, load_model_file, save_checkpoint
from saliencekit.models.zoo import (
    EffusionCNN,
    RpsCNN,
    count_parameters,
    create,
    describe,
    last_conv_layer,
    list_models,
    output_units,
    register_model,
)

__all__ = [
    "CheckpointInfo", "EffusionCNN", "RpsCNN", "count_parameters", "create", "describe", "last_conv_layer",
    "list_models", "load_checkpoint", "load_model_file", "output_units", "register_model", "save_checkpoint",
]
