"""`zoo.module.inference`: sampling runs without gradients and in eval mode, and leaves the modes as they were;
every built-in family (and the example plugin) says so explicitly on its `generate`."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo import registry
from zoo.module import GenerativeModule, UndecoratedGenerateWarning, inference


class DropoutAndBatchNorm(GenerativeModule):
    """generate() returns what it saw: the grad mode, the training flags, and outputs that dropout and batch
    norm make depend on the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.dropout = nn.Dropout(p=0.5)
        self.norm = nn.BatchNorm1d(4)
        self.frozen = nn.Linear(4, 4)  # held in eval mode while the module trains, as a frozen first stage
        self.seen: dict[str, object] = {}

    @inference
    def generate(self, n, *, condition=None, generator=None, fail: bool = False):  # noqa: ANN001, ANN201
        self.seen = {
            "grad": torch.is_grad_enabled(),
            "training": [m.training for m in self.modules()],
        }
        out = self.norm(self.dropout(self.linear(torch.ones(n, 4))))
        if fail:
            raise RuntimeError("failed on purpose")
        return out


def _training_module() -> DropoutAndBatchNorm:
    torch.manual_seed(0)
    model = DropoutAndBatchNorm().train()
    model.frozen.eval()
    model.norm.running_mean.fill_(0.5)  # eval-mode batch norm uses these, training mode the batch's own
    return model


def test_generate_runs_in_eval_mode_without_a_graph_and_restores_every_mode():
    model = _training_module()
    out = model.generate(3)
    assert model.seen["grad"] is False and not any(model.seen["training"])
    assert out.grad_fn is None and not out.requires_grad
    # eval mode in closed form: no dropout, batch norm with the running statistics (mean 0.5, var 1)
    expected = (model.linear(torch.ones(3, 4)) - 0.5) / torch.sqrt(torch.tensor(1.0 + model.norm.eps))
    torch.testing.assert_close(out, expected * model.norm.weight + model.norm.bias)
    # every submodule is back in its own mode: the module trains, the frozen part stays in eval
    assert model.training and model.linear.training and model.dropout.training
    assert not model.frozen.training
    assert torch.is_grad_enabled()


def test_modes_are_restored_when_generate_raises():
    model = _training_module()
    with pytest.raises(RuntimeError, match="on purpose"):
        model.generate(2, fail=True)
    assert model.seen["grad"] is False
    assert model.training and not model.frozen.training and torch.is_grad_enabled()
    assert model.norm.running_mean.eq(0.5).all()  # eval-mode batch norm did not update its statistics


def test_an_undecorated_generate_is_named_and_still_runs_for_inference():
    with pytest.warns(UndecoratedGenerateWarning, match=r"Forgetful\.generate .*@inference") as record:

        class Forgetful(GenerativeModule):
            def __init__(self) -> None:
                super().__init__()
                self.scale = nn.Parameter(torch.ones(()))

            def generate(self, n, *, condition=None, generator=None):  # noqa: ANN001, ANN201
                return self.scale * torch.ones(n), self.training

    assert record[0].filename == __file__  # the warning points at the class, not at zoo
    model = Forgetful().train()
    out, training_inside = model.generate(2)
    assert not out.requires_grad and training_inside is False and model.training


EXAMPLE_PLUGIN = Path(__file__).parents[1] / "examples/zoo-plugin-example/zoo_plugin_example/model.py"


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_family_decorates_its_generate_explicitly(name):
    cls = registry.get_model_class(name)
    owner = next(c for c in cls.__mro__ if "generate" in c.__dict__)  # the class that writes generate
    assert "    @inference\n    def generate(" in inspect.getsource(owner), f"{owner.__qualname__}.generate"


def test_the_example_plugin_decorates_its_generate_explicitly():
    assert "    @inference\n    def generate(" in EXAMPLE_PLUGIN.read_text()
