"""Metric evaluation during training: every N steps, K generated samples, logged as `val/<metric>`."""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from zoo.metrics.image import fid_metric
from zoo.strategies import is_sharded


class MetricsCallback(L.Callback):
    """Every `every_n_steps` training steps, generate `num_samples` images and log image metrics.

    `metrics`: comma-separated or a list, from `fid`, `kid`, `is`, `precision_recall` (any registered
    image metric that needs only real and generated images and an extractor). Values are logged as
    `val/fid`, `val/kid`, ... (W&B charts). The real images are `num_samples` images of the
    datamodule's `split`; features come from the data's zoo-trained extractor (`extractor="auto"`)
    or `"inception"` (`inception_weights`).

    The feature network lives in this callback, not in the LightningModule: it is frozen, not in
    checkpoints, and not wrapped by DDP (no gradient sync). Under DDP each rank generates its share of
    the samples (seed + rank) and the metric states are reduced across ranks, so every rank logs the
    same value.

    Time budget: an evaluation is skipped (with one warning) when the time spent evaluating so far
    plus the last evaluation's cost would exceed `max_time_fraction` of the training time since the
    start; the decision is rank zero's, broadcast to all ranks.
    """

    def __init__(
        self,
        every_n_steps: int = 0,
        num_samples: int = 256,
        metrics: str | list[str] = "fid",
        split: str = "train",
        batch_size: int = 64,
        seed: int = 0,
        max_time_fraction: float = 0.1,
        extractor: str = "auto",
        inception_weights: str | None = None,
        on_train_end: bool = True,
    ) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.metrics = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.max_time_fraction = max_time_fraction
        self.extractor_choice = extractor
        self.inception_weights = inception_weights
        self.log_on_train_end = on_train_end
        self.extractor: torch.nn.Module | None = None
        self._real: torch.Tensor | None = None
        self._start = 0.0
        self.eval_seconds = 0.0
        self._last_cost = 0.0
        self._per_rank = num_samples
        self._last_step = -1
        self._warned = False
        self.history: list[dict[str, float]] = []
        self.skipped: list[int] = []

    @property
    def enabled(self) -> bool:
        return self.every_n_steps > 0 and self.num_samples > 1 and bool(self.metrics)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit":
            return
        from zoo.metrics.registry import get_metric

        for name in self.metrics:
            spec = get_metric(name, getattr(pl_module, "modality", "image"))
            if set(spec.needs) - {"real", "fake", "extractor"}:
                raise ValueError(
                    f"MetricsCallback cannot compute '{name}' during training: it needs {spec.needs}"
                )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        from zoo import registry
        from zoo.evaluate import make_extractor, real_images

        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("MetricsCallback needs a datamodule (the real images come from it)")
        size = int(getattr(datamodule, "image_size", pl_module.hparams.get("image_size", 32)))
        channels = int(getattr(datamodule, "channels", pl_module.hparams.get("in_channels", 3)))
        data_name = registry.name_of(type(datamodule), registry.DATAMODULE_GROUP)
        # rank zero trains (or loads) the cached extractor first; the others then read the cache
        if trainer.is_global_zero:
            self.extractor = make_extractor(
                self.extractor_choice, data_name, size, channels, self.inception_weights
            )
        trainer.strategy.barrier("zoo-metrics-extractor")
        if not trainer.is_global_zero:
            self.extractor = make_extractor(
                self.extractor_choice, data_name, size, channels, self.inception_weights
            )
        self.extractor = self.extractor.to(pl_module.device)
        real, _, _ = real_images(datamodule, self.split, self.num_samples, self.seed)
        rank, world = trainer.global_rank, trainer.world_size
        self._per_rank = self.num_samples // world  # equal shards, so features can be gathered
        self._real = real[rank::world][: self._per_rank]  # the metric states reduce over ranks
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.enabled and step > 0 and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and self.log_on_train_end:
            self.evaluate(trainer, pl_module, force=True)

    def _within_budget(self, trainer: L.Trainer) -> bool:
        elapsed = time.perf_counter() - self._start
        training = max(elapsed - self.eval_seconds, 1e-9)
        allowed = self.eval_seconds + self._last_cost <= self.max_time_fraction * (training + self._last_cost)
        return bool(trainer.strategy.broadcast(allowed, src=0))

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, force: bool = False
    ) -> dict[str, float]:
        """Generate, compute and log the metrics now (unless the time budget says to skip)."""
        step = trainer.global_step
        if step == self._last_step or self._real is None:
            return {}
        if is_sharded(trainer):  # every rank returns here, so no rank waits in a collective
            rank_zero_warn(
                "MetricsCallback: off under FSDP; evaluate the checkpoint with python -m zoo.evaluate"
            )
            return {}
        if not force and not self._within_budget(trainer):
            self.skipped.append(step)
            if not self._warned:
                self._warned = True
                rank_zero_warn(
                    f"MetricsCallback: skipping the evaluation at step {step} to keep metric time under "
                    f"{self.max_time_fraction:.0%} of training (raise max_time_fraction, lower num_samples "
                    "or raise every_n_steps)"
                )
            return {}
        self._last_step = step
        began = time.perf_counter()
        values = self._compute(trainer, pl_module)
        # Straight to the loggers (rank zero), not self.log: evaluations are rarer than Lightning's
        # log_every_n_steps and would be dropped, and on_train_end does not allow self.log.
        named = {f"val/{k}": v for k, v in values.items()}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(named, step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in named.items()})  # for monitors
        self._last_cost = time.perf_counter() - began
        self.eval_seconds += self._last_cost
        self.history.append({"step": step, **values})
        return values

    def _compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from zoo.metrics.image import KNNPrecisionRecall
        from zoo.metrics.registry import MetricContext, batched

        rank, world = trainer.global_rank, trainer.world_size
        count = self._per_rank
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + rank)
        fake = []
        for start in range(0, count, self.batch_size):
            n = min(self.batch_size, count - start)
            conditions = None
            hparams = getattr(pl_module, "hparams", {})
            num_classes = int(hparams.get("num_classes", 0) or 0)
            if num_classes > 0 and getattr(pl_module, "conditional", hparams.get("class_conditional", True)):
                conditions = [(rank + world * (start + i)) % num_classes for i in range(n)]
            fake.append(pl_module.generate(n, condition=conditions, generator=generator).float())
        fake_images = torch.cat(fake)
        assert self.extractor is not None
        extractor = self.extractor
        real_f = batched(extractor, self._real, 256, pl_module.device)
        fake_f = batched(extractor, fake_images, 256, pl_module.device)
        out: dict[str, float] = {}
        device = pl_module.device
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
            for name in self.metrics:
                if name == "fid":  # reduced over ranks: sums and covariance sums
                    metric = fid_metric(real_f.shape[1]).to(device)
                    metric.update(real_f.to(device), real=True)
                    metric.update(fake_f.to(device), real=False)
                    out["fid"] = float(metric.compute())
                elif name == "precision_recall":
                    pr = KNNPrecisionRecall().to(device)
                    pr.update(real_f.to(device), real=True)
                    pr.update(fake_f.to(device), real=False)
                    p, r = pr.compute()
                    out |= {"precision": float(p), "recall": float(r)}
                else:  # other metrics on the features gathered from every rank
                    real_all = _gather(trainer, real_f)
                    fake_all = _gather(trainer, fake_f)
                    fake_logits = None
                    if name == "is":
                        fake_logits = _gather(trainer, batched(extractor.logits, fake_images, 256, device))
                    from zoo.metrics.registry import get_metric

                    ctx = MetricContext(
                        real=real_all, fake=fake_all, seed=self.seed, options={"kid_subset_size": 1000}
                    )
                    ctx._cache |= {"real/features": real_all, "fake/features": fake_all}
                    if fake_logits is not None:
                        ctx._cache["fake/logits"] = fake_logits
                    ctx.extractor = extractor
                    out |= get_metric(name, "image").fn(ctx)
        return out


def _gather(trainer: L.Trainer, x: torch.Tensor) -> torch.Tensor:
    if trainer.world_size == 1:
        return x
    gathered = trainer.strategy.all_gather(x.to(trainer.strategy.root_device))
    return gathered.flatten(0, 1).cpu()
