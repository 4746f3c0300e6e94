"""Imports every module that registers built-in methods (the registry loads this once)."""

from saliencekit.methods import gradient  # noqa: F401
