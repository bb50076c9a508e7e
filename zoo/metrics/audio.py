"""Audio metrics that need no learned extractor: multi-resolution STFT and mel L1, SI-SNR, and the
Fréchet distance on audio features (FAD-style, once an audio extractor exists).

Waveforms are float (B, S) in [-1, 1]. Spectrograms use `torch.stft` with a periodic Hann window,
centred frames and reflect padding (torchaudio's `Spectrogram` defaults); the mel filterbank is
Slaney's (slaney mel scale, slaney area normalisation, as librosa and HiFi-GAN). torchaudio is not
a dependency: its releases trail torch's, and the test suite checks these against it when present.
"""

from __future__ import annotations

import math
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


def _hz_to_mel(f: Tensor) -> Tensor:
    # Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    mels = f / f_sp
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f / min_log_hz) / logstep, mels)


def _mel_to_hz(m: Tensor) -> Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    n_freqs: int, sample_rate: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters (n_freqs, n_mels), Slaney scale and area normalisation."""
    f_max = f_max if f_max is not None else sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mel_points = torch.linspace(
        float(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
        float(_hz_to_mel(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz = _mel_to_hz(mel_points)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters * (2.0 / (upper - lower))  # equal area per filter
    return filters.float()


def mel_spectrogram(
    audio: Tensor, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80,
    f_min: float = 0.0, f_max: float | None = None,
) -> Tensor:  # fmt: skip
    """Mel magnitude spectrogram (B, n_mels, frames) of waveforms (B, S)."""
    magnitude = stft_magnitude(audio, n_fft, hop_length)
    filters = mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels, f_min, f_max).to(audio)
    return torch.einsum("bft,fm->bmt", magnitude, filters)


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
    """L1 distance between log mel spectrograms (HiFi-GAN's mel loss: 80 mels, n_fft 1024, hop 256)."""
    _check_pair(pred, target)
    return float(
        _log_l1(mel_spectrogram(pred, sample_rate, **mel), mel_spectrogram(target, sample_rate, **mel))
    )


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
