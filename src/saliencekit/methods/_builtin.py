"""Imports every module that registers built-in methods (the registry loads this once)."""

import saliencekit.methods.backprop  # guided_backprop, deconvnet, guided_gradcam
import saliencekit.methods.cam  # gradcam, gradcam++, xgradcam, hirescam, layercam
import saliencekit.methods.gradient
import saliencekit.methods.integrated
import saliencekit.methods.perturbation
import saliencekit.methods.scorecam  # scorecam
import saliencekit.methods.smoothgrad  # noqa: F401
