"""`flow_matching`: pixel-space flow matching and rectified flow (Lipman et al. 2023; Liu et al. 2022).

A network v(x_t, t) regresses the velocity of a probability path from noise (t = 0) to data (t = 1), torchcfm's
convention (`zoo.diffusion.flow`): the straight path x_t = t x1 + (1 - t) x0 with target x1 - x0
(`path: rectified`), the same with minibatch optimal-transport pairs (`ot`, OT-CFM), or the variance-preserving
path (`vp`). Training times are uniform, logit-normal (SD3) or mode-sampled, optionally shifted. Sampling
integrates dx/dt = v from noise with an ODE sampler of `zoo.diffusion.FLOW_SAMPLERS` (euler, heun, midpoint,
rk4, dopri5). With labels (`num_classes` from the datamodule) the model is class-conditional, trained with
label dropout, and samples with classifier-free guidance on the velocity. The backbone is the diffusion
U-Net (`unet`) or a DiT (`dit`, `zoo.nn.dit`); both see the time as t * 1000, the scale of their timestep
embeddings.

Reflow (Liu et al. 2022; `--recipe reflow --model.teacher CKPT`): the student is built with the teacher's
network and starts from its weights. Before training (`prepare_fit`) the teacher's ODE (`reflow_sampler`,
`reflow_steps`, the teacher's guidance) carries `reflow_pairs` noises to samples, labels spread evenly over
the classes; the (noise, sample, label) triples are stored as safetensors shards in `<run>/reflow_pairs/` and
reused when the run resumes. Training then regresses the straight line from each noise to its sample
(`conditional_flow_matching_loss(..., x0=noise)`, no OT pairing), the straighter flow sampling in few steps
or one. The checkpoint holds the student's own weights and the teacher's sha256.

    python -m zoo.fit --model flow_matching                               # class-conditional, on digits
    python -m zoo.sample --ckpt runs/flow_matching/<run>/checkpoints/last.ckpt --label 3 --sampler euler --steps 8
    python -m zoo.fit --model flow_matching --recipe reflow --model.teacher runs/flow_matching/<run>/checkpoints/last.ckpt
    python -m zoo.sample --ckpt runs/flow_matching/<reflow run>/checkpoints/last.ckpt --label 3 --steps 1
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from zoo.checkpoint import load_model, require_family
from zoo.conditioning import class_labels
from zoo.diffusion import FLOW_TIME_SCALE, guided_denoiser
from zoo.diffusion.flow import PATHS, TIME_SAMPLERS, conditional_flow_matching_loss
from zoo.diffusion.flow_samplers import FLOW_SAMPLERS, sample_flow
from zoo.diffusion.reflow import coupling_straightness, draw_pairs, one_step_error
from zoo.evaluate import sha256_of
from zoo.first_stage import wait_for_file
from zoo.module import GenerativeModule, adamw_with_warmup, check_choice, inference
from zoo.nn.dit import DiT
from zoo.nn.unet import UNet

BACKBONES = ("unet", "dit")
PATH_NAMES = ("rectified", "ot", "vp")
# what a reflow student copies from its teacher: the network and what it is conditioned on
NETWORK_HPARAMS = (
    "in_channels", "image_size", "num_classes", "class_conditional", "backbone", "base_channels",
    "channel_mults", "num_res_blocks", "attention_levels", "num_heads", "dropout", "patch_size", "dit_width",
    "dit_depth",
)  # fmt: skip
PAIRS_PER_SHARD = 4096
PAIRS_SEED = (
    15_000  # shard k's noise comes from seed PAIRS_SEED + k, the validation pairs' from PAIRS_SEED - 1
)
DRAW_BATCH = 256  # pairs per teacher ODE solve


class FlowMatching(GenerativeModule):
    """Flow matching on images; see the module docstring.

    Args:
        in_channels: image channels (1 grey, 3 RGB); zoo.fit links it to data.channels.
        image_size: image side in pixels; zoo.fit links it to data.image_size.
        num_classes: label classes, 0 for unlabelled data; zoo.fit sets it from the datamodule.
        class_conditional: condition on the labels when num_classes > 0; false: unconditional on any data.
        backbone: the velocity network: unet (zoo.nn.unet) or dit (zoo.nn.dit).
        base_channels: U-Net width at the first resolution level.
        channel_mults: U-Net width of each resolution level, times base_channels; each level halves the size.
        num_res_blocks: U-Net ResBlocks per level on the way down (one more on the way up).
        attention_levels: U-Net levels (indices into channel_mults) with self-attention.
        num_heads: attention heads of the U-Net or the DiT.
        dropout: dropout probability inside the U-Net's ResBlocks.
        patch_size: DiT patch side in pixels; must divide image_size.
        dit_width: DiT hidden size (a multiple of num_heads).
        dit_depth: DiT blocks.
        path: probability path: rectified (straight), ot (straight, minibatch optimal-transport pairs) or vp.
        sigma_min: torchcfm's constant blur sigma around each conditional path (0: none).
        time_sampler: training times: uniform, logit_normal (SD3) or mode.
        time_shift: shift of the training times (SNR / shift^2; 1: none); sampling uses the same shift.
        label_dropout: probability a training label is replaced by the null label (for classifier-free guidance).
        lr: AdamW learning rate, reached at the end of the warm-up.
        weight_decay: AdamW weight decay, on every parameter.
        warmup_steps: optimizer steps of linear learning-rate warm-up.
        sampler: ODE sampler of `generate` unless given: euler, heun, midpoint, rk4 or dopri5.
        sampling_steps: sampler steps of `generate` unless given (dopri5 adapts its own).
        guidance: classifier-free guidance scale on the velocity unless given (1: the conditional model alone).
        teacher: reflow: a `flow_matching` checkpoint whose ODE couplings the model is trained on; the network
            arguments above are then the teacher's, and training starts from its weights.
        reflow_pairs: reflow: (noise, sample) pairs drawn from the teacher before training.
        reflow_val_pairs: reflow: further pairs, fixed, for val/straightness and val/one_step_error.
        reflow_sampler: reflow: the teacher's ODE sampler for the pairs (euler, heun, midpoint, rk4, dopri5).
        reflow_steps: reflow: its steps.
        teacher_sha256: set by zoo from the teacher file; leave unset.
    """

    modality = "image"
    default_data = "digits"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 16,
        num_classes: int = 0,
        class_conditional: bool = True,
        backbone: str = "unet",
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
        patch_size: int = 2,
        dit_width: int = 128,
        dit_depth: int = 6,
        path: str = "rectified",
        sigma_min: float = 0.0,
        time_sampler: str = "uniform",
        time_shift: float = 1.0,
        label_dropout: float = 0.1,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        sampler: str = "euler",
        sampling_steps: int = 8,
        guidance: float = 2.0,
        teacher: str | None = None,
        reflow_pairs: int = 8192,
        reflow_val_pairs: int = 256,
        reflow_sampler: str = "rk4",
        reflow_steps: int = 16,
        teacher_sha256: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("backbone", backbone, BACKBONES)
        check_choice("path", path, PATH_NAMES)
        check_choice("time_sampler", time_sampler, tuple(TIME_SAMPLERS))
        check_choice("sampler", sampler, tuple(FLOW_SAMPLERS))
        check_choice("reflow_sampler", reflow_sampler, tuple(FLOW_SAMPLERS))
        if sampling_steps < 1:
            raise ValueError(f"sampling_steps must be at least 1, got {sampling_steps}")
        if teacher is not None and min(reflow_pairs, reflow_val_pairs, reflow_steps) < 1:
            raise ValueError("reflow_pairs, reflow_val_pairs and reflow_steps must be at least 1")
        self.save_hyperparameters()
        teacher_weights = None
        if teacher is not None and teacher_sha256 is None:
            # first built (zoo.fit): the teacher's network; rebuilt from the student's own checkpoint, the
            # hyper-parameters already are the teacher's and the weights come with the checkpoint
            checkpoint = require_family(teacher, "flow_matching", "--model.teacher")
            taught = checkpoint["hyper_parameters"]
            self.hparams.update({k: taught[k] for k in NETWORK_HPARAMS if k in taught})
            self.hparams.teacher_sha256 = sha256_of(teacher)
            teacher_weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        hp = self.hparams
        self.conditional = hp.class_conditional and hp.num_classes > 0
        self.path = PATHS["rectified" if path == "ot" else path](sigma_min)
        classes = hp.num_classes if self.conditional else 0
        if hp.backbone == "unet":
            self.net = UNet(
                in_channels=hp.in_channels,
                base_channels=hp.base_channels,
                channel_mults=tuple(hp.channel_mults),
                num_res_blocks=hp.num_res_blocks,
                attention_levels=tuple(hp.attention_levels),
                num_heads=hp.num_heads,
                dropout=hp.dropout,
                num_classes=classes,
            )
        else:
            self.net = DiT(
                image_size=hp.image_size,
                in_channels=hp.in_channels,
                patch_size=hp.patch_size,
                hidden_size=hp.dit_width,
                depth=hp.dit_depth,
                num_heads=hp.num_heads,
                num_classes=classes,
            )
        if teacher_weights is not None:
            self.load_state_dict(teacher_weights)
        # reflow's (noise, sample, label) couplings, read by prepare_fit; never in the checkpoint
        self._pairs: dict[str, torch.Tensor] | None = None
        self._val_pairs: dict[str, torch.Tensor] | None = None

    @property
    def null_label(self) -> int:
        return self.hparams.num_classes

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """The network's velocity at flow time t in [0, 1] (B,) or a scalar."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(len(x_t))
        return self.net(x_t, t * FLOW_TIME_SCALE, label)

    def _time_grid(self, steps: int) -> torch.Tensor:
        """The sampling grid shifted as the training times were: by the path's own SNR shift."""
        grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        return self.path.shift_time(grid, self.hparams.time_shift)

    def _guided_velocity(self, labels: torch.Tensor | None, guidance: float) -> Any:
        uncond = None if labels is None else torch.full_like(labels, self.null_label)
        return guided_denoiser(self.velocity, labels, uncond, guidance)

    # --- training ---------------------------------------------------------------------------

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """The flow matching loss on a batch of images; with "noise" (reflow's couplings) the path runs
        from that noise to its image, without pairing."""
        hp = self.hparams
        label = batch["label"] if self.conditional else None
        noise = batch.get("noise")
        return conditional_flow_matching_loss(
            self.velocity,
            batch["image"],
            self.path,
            condition=label,
            condition_dropout=hp.label_dropout if (self.training and label is not None) else 0.0,
            null_condition=self.null_label,
            x0=noise,
            ot_pairing=hp.path == "ot" and noise is None,
            time_sampler=hp.time_sampler,
            shift=hp.time_shift,
            generator=generator,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self._pairs is not None:  # reflow: the datamodule only paces the loop
            batch = self._reflow_batch(len(batch["image"]), batch_idx)
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self._val_pairs is not None:
            return  # reflow: measured on the fixed validation pairs, in on_validation_epoch_end
        # times and noise from a generator seeded per batch: comparable across validations, and no draw
        # from the global generator (which exact resumption relies on)
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self._loss(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["image"]))

    def on_validation_epoch_end(self) -> None:
        if self._val_pairs is None:
            return
        pairs = {k: v.to(self.device) for k, v in self._val_pairs.items()}
        noise, sample, label = pairs["noise"], pairs["image"], pairs.get("label")
        dims = noise[0].numel()  # per dimension, the scale of val/loss
        velocity = self._guided_velocity(label, 1.0)  # the student's conditional velocity, unguided
        metrics = {
            "val/loss": self._loss(pairs, torch.Generator(device=self.device).manual_seed(0)),
            "val/straightness": coupling_straightness(velocity, noise, sample) / dims,
            "val/one_step_error": one_step_error(velocity, noise, sample) / dims,
        }
        self.log_dict({k: v.float() for k, v in metrics.items()}, sync_dist=True)

    # --- reflow -----------------------------------------------------------------------------

    def prepare_fit(
        self, trainer: L.Trainer, datamodule: L.LightningDataModule, ckpt_path: str | None
    ) -> None:
        """Called by `zoo.fit` before training: with a teacher, its (noise, sample, label) couplings in
        `<run>/reflow_pairs/`, drawn by rank 0 (shards already there, from a run that resumes or was cut
        short, are kept; the other ranks wait for the last file) and read by every rank."""
        hp = self.hparams
        if hp.teacher is None:
            return
        folder = Path(trainer.default_root_dir) / "reflow_pairs"
        sizes = [
            min(PAIRS_PER_SHARD, hp.reflow_pairs - start)
            for start in range(0, hp.reflow_pairs, PAIRS_PER_SHARD)
        ]
        files = [folder / f"shard-{k:03d}.safetensors" for k in range(len(sizes))]
        val_file = folder / "val.safetensors"
        if rank_zero_only.rank == 0:
            teacher = None
            jobs = [(f, n, PAIRS_SEED + k) for k, (f, n) in enumerate(zip(files, sizes, strict=True))]
            for file, n, seed in [*jobs, (val_file, hp.reflow_val_pairs, PAIRS_SEED - 1)]:
                meta = {"teacher_sha256": hp.teacher_sha256, "sampler": hp.reflow_sampler,
                        "steps": str(hp.reflow_steps), "seed": str(seed), "pairs": str(n)}  # fmt: skip
                if _shard_metadata(file) == meta:
                    continue  # drawn before, by this run or the one it resumes
                if teacher is None:
                    teacher = load_model(
                        hp.teacher,
                        trainer.strategy.root_device,
                        family="flow_matching",
                        flag="--model.teacher",
                    )
                _write_pairs(file, teacher.draw_pairs(n, seed, hp.reflow_sampler, hp.reflow_steps), meta)
        else:
            wait_for_file(val_file)
        self._pairs = _read_pairs(files)
        self._val_pairs = _read_pairs([val_file])

    @torch.no_grad()
    def draw_pairs(self, n: int, seed: int, sampler: str, steps: int) -> dict[str, torch.Tensor]:
        """`n` couplings of this model's guided ODE, on the CPU: {"noise", "image" (the sample, unclamped),
        "label" (i % num_classes, when conditional)}; the noise from `seed`, in batches of DRAW_BATCH."""
        hp = self.hparams
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % hp.num_classes if self.conditional else None
        shape = (hp.in_channels, hp.image_size, hp.image_size)
        noises, samples = [], []
        for start in range(0, n, DRAW_BATCH):
            size = min(DRAW_BATCH, n - start)
            label = None if labels is None else labels[start : start + size].to(self.device)
            noise, sample = draw_pairs(
                self._guided_velocity(label, hp.guidance), (size, *shape), sampler=sampler, steps=steps,
                generator=generator, device=self.device, times=self._time_grid(steps),
            )  # fmt: skip
            noises.append(noise.cpu())
            samples.append(sample.cpu())
        pairs = {"noise": torch.cat(noises), "image": torch.cat(samples)}
        return pairs if labels is None else {**pairs, "label": labels}

    def _reflow_batch(self, n: int, batch_idx: int) -> dict[str, torch.Tensor]:
        """The `n` stored pairs of this batch: the k-th batch of the run takes positions k n ... (k + 1) n - 1
        of the pairs' epochs, each epoch a permutation seeded by its number. k follows from the global step,
        so a resumed run takes exactly the batches the uninterrupted one would have."""
        accumulate = self.trainer.accumulate_grad_batches
        k = self.trainer.global_step * accumulate + batch_idx % accumulate
        total = len(self._pairs["image"])
        positions = torch.arange(k * n, (k + 1) * n)
        epochs = positions // total
        index = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            order = torch.randperm(total, generator=torch.Generator().manual_seed(epoch))
            chosen = epochs == epoch
            index[chosen] = order[positions[chosen] % total]
        return {key: value[index].to(self.device) for key, value in self._pairs.items()}

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return adamw_with_warmup(self.parameters(), hp.lr, hp.weight_decay, hp.warmup_steps)

    # --- sampling ---------------------------------------------------------------------------

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` images in [0, 1]. `condition`: class labels (one for all, or n); `sampler` and `steps` of
        the ODE solver (dopri5 ignores `steps`); `guidance` scales the velocity's conditional part."""
        hp = self.hparams
        sampler = hp.sampler if sampler is None else sampler
        steps = hp.sampling_steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        guidance = hp.guidance if guidance is None else guidance
        labels = class_labels(
            condition,
            n,
            hp.num_classes if self.conditional else 0,
            family="flow_matching",
            device=self.device,
        )
        shape = (n, hp.in_channels, hp.image_size, hp.image_size)
        images = sample_flow(
            self._guided_velocity(labels, guidance), shape, sampler=sampler, steps=steps,
            times=self._time_grid(steps), generator=generator, device=self.device, progress=progress,
        )  # fmt: skip
        return ((images + 1) / 2).clamp(0, 1)

    def previews(
        self, batch: dict[str, Any] | None, *, n: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        condition = torch.arange(n) % self.hparams.num_classes if self.conditional else None
        return {"samples": self.generate(n, condition=condition, generator=generator)}


def _shard_metadata(file: Path) -> dict[str, str] | None:
    """What a shard of pairs was drawn with (teacher, sampler, steps, seed, count); None when absent."""
    if not file.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.metadata()


def _write_pairs(file: Path, pairs: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Whole or absent: written beside and renamed into place, so a cut-short draw leaves no half shard."""
    from safetensors.torch import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in pairs.items()}, str(partial), metadata=metadata)
    os.replace(partial, file)


def _read_pairs(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    shards = [load_file(str(f)) for f in files]
    return {key: torch.cat([shard[key] for shard in shards]) for key in shards[0]}
