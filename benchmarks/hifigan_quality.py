"""Held-out quality of a `hifigan` checkpoint on `tones`, beside Griffin-Lim on the same mels.

    OMP_NUM_THREADS=1 python benchmarks/hifigan_quality.py --ckpt runs/hifigan/<run>/checkpoints/last.ckpt

For the `tones` test split (seed 0, 100 clips): each clip's log-mel is vocoded by the checkpoint and
by Griffin-Lim (32 iterations); reported are the log-mel L1 (HiFi-GAN's mel loss front end, real
frames only), the multi-resolution STFT distance (`zoo.metrics.audio.multi_resolution_stft_l1`) and
the pitch accuracy: the share of notes whose autocorrelation pitch (middle half of the note) is
within 50 cents of the label, also for the original audio as the estimator's own ceiling. A few
clips are written as WAV files (original, hifigan, griffin-lim) to `--out` and read back.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from zoo.audio import griffin_lim
from zoo.checkpoint import load_model
from zoo.datamodules.audio import TonesDataModule, midi_to_hz
from zoo.io.audio import save_wav
from zoo.metrics.audio import multi_resolution_stft_l1


def autocorrelation_pitch(x: np.ndarray, sr: int, fmin: float = 100.0, fmax: float = 1200.0) -> float:
    """The shortest-lag autocorrelation peak within 10% of the highest, refined by a parabola."""
    x = x - x.mean()
    n = len(x)
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    ac = ac / max(ac[0], 1e-12) / (1 - np.arange(n) / n)
    lags = np.arange(int(sr / fmax), int(sr / fmin))
    peaks = [lag for lag in lags[1:-1] if ac[lag] >= ac[lag - 1] and ac[lag] >= ac[lag + 1]]
    if not peaks:
        return float("nan")
    best = max(ac[p] for p in peaks)
    lag = next(p for p in peaks if ac[p] >= 0.9 * best)
    a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
    return sr / (lag + 0.5 * (a - c) / (a - 2 * b + c + 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--out", default="hifigan_quality")
    parser.add_argument("--wavs", type=int, default=4, help="clips written as WAV files")
    args = parser.parse_args()

    model = load_model(args.ckpt).eval()
    sr, hop = model.sample_rate, model.hparams.hop_length
    data = TonesDataModule(sample_rate=sr, num_test=args.num)
    data.setup()
    rows = {"hifigan": [], "griffin-lim": []}
    cents: dict[str, list[float]] = {"original": [], "hifigan": [], "griffin-lim": []}
    out = Path(args.out)
    for index in range(args.num):
        item = data.test_set[index]
        audio = item["audio"][: item["audio"].numel() // hop * hop][None]
        with torch.no_grad():
            mel = model.mel(audio)
            versions = {"original": audio, "hifigan": model(mel), "griffin-lim": griffin_lim(mel, sr)}
            for name in ("hifigan", "griffin-lim"):
                fake = versions[name]
                mel_l1 = float((model.loss_mel(fake) - model.loss_mel(audio)).abs().mean())
                rows[name].append((mel_l1, multi_resolution_stft_l1(fake, audio)))
        for name, wave in versions.items():
            x = wave[0].double().numpy()
            for k in range(int(item["num_notes"])):
                onset, samples = int(item["onsets"][k]), int(item["durations"][k])
                segment = x[onset + samples // 4 : onset + 3 * samples // 4]
                f0 = autocorrelation_pitch(segment, sr)
                target = midi_to_hz(int(item["pitches"][k]))
                cents[name].append(abs(1200 * math.log2(f0 / target)) if f0 > 0 else float("inf"))
            if index < args.wavs:
                path = save_wav(wave[0], out / f"{index:02d}_{name}.wav", sr)
                back, rate = sf.read(str(path), dtype="float32")
                rms = float(np.sqrt(np.mean(back**2)))
                print(f"{path}: {rate} Hz, {len(back)} samples ({len(back) / rate:.2f} s), peak "
                      f"{np.abs(back).max():.3f}, RMS {rms:.4f}  [{item['caption']}]")  # fmt: skip
    print(f"\n{args.num} held-out tones clips, {sum(len(v) for v in cents.values()) // 3} notes")
    print("| vocoder | log-mel L1 | multi-resolution STFT L1 | notes within 50 cents |")
    print("|---|---|---|---|")
    for name in ("hifigan", "griffin-lim", "original"):
        accuracy = np.mean(np.array(cents[name]) < 50)
        if name == "original":
            print(f"| (original audio) | 0 | 0 | {accuracy:.1%} |")
            continue
        mel_l1, stft = np.mean(rows[name], axis=0)
        print(f"| {name} | {mel_l1:.3f} | {stft:.3f} | {accuracy:.1%} |")


if __name__ == "__main__":
    main()
