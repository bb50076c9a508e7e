"""`--trainer.strategy zoo_fsdp`: Lightning's `FSDPStrategy` with each family's blocks as the wrapping unit.

    python -m zoo.fit --model gpt --trainer.strategy zoo_fsdp --trainer.devices 8
    python -m zoo.fit --model ldm --trainer.strategy zoo_fsdp_checkpointed --trainer.devices 8

FSDP shards parameters, gradients and optimizer state over the ranks, gathering one wrapped unit at a
time. Which modules make a unit is the only model-specific choice, so a family names its repeated
blocks in the class attribute `fsdp_blocks` (gpt: its transformer `Block`; ldm: the U-Net's `ResBlock`
and attention layers; dit: `DiTBlock`), and this strategy turns them into a `ModuleWrapPolicy`. The
`_checkpointed` variant also recomputes those blocks' activations in the backward pass (activation
checkpointing: less memory, about a third more compute).

Checkpoints: `state_dict_type="full"` (the default) gathers a normal `.ckpt` on rank 0, which every zoo
command reads; `zoo_fsdp_sharded` writes a folder of shards per rank instead (fast for large models),
which `zoo.sample` and `zoo.evaluate` consolidate when they load it (`zoo.checkpoint`).

Lightning refuses its own FSDP strategy on the CPU. torch's FSDP itself runs there with gloo, and this
subclass lets it, so the tests exercise the real wrapping, sharding and checkpoint paths on CPU
(bf16 or fp32; the speed of FSDP is a GPU question).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from torch import nn


def is_sharded(trainer: Any) -> bool:
    """Whether `trainer` trains under FSDP, where a rank holds only its shard of the weights between steps,
    so a callback cannot call `generate()` on the module (sample grids and periodic metrics are off)."""
    return isinstance(getattr(trainer, "strategy", None), FSDPStrategy)


def fsdp_blocks(model: nn.Module) -> set[type[nn.Module]]:
    """The block classes `model` declares as FSDP units, kept to those it really contains."""
    declared = set(getattr(model, "fsdp_blocks", ()))
    return {type(m) for m in model.modules() if type(m) in declared}


class ZooFSDPStrategy(FSDPStrategy):
    """`FSDPStrategy` whose auto-wrap policy (and, with `checkpoint_blocks`, activation-checkpointing policy)
    defaults to the LightningModule's `fsdp_blocks`; every other argument is Lightning's."""

    strategy_name = "zoo_fsdp"
    _registered_strategies: list[str] = []  # noqa: RUF012 - Lightning's registry pattern; not FSDPStrategy's list

    def __init__(self, *args: Any, checkpoint_blocks: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_blocks = checkpoint_blocks

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        blocks = fsdp_blocks(model)
        if blocks and "auto_wrap_policy" not in self.kwargs:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
        if blocks and self.checkpoint_blocks and not self._activation_checkpointing_kwargs:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(blocks)}
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        return self._setup_model_on_cpu(model)

    def _setup_model_on_cpu(self, model: nn.Module) -> nn.Module:
        """Lightning's wrapping, but with `device_id=cpu`: Lightning passes the device's index (None on a CPU),
        with which torch's FSDP looks for an accelerator and refuses to start without one."""
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )  # fmt: skip
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        variants = {
            "zoo_fsdp": ({}, "FSDP over the family's blocks (zoo's fsdp_blocks), full checkpoints"),
            "zoo_fsdp_checkpointed": ({"checkpoint_blocks": True}, "the same, with activation checkpointing"),
            "zoo_fsdp_sharded": ({"state_dict_type": "sharded"}, "the same, sharded checkpoints (a folder)"),
        }
        for name, (init, description) in variants.items():
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=description, **init)
                cls._registered_strategies.append(name)


ZooFSDPStrategy.register_strategies(StrategyRegistry)
