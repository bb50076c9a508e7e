"""`FinalCheckpoint`: `last.ckpt` holds the final state of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class FinalCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes `last.ckpt` when training ends between two saves.

    Lightning's `save_last` only refreshes `last.ckpt` when a periodic save happens: a run of 50 steps
    saved every 40 ends with `last.ckpt` at step 40 (its `on_train_end` saves only when no `last.ckpt`
    was written at all). The steps since the last save would be lost, and a resume would repeat them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saved_step: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._saved_step = checkpoint.get("global_step")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or self.dirpath is None or trainer.global_step == 0:
            return
        if self._saved_step != trainer.global_step:
            last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            if (
                last.is_symlink() and trainer.is_global_zero
            ):  # save_last="link": replace the link, not its target
                last.unlink()
            trainer.save_checkpoint(last)
