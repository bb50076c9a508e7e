"""`gaussian_pixels`: every pixel an independent Gaussian, fitted by maximum likelihood."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.module import GenerativeModule, inference


class GaussianPixels(GenerativeModule):
    modality = "image"
    default_data = "stripes"
    default_config = str(Path(__file__).with_name("default.yaml"))

    def __init__(self, in_channels: int = 3, image_size: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mean = nn.Parameter(torch.zeros(in_channels, image_size, image_size))
        self.log_std = nn.Parameter(torch.zeros(in_channels, image_size, image_size))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension, in nats."""
        z = (x - self.mean) * torch.exp(-self.log_std)
        return (0.5 * z.pow(2) + self.log_std + 0.5 * math.log(2 * math.pi)).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.nll(batch["image"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self.nll(batch["image"]), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    @inference
    def generate(
        self, n: int, *, condition: Any = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        noise = torch.randn((n, *self.mean.shape), generator=generator, device=self.device)
        return ((self.mean + self.log_std.exp() * noise + 1) / 2).clamp(0, 1)
