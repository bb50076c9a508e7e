"""The first stage of two-stage families: a frozen autoencoder built, loaded, trained and waited for by these
free functions. Latent families (`ldm`, `dit`, `video_diffusion`) use a `vae` (images <-> latents); the
image-token families (`maskgit`, `vq_transformer`) a `vqgan` (images <-> codes), their "tokenizer".

A family says which with a `FirstStageSpec` (`VAE_FIRST_STAGE`, the default of every function here, or one
of its own): the first stage's family, the hyper-parameter (and so the flag) that names a trained
checkpoint, the default hyper-parameters of the one trained when none is given, and what makes a trained
checkpoint usable. A family holds the first stage as `self.first_stage` (`build_first_stage`) and a
`first_stage_ready` buffer, and in its `prepare_fit` calls `prepare_first_stage`: the checkpoint the user
gave is loaded; otherwise rank 0 trains one with a `Trainer` of its own in `<run>/first_stage/` while the
other ranks wait for the file it writes, and every rank loads it. Why before `fit` and not in a hook: see
docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from zoo import registry
from zoo.checkpoint import load_model, require_family
from zoo.module import build_module

FIRST_STAGE_FAMILY = "vae"
FIRST_STAGE_FLAG = "--model.first_stage"
FIRST_STAGE_FILE = "first_stage.ckpt"
# What a family trains when no --model.first_stage is given (the `vae` recipe's settings: sharp
# reconstructions, a KL weight small enough for latent diffusion).
DEFAULT_FIRST_STAGE = {
    "latent_channels": 4,
    "downsample_factor": 4,
    "base_channels": 32,
    "beta": 0.01,
    "color_augment": 0.5,  # a first stage that reconstructs colours beyond its data's (see the vae family)
    "lr": 1e-3,
    "warmup_steps": 100,
}


def _vae_unusable(vae: L.LightningModule) -> str | None:
    if float(vae.latent_scale) == 1.0:
        return (
            "has no measured latent scale (it never ran a validation): train it with validation (the vae "
            "recipe does) before using it as a first stage"
        )
    return None


@dataclass(frozen=True)
class FirstStageSpec:
    """Which first stage a family uses.

    Attributes:
        family: the first stage's registry name (`vae`, `vqgan`).
        hparam: the family's hyper-parameter naming a trained checkpoint; the flag is `--model.<hparam>`.
            The family also has `<hparam>_steps` (steps when zoo.fit trains one).
        defaults: hyper-parameters of the one trained when none is given (beside in_channels, image_size).
        unusable: a trained first stage -> why it cannot serve (None: it can).
        role: what the family calls it, in messages ("first stage", "tokenizer").
    """

    family: str = FIRST_STAGE_FAMILY
    hparam: str = "first_stage"
    defaults: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_FIRST_STAGE))
    unusable: Callable[[L.LightningModule], str | None] | None = _vae_unusable
    role: str = "first stage"

    @property
    def flag(self) -> str:
        return f"--model.{self.hparam}"


VAE_FIRST_STAGE = FirstStageSpec()


def first_stage_hparams(
    path: str | None, in_channels: int, image_size: int, family: str, spec: FirstStageSpec = VAE_FIRST_STAGE
) -> dict[str, Any]:
    """The hyper-parameters of the first stage a `family` model for `in_channels`-channel `image_size`px images
    uses: those of the checkpoint at `path` (of `spec.family`), checked to be one for such images, or the
    default recipe's."""
    if path is None:
        return {"in_channels": in_channels, "image_size": image_size, **spec.defaults}
    checkpoint = require_family(path, spec.family, spec.flag)
    config = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if (config.get("in_channels"), config.get("image_size")) != (in_channels, image_size):
        raise ValueError(
            f"{spec.role} '{path}' is for {config.get('in_channels')}-channel {config.get('image_size')}px "
            f"images, but this {family} is for {in_channels}-channel {image_size}px ones: train a {spec.family} on "
            f"the same data (python -m zoo.fit --model {spec.family} --data ...) or leave {spec.flag} unset"
        )
    return config


def build_first_stage(config: dict[str, Any], spec: FirstStageSpec = VAE_FIRST_STAGE) -> L.LightningModule:
    """An untrained, frozen first stage of `config`, for a family's `__init__` (its own hyper-parameters kept)."""
    module = build_module(registry.get_model_class(spec.family), **config)
    module.requires_grad_(False)
    return module


def load_first_stage(
    module: L.LightningModule, path: str | Path, spec: FirstStageSpec = VAE_FIRST_STAGE
) -> None:
    """The weights of the trained first-stage checkpoint at `path` into `module`."""
    trained = load_model(path, family=spec.family, flag=spec.flag)
    reason = spec.unusable(trained) if spec.unusable is not None else None
    if reason is not None:
        raise ValueError(f"{spec.role} '{path}' {reason}")
    module.load_state_dict(trained.state_dict())


def wait_for_file(path: Path, timeout_s: float = 6 * 3600, poll_s: float = 5.0) -> None:
    """Return once `path` exists (another rank writes it whole: `train_first_stage` renames it into place)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for rank 0's first stage at {path}")
        time.sleep(poll_s)


def train_first_stage(
    vae: L.LightningModule,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    folder: Path,
    steps: int,
    family: str,
    spec: FirstStageSpec = VAE_FIRST_STAGE,
) -> Path:
    """Train `vae` (a first stage of `spec.family`) for `steps` steps on `datamodule` with a `Trainer` of its
    own writing into `folder`, on the device and precision of the family's `trainer`; returns
    `folder/first_stage.ckpt`."""
    print(
        f"{family}: training the {spec.role} ({spec.family}, {steps} steps) in {folder}; then the {family} model"
    )
    # a fresh copy of the datamodule, so the family's data order does not depend on stage 1
    hparams = {k: v for k, v in (getattr(datamodule, "hparams", {}) or {}).items() if not k.startswith("_")}
    data = type(datamodule)(**hparams) if hparams else datamodule
    budget = _time_budget(trainer)
    # with --trainer.max_time, the first stage may take at most half of it (it usually needs far less)
    stage = _stage_trainer(trainer, folder, steps, None if budget is None else budget[1] / 2)
    vae.requires_grad_(True)
    stage.fit(vae, datamodule=data)
    vae.requires_grad_(False)
    vae.trainer = None  # the stage-1 trainer is done with it
    done = folder / FIRST_STAGE_FILE
    partial = done.with_suffix(".partial")
    stage.save_checkpoint(partial)
    os.replace(partial, done)  # whole or absent: other ranks load it as soon as it exists
    metrics = {k: float(v) for k, v in stage.callback_metrics.items() if k.startswith("val/")}
    print(f"{family}: {spec.role} done: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    return done


def _stage_trainer(trainer: L.Trainer, folder: Path, steps: int, max_seconds: float | None) -> L.Trainer:
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from zoo.callbacks import SampleGrid

    on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
    device = trainer.strategy.root_device
    return L.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=[device.index or 0] if on_gpu else 1,
        precision=trainer.precision,
        max_steps=steps,
        max_time=None if max_seconds is None else {"seconds": max_seconds},
        val_check_interval=max(1, steps // 2),
        check_val_every_n_epoch=None,
        limit_val_batches=8,
        log_every_n_steps=25,
        default_root_dir=str(folder),
        logger=CSVLogger(str(folder), name="", version=""),
        callbacks=[
            ModelCheckpoint(dirpath=str(folder / "checkpoints"), save_last=True, save_top_k=0),
            SampleGrid(every_n_steps=max(1, steps // 2), num_samples=32),
        ],
        enable_model_summary=False,
        enable_progress_bar=trainer.progress_bar_callback is not None,
    )


def prepare_first_stage(
    vae: L.LightningModule,
    *,
    given: str | None,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    steps: int,
    family: str,
    spec: FirstStageSpec = VAE_FIRST_STAGE,
) -> None:
    """Make `vae` (a first stage of `spec.family`) a trained one: the checkpoint `given`, else one trained in
    `<run>/first_stage/` by rank 0 (the other ranks of torchrun or SLURM wait for its file)."""
    if given is not None:
        load_first_stage(vae, given, spec)
        return
    folder = Path(trainer.default_root_dir) / "first_stage"
    start = time.monotonic()
    if rank_zero_only.rank == 0:
        done = train_first_stage(vae, trainer, datamodule, folder, steps, family, spec)
    else:
        done = folder / FIRST_STAGE_FILE
        wait_for_file(done)
    load_first_stage(vae, done, spec)
    _charge_first_stage_to_timer(trainer, time.monotonic() - start)


def _time_budget(trainer: L.Trainer) -> tuple[Any, float] | None:
    """The family trainer's `Timer` (Lightning's, from `--trainer.max_time`) and its duration in seconds."""
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
    duration = None if timer is None else timer._duration  # Timer has no public reader of its duration
    return None if duration is None else (timer, float(duration))


def _charge_first_stage_to_timer(trainer: L.Trainer, seconds: float) -> None:
    """`max_time` is the budget of the whole command: the time the first stage took counts as training time
    already spent (the Timer's own resume mechanism, so a checkpoint remembers it too)."""
    budget = _time_budget(trainer)
    if budget is not None:
        timer, _ = budget
        timer.load_state_dict({"time_elapsed": {"train": timer.time_elapsed("train") + seconds}})


class PosteriorCache:
    """The frozen first stage's posterior (mean, log-variance) of each training image, keyed by its pixels.

    A frozen encoder gives the same posterior for the same pixels, so a dataset seen for many epochs is
    encoded in its first epoch only; the posterior draw is still new every step, from the same random
    stream as without the cache. On the CPU this saves the encoder's forward pass, about a fifth of an
    ldm step (benchmarks/RESULTS.md). Images that change from epoch to epoch (random augmentation) miss
    and are encoded as before. Not used on accelerators, where the encoder is cheap and hashing would
    copy every batch to the host. Bounded: past `max_bytes` of posteriors it stops adding."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.moments: dict[bytes, torch.Tensor] = {}  # (2, C, h, w): mean and log-variance

    @torch.no_grad()
    def latents(self, vae: L.LightningModule, images: torch.Tensor, *, sample: bool) -> torch.Tensor:
        """`vae.encode_latents(images, sample=sample)`, reading known images' posteriors from the cache."""
        if images.device.type != "cpu":
            return vae.encode_latents(images, sample=sample)
        pixels = images.detach().contiguous().numpy()
        keys = [hashlib.blake2b(x.tobytes(), digest_size=16).digest() for x in pixels]
        missing = [i for i, key in enumerate(keys) if key not in self.moments]
        if missing:
            mean, logvar = vae.encode(images[missing])
            for i, m, v in zip(missing, mean, logvar, strict=True):
                if self.bytes + 2 * m.nbytes <= self.max_bytes:
                    self.moments[keys[i]] = torch.stack([m, v])
                    self.bytes += 2 * m.nbytes
            fresh = dict(zip(missing, torch.stack([mean, logvar], 1), strict=True))
        else:
            fresh = {}
        moments = torch.stack([fresh[i] if i in fresh else self.moments[key] for i, key in enumerate(keys)])
        mean, logvar = moments[:, 0], moments[:, 1]
        if sample:  # the draw of `encode_latents`, from the same stream
            mean = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, device=mean.device)
        return mean * vae.latent_scale


class FirstStageFamily:
    """The first-stage side of a two-stage family, as a mixin before `GenerativeModule` (`ldm`, `dit` with a
    vae; `maskgit`, `vq_transformer` with a vqgan, `first_stage_spec` says which).

    The family builds `self.first_stage` (`build_first_stage`) and registers the buffer
    `first_stage_ready` (False) in `__init__`, has the hyper-parameters `<spec.hparam>` (`first_stage` for a
    vae) and `<spec.hparam>_steps`, and calls `self.prepare_first_stage_for_fit(...)` from its `prepare_fit`."""

    family_name: str = ""
    first_stage_spec: FirstStageSpec = VAE_FIRST_STAGE

    def _given_first_stage(self) -> str | None:
        return self.hparams[self.first_stage_spec.hparam]

    def prepare_first_stage_for_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """The given first stage, or one trained in `<run>/first_stage/`; nothing when the run resumes or the
        weights are already there (they come back with the checkpoint)."""
        if ckpt_path is not None or bool(self.first_stage_ready):
            return
        spec = self.first_stage_spec
        prepare_first_stage(
            self.first_stage,
            given=self._given_first_stage(),
            trainer=trainer,
            datamodule=datamodule,
            steps=self.hparams[f"{spec.hparam}_steps"],
            family=self.family_name or type(self).__name__,
            spec=spec,
        )
        self.first_stage_ready.fill_(True)

    def on_fit_start(self) -> None:
        # a Python user's own Trainer (no zoo.fit, so no prepare_fit): take the given first stage now
        if not bool(self.first_stage_ready) and self._given_first_stage() is not None:
            load_first_stage(self.first_stage, self._given_first_stage(), self.first_stage_spec)
            self.first_stage_ready.fill_(True)
        # of this fit's (now final) first stage; vae families read it (training_latents)
        self._posterior_cache = PosteriorCache()

    def training_latents(self, images: torch.Tensor, *, sample: bool) -> torch.Tensor:
        """The first stage's latents of training or validation images, through the fit's `PosteriorCache`."""
        cache = getattr(self, "_posterior_cache", None)
        if cache is None:  # outside fit (a test calling the loss directly)
            return self.first_stage.encode_latents(images, sample=sample)
        return cache.latents(self.first_stage, images, sample=sample)

    def train(self, mode: bool = True) -> Any:
        super().train(mode)
        self.first_stage.eval()  # frozen: no dropout/normalisation updates, whatever Lightning asks
        return self
