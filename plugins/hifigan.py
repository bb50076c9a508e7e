"""`hifigan`: a GAN vocoder from log-mel spectrograms to waveforms (Kong, Kim & Bae, NeurIPS 2020).

Generator: a 7-tap convolution lifts the mel (B, n_mels, T) to `upsample_initial_channel` channels,
then each transposed convolution upsamples time by `upsample_rates[i]` (their product is the hop, so T
frames become T * hop samples) and halves the channels, followed by a multi-receptive-field fusion
(MRF): the mean of residual blocks with different kernel sizes and dilations. The default is HiFi-GAN
V3's layout (rates 8, 8, 4; MRF kernels 3, 5, 7 with dilations (1, 2), (2, 6), (3, 12): its "type 2"
blocks) at half its width, 128 channels, for CPU training and faster than real time on one core.

Discriminators: the multi-period discriminator folds the waveform into (T / p, p) for p in 2, 3, 5,
7, 11 and applies 2-D convolutions along time, so each sub-discriminator sees one phase of a period;
the multi-scale discriminator applies 1-D grouped convolutions to the raw, x2 and x4 average-pooled
waveform. Their widths are HiFi-GAN's times `discriminator_width` (1.0 = the paper's).

Losses, as in the paper (manual optimisation, one discriminator then one generator step per batch):

    D: sum over sub-discriminators of mean((D(y) - 1)^2) + mean(D(G(s))^2)            (LSGAN)
    G: sum of mean((D(G(s)) - 1)^2) + 2 * feature matching (L1 between D's features)
       + 45 * L1(log-mel(y), log-mel(G(s)))

The LSGAN terms come from `zoo.nn.adversarial`, whose losses carry a factor 1/2 (Mao et al.'s
form); they are doubled here to get HiFi-GAN's weighting against the x2 and x45 terms. The mel loss
uses the shared front end (`zoo.audio.LogMel`) with f_max at Nyquist, as HiFi-GAN's
`fmax_for_loss: null`; the input mel uses f_max 8000 Hz.

`generate(n, condition=mel)` vocodes log-mels (B, n_mels, T) computed with `zoo.audio.log_mel` at the
model's `sample_rate`; `condition` may also be paths of `.npy` mels or audio files (analysis-
resynthesis), so `python -m zoo.sample --ckpt hifigan.ckpt --num 1 --prompt in.wav` works. With no
condition it resynthesises `num_reference` held-out clips whose mels it keeps from its first
validation (saved in the checkpoint); a model that never validated says it needs a mel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm
from torch.nn.utils.parametrize import remove_parametrizations

from zoo.audio import LOG_FLOOR, LogMel
from zoo.module import GenerativeModule, inference
from zoo.nn.adversarial import discriminator_loss, feature_matching_loss, generator_loss
from zoo.nn.layers import masked_mean

LRELU_SLOPE = 0.1


def _padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2  # "same" length for odd kernels


class ResBlock(nn.Module):
    """HiFi-GAN's residual block "type 2" (V3): per dilation, leaky ReLU -> dilated conv, added back."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            weight_norm(
                nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_padding(kernel_size, d))
            )
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """Mel (B, n_mels, T) -> waveform (B, 1, T * prod(upsample_rates)) in (-1, 1)."""

    def __init__(
        self,
        n_mels: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        upsample_initial_channel: int,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilations: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        self.conv_pre = weight_norm(nn.Conv1d(n_mels, upsample_initial_channel, 7, padding=3))
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes, strict=True):
            # padding (k - u) / 2 makes the output exactly u times longer
            self.ups.append(
                weight_norm(nn.ConvTranspose1d(channels, channels // 2, kernel, rate, (kernel - rate) // 2))
            )
            channels //= 2
            self.mrfs.append(
                nn.ModuleList(
                    ResBlock(channels, k, d)
                    for k, d in zip(resblock_kernel_sizes, resblock_dilations, strict=True)
                )
            )
        self.conv_post = weight_norm(nn.Conv1d(channels, 1, 7, padding=3))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for up, mrf in zip(self.ups, self.mrfs, strict=True):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(block(x) for block in mrf) / len(mrf)  # multi-receptive-field fusion
        # HiFi-GAN's leaky ReLU here uses PyTorch's default slope 0.01, not 0.1
        return torch.tanh(self.conv_post(F.leaky_relu(x)))

    def remove_weight_norm(self) -> None:
        """Fold the weight-norm parametrisation into plain weights: same output, faster inference."""
        for module in self.modules():
            if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
                remove_parametrizations(module, "weight")


Features = list[torch.Tensor]


def _scores_and_features(
    convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, Features]:
    """A sub-discriminator's body: leaky-ReLU convolutions, then a last convolution whose outputs are
    the scores (flattened); every layer's output is kept for the feature-matching loss."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Looks at samples p apart: (B, 1, S) -> (B, 1, S / p, p), convolved along the first axis only."""

    def __init__(self, period: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.period = period
        chans = [1, *widths]
        self.convs = nn.ModuleList(
            weight_norm(
                nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < len(widths) - 1 else 1, 1), (2, 0))
            )
            for i in range(len(widths))
        )
        self.conv_post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        b, c, s = x.shape
        if s % self.period:
            x = F.pad(x, (0, self.period - s % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)
        return _scores_and_features(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """MelGAN's discriminator: strided, grouped 1-D convolutions over the waveform."""

    # (out width as a multiple of the base, kernel, stride, groups) of HiFi-GAN's layers after the first
    LAYERS = ((1, 41, 2, 4), (2, 41, 2, 16), (4, 41, 4, 16), (8, 41, 4, 16), (8, 41, 1, 16), (8, 5, 1, 1))

    def __init__(self, base: int, use_spectral_norm: bool = False) -> None:
        super().__init__()
        norm = spectral_norm if use_spectral_norm else weight_norm
        layers, channels = [norm(nn.Conv1d(1, base, 15, 1, padding=7))], base
        for mult, kernel, stride, groups in self.LAYERS:
            out = base * mult
            groups = math.gcd(groups, math.gcd(channels, out))  # narrow widths cannot keep 16 groups
            layers.append(
                norm(nn.Conv1d(channels, out, kernel, stride, groups=groups, padding=(kernel - 1) // 2))
            )
            channels = out
        self.convs = nn.ModuleList(layers)
        self.conv_post = norm(nn.Conv1d(channels, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
        return _scores_and_features(self.convs, self.conv_post, x)


class Discriminators(nn.Module):
    """The multi-period and multi-scale discriminators together: a list of (score, features) per
    sub-discriminator for a waveform batch (B, 1, S)."""

    def __init__(self, periods: Sequence[int], width: float) -> None:
        super().__init__()
        mpd_widths = [max(4, round(w * width)) for w in (32, 128, 512, 1024, 1024)]
        msd_base = max(4, round(128 * width))
        self.periods = nn.ModuleList(PeriodDiscriminator(p, mpd_widths) for p in periods)
        # the first scale sees the raw waveform and is spectrally normalised, as in the paper
        self.scales = nn.ModuleList(ScaleDiscriminator(msd_base, use_spectral_norm=i == 0) for i in range(3))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, Features]]:
        outputs = [d(x) for d in self.periods]
        for i, d in enumerate(self.scales):
            if i > 0:
                x = self.pool(x)
            outputs.append(d(x))
        return outputs


def random_segments(audio: torch.Tensor, lengths: torch.Tensor | None, size: int) -> torch.Tensor:
    """One random window of `size` samples from each clip's real part (zero-padded if it is shorter).
    Drawn from the global generator, which zoo checkpoints, so resumed runs cut the same windows."""
    b, s = audio.shape
    lengths = lengths if lengths is not None else torch.full((b,), s, device=audio.device)
    out = audio.new_zeros(b, size)
    for i in range(b):
        n = int(lengths[i])
        if n <= size:
            out[i, :n] = audio[i, :n]
        else:
            start = int(torch.randint(0, n - size + 1, ()))
            out[i] = audio[i, start : start + size]
    return out


class HiFiGAN(GenerativeModule):
    """HiFi-GAN vocoder; see the module docstring. `python -m zoo.fit --model hifigan` (on `tones`).

    Args:
        sample_rate: audio rate in Hz; zoo.fit links it to data.sample_rate.
        n_mels: mel bands of the input log-mels (an acoustic model's mels must match all mel settings).
        n_fft: STFT size in samples; n_fft - hop_length must be even.
        hop_length: samples between mel frames, the product of upsample_rates: each frame becomes that many samples.
        win_length: STFT window in samples.
        f_min: lowest mel frequency in Hz.
        f_max: highest mel frequency of the input mels in Hz, at most sample_rate / 2 (the mel loss goes to sample_rate / 2).
        upsample_rates: the time factor of each transposed convolution of the generator.
        upsample_kernel_sizes: kernel size of each transposed convolution, one per rate; kernel - rate must be even.
        upsample_initial_channel: generator channels before the first upsampling, halved by each; divisible by 2**len(upsample_rates).
        resblock_kernel_sizes: kernel size of each residual block of the multi-receptive-field fusion.
        resblock_dilations: the dilations of each of those residual blocks, one tuple per kernel size.
        periods: the periods of the multi-period discriminator, one sub-discriminator each.
        discriminator_width: widths of both discriminators, times the paper's (1.0), at least 4 channels a layer.
        segment_size: samples of the random window cut from each training clip, a multiple of hop_length.
        lambda_fm: weight of the feature-matching loss in the generator's loss.
        lambda_mel: weight of the log-mel L1 loss in the generator's loss.
        lr: AdamW learning rate of both networks (weight decay 0.01, PyTorch's default), no warm-up.
        betas: AdamW's (beta1, beta2) of both networks.
        lr_decay: learning-rate factor applied at the end of every training epoch (ExponentialLR).
        num_reference: held-out clips whose mels the first validation keeps, for `generate` without a condition.
        reference_frames: mel frames kept of each of those clips (cut, or padded with silence).
    """

    modality = "audio"
    default_data = "tones"

    def __init__(
        self,
        sample_rate: int = 22050,
        n_mels: int = 80,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        upsample_rates: tuple[int, ...] = (8, 8, 4),
        upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8),
        upsample_initial_channel: int = 128,
        resblock_kernel_sizes: tuple[int, ...] = (3, 5, 7),
        resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 2), (2, 6), (3, 12)),
        periods: tuple[int, ...] = (2, 3, 5, 7, 11),
        discriminator_width: float = 0.25,
        segment_size: int = 8192,
        lambda_fm: float = 2.0,
        lambda_mel: float = 45.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.8, 0.99),
        lr_decay: float = 0.999,
        num_reference: int = 8,
        reference_frames: int = 86,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if math.prod(upsample_rates) != hop_length:
            raise ValueError(
                f"the upsample rates {tuple(upsample_rates)} multiply to {math.prod(upsample_rates)}, not the hop "
                f"length {hop_length}: each mel frame must become exactly one hop of samples"
            )
        if upsample_initial_channel % 2 ** len(upsample_rates):
            raise ValueError(f"upsample_initial_channel must be divisible by 2^{len(upsample_rates)}")
        if segment_size % hop_length:
            raise ValueError(f"segment_size {segment_size} must be a multiple of hop_length {hop_length}")
        self.automatic_optimization = False  # a D step then a G step per batch
        self.sample_rate = sample_rate
        front = {
            "n_fft": n_fft,
            "hop_length": hop_length,
            "win_length": win_length,
            "n_mels": n_mels,
            "f_min": f_min,
        }
        self.mel = LogMel(sample_rate, f_max=f_max, **front)
        self.loss_mel = LogMel(sample_rate, f_max=None, **front)
        self.generator = Generator(n_mels, upsample_rates, upsample_kernel_sizes, upsample_initial_channel,
                                   resblock_kernel_sizes, resblock_dilations)  # fmt: skip
        self.discriminators = Discriminators(periods, discriminator_width)
        # held-out mels (log floor = silence) that generate() resynthesises when given no condition
        self.register_buffer(
            "reference_mels", torch.full((num_reference, n_mels, reference_frames), math.log(LOG_FLOOR))
        )
        self.register_buffer("reference_count", torch.zeros((), dtype=torch.long))

    # --- the model ------------------------------------------------------------------------------

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, T) -> waveform (B, T * hop)."""
        return self.generator(mel).squeeze(1)

    def adversarial_losses(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's LSGAN and feature-matching losses against every sub-discriminator."""
        with torch.no_grad():
            real_out = self.discriminators(real.unsqueeze(1))
        fake_out = self.discriminators(fake.unsqueeze(1))
        # x2: zoo.nn.adversarial's LSGAN has Mao et al.'s 1/2, HiFi-GAN's has none
        adv = sum(2 * generator_loss("lsgan", score) for score, _ in fake_out)
        fm = sum(feature_matching_loss(r, f) for (_, r), (_, f) in zip(real_out, fake_out, strict=True))
        return {"adv": adv, "fm": fm}

    def discriminator_step_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        real_out = self.discriminators(real.unsqueeze(1))
        fake_out = self.discriminators(fake.detach().unsqueeze(1))
        return sum(
            2 * discriminator_loss("lsgan", r, f) for (r, _), (f, _) in zip(real_out, fake_out, strict=True)
        )

    def masked_mel_l1(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Resynthesis error of whole clips: L1 between the loss front end's log-mels of `audio` and of
        its vocoded version, over each clip's real frames only (padding would flatter the model)."""
        hop = self.hparams.hop_length
        audio = audio[:, : audio.shape[-1] // hop * hop]
        fake = self(self.mel(audio))
        diff = (self.loss_mel(fake) - self.loss_mel(audio)).abs()  # (B, n_mels, T)
        if lengths is None:
            return diff.mean()
        real_frames = torch.arange(diff.shape[-1], device=diff.device) < (lengths[:, None] // hop)  # (B, T)
        return masked_mean(diff, real_frames[:, None])

    # --- Lightning ------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        real = random_segments(batch["audio"], batch.get("length"), hp.segment_size)
        fake = self(self.mel(real))

        with self.toggled_optimizer(opt_d):
            d_loss = self.discriminator_step_loss(real, fake)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()

        with self.toggled_optimizer(opt_g):
            mel_l1 = F.l1_loss(self.loss_mel(fake), self.loss_mel(real))
            parts = self.adversarial_losses(real, fake)
            g_loss = parts["adv"] + hp.lambda_fm * parts["fm"] + hp.lambda_mel * mel_l1
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()

        logs = {"loss": g_loss, "d_loss": d_loss, "mel_l1": mel_l1, "adv": parts["adv"], "fm": parts["fm"]}
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=len(real))

    def on_train_epoch_end(self) -> None:
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        audio, lengths = batch["audio"], batch.get("length")
        mel_l1 = self.masked_mel_l1(audio, lengths)
        self.log("val/mel_l1", mel_l1, prog_bar=True, sync_dist=True, batch_size=len(audio))
        self.log("val/loss", mel_l1, sync_dist=True, batch_size=len(audio))
        if batch_idx == 0 and int(self.reference_count) == 0:
            self._filling_references = True  # only the first validation fills them, batch after batch
        if getattr(self, "_filling_references", False):
            self.keep_references(audio)

    def on_validation_epoch_end(self) -> None:
        self._filling_references = False

    def keep_references(self, audio: torch.Tensor) -> None:
        """Append clips' mels (cropped or padded to `reference_frames`) to the ones generate() uses."""
        start = int(self.reference_count)
        k = min(len(audio), self.reference_mels.shape[0] - start)
        if k <= 0:
            return
        mels = self.mel(audio[:k])[..., : self.reference_mels.shape[-1]]
        self.reference_mels[start : start + k, :, : mels.shape[-1]] = mels
        self.reference_count.fill_(start + k)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt_g = torch.optim.AdamW(self.generator.parameters(), hp.lr, betas=tuple(hp.betas))
        opt_d = torch.optim.AdamW(self.discriminators.parameters(), hp.lr, betas=tuple(hp.betas))
        schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, hp.lr_decay) for o in (opt_g, opt_d)]
        return [opt_g, opt_d], schedulers

    # --- generation -----------------------------------------------------------------------------

    def _mel_of(self, item: Any) -> torch.Tensor:
        """A condition item as a log-mel (n_mels, T): a tensor, a `.npy` mel or an audio file."""
        if isinstance(item, torch.Tensor):
            return item
        path = Path(str(item))
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path)).float()
        from zoo.io.audio import load_wav

        audio, _ = load_wav(path, self.sample_rate)  # analysis-resynthesis of a recording
        return self.mel(audio.to(self.device)[None])[0]

    @inference
    def generate(
        self,
        n: int,
        *,
        condition: Any = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Vocode log-mels into audio (n, T * hop) in [-1, 1] at `sample_rate`.

        `condition`: a log-mel (n, n_mels, T) or (n_mels, T) from `zoo.audio.log_mel` with this model's
        settings, or a list of tensors / `.npy` paths / audio paths (outputs zero-padded to the longest).
        None resynthesises the held-out clips kept at the first validation. The generator is
        deterministic, so `generator` is unused."""
        if condition is None:
            count = int(self.reference_count)
            if count == 0:
                raise ValueError(
                    "hifigan is a vocoder: it needs a log-mel to turn into audio (condition=zoo.audio.log_mel(audio, "
                    "sample_rate), or --prompt file.wav / file.npy on the command line); this checkpoint holds "
                    "no held-out mels to resynthesise because it never ran a validation"
                )
            mels = [self.reference_mels[i % count] for i in range(n)]
        elif isinstance(condition, torch.Tensor):
            mels = list(condition[None] if condition.ndim == 2 else condition)
        else:
            mels = [self._mel_of(item) for item in condition]
        if len(mels) == 1 and n > 1:
            mels = mels * n
        if len(mels) != n:
            raise ValueError(f"got {len(mels)} mels for n={n} samples")
        for mel in mels:
            if mel.ndim != 2 or mel.shape[0] != self.hparams.n_mels:
                raise ValueError(
                    f"expected log-mels of shape ({self.hparams.n_mels}, frames), got {tuple(mel.shape)}"
                )
        frames = max(m.shape[-1] for m in mels)
        batch = torch.stack(
            [F.pad(m.to(self.device), (0, frames - m.shape[-1]), value=math.log(LOG_FLOOR)) for m in mels]
        )
        audio = self(batch)
        hop = self.hparams.hop_length
        for i, m in enumerate(mels):  # silence where a shorter mel was padded
            audio[i, m.shape[-1] * hop :] = 0.0
        return audio.clamp(-1.0, 1.0)
