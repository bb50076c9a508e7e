"""The log-mel front end every audio family and metric shares, and Griffin-Lim as the fallback vocoder.

HiFi-GAN's conventions (Kong et al. 2020, `meldataset.py`) are the defaults, because a vocoder only
works on mels computed exactly as the ones it was trained on:

- n_fft 1024, hop 256, window 1024 (periodic Hann), 80 mel bands from 0 to 8000 Hz at 22050 Hz;
- framing: the waveform is reflect-padded by (n_fft - hop) / 2 on each side and framed with
  `center=False`, so a clip of S samples (S a multiple of the hop) gives exactly S / hop frames and
  frame t is centred on sample t * hop + hop / 2;
- magnitude sqrt(re^2 + im^2 + 1e-9) (the epsilon keeps the gradient finite at silent bins), then a
  Slaney-scale mel filterbank with Slaney area normalisation (librosa's default, which HiFi-GAN
  uses), then the natural log of the magnitude clamped at 1e-5.

The STFT and the filterbank are torchaudio's; tests/test_audio.py checks the result against a
numpy STFT and a filterbank built from the Slaney formulas.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

LOG_FLOOR = 1e-5  # HiFi-GAN's clamp before the log
MAGNITUDE_EPS = 1e-9  # HiFi-GAN's epsilon under the square root


class LogMel(nn.Module):
    """Waveforms (..., S) in [-1, 1] -> log-mel spectrograms (..., n_mels, S // hop_length).

    A module, so a family holds it as a submodule and its filterbank follows the model's device and
    dtype. `f_max=None` means the Nyquist frequency (HiFi-GAN's mel loss uses that).
    """

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = 8000.0,
    ) -> None:
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(
                f"n_fft - hop_length must be even for symmetric padding, got {n_fft}, {hop_length}"
            )
        if f_max is not None and f_max > sample_rate / 2:
            raise ValueError(f"f_max {f_max} Hz is above the Nyquist frequency of {sample_rate} Hz audio")
        self.sample_rate, self.n_fft, self.hop_length, self.win_length = (
            sample_rate,
            n_fft,
            hop_length,
            win_length,
        )
        self.n_mels, self.f_min, self.f_max = n_mels, f_min, f_max
        self.pad = (n_fft - hop_length) // 2
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=None, center=False
        )
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels, sample_rate, f_min, f_max, n_stft=n_fft // 2 + 1, norm="slaney", mel_scale="slaney"
        )

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """Complex STFT (..., n_fft // 2 + 1, frames) with HiFi-GAN's padding and framing."""
        if audio.shape[-1] <= self.pad:
            raise ValueError(
                f"audio of {audio.shape[-1]} samples is too short for the mel front end: reflect padding "
                f"needs more than {self.pad} samples"
            )
        shape = audio.shape
        flat = audio.reshape(-1, 1, shape[-1])
        padded = F.pad(flat, (self.pad, self.pad), mode="reflect").reshape(*shape[:-1], -1)
        return self.spectrogram(padded)

    def magnitude_to_log_mel(self, magnitude: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel_scale(magnitude).clamp_min(LOG_FLOOR))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = self.stft(audio)
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + MAGNITUDE_EPS)
        return self.magnitude_to_log_mel(magnitude)

    def inverse_stft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """The exact inverse of `stft` (weighted overlap-add), cropped to `length` samples.

        torch.istft cannot do this with `center=False`: it refuses windows that sum to zero at the
        padded signal's very first sample, which is padding here and is cropped anyway."""
        window = self.spectrogram.window.to(spec.real.dtype)
        window = F.pad(window, ((self.n_fft - self.win_length) // 2, (self.n_fft - self.win_length + 1) // 2))
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-2) * window[:, None]  # (..., n_fft, T)
        lead, (n_fft, t) = frames.shape[:-2], frames.shape[-2:]
        total = (t - 1) * self.hop_length + n_fft

        def overlap_add(x: torch.Tensor) -> torch.Tensor:
            return F.fold(x, output_size=(1, total), kernel_size=(1, n_fft), stride=(1, self.hop_length))

        signal = overlap_add(frames.reshape(-1, n_fft, t)).reshape(*lead, total)
        envelope = overlap_add(window.pow(2)[None, :, None].expand(1, n_fft, t)).reshape(total)
        signal = signal / envelope.clamp_min(1e-11)
        return signal[..., self.pad : self.pad + length]


@functools.lru_cache(maxsize=8)
def _front_end(sample_rate: int, **options: float | None) -> LogMel:
    return LogMel(sample_rate, **options)  # type: ignore[arg-type]


def log_mel(audio: torch.Tensor, sample_rate: int = 22050, **options: float | None) -> torch.Tensor:
    """`LogMel(sample_rate, **options)(audio)`, the module built once per configuration."""
    front_end = _front_end(sample_rate, **options).to(device=audio.device, dtype=audio.dtype)
    return front_end(audio)


def griffin_lim(
    mel: torch.Tensor,
    sample_rate: int = 22050,
    *,
    n_iter: int = 32,
    momentum: float = 0.99,
    front_end: LogMel | None = None,
) -> torch.Tensor:
    """The fallback vocoder: log-mel (..., n_mels, T) -> waveform (..., T * hop) in [-1, 1].

    The mel is exponentiated, mapped back to a linear magnitude with torchaudio's `InverseMelScale`
    (least squares, clamped at 0), and given phases by torchaudio's Griffin-Lim (Griffin & Lim 1984,
    with the "fast" momentum of Perraudin et al. 2013), starting from zero phase so the result is
    deterministic. torchaudio frames with `center=True`, whose frame t is centred on sample t * hop;
    the front end's frame t is centred on t * hop + hop / 2, so the result is shifted by hop / 2 to
    line up with the audio the mel came from.
    """
    fe = front_end if front_end is not None else _front_end(sample_rate)
    if mel.shape[-2] != fe.n_mels:
        raise ValueError(f"expected a mel with {fe.n_mels} bands at dim -2, got shape {tuple(mel.shape)}")
    inverse_mel = torchaudio.transforms.InverseMelScale(
        fe.n_fft // 2 + 1, fe.n_mels, fe.sample_rate, fe.f_min, fe.f_max,
        norm="slaney", mel_scale="slaney", driver="gelsd",
    ).to(mel.device, mel.dtype)  # fmt: skip
    frames = mel.shape[-1]
    # torchaudio's inverse STFT reflect-pads by n_fft / 2 and fails on shorter signals (a word of two
    # frames): pad with silent frames, cut back to frames * hop below
    short = max(0, fe.n_fft // fe.hop_length + 2 - frames)
    mel = F.pad(mel, (0, short), value=math.log(LOG_FLOOR))
    magnitude = inverse_mel(mel.exp()).clamp_min(0.0)
    transform = torchaudio.transforms.GriffinLim(
        n_fft=fe.n_fft, n_iter=n_iter, win_length=fe.win_length, hop_length=fe.hop_length, power=1.0,
        momentum=momentum, length=(frames + short - 1) * fe.hop_length, rand_init=False,
    ).to(mel.device, mel.dtype)  # fmt: skip
    audio = transform(magnitude)
    shift = fe.hop_length // 2
    audio = F.pad(audio, (shift, fe.hop_length - shift))[..., : frames * fe.hop_length]
    return audio.clamp(-1.0, 1.0)
