"""WAV files: writing generated audio and reading audio for datasets and analysis-resynthesis.

soundfile (libsndfile) does the file work; torchaudio's own load/save need the torchcodec package,
which zoo does not depend on. Audio in zoo is float in [-1, 1]; files are written as 16-bit PCM by
default (what every player reads) and read back as float32, mixed down to mono, and resampled with
torchaudio's band-limited sinc interpolation when a rate is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from zoo.errors import DataError


class AudioFileError(DataError):
    """An audio file that cannot be read or holds unusable audio; the message names the file."""


def save_wav(
    audio: torch.Tensor | np.ndarray, path: str | Path, sample_rate: int, subtype: str = "PCM_16"
) -> Path:
    """Write mono audio (S,) or (1, S), float in [-1, 1], to `path` at `sample_rate`.

    Values outside [-1, 1] are clipped (a 16-bit file cannot hold them); NaN or inf is an error, since
    writing it would silently turn a broken model into a file that looks fine."""
    data = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if data.ndim == 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 1:
        raise ValueError(f"save_wav writes mono audio (S,) or (1, S); got shape {data.shape} for {path}")
    if not np.isfinite(data).all():
        raise ValueError(f"refusing to write {path}: the audio has NaN or infinite samples")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(data, -1.0, 1.0).astype(np.float32), int(sample_rate), subtype=subtype)
    return path


def save_wavs(audio: torch.Tensor, folder: str | Path, sample_rate: int, *, start: int = 0) -> list[Path]:
    """A batch (B, S) as `folder/000000.wav`, `000001.wav`, ... numbered from `start`."""
    if audio.ndim != 2:
        raise ValueError(f"expected a batch of mono audio (B, S), got shape {tuple(audio.shape)}")
    folder = Path(folder)
    return [save_wav(clip, folder / f"{start + i:06d}.wav", sample_rate) for i, clip in enumerate(audio)]


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """soundfile's header information (rate, frames, channels), with an error naming unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such audio file")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(f"{path}: not a readable audio file ({err})") from err


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """torchaudio's band-limited resampling (Kaiser-windowed sinc) along the last dimension."""
    if orig_rate == new_rate:
        return audio
    return AF.resample(audio, int(orig_rate), int(new_rate))


def load_wav(path: str | Path, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 mono (S,) in [-1, 1]; returns (audio, rate).

    Several channels are averaged. With `sample_rate`, audio at another rate is resampled to it and
    that rate is returned; without, the file's own rate. Unreadable, empty or non-finite audio raises
    `AudioFileError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(f"{path}: not a readable audio file ({err})") from err
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: the audio has NaN or infinite samples")
    audio = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy())
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio.clamp(-1.0, 1.0), int(rate)


def pad_batch(clips: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of different lengths -> (B, max_len) zero-padded and their lengths (B,) int64."""
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.int64)
    out = torch.zeros(len(clips), int(lengths.max()) if len(clips) else 0)
    for i, clip in enumerate(clips):
        out[i, : len(clip)] = clip
    return out, lengths
