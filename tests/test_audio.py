"""Audio: the shared log-mel front end and Griffin-Lim (zoo.audio), WAV files (zoo.io.audio), the audio
datamodules (`tones`, `audio_folder`, `speech`) and `zoo.sample`'s WAV output."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo.datamodules.audio as audio_dm
from zoo.audio import LogMel, griffin_lim, log_mel
from zoo.datamodules.audio import (
    AudioFolderDataModule,
    SpeechDataModule,
    TonesDataModule,
    contour_of,
    midi_to_hz,
)
from zoo.io.audio import AudioFileError, load_wav, save_wav, save_wavs

SR = 22050

# --- an independent reference: numpy STFT + a Slaney mel filterbank from the formulas ------------


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    # linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4)
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def _slaney_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        rising = (fft_freqs - mel_f[i]) / (mel_f[i + 1] - mel_f[i])
        falling = (mel_f[i + 2] - fft_freqs) / (mel_f[i + 2] - mel_f[i + 1])
        weights[i] = np.maximum(0, np.minimum(rising, falling)) * 2.0 / (mel_f[i + 2] - mel_f[i])
    return weights


def _reference_log_mel(x: np.ndarray, sr: int = SR, n_fft: int = 1024, hop: int = 256, n_mels: int = 80,
                       fmin: float = 0.0, fmax: float = 8000.0) -> np.ndarray:  # fmt: skip
    """HiFi-GAN's mel_spectrogram, written out: reflect pad (n_fft - hop) / 2, frames without centring,
    periodic Hann, |X| = sqrt(re^2 + im^2 + 1e-9), Slaney filterbank, log(clamp(., 1e-5))."""
    pad = (n_fft - hop) // 2
    padded = np.pad(x, (pad, pad), mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    stack = np.stack([padded[t * hop : t * hop + n_fft] * window for t in range(frames)], axis=1)
    spec = np.fft.rfft(stack, axis=0)
    magnitude = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    mel = _slaney_filterbank(sr, n_fft, n_mels, fmin, fmax) @ magnitude
    return np.log(np.maximum(mel, 1e-5))


def _test_signal(seconds: float = 0.75, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    chirp = 0.4 * np.sin(2 * np.pi * (200 * t + 2000 * t**2))
    return (chirp + 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_log_mel_matches_a_numpy_reference() -> None:
    x = _test_signal()
    expected = _reference_log_mel(x.astype(np.float64))
    got = log_mel(torch.from_numpy(x)[None], SR)[0].numpy()
    assert got.shape == expected.shape == (80, len(x) // 256)
    assert np.abs(got - expected).max() <= 1e-4
    # float64 on a pure tone: every band, down to the clamped silent ones. torchaudio builds its window
    # in float32, whose rounding leaks ~1e-8 into bands 100 dB below the tone; a float64 window is
    # needed to compare there at all.
    tone = np.sin(2 * np.pi * 1000 * np.arange(8192) / SR)
    fe64 = LogMel(SR).double()
    fe64.spectrogram.window = torch.hann_window(1024, dtype=torch.float64)
    got64 = fe64(torch.from_numpy(tone)).numpy()
    ref64 = _reference_log_mel(tone)
    assert (ref64 <= math.log(1e-5) + 1e-9).any() and np.abs(got64 - ref64).max() <= 1e-4


def test_log_mel_options_and_shapes() -> None:
    x = torch.from_numpy(_test_signal(0.5)).repeat(3, 1)
    # f_max=None is the Nyquist frequency (HiFi-GAN's mel loss); 16 kHz audio with its own settings
    wide = LogMel(SR, f_max=None)(x)
    assert np.abs(wide[0].numpy() - _reference_log_mel(x[0].double().numpy(), fmax=SR / 2)).max() <= 1e-4
    assert LogMel(16000, n_fft=512, hop_length=128, win_length=512)(x[:, :8000]).shape == (3, 80, 62)
    with pytest.raises(ValueError, match="Nyquist"):
        LogMel(16000, f_max=9000)
    with pytest.raises(ValueError, match="too short"):
        log_mel(torch.zeros(1, 300))


def test_stft_round_trip_of_the_resynthesis_path() -> None:
    """inverse_stft undoes the front end's STFT exactly, and Griffin-Lim from a log-mel gives audio
    whose log-mel is close to the original, aligned with it (the framing offset is corrected)."""
    fe = LogMel(SR)
    x = torch.from_numpy(_test_signal(1.0))[None]
    spec = fe.stft(x)
    assert torch.allclose(fe.inverse_stft(spec, x.shape[-1]), x, atol=1e-5)
    # a note starting at 0.4 s: the resynthesis must start there too
    t = torch.arange(SR) / SR
    note = torch.where(
        t >= 0.4, 0.5 * torch.sin(2 * math.pi * 330 * t) + 0.2 * torch.sin(2 * math.pi * 660 * t), 0.0
    )
    mel = fe(note[None])
    audio = griffin_lim(mel, SR, n_iter=48)
    assert audio.shape == (1, mel.shape[-1] * 256) and audio.abs().max() <= 1.0
    audio = audio[:, : note.numel()]
    error = (fe(audio) - mel).abs().mean()
    silence = (fe(torch.zeros_like(note)[None]) - mel).abs().mean()
    assert error < 0.25 * silence, (error, silence)
    onset = int((audio[0].abs() > 0.05).nonzero()[0])
    assert abs(onset - int(0.4 * SR)) < 256, onset
    # the hop / 2 correction matters: without it (the audio 128 samples early) the fit is clearly worse
    uncorrected = torch.nn.functional.pad(audio[:, 128:], (0, 128))
    assert error < 0.8 * (fe(uncorrected) - mel).abs().mean()


# --- WAV files --------------------------------------------------------------------------------------


def test_wav_files_read_back_with_rate_length_and_range(tmp_path: Path) -> None:
    import soundfile as sf

    t = torch.arange(11025) / SR
    tone = 1.2 * torch.sin(2 * math.pi * 440 * t)  # peaks above 1: clipped on writing
    path = save_wav(tone, tmp_path / "a" / "tone.wav", SR)
    info = sf.info(str(path))
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (SR, 11025, 1, "PCM_16")
    audio, rate = load_wav(path)
    assert rate == SR and audio.shape == (11025,) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1.0 and audio.abs().max() > 0.99
    inside = tone.abs() < 0.99
    assert (audio[inside] - tone[inside]).abs().max() < 1e-4  # 16-bit quantisation: 2^-15
    # resampled on reading: a 16 kHz file at 22050 Hz keeps its duration and its pitch
    sf.write(str(tmp_path / "low.wav"), np.sin(2 * np.pi * 300 * np.arange(16000) / 16000) * 0.5, 16000)
    audio, rate = load_wav(tmp_path / "low.wav", SR)
    assert rate == SR and abs(audio.numel() - SR) <= 1
    spectrum = np.abs(np.fft.rfft(audio.numpy()))
    assert abs(np.argmax(spectrum) * SR / audio.numel() - 300) < 2
    # a stereo file is mixed down
    sf.write(str(tmp_path / "stereo.wav"), np.stack([np.full(100, 0.5), np.full(100, -0.1)], 1), 8000)
    audio, _ = load_wav(tmp_path / "stereo.wav")
    assert torch.allclose(audio, torch.full((100,), 0.2), atol=1e-4)
    paths = save_wavs(torch.zeros(3, 500), tmp_path / "batch", 16000, start=5)
    assert [p.name for p in paths] == ["000005.wav", "000006.wav", "000007.wav"]


def test_bad_audio_gives_errors_naming_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        load_wav(corrupt)
    with pytest.raises(AudioFileError, match="missing.wav"):
        load_wav(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="NaN"):
        save_wav(torch.tensor([0.0, float("nan")]), tmp_path / "nan.wav", SR)
    with pytest.raises(ValueError, match="mono"):
        save_wav(torch.zeros(2, 10), tmp_path / "two.wav", SR)


# --- tones ------------------------------------------------------------------------------------------


def _autocorrelation_pitch(x: np.ndarray, sr: int, fmin: float = 100.0, fmax: float = 1200.0) -> float:
    """f0 from the normalised autocorrelation: the shortest lag whose peak is within 10% of the
    highest (taking the highest alone would pick an octave below), refined by a parabola."""
    x = x - x.mean()
    n = len(x)
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    ac = ac / ac[0] / (1 - np.arange(n) / n)  # undo the taper of the biased estimate
    lo, hi = int(sr / fmax), int(sr / fmin)
    lags = np.arange(lo, hi)
    peaks = [lag for lag in lags[1:-1] if ac[lag] >= ac[lag - 1] and ac[lag] >= ac[lag + 1]]
    best = max(ac[p] for p in peaks)
    lag = next(p for p in peaks if ac[p] >= 0.9 * best)
    a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
    return sr / (lag + 0.5 * (a - c) / (a - 2 * b + c))


@pytest.mark.parametrize("sample_rate", [22050, 16000])
def test_tones_pitch_estimates_match_the_labels(sample_rate: int) -> None:
    dm = TonesDataModule(sample_rate=sample_rate, num_train=40, num_val=4, num_test=4, noise_fraction=0.5,
                         max_notes=5, batch_size=8)  # fmt: skip
    dm.setup("fit")
    errors, timbres = [], set()
    for index in range(40):
        item = dm.train_set[index]
        timbres.add(int(item["label"]))
        for k in range(int(item["num_notes"])):
            onset, samples = int(item["onsets"][k]), int(item["durations"][k])
            middle = item["audio"][onset + samples // 4 : onset + 3 * samples // 4].double().numpy()
            estimate = _autocorrelation_pitch(middle, sample_rate)
            errors.append(1200 * abs(math.log2(estimate / midi_to_hz(int(item["pitches"][k])))))  # cents
    assert timbres == {0, 1, 2, 3}
    assert len(errors) > 100 and max(errors) < 30, sorted(errors)[-5:]  # a semitone is 100 cents


def test_tones_batches_captions_and_determinism() -> None:
    dm = TonesDataModule(num_train=24, num_val=8, num_test=8, batch_size=6, seed=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    audio, length = batch["audio"], batch["length"]
    assert audio.shape[0] == 6 and audio.shape[1] == int(length.max()) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1.0 and (audio.abs().amax(1) > 0.1).all()
    for row, n in zip(audio, length, strict=True):
        assert (row[int(n) :] == 0).all()
    assert batch["pitches"].shape == (6, 4) and len(batch["caption"]) == 6
    assert dm.sample_rate == 22050 and dm.num_classes == 4 and dm.class_names[0] == "sine"
    # captions say what the labels say
    for caption, pitches, n, label in zip(batch["caption"], batch["pitches"], batch["num_notes"], batch["label"], strict=True):  # fmt: skip
        notes = [int(p) for p in pitches[: int(n)]]
        assert caption.startswith("a ") and dm.class_names[int(label)] in caption
        assert ["", "one", "two", "three", "four"][int(n)] in caption.split()
        assert contour_of(notes) in caption
    again = TonesDataModule(num_train=24, num_val=8, num_test=8, seed=3)
    again.setup("fit")
    assert torch.equal(again.train_set[5]["audio"], dm.train_set[5]["audio"])
    assert again.train_set[5]["caption"] == dm.train_set[5]["caption"]
    other = TonesDataModule(num_train=24, num_val=8, num_test=8, seed=4)
    other.setup("fit")
    assert not torch.equal(other.train_set[5]["audio"][:1000], dm.train_set[5]["audio"][:1000])
    assert not torch.equal(dm.val_set[0]["audio"][:1000], dm.train_set[0]["audio"][:1000])


# --- audio_folder -----------------------------------------------------------------------------------


def _lj_folder(root: Path, rates: dict[str, int]) -> Path:
    import soundfile as sf

    (root / "wavs").mkdir(parents=True)
    lines = []
    for i, (clip_id, rate) in enumerate(rates.items()):
        t = np.arange(int(0.5 * rate)) / rate
        sf.write(str(root / "wavs" / f"{clip_id}.wav"), 0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t), rate)
        lines.append(f"{clip_id}|Text {i}, raw.|text {i} normalised")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_audio_folder_reads_ljspeech_layout_and_resamples(tmp_path: Path) -> None:
    rates = {f"LJ{i:03d}": (16000 if i % 2 else 22050) for i in range(30)}
    root = _lj_folder(tmp_path / "lj", rates)
    dm = AudioFolderDataModule(str(root), val_fraction=0.2, test_fraction=0.1, batch_size=4)
    dm.setup("fit")
    seen = {}
    for ds in (dm.train_set, dm.val_set):
        for i in range(len(ds)):
            item = ds[i]
            seen[item["id"]] = item
    ids = [[e["id"] for e in ds.entries] for ds in (dm.train_set, dm.val_set, dm.test_set)]
    assert sorted(sum(ids, [])) == sorted(rates) and all(ids)  # a partition, every split used
    for clip_id, item in seen.items():
        i = int(clip_id[2:])
        assert abs(item["audio"].numel() - SR // 2) <= 1  # 0.5 s at 22050 Hz, whatever the file's rate
        assert item["text"] == f"text {i} normalised"
        spectrum = np.abs(np.fft.rfft(item["audio"].numpy()))
        assert abs(np.argmax(spectrum) * SR / item["audio"].numel() - (200 + 50 * i)) < 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape[0] == 4 and batch["length"].shape == (4,) and len(batch["text"]) == 4


@pytest.mark.filterwarnings("ignore:audio_folder. none of the")
def test_audio_folder_errors_name_the_file(tmp_path: Path) -> None:
    root = _lj_folder(tmp_path / "lj", {"a": SR, "b": SR, "c": SR})
    (root / "wavs" / "b.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioFileError, match="b.wav"):
        AudioFolderDataModule(str(root)).setup("fit")
    (root / "wavs" / "b.wav").unlink()
    with pytest.raises(AudioFileError, match=r"b\.wav.*does not exist"):
        AudioFolderDataModule(str(root)).setup("fit")
    (root / "metadata.csv").write_text("a|one\nno separator here\n")
    with pytest.raises(ValueError, match=r"metadata.csv:2"):
        AudioFolderDataModule(str(root)).setup("fit")
    (root / "metadata.csv").write_text("a|one\n")
    with pytest.warns(UserWarning, match="c.wav"):  # a wav with no metadata line is left out, said so
        dm = AudioFolderDataModule(str(root))
        dm.setup("fit")
    assert len(dm.train_set) == 1


# --- speech -----------------------------------------------------------------------------------------
# Real espeak-ng: libespeak-ng from the espeakng-loader wheel (and the program where it is installed).

HELLO = "The cat found a red box."
LONGER = "The cat found a red box near the river this morning, and the old man opened the green door."


def _speech_measures(audio: np.ndarray, sr: int) -> dict[str, float]:
    """Listening proxies of a clip: `seconds` of sound (40 ms frames within 40 dB of the loudest),
    `rms` over those frames (full scale 1), `peak`, and `f0`, the median pitch of the voiced frames
    (normalised autocorrelation peak above 0.6 between 60 and 400 Hz) among the louder ones."""
    x = audio.astype(np.float64) / (32768.0 if audio.dtype == np.int16 else 1.0)
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    rms = np.sqrt((frames**2).mean(axis=1))
    active = rms > rms.max() * 0.01
    lo, hi = int(sr / 400), int(sr / 60)
    pitches = []
    for f in frames[rms > 0.3 * rms.max()]:
        f = f - f.mean()
        spectrum = np.fft.rfft(f, 2 * frame)
        ac = np.fft.irfft(np.abs(spectrum) ** 2)[:frame]
        ac = ac / ac[0] / (1 - np.arange(frame) / frame)  # unbiased: long lags are not penalised
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.6:
            pitches.append(sr / lag)
    return {"seconds": float(active.sum() * hop / sr), "rms": float(np.sqrt((frames[active] ** 2).mean())),
            "peak": float(np.abs(x).max()), "f0": float(np.median(pitches)) if pitches else 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def espeak_library():
    pytest.importorskip("espeakng_loader")
    import zoo.audio.espeak as espeak

    return espeak.engine()


def test_speech_library_speaks_sentences_at_22050_hz(espeak_library) -> None:
    lib = espeak_library
    assert lib.sample_rate == 22050 and re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", lib.version), lib.version
    short, medium, longer = (lib.synthesise(text, "en-us", 175) for text in ("The cat.", HELLO, LONGER))
    measures = [_speech_measures(clip, lib.sample_rate) for clip in (short, medium, longer)]
    for clip, m in zip((short, medium, longer), measures, strict=True):
        assert clip.dtype == np.int16 and clip.ndim == 1
        assert 0.05 < m["rms"] and m["peak"] < 0.99, m  # clearly audible, not at full scale (clipped)
        assert 70 < m["f0"] < 170, m  # the default (male) voice: espeak's base pitch is 82-118 Hz
    # more words, more speech: 2 -> 6 -> 19 words
    assert measures[0]["seconds"] < 0.6 * measures[1]["seconds"] < 0.6 * 0.5 * measures[2]["seconds"], (
        measures
    )
    # 175 words a minute: 6 words take roughly 2 s, not 0.2 s or 10 s
    assert 1.0 < len(medium) / lib.sample_rate < 4.0
    # a higher speed is shorter: 300 vs 120 words a minute
    slow, fast = (_speech_measures(lib.synthesise(HELLO, "en-us", s), lib.sample_rate) for s in (120, 300))
    assert fast["seconds"] < 0.6 * slow["seconds"], (slow, fast)
    assert slow["seconds"] > measures[1]["seconds"] > fast["seconds"]  # 120 > 175 > 300 words a minute
    # the same request again: the same speech, up to the phase of espeak's pitch flutter (a static in
    # wavegen.c that runs on across calls), so not bit-identical but within 1% in length and pitch
    again = lib.synthesise(HELLO, "en-us", 175)
    assert abs(len(again) - len(medium)) < 0.01 * len(medium)
    assert abs(_speech_measures(again, lib.sample_rate)["f0"] - measures[1]["f0"]) < 0.03 * measures[1]["f0"]


def test_speech_library_voices_sound_different(espeak_library) -> None:
    lib = espeak_library
    male, female, british = (lib.synthesise(HELLO, voice, 175) for voice in ("en-us", "en-us+f3", "en"))
    m, f = _speech_measures(male, lib.sample_rate), _speech_measures(female, lib.sample_rate)
    # the f3 variant's pitch range is 140-240 Hz, the default voice's 82-118 Hz
    assert 140 < f["f0"] < 300 and f["f0"] > 1.3 * m["f0"], (m, f)
    assert not np.array_equal(male, british)
    n = min(len(male), len(british))
    assert np.corrcoef(male[:n], british[:n])[0, 1] < 0.9
    with pytest.raises(ValueError, match="no voice"):
        lib.synthesise(HELLO, "zzz", 175)  # as espeak-ng -v zzz: no file, no language


def test_speech_library_is_safe_to_call_from_threads(espeak_library) -> None:
    """One global engine behind a lock: concurrent requests each get their own whole clip."""
    from concurrent.futures import ThreadPoolExecutor

    lib = espeak_library
    jobs = [("The cat.", "en-us", 175), (LONGER, "en-us+f3", 150), (HELLO, "en", 300)] * 3
    serial = [len(lib.synthesise(*job)) for job in jobs[:3]]
    with ThreadPoolExecutor(4) as pool:
        clips = list(pool.map(lambda job: lib.synthesise(*job), jobs))
        ipa = list(pool.map(lambda job: lib.phonemes(job[0], job[1]), jobs))
    for i, clip in enumerate(clips):
        assert abs(len(clip) - serial[i % 3]) < 0.01 * serial[i % 3], (i, len(clip), serial)
    assert ipa[0] == ipa[3] == ipa[6] and ipa[1] == ipa[4] and ipa[0] != ipa[1]


def test_speech_library_ipa_matches_espeak(espeak_library) -> None:
    """Expected IPA as espeak-ng prints it with --ipa (espeak-ng issues #323 and #1051)."""
    lib = espeak_library
    assert lib.phonemes("hello world", "en-us") == "həlˈoʊ wˈɜːld"
    assert lib.phonemes("hello world", "en") == "həlˈəʊ wˈɜːld"
    # several clauses: one per TextToPhonemes call, joined as the program's lines are
    assert lib.phonemes("In the test. Of the words. Not a thing", "en") == "ɪnðə tˈɛst ɒvðə wˈɜːdz nˌɒtə θˈɪŋ"
    # the same strings as the synthesiser's own phoneme trace while speaking, which is what the program
    # prints for --ipa (espeak-ng.c: espeak_SetPhonemeTrace(espeakPHONEMES_IPA, stdout), then espeak_Synth)
    import ctypes

    from zoo.audio.espeak import LOCK, espeakPHONEMES_IPA

    libc = ctypes.CDLL(None)
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    phoneme_callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p)
    lib.lib.espeak_SetPhonemeCallback.argtypes = [phoneme_callback]
    lib.lib.espeak_SetPhonemeTrace.argtypes = [ctypes.c_int, ctypes.c_void_p]
    traced: list[str] = []
    callback = phoneme_callback(lambda clause: traced.append(clause.decode()) or 0)
    texts = [("The old man opened the green door near the river.", "en-us"), ("Seven apples, two letters; a red box!", "en"),
             ("A young girl bought the blue car after lunch.", "en-us+f3")]  # fmt: skip
    with LOCK:
        devnull = libc.fopen(os.devnull.encode(), b"w")
        lib.lib.espeak_SetPhonemeCallback(callback)
        lib.lib.espeak_SetPhonemeTrace(espeakPHONEMES_IPA, devnull)
        try:
            for text, voice in texts:
                traced.clear()
                lib.synthesise(text, voice, 175)
                assert lib.phonemes(text, voice) == " ".join(" ".join(traced).split()) != ""
        finally:
            lib.lib.espeak_SetPhonemeTrace(0, None)
            lib.lib.espeak_SetPhonemeCallback(phoneme_callback())
            libc.fclose(devnull)
    program = shutil.which("espeak-ng")
    if program is not None:  # where the program is installed too, both backends agree
        for text, voice in (("hello world", "en-us"), (HELLO, "en-us+f3"), ("Seven apples.", "en")):
            assert lib.phonemes(text, voice) == audio_dm.espeak_phonemes(text, voice, "program")


def test_speech_datamodule_builds_a_real_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import soundfile as sf

    try:
        backend = audio_dm.espeak_backend()
    except RuntimeError:
        pytest.skip("neither the espeak-ng program nor the espeakng-loader wheel is installed")
    dm = SpeechDataModule(voices=("en-us", "en-us+f3"), speeds=(150, 200), num_train=2, num_val=1,
                          num_test=1, cache_dir=str(tmp_path), batch_size=2)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"audio", "length", "text", "phonemes", "label"}
    assert batch["audio"].shape == (2, int(batch["length"].max())) and batch["audio"].abs().max() <= 1.0
    assert sorted(batch["label"].tolist()) == [0, 1]
    for row, n, text, phonemes in zip(batch["audio"], batch["length"], batch["text"], batch["phonemes"], strict=True):  # fmt: skip
        m = _speech_measures(row[: int(n)].numpy(), 22050)
        # a 4-part sentence (6-9 words) at 150-200 words a minute, audible
        assert 1.0 < int(n) / 22050 < 5.0 and m["rms"] > 0.05, (text, m)
        assert (row[int(n) :] == 0).all()
        assert text.endswith(".") and "ˈ" in phonemes and len(phonemes.split()) >= 4, (text, phonemes)
    clips = [clip for split in ("train", "val", "test") for clip in dm.plan(split)]
    assert sorted(tmp_path.iterdir()) == sorted([c["path"] for c in clips] + [c["meta"] for c in clips])
    for clip in clips:  # each clip's metadata says what made it; the files are espeak's 16-bit 22050 Hz
        meta = json.loads(clip["meta"].read_text())
        assert (meta["text"], meta["voice"], meta["speed"]) == (clip["text"], clip["voice"], clip["speed"])
        assert meta["backend"] == backend and re.match(r"\d+\.\d+", meta["espeak_version"]), meta
        info = sf.info(str(clip["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    # the cache alone is enough: a second datamodule (16 kHz) needs no espeak-ng at all
    monkeypatch.setattr(audio_dm.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    monkeypatch.setattr(audio_dm, "espeak_synthesise", lambda *a, **k: pytest.fail("synthesised again"))
    again = SpeechDataModule(voices=("en-us", "en-us+f3"), speeds=(150, 200), num_train=2, num_val=1,
                             num_test=1, cache_dir=str(tmp_path), sample_rate=16000)  # fmt: skip
    again.setup("fit")
    item, first = again.val_set[0], dm.val_set[0]
    assert item["text"] == first["text"] and item["phonemes"] == first["phonemes"]
    assert abs(item["audio"].numel() - first["audio"].numel() * 16000 / 22050) <= 2


def test_speech_without_espeak_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audio_dm.shutil, "which", lambda name: None)  # no program on PATH
    if audio_dm.espeak_lib.available():  # forcing the program fails even with the wheel installed
        forced = SpeechDataModule(
            num_train=4, num_val=2, num_test=2, cache_dir=str(tmp_path), backend="program"
        )
        with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
            forced.setup("fit")
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # and no wheel: importing it fails
    dm = SpeechDataModule(num_train=4, num_val=2, num_test=2, cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install espeakng-loader") as info:
        dm.setup("fit")
    assert "apt-get install espeak-ng" in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing made before failing
    with pytest.raises(ValueError, match="backend"):
        SpeechDataModule(backend="festival")


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_griffin_lim_vocodes_a_mel_of_a_few_frames(frames):
    """torchaudio's inverse STFT reflect-pads by n_fft / 2 and raised on a mel of a frame or two (an
    untrained tts, a one-syllable word); the fallback vocoder pads with silence and cuts back."""
    front_end = LogMel(22050)
    t = torch.arange(22050) / 22050
    mel = front_end(0.5 * torch.sin(2 * math.pi * 440 * t)[None])[..., 10 : 10 + frames]
    audio = griffin_lim(mel, 22050, front_end=front_end)
    assert audio.shape == (1, frames * front_end.hop_length)
    assert audio.abs().max() > 0.05  # the tone, not the padding's silence
