"""`zoo.module.build_module`: a LightningModule built inside another one's `__init__`, as LightningCLI
instantiates the outer one, records its own hyper-parameters and not the outer module's."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI
from torch import nn

from zoo.module import build_module


class Inner(L.LightningModule):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)


class Outer(L.LightningModule):
    def __init__(self, depth: int = 2, width: int = 5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.built = build_module(Inner, width=width)
        self.plain = Inner(width=width)


def _cli_model(*args: str) -> Outer:
    cli = LightningCLI(
        Outer, run=False, args=list(args), save_config_callback=None, trainer_defaults={"logger": False}
    )
    return cli.model


def test_a_module_built_inside_a_cli_instantiated_one_keeps_its_own_hyperparameters() -> None:
    outer = _cli_model("--model.depth", "7", "--model.width", "4")
    assert outer.hparams.depth == 7 and outer.built.layer.in_features == 4
    assert dict(outer.built.hparams) == {"width": 4}
    # what build_module prevents, measured on this Lightning: built plainly, the inner module records
    # the values LightningCLI parsed for the outer one
    assert outer.plain.hparams.get("depth") == 7


def test_outside_the_cli_the_frame_chain_stops_at_build_module() -> None:
    outer = Outer(depth=9, width=6)
    assert dict(outer.built.hparams) == {"width": 6}
    assert dict(outer.hparams) == {"depth": 9, "width": 6}
