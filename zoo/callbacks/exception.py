"""Keep the weights of a run that fails: a checkpoint written when training raises."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn


class CheckpointOnException(L.Callback):
    """Writes `<dirpath>/on_exception.ckpt` when training raises (a NaN loss, Ctrl-C, a crash).

    Lightning's own `OnExceptionCheckpoint` also makes every later `fit(ckpt_path=None)` resume
    from "last"; this one only saves, so a new run never picks up an old one by surprise. Under
    DDP, rank zero writes without a barrier, because the other ranks may not be raising.
    """

    def __init__(self, dirpath: str | Path, filename: str = "on_exception") -> None:
        super().__init__()
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.global_rank != 0 or trainer.state.fn != "fit":
            return
        if (
            trainer.global_step == 0
        ):  # nothing trained yet (a data error, a loss that is NaN at once): nothing to keep
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if trainer.world_size == 1:
                trainer.save_checkpoint(self.path)
            else:
                # Lightning has no public way to build a checkpoint without `Trainer.save_checkpoint`,
                # which ends in a barrier (and lets sharding strategies gather): with the other ranks
                # not raising, they never reach it and this rank would hang. So the private builder,
                # written by this rank alone (DDP replicates the weights, so its copy is complete).
                checkpoint = trainer._checkpoint_connector.dump_checkpoint()
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
            rank_zero_warn(f"training stopped by {type(exception).__name__}; checkpoint kept at {self.path}")
        except Exception as err:  # never mask the original exception
            rank_zero_warn(f"could not write {self.path} after {type(exception).__name__}: {err}")
