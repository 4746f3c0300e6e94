"""Imports every module that registers built-in methods (the registry loads this once)."""

import saliencekit.methods.backprop  # guided_backprop, deconvnet, guided_gradcam
import saliencekit.methods.cam  # gradcam, gradcam++, xgradcam, hirescam, layercam
import saliencekit.methods.scorecam  # noqa: F401  (scorecam)
from saliencekit.methods import gradient  # noqa: F401
