"""Sample logging: a PNG grid of each family's `previews()` every N steps, to disk and to the logger
(text families: their samples as a text file and a logged table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from zoo.io.images import image_grid, save_grid
from zoo.strategies import is_sharded


def _first_batch(trainer: L.Trainer) -> dict[str, Any] | None:
    datamodule = trainer.datamodule
    if datamodule is None:
        return None
    try:
        loader = datamodule.val_dataloader()
        return next(iter(loader))
    except Exception:  # a datamodule without a validation split still gets prior samples
        return None


class SampleGrid(L.Callback):
    """Every `every_n_steps` training steps (and when training ends) write `previews()` as PNG grids.

    Files go to `<run>/samples/<name>_step<step>.png`; with a W&B or TensorBoard logger the grids
    are logged too. The noise is drawn from a generator seeded with `seed`, so successive grids
    show the same draws as the model learns. Runs on global rank zero only.
    """

    def __init__(
        self, every_n_steps: int = 500, num_samples: int = 64, seed: int = 0, on_train_end: bool = True
    ) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.log_on_train_end = on_train_end
        self._batch: dict[str, Any] | None = None
        self._last_step = -1
        self.written: list[Path] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.num_samples > 0:
            self._batch = _first_batch(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.log_on_train_end:
            self.write(trainer, pl_module)

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step or self.num_samples <= 0 or not hasattr(pl_module, "previews"):
            return
        if is_sharded(trainer):  # Python shows a warning once per place: no flag needed
            rank_zero_warn("SampleGrid: off under FSDP (each rank holds a shard of the weights); draw samples from "
                           "the checkpoint with python -m zoo.sample")  # fmt: skip
            return
        self._last_step = step
        if getattr(pl_module, "modality", "image") == "text":
            self._write_text(trainer, pl_module, step)
            return
        batch = self._batch
        if batch is not None:
            batch = {
                k: (
                    v[: self.num_samples].to(pl_module.device)
                    if torch.is_tensor(v)
                    else v[: self.num_samples]
                )
                for k, v in batch.items()
            }
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        previews = pl_module.previews(batch, n=self.num_samples, generator=generator)
        root = Path(trainer.default_root_dir) / "samples"
        for name, images in previews.items():
            path = save_grid(images, root / f"{name}_step{step:06d}.png")
            self.written.append(path)
            self._log(trainer, f"samples/{name}", images, step)

    def _write_text(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        texts = pl_module.generate(self.num_samples, generator=generator)
        path = Path(trainer.default_root_dir) / "samples" / f"samples_step{step:06d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
        self.written.append(path)
        for logger in trainer.loggers:
            name = type(logger).__name__
            if name == "WandbLogger":
                logger.log_text(
                    key="samples/text", columns=["step", "sample"], data=[[step, t] for t in texts]
                )
            elif name == "TensorBoardLogger":
                logger.experiment.add_text("samples/text", "\n\n".join(texts), global_step=step)

    @staticmethod
    def _log(trainer: L.Trainer, key: str, images: torch.Tensor, step: int) -> None:
        grid = image_grid(images)
        for logger in trainer.loggers:
            name = type(logger).__name__
            if name == "WandbLogger":
                logger.log_image(key=key, images=[grid], step=step)
            elif name == "TensorBoardLogger":
                logger.experiment.add_image(key, grid, global_step=step)
