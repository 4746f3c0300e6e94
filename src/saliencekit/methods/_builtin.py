"""Imports every module that registers built-in methods (the registry loads this once)."""

import saliencekit.methods.gradient
import saliencekit.methods.integrated
import saliencekit.methods.perturbation
import saliencekit.methods.smoothgrad  # noqa: F401
