"""Audio metrics that need no learned extractor: multi-resolution STFT and mel L1, SI-SNR, and the
Fréchet distance on audio features (FAD-style, once an audio extractor exists).

Waveforms are float (B, S) in [-1, 1]. The multi-resolution STFT uses `torch.stft` with a periodic
Hann window, centred frames and reflect padding (torchaudio's `Spectrogram` defaults); mel
spectrograms come from the one front end every audio family shares, `zoo.audio.LogMel`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.audio import ScaleInvariantSignalNoiseRatio

from zoo.metrics.registry import MetricContext, register_metric

# (n_fft, hop_length, win_length) of Parallel WaveGAN's multi-resolution STFT loss
STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
LOG_FLOOR = 1e-5  # HiFi-GAN's clamp before the log


def stft_magnitude(audio: Tensor, n_fft: int, hop_length: int, win_length: int | None = None) -> Tensor:
    """|STFT| (B, n_fft // 2 + 1, frames) of waveforms (B, S): Hann window, centred, reflect padding."""
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(
        audio,
        n_fft,
        hop_length,
        win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.abs()


def _log_l1(a: Tensor, b: Tensor) -> Tensor:
    return (a.clamp_min(LOG_FLOOR).log() - b.clamp_min(LOG_FLOOR).log()).abs().mean()


def multi_resolution_stft_l1(
    pred: Tensor, target: Tensor, resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS
) -> float:
    """Mean over resolutions of the L1 distance between log STFT magnitudes (natural log, floor 1e-5)."""
    _check_pair(pred, target)
    losses = [_log_l1(stft_magnitude(pred, *r), stft_magnitude(target, *r)) for r in resolutions]
    return float(torch.stack(losses).mean())


def mel_l1(pred: Tensor, target: Tensor, sample_rate: int, **mel: float) -> float:
    """L1 distance between log-mel spectrograms of the shared front end (`zoo.audio.log_mel`, HiFi-GAN's
    conventions: 80 mels, n_fft 1024, hop 256), the quantity HiFi-GAN's mel loss weighs by 45."""
    from zoo.audio import log_mel

    _check_pair(pred, target)
    return float((log_mel(pred, sample_rate, **mel) - log_mel(target, sample_rate, **mel)).abs().mean())


def si_snr(pred: Tensor, target: Tensor) -> float:
    """Scale-invariant signal-to-noise ratio in dB, averaged over the batch (torchmetrics)."""
    _check_pair(pred, target)
    metric = ScaleInvariantSignalNoiseRatio()
    metric.update(pred.double(), target.double())
    return float(metric.compute())


def frechet_audio_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """FAD-style distance: the Fréchet distance between audio embeddings (N, D).

    zoo has no audio extractor yet (it comes with the first audio datamodule, trained like the image
    ones); until then pass embeddings from your own network."""
    from zoo.metrics.image import frechet_distance

    return frechet_distance(real_features, fake_features)


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"paired audio metrics need equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


@register_metric("stft_l1", modalities=("audio",), needs=("real", "fake"), higher_is_better=False)
def _stft_l1(ctx: MetricContext) -> dict[str, float]:
    """Multi-resolution log-STFT L1 between paired real and generated audio (reconstruction, vocoding)."""
    return {"stft_l1": multi_resolution_stft_l1(ctx.fake, ctx.real)}


@register_metric("mel_l1", modalities=("audio",), needs=("real", "fake"), higher_is_better=False)
def _mel_l1(ctx: MetricContext) -> dict[str, float]:
    """Log-mel L1 between paired real and generated audio; needs options['sample_rate']."""
    return {"mel_l1": mel_l1(ctx.fake, ctx.real, int(ctx.options["sample_rate"]))}


@register_metric("si_snr", modalities=("audio",), needs=("real", "fake"), higher_is_better=True)
def _si_snr(ctx: MetricContext) -> dict[str, float]:
    """SI-SNR (dB) of generated audio against paired real audio."""
    return {"si_snr": si_snr(ctx.fake, ctx.real)}
