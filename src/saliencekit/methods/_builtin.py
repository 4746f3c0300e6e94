"""Imports every module that registers built-in methods (the registry loads this once).

The import order is the order of ``list_methods()``.
"""

# ruff: noqa: F401, I001
import saliencekit.methods.gradient  # gradient, gradient_x_input
import saliencekit.methods.smoothgrad  # smoothgrad, smoothgrad_sq, vargrad
import saliencekit.methods.integrated  # integrated_gradients
import saliencekit.methods.backprop  # guided_backprop, deconvnet, guided_gradcam
import saliencekit.methods.cam  # gradcam, gradcam++, xgradcam, hirescam, layercam
import saliencekit.methods.scorecam  # scorecam
import saliencekit.methods.perturbation  # occlusion, rise
import saliencekit.methods.lrp  # lrp
import saliencekit.methods.deeplift  # deeplift, deeplift_shap
import saliencekit.methods.transformer  # attention_rollout, transformer_attribution
import saliencekit.methods.eigencam  # eigencam
import saliencekit.methods.ablationcam  # ablationcam
import saliencekit.methods.fullgrad  # fullgrad
import saliencekit.methods.expected_gradients  # expected_gradients, gradient_shap
import saliencekit.methods.lime  # lime
import saliencekit.methods.kernel_shap  # kernel_shap
