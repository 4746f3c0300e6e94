"""Saliency methods: one contract, one registry, one capture engine.

>>> import saliencekit as sk
>>> names = sk.list_methods()
>>> "gradient" in names
True
"""

from saliencekit.methods.base import Explanation, Method, reduce_channels
from saliencekit.methods.explain_many import build_methods, explain
from saliencekit.methods.normalize import normalize
from saliencekit.methods.registry import create_method, list_methods, method_class, method_options, register_method
from saliencekit.methods.targets import ClassTarget, FunctionTarget, PredictedClass, Target, as_target

__all__ = [
    "ClassTarget", "Explanation", "FunctionTarget", "Method", "PredictedClass", "Target", "as_target",
    "build_methods", "create_method", "explain", "list_methods", "method_class", "method_options", "normalize",
    "reduce_channels", "register_method",
]
