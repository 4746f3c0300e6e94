"""A model that fails inside its forward pass, called from Python: ``saliencekit.explain``, every method's
``attribute`` and ``run_checks`` raise the one-line :class:`InputError` of the explain command (the input shape, the
model's own message, the input it runs on), chained from the model's exception; failures that do not come from the
model's forward pass pass unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit.errors import InputError
from saliencekit.methods import list_methods


class FixedSize(nn.Module):
    """A convolution, then a linear layer sized for 28x28 inputs: it fails deep in its forward on other sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2 * 28 * 28, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return FixedSize().eval()


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _assert_diagnosed(exc: pytest.ExceptionInfo[InputError]) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("the model failed on input of shape (1, 1, 12, 12): RuntimeError: ")
    assert "the model runs on input of shape (1, 1, 28, 28): give it 1-channel images of 28x28 pixels" in msg
    assert "--" not in msg  # no command-line flags in a Python error
    assert isinstance(exc.value.__cause__, RuntimeError)  # chained from the model's own exception


def test_explain_names_the_model_failure_and_the_input_that_works() -> None:
    model = _model()
    with pytest.raises(InputError) as exc:
        sk.explain(model, torch.randn(2, 1, 12, 12), methods=["gradient", "gradcam"])
    _assert_diagnosed(exc)
    assert _hooks(model) == 0 and not model.training
    # the same model on the input it runs on explains normally
    out = sk.explain(model, torch.randn(2, 1, 28, 28), methods=["gradient", "gradcam"])
    assert out["gradient"].maps.shape == (2, 28, 28)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_names_a_failing_model(name: str) -> None:
    model = _model()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(InputError) as exc:
        sk.create_method(name, model).attribute(torch.randn(2, 1, 12, 12))
    _assert_diagnosed(exc)
    assert _hooks(model) == 0 and not model.training
    assert [p.requires_grad for p in model.parameters()] == flags


def test_failures_outside_the_model_pass_unchanged() -> None:
    model = _model()

    def bad_target(out: torch.Tensor) -> torch.Tensor:
        raise ValueError("my target function is broken")

    with pytest.raises(ValueError, match="my target function is broken"):
        sk.explain(model, torch.randn(2, 1, 28, 28), methods=["gradient"], target=bad_target)


def test_run_checks_names_the_model_failure() -> None:
    model = _model()
    with pytest.raises(InputError) as exc:
        sk.run_checks(model=model, images=torch.randn(4, 1, 12, 12), checks=["agreement"],
                      methods=["gradient", "gradcam"], progress=False, figures=False)
    _assert_diagnosed(exc)
    assert _hooks(model) == 0 and not model.training
