"""Model outputs: logits, probabilities, multi-label; the final activation found and bypassed (issue #11)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import saliencekit as sk
from saliencekit.errors import InputError, UnknownNameError
from saliencekit.methods.outputs import (
    OutputRule,
    final_activation,
    log_odds,
    model_outputs,
    output_scope,
    resolve_output,
)
from saliencekit.methods.targets import class_probabilities, predicted_classes
from test_method_contract import assert_unchanged, prepared_model, snapshot
from toy_models import make

LABELS = 14


@pytest.fixture(scope="module")
def densenet() -> nn.Module:
    """A CheXNet-style network: torchvision DenseNet-121 with 14 outputs (random weights). Label 3 sits at sigmoid
    0.41 and labels 1 and 5 are positive for every image."""
    from torchvision.models import densenet121

    torch.manual_seed(0)
    net = densenet121(num_classes=LABELS)
    with torch.no_grad():
        net.classifier.weight.mul_(0.01)
        net.classifier.bias.fill_(-3.0)
        net.classifier.bias[3] = math.log(0.41 / 0.59)
        net.classifier.bias[1] = 2.0
        net.classifier.bias[5] = 1.0
    return net.eval()


def chexnet(densenet: nn.Module, sigmoid: bool) -> nn.Module:
    """The DenseNet with a final nn.Sigmoid, or bare (its logit twin)."""
    return nn.Sequential(densenet, nn.Sigmoid()).eval() if sigmoid else densenet


@pytest.fixture(scope="module")
def xray() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("sigmoid", [True, False])
def test_chexnet_probabilities_are_per_label_sigmoids(sigmoid: bool, xray: torch.Tensor, densenet: nn.Module) -> None:
    model = chexnet(densenet, sigmoid)
    declared = "auto" if sigmoid else "multilabel"
    before = snapshot(model)
    out, rule = model_outputs(model, xray, output=declared)
    assert_unchanged(model, before)
    assert rule.multilabel and (rule.activation is not None) == sigmoid
    logits = (model[0] if sigmoid else model)(xray).detach()
    torch.testing.assert_close(out, logits)  # the bypassed Sigmoid: logits, not probabilities
    probs = rule.probabilities(out)
    torch.testing.assert_close(probs, torch.sigmoid(logits))
    assert probs[:, 3].sub(0.41).abs().max() < 0.01  # shown as 0.41, not its softmax share
    assert float(torch.softmax(logits, 1)[0, 3]) < 0.2
    assert rule.positives(out)[:, [1, 5]].all() and rule.positives(out).sum(1).tolist() == [2, 2]
    targets, counts = rule.default_targets(out)
    assert targets == [[1, 5], [1, 5]] and counts == [2, 2]
    assert rule.ranked(out, 3).tolist() == [[1, 5, 3], [1, 5, 3]]
    strict = OutputRule(multilabel=True, threshold=0.9)
    assert strict.default_targets(out) == ([[1], [1]], [0, 0])  # none positive: the most probable label
    with output_scope(model, declared, example=xray):
        assert predicted_classes(out).tolist() == [1, 1]
        torch.testing.assert_close(class_probabilities(out, torch.tensor([3, 3])), probs[:, 3])


def test_chexnet_gradient_of_sigmoid_model_equals_gradient_of_its_logit(xray: torch.Tensor,
                                                                         densenet: nn.Module) -> None:
    with_sigmoid, bare = chexnet(densenet, True), chexnet(densenet, False)
    before = snapshot(with_sigmoid)
    e = sk.explain(with_sigmoid, xray, ["gradient", "gradcam"], target=3)
    twin = sk.explain(bare, xray, ["gradient", "gradcam"], target=3, output="multilabel")
    assert_unchanged(with_sigmoid, before)
    for name in e:
        torch.testing.assert_close(e[name].maps, twin[name].maps, rtol=1e-4, atol=1e-7)
    # By hand: d z_3 / d x, the logit's gradient, not sigmoid'(z) times it.
    x = xray.clone().requires_grad_(True)
    bare(x)[:, 3].sum().backward()
    torch.testing.assert_close(e["gradient"].attributions, x.grad, rtol=1e-4, atol=1e-7)
    assert e["gradient"].targets.tolist() == [3, 3] and e["gradient"].predictions.tolist() == [1, 1]


def test_final_activation_is_the_last_operation_only() -> None:
    class SqueezeExcite(nn.Module):  # a Sigmoid inside the network is not the output's activation
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.gate = nn.Sigmoid()
            self.fc = nn.Linear(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.conv(x)
            return self.fc((a * self.gate(a)).mean((2, 3)))

    class SqueezedSigmoid(nn.Module):  # a view of the activation's output still counts
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)
            self.act = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x.mean((2, 3)).expand(-1, 4))).squeeze(1)

    x = torch.randn(2, 1, 5, 5)
    assert final_activation(SqueezeExcite(), x) is None
    act = final_activation(SqueezedSigmoid(), x)
    assert act is not None and (act.kind, act.name) == ("sigmoid", "act")
    act = final_activation(nn.Sequential(nn.Flatten(), nn.Linear(25, 3), nn.LogSoftmax(dim=1)), x)
    assert act is not None and (act.kind, act.name) == ("log_softmax", "2")
    assert final_activation(make("plain", classes=3), x.double()) is None
    rule = resolve_output(SqueezedSigmoid(), example=x)
    assert not rule.multilabel and rule.activation is not None  # one sigmoid column: binary


def test_declarations_the_model_contradicts_are_refused() -> None:
    x = torch.randn(1, 1, 5, 5)
    sig3 = nn.Sequential(nn.Flatten(), nn.Linear(25, 3), nn.Sigmoid())
    soft = nn.Sequential(nn.Flatten(), nn.Linear(25, 3), nn.Softmax(dim=1))
    with pytest.raises(InputError, match=r"output='logits' was declared, but the model ends in nn.Sigmoid '2'"):
        resolve_output(sig3, "logits", example=x)
    with pytest.raises(InputError, match="independent labels; use output='multilabel'"):
        resolve_output(sig3, "probabilities", example=x)
    with pytest.raises(InputError, match="couples the classes"):
        resolve_output(soft, "multilabel", example=x)
    with pytest.raises(UnknownNameError, match="unknown model output 'logit'; valid model outputs: auto, logits"):
        resolve_output(soft, "logit", example=x)
    for bad in (0, 1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InputError, match="threshold must be a probability strictly between 0 and 1"):
            resolve_output(soft, "auto", bad, example=x)  # type: ignore[arg-type]
    assert resolve_output(sig3, "multilabel", 0.3, example=x).threshold == 0.3
    assert not resolve_output(soft, "probabilities", example=x).from_probabilities  # bypassed: logits


def test_bypass_hook_is_removed_on_error_and_nested_scopes_install_it_once() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(25, 2), nn.Softmax(dim=1))
    x = torch.randn(3, 1, 5, 5)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"):
        with output_scope(model, example=x):
            with output_scope(model, example=x):
                assert len(model[2]._forward_hooks) == 1
                torch.testing.assert_close(model(x), model[1](model[0](x)))
            assert len(model[2]._forward_hooks) == 1
            raise RuntimeError("inside")
    assert_unchanged(model, before)
    assert torch.allclose(model(x).sum(1), torch.ones(3))


def test_log_odds_of_probabilities() -> None:
    z = torch.tensor([-30.0, -3.0, 0.0, 2.5, 30.0], dtype=torch.float64)
    torch.testing.assert_close(log_odds(torch.sigmoid(z))[1:4], z[1:4])
    assert torch.isfinite(log_odds(torch.tensor([0.0, 1.0]))).all()
    rule = OutputRule(from_probabilities=True)
    p = torch.tensor([[0.2, 0.5, 0.3]])
    torch.testing.assert_close(rule.probabilities(p), p)  # shown as returned
    torch.testing.assert_close(rule.scores(p, torch.tensor([0])), torch.tensor([math.log(0.2 / 0.8)]))
    binary = OutputRule(from_probabilities=True)
    q = torch.tensor([[0.8], [0.3]])
    assert binary.predicted(q).tolist() == [1, 0]
    torch.testing.assert_close(binary.scores(q, torch.tensor([1, 1])), log_odds(q[:, 0]))
    torch.testing.assert_close(binary.scores(q, torch.tensor([0, 0])), -log_odds(q[:, 0]))


def test_declared_multilabel_probabilities_with_a_functional_sigmoid() -> None:
    class Functional(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))

    net = make("plain", classes=4)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    e = sk.explain(Functional(net), x, ["gradient", "integrated_gradients"], output="multilabel_probabilities")
    twin = sk.explain(net, x, ["gradient", "integrated_gradients"], output="multilabel")
    for name in e:
        torch.testing.assert_close(e[name].maps, twin[name].maps, rtol=1e-5, atol=1e-8)
        assert torch.equal(e[name].targets, twin[name].targets)


def test_probability_looking_outputs_warn_unless_declared() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make("plain", classes=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(x), dim=1)

    model = Functional()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="look like softmax probabilities .* declare output='probabilities'"):
        sk.explain(model, x, ["gradient"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sk.explain(model, x, ["gradient"], output="logits")
        sk.explain(model, x, ["gradient"], output="probabilities")
        sk.explain(make("plain", classes=3), x, ["gradient"])


def test_torchscript_final_activation_must_be_declared() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(1), nn.Sigmoid())
    x = torch.randn(2, 1, 6, 6)
    model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model.eval())
    with pytest.raises(InputError, match=r"TorchScript model's last module is nn.Sigmoid \('3'\).*'probabilities'"):
        sk.explain(scripted, x, ["gradient"])
    e = sk.explain(scripted, x, ["gradient"], output="probabilities")
    twin = sk.explain(nn.Sequential(*list(model)[:3]), x, ["gradient"])
    torch.testing.assert_close(e["gradient"].maps, twin["gradient"].maps, rtol=1e-3, atol=1e-6)


def test_unknown_and_misspelt_options_are_errors_listing_the_valid_ones() -> None:
    model = make("plain", classes=3)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['top_k'\] for the methods gradient; valid options: "
                                         r"batch_size, output, precision, reduce, threshold"):
        sk.explain(model, x, ["gradient"], top_k=3)
    with pytest.raises(InputError, match=r"\['layr'\]"):
        sk.explain(model, x, ["gradcam"], layr="0")
    with pytest.raises(InputError, match="'steps' is an option of integrated_gradients"):
        sk.explain(model, x, ["gradient", "gradcam"], steps=8)
    with pytest.raises(InputError, match="method 'gradient' has no option"):
        sk.create_method("gradient", model, step=3)
    with pytest.raises(UnknownNameError, match="model output"):
        sk.create_method("gradient", model, output="logit")
    # An option taken by one of the methods goes to that one.
    out = sk.explain(model, x, ["gradient", "integrated_gradients"], steps=4)
    assert out["integrated_gradients"].params["steps"] == 4


def test_model_unchanged_by_detection_and_scopes_in_train_mode() -> None:
    net = make("inplace", classes=2)
    model = prepared_model(nn.Sequential(net, nn.Softmax(dim=1)), torch.device("cpu"))
    user_hook_calls = []
    handle = model[1].register_forward_hook(lambda *a: user_hook_calls.append(1))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, rule = model_outputs(model, x)
    assert rule.activation is not None and rule.activation.name == "1"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # batch-norm statistics kept
    assert model.training and len(user_hook_calls) == 1  # the probe set the user's hook aside; the run did not
    handle.remove()


def test_predict_proba_follows_the_rule() -> None:
    from saliencekit.predict import logits_to_proba, predict_proba

    net = make("plain", classes=3, dtype=torch.float32)
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        z = net(x)
    torch.testing.assert_close(predict_proba(nn.Sequential(net, nn.Softmax(dim=1)), x), torch.softmax(z, 1))
    torch.testing.assert_close(predict_proba(nn.Sequential(net, nn.Sigmoid()), x), torch.sigmoid(z))  # 3 labels
    torch.testing.assert_close(predict_proba(net, x, multilabel=True), torch.sigmoid(z))
    torch.testing.assert_close(predict_proba(net, x), torch.softmax(z, 1))
    binary = make("plain", classes=1, dtype=torch.float32)
    with torch.no_grad():
        p = torch.sigmoid(binary(x))[:, 0]
    torch.testing.assert_close(predict_proba(nn.Sequential(binary, nn.Sigmoid()), x), torch.stack([1 - p, p], 1))
    torch.testing.assert_close(logits_to_proba(z, multilabel=True), torch.sigmoid(z))
