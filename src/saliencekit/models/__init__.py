"""Models: a registry of classifiers, checkpoints, and the one loader of model files of every supported format.

>>> from saliencekit import models
>>> m = models.create("effusion_cnn", in_channels=1, num_classes=2)
>>> models.count_parameters(m)
54627
>>> [f.name for f in models.list_formats()][:3]
['run', 'keras', 'onnx']
"""

from saliencekit.models._keras import KerasClassifier
from saliencekit.models.io import (
    FORMATS,
    CheckpointInfo,
    LoadedModel,
    ModelFormat,
    list_formats,
    load_checkpoint,
    load_model,
    load_model_file,
    save_checkpoint,
)
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
    "FORMATS", "CheckpointInfo", "EffusionCNN", "KerasClassifier", "LoadedModel", "ModelFormat", "RpsCNN",
    "count_parameters", "create", "describe", "last_conv_layer", "list_formats", "list_models", "load_checkpoint",
    "load_model", "load_model_file", "output_units", "register_model", "save_checkpoint",
]
