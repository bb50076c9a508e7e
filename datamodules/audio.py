"""Audio datamodules: `tones` (synthesised notes, no files), `audio_folder` (LJSpeech layout) and
`speech` (sentences spoken by espeak-ng, cached on disk).

Items are dictionaries with `audio` float32 (S,) in [-1, 1] at the datamodule's `sample_rate`;
clips have different lengths, so the loaders pad each batch with zeros to its longest clip and add
`length` (B,) int64, the number of real samples of each clip. Text goes under `caption` (tones) or
`text` (speech transcripts), espeak's IPA under `phonemes`, a class under `label` (`num_classes`,
`class_names`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, default_collate

import zoo.audio.espeak as espeak_lib
from zoo.data import ResumableDataLoader, ZooDataModule
from zoo.errors import DataError
from zoo.io.audio import AudioFileError, audio_info, load_wav, pad_batch

from ._images import check_fractions, derived_seed, stable_split

SPLITS = ("train", "val", "test")


RAGGED_KEYS = ("phone_starts",)  # 1-D int64 items of different lengths, padded with -1 in batches


def pad_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items whose `audio` differ in length: zero-padded (B, S_max) plus `length` (B,).
    `phone_starts` (speech alignments) differ in length too: padded with -1."""
    audio, lengths = pad_batch([item["audio"] for item in items])
    ragged = {
        key: torch.nn.utils.rnn.pad_sequence(
            [item[key] for item in items], batch_first=True, padding_value=-1
        )
        for key in RAGGED_KEYS
        if key in items[0]
    }
    rest = default_collate(
        [{k: v for k, v in item.items() if k != "audio" and k not in ragged} for item in items]
    )
    return {"audio": audio, "length": lengths, **ragged, **rest}


class AudioDataModule(ZooDataModule):
    """Base of the audio datamodules: `sample_rate`, and loaders that pad clips per batch.

    Args:
        sample_rate: the items' sample rate in Hz, at least 8000; zoo.fit links model.sample_rate to it.
    """

    modality = "audio"

    def __init__(self, sample_rate: int, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if sample_rate < 8000:
            raise DataError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")
        self.sample_rate = sample_rate

    def make_dataloader(self, dataset: Dataset | None, *, train: bool) -> ResumableDataLoader:
        loader = super().make_dataloader(dataset, train=train)
        loader.collate_fn = pad_collate  # a DataLoader lets collate_fn change after construction
        return loader


# --- tones ---------------------------------------------------------------------------------------

TIMBRES = ("sine", "triangle", "square", "sawtooth")
ENVELOPES = ("steady", "plucked", "swelling")
TEMPI = {"slow": 0.45, "moderate": 0.3, "fast": 0.18}  # seconds per note, before +-15% jitter
DYNAMICS = {"soft": 0.3, "loud": 0.75}  # peak amplitude
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
# C major pentatonic from C3 to C6 (MIDI 48-84): notes a listener (and a pitch tracker) tells apart
PITCHES = tuple(octave * 12 + step for octave in range(4, 7) for step in (0, 2, 4, 7, 9)) + (84,)


def midi_to_hz(midi: float | np.ndarray | torch.Tensor) -> Any:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _harmonics(timbre: str, f0: float, sample_rate: int) -> list[tuple[int, float]]:
    """(harmonic number, amplitude) of a band-limited waveform: only partials below 0.45 * rate, so
    nothing aliases back below the fundamental."""
    top = max(1, min(16, int(0.45 * sample_rate / f0)))
    if timbre == "sine":
        return [(1, 1.0)]
    if timbre == "triangle":
        return [(k, (-1) ** ((k - 1) // 2) / k**2) for k in range(1, top + 1, 2)]
    if timbre == "square":
        return [(k, 1.0 / k) for k in range(1, top + 1, 2)]
    return [(k, 1.0 / k) for k in range(1, top + 1)]  # sawtooth


def _envelope(kind: str, samples: int, sample_rate: int) -> np.ndarray:
    t = np.arange(samples) / sample_rate
    duration = samples / sample_rate
    release = np.clip((duration - t) / 0.03, 0.0, 1.0)  # 30 ms fade-out: no click at the note's end
    if kind == "plucked":
        return np.clip(t / 0.005, 0.0, 1.0) * np.exp(-t / (0.35 * duration)) * release
    if kind == "swelling":
        return np.sin(0.5 * np.pi * np.clip(t / (0.4 * duration), 0.0, 1.0)) ** 2 * release
    return np.clip(t / 0.01, 0.0, 1.0) * release  # steady


@dataclass
class ToneClip:
    audio: np.ndarray  # float32 (S,)
    pitches: list[int]  # MIDI note numbers
    onsets: list[int]  # in samples
    durations: list[int]  # sounding samples of each note
    timbre: int
    caption: str


def contour_of(pitches: Sequence[int]) -> str:
    steps = np.diff(pitches)
    if (steps > 0).all():
        return "rising"
    if (steps < 0).all():
        return "falling"
    if (steps == 0).all():
        return "repeated"
    return "wandering"


def synthesise_tones(rng: np.random.Generator, sample_rate: int, min_notes: int, max_notes: int,
                     noise_fraction: float, noise_level: float) -> ToneClip:  # fmt: skip
    """One clip: a melody of one instrument (timbre, envelope, loudness), notes one after another."""
    count = int(rng.integers(min_notes, max_notes + 1))
    tempo = str(rng.choice(list(TEMPI)))
    dynamic = str(rng.choice(list(DYNAMICS)))
    timbre = int(rng.integers(len(TIMBRES)))
    envelope = str(rng.choice(ENVELOPES))
    contour = str(rng.choice(["rising", "falling", "repeated", "wandering"]))
    if contour == "repeated" or count == 1:
        pitches = [int(rng.choice(PITCHES))] * count
    elif contour in ("rising", "falling"):
        pitches = sorted(int(p) for p in rng.choice(PITCHES, size=count, replace=False))
        pitches = pitches if contour == "rising" else pitches[::-1]
    else:
        pitches = [int(p) for p in rng.choice(PITCHES, size=count)]
    contour = contour_of(pitches) if count > 1 else "single"

    gap = int(0.02 * sample_rate)  # a short silence between notes keeps their onsets audible
    durations = [int(TEMPI[tempo] * rng.uniform(0.85, 1.15) * sample_rate) for _ in range(count)]
    onsets = list(np.cumsum([gap] + [d + gap for d in durations[:-1]]).astype(int))
    audio = np.zeros(onsets[-1] + durations[-1] + gap, dtype=np.float64)
    for pitch, onset, samples in zip(pitches, onsets, durations, strict=True):
        f0 = float(midi_to_hz(pitch))
        t = np.arange(samples) / sample_rate
        phase = rng.uniform(0, 2 * np.pi)
        partials = _harmonics(TIMBRES[timbre], f0, sample_rate)
        wave = sum(a * np.sin(2 * np.pi * k * f0 * t + k * phase) for k, a in partials)
        wave /= np.abs(wave).max() + 1e-12
        audio[onset : onset + samples] += wave * _envelope(envelope, samples, sample_rate)
    audio *= DYNAMICS[dynamic]
    noisy = rng.uniform() < noise_fraction
    if noisy:
        audio += noise_level * rng.standard_normal(len(audio))
    words = ["a", tempo, contour, "sequence of", COUNT_WORDS[count], dynamic]
    words += [envelope] if envelope != "steady" else []
    caption = " ".join(words + [TIMBRES[timbre], "notes" if count > 1 else "note"])
    if contour == "single":
        caption = f"a single {dynamic} {'' if envelope == 'steady' else envelope + ' '}{TIMBRES[timbre]} note"
    caption += ", with background noise" if noisy else ""
    return ToneClip(np.clip(audio, -1, 1).astype(np.float32), pitches, onsets, durations, timbre, caption)


class TonesDataset(Dataset):
    """Clips made on demand from a seed per index: deterministic, order-independent, no memory held."""

    def __init__(self, size: int, seed: int, split_index: int, options: dict[str, Any]) -> None:
        self.size, self.seed, self.split_index, self.options = size, seed, split_index, options

    def __len__(self) -> int:
        return self.size

    def clip(self, index: int) -> ToneClip:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng(derived_seed(self.seed, 11, self.split_index, index))
        return synthesise_tones(rng, **self.options)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clip(index)
        slots = self.options["max_notes"]

        def padded(values: list[int], fill: int) -> torch.Tensor:
            return torch.tensor(values + [fill] * (slots - len(values)), dtype=torch.int64)

        return {
            "audio": torch.from_numpy(clip.audio),
            "caption": clip.caption,
            "label": torch.tensor(clip.timbre, dtype=torch.int64),
            "pitches": padded(clip.pitches, -1),
            "onsets": padded(clip.onsets, -1),
            "durations": padded(clip.durations, 0),
            "num_notes": torch.tensor(len(clip.pitches), dtype=torch.int64),
        }


class TonesDataModule(AudioDataModule):
    """Synthesised melodies with captions and note labels; made on the fly, nothing downloaded.

    A clip is `min_notes`..`max_notes` notes of one instrument played one after another: pitches from
    C major pentatonic between C3 and C6 (rising, falling, repeated or wandering), a tempo (slow,
    moderate, fast: 0.45 / 0.3 / 0.18 s a note, +-15%), a timbre (band-limited sine, triangle, square,
    sawtooth: the `label`, 4 classes), an envelope (steady, plucked, swelling) and a loudness (soft 0.3,
    loud 0.75 peak); a `noise_fraction` of clips gets white noise of std `noise_level`. Captions say
    all of it: "a slow rising sequence of three soft sine notes".

    22050 Hz by default: the shared mel front end's defaults (n_fft 1024, hop 256, 0-8 kHz) are
    HiFi-GAN's settings for 22.05 kHz audio, so a vocoder trained here uses them unchanged.

    Item keys: `audio` (S,), `caption`, `label` (timbre), `pitches` (max_notes,) MIDI numbers padded
    with -1, `onsets` (start sample, -1 padded), `durations` (sounding samples, 0 padded), `num_notes`;
    batches add `length`.

    Args:
        sample_rate: synthesis rate in Hz, at least 8000; zoo.fit links model.sample_rate to it.
        min_notes: fewest notes in a clip, at least 1.
        max_notes: most notes in a clip, from min_notes to 8.
        noise_fraction: probability a clip gets white noise, in [0, 1].
        noise_level: standard deviation of that noise (the notes peak at 0.3 or 0.75).
        num_train: training clips.
        num_val: validation clips.
        num_test: test clips.
        seed: seed the clips are synthesised from, and of the training order.
    """

    def __init__(
        self,
        sample_rate: int = 22050,
        min_notes: int = 2,
        max_notes: int = 4,
        noise_fraction: float = 0.0,
        noise_level: float = 0.01,
        num_train: int = 2000,
        num_val: int = 100,
        num_test: int = 100,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(sample_rate, batch_size, num_workers, seed)
        self.save_hyperparameters()
        if not 1 <= min_notes <= max_notes <= 8:
            raise DataError(f"need 1 <= min_notes <= max_notes <= 8, got {min_notes} and {max_notes}")
        if not 0.0 <= noise_fraction <= 1.0:
            raise DataError(f"noise_fraction must lie in [0, 1], got {noise_fraction}")
        self.options = {
            "sample_rate": sample_rate, "min_notes": min_notes, "max_notes": max_notes,
            "noise_fraction": noise_fraction, "noise_level": noise_level,
        }  # fmt: skip
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.class_names = list(TIMBRES)
        self.num_classes = len(TIMBRES)

    def dataset(self, split: str) -> TonesDataset:
        return TonesDataset(self.sizes[split], self.seed, SPLITS.index(split), self.options)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = (self.dataset(s) for s in SPLITS)


# --- audio_folder (LJSpeech layout) ---------------------------------------------------------------


class AudioFilesDataset(Dataset):
    """(path, text, extra) entries read on access, resampled to `sample_rate`."""

    def __init__(self, entries: list[dict[str, Any]], sample_rate: int) -> None:
        self.entries, self.sample_rate = entries, sample_rate

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        audio, _ = load_wav(entry["path"], self.sample_rate)
        return {"audio": audio, **{k: v for k, v in entry.items() if k != "path"}}


def phone_alignment(alignment: dict[str, Any], sample_rate: int) -> dict[str, Any]:
    """A cached clip's espeak phoneme alignment as item keys: `phones`, the phoneme names joined by
    spaces (pauses are "_"), and `phone_starts`, int64 start samples at `sample_rate` (espeak speaks at
    its own rate, usually 22050 Hz)."""
    names = [name for name, _ in alignment["phones"]]
    starts = torch.tensor([start for _, start in alignment["phones"]], dtype=torch.float64)
    starts = torch.round(starts * sample_rate / alignment["sample_rate"]).to(torch.int64)
    return {"phones": " ".join(names), "phone_starts": starts}


def read_metadata(root: Path) -> list[tuple[str, str]]:
    """`metadata.csv` of an LJSpeech-style folder: `id|text` or `id|text|normalised text` per line
    (the last column is used: LJSpeech's normalised transcript, numbers spelled out)."""
    path = root / "metadata.csv"
    if not path.is_file():
        raise DataError(
            f"audio_folder: {path} is missing (LJSpeech layout: wavs/*.wav and metadata.csv with id|text)"
        )
    rows, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip():
            raise DataError(f"audio_folder: {path}:{number}: expected 'id|text', got {line[:80]!r}")
        clip_id = fields[0].strip()
        if clip_id in seen:
            raise DataError(f"audio_folder: {path}:{number}: id {clip_id!r} appears twice")
        seen.add(clip_id)
        rows.append((clip_id, fields[-1].strip()))
    if not rows:
        raise DataError(f"audio_folder: {path} lists no clips")
    return rows


class AudioFolderDataModule(AudioDataModule):
    """Any folder in LJSpeech's layout: `wavs/<id>.wav` and `metadata.csv` with `id|text` lines.

    Files are read with soundfile (WAV, FLAC, OGG, ...), mixed to mono and resampled to `sample_rate`
    with torchaudio when their rate differs. Every listed file's header is checked in `setup()`, so a
    missing, corrupt or empty file is an error naming it before training starts; wav files with no
    metadata line are left out with a warning. Split by a hash of the id (`val_fraction`,
    `test_fraction`). Item keys: `audio`, `text`, `id`.

    Args:
        root: the folder, with wavs/<id>.wav and metadata.csv (required).
        sample_rate: rate the files are resampled to, in Hz; zoo.fit links model.sample_rate to it.
        val_fraction: about this fraction of the clips (by a hash of the id) is for validation, in (0, 1).
        test_fraction: about this fraction is for testing, in [0, 1); an empty test split uses the validation one.
    """

    def __init__(
        self,
        root: str = "",
        sample_rate: int = 22050,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(sample_rate, batch_size, num_workers, seed)
        self.save_hyperparameters()
        if not root:
            raise DataError("audio_folder needs a folder: --data.root path/to/LJSpeech-1.1")
        check_fractions(val_fraction, test_fraction)
        self.root = Path(root)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def entries(self) -> dict[str, list[dict[str, Any]]]:
        if not self.root.is_dir():
            raise DataError(f"audio_folder: {self.root} is not a folder")
        rows = read_metadata(self.root)
        wavs = self.root / "wavs"
        splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        for clip_id, text in rows:
            path = wavs / f"{clip_id}.wav"
            if not path.is_file():
                raise AudioFileError(f"audio_folder: {path} is listed in metadata.csv but does not exist")
            info = audio_info(path)
            if info.frames == 0:
                raise AudioFileError(f"audio_folder: {path} holds no audio samples")
            entry = {"path": path, "text": text, "id": clip_id}
            splits[stable_split(clip_id, self.val_fraction, self.test_fraction)].append(entry)
        listed = {clip_id for clip_id, _ in rows}
        unlisted = sorted(p.name for p in wavs.glob("*.wav") if p.stem not in listed) if wavs.is_dir() else []
        if unlisted:
            warnings.warn(
                f"audio_folder: {len(unlisted)} file(s) in {wavs} have no line in metadata.csv and are left out "
                f"(e.g. {', '.join(unlisted[:3])})",
                stacklevel=2,
            )
        if not splits["train"]:
            raise DataError(f"audio_folder: {self.root} has no clips in the training split")
        if not splits["val"]:  # a handful of clips: validate on the training ones rather than fail
            warnings.warn(
                f"audio_folder: none of the {len(rows)} clips fell in the validation split; validating on the "
                "training clips (raise --data.val_fraction)",
                stacklevel=2,
            )
            splits["val"] = splits["train"]
        return splits

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.entries()
        self.train_set = AudioFilesDataset(splits["train"], self.sample_rate)
        self.val_set = AudioFilesDataset(splits["val"], self.sample_rate)
        self.test_set = AudioFilesDataset(splits["test"] or splits["val"], self.sample_rate)


# --- speech (espeak-ng) ----------------------------------------------------------------------------

ESPEAK_INSTALL = (
    "the `speech` datamodule synthesises its sentences with espeak-ng, and neither the espeak-ng "
    "program (on PATH) nor its library from the espeakng-loader wheel is available. The easiest fix: "
    "`pip install espeakng-loader` (bundles libespeak-ng and its voices; no root needed). Or install "
    "the program: `sudo apt-get install espeak-ng` (Debian/Ubuntu), `sudo dnf install espeak-ng` "
    "(Fedora), `brew install espeak-ng` (macOS). Or train on --data tones or --data audio_folder "
    "--data.root <LJSpeech folder>."
)
ESPEAK_BACKENDS = ("auto", "program", "library")
# A small grammar: sentences a recogniser can score, with enough phonetic variety for a tiny TTS.
SUBJECTS = (
    "the cat",
    "a small dog",
    "my brother",
    "the old man",
    "a young girl",
    "the teacher",
    "our neighbour",
)
VERBS = ("found", "painted", "carried", "opened", "bought", "watched", "cleaned", "dropped")
OBJECTS = ("a red box", "the green door", "seven apples", "a heavy bag", "the blue car", "two letters")
ENDINGS = ("yesterday", "in the garden", "after lunch", "near the river", "this morning", "very slowly")


def speech_sentence(rng: np.random.Generator) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ENDINGS)]
    return " ".join(str(p) for p in parts).capitalize() + "."


def espeak_path() -> str:
    """The `espeak-ng` program on PATH; an error with the install instructions if there is none."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(ESPEAK_INSTALL)
    return path


def espeak_backend(preference: str = "auto") -> str:
    """Which espeak-ng makes the audio: "program" (the `espeak-ng` program on PATH, preferred) or
    "library" (libespeak-ng from the espeakng-loader wheel, through ctypes). `preference` forces one;
    an unavailable one is an error saying how to install it."""
    if preference not in ESPEAK_BACKENDS:
        raise DataError(f"espeak backend must be one of {ESPEAK_BACKENDS}, got {preference!r}")
    if preference in ("auto", "program") and shutil.which("espeak-ng") is not None:
        return "program"
    problem = ""
    if preference in ("auto", "library") and espeak_lib.available():
        try:
            espeak_lib.engine()  # loads and initialises libespeak-ng once per process
            return "library"
        except RuntimeError as err:  # e.g. a wheel for another platform, or its data missing
            problem = f" (the espeakng-loader wheel is installed but unusable: {err})"
    raise RuntimeError(ESPEAK_INSTALL + problem)


def espeak_synthesise(
    text: str, voice: str, speed: int, path: Path, backend: str = "program"
) -> dict[str, Any] | None:
    """Speak `text` into the WAV file `path` (espeak-ng speaks at 22050 Hz mono, 16 bit).

    The library also returns the phoneme alignment of that very audio, {"sample_rate": rate, "phones":
    [[IPA name, start sample], ...]} (see `zoo.audio.espeak.synthesise_aligned`); the program, None."""
    if backend == "library":
        audio, phones, rate = espeak_lib.synthesise_aligned(text, voice, speed)
        sf.write(str(path), audio, rate, subtype="PCM_16", format="WAV")
        return {"sample_rate": rate, "phones": [[name, start] for name, start in phones]}
    subprocess.run([espeak_path(), "-v", voice, "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)  # fmt: skip
    return None


def espeak_phonemes(text: str, voice: str, backend: str = "program") -> str:
    """espeak-ng's IPA transcription of `text` (clauses joined by single spaces)."""
    if backend == "library":
        return espeak_lib.phonemes(text, voice)
    result = subprocess.run([espeak_path(), "-q", "--ipa", "-v", voice, text],
                            check=True, capture_output=True, text=True)  # fmt: skip
    return " ".join(result.stdout.split())


def espeak_version(backend: str = "program") -> str:
    """The version of espeak-ng behind `backend` ("1.52.0"), recorded with every cached clip."""
    if backend == "library":
        return espeak_lib.version()
    out = subprocess.run([espeak_path(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


class SpeechDataModule(AudioDataModule):
    """Sentences of a small grammar ("The old man opened the green door near the river.") spoken by
    espeak-ng in several `voices` and `speeds` (words a minute), with transcripts (`text`), espeak's IPA
    (`phonemes`) and the voice index (`label`).

    Every clip is synthesised once into `cache_dir` (default `~/.cache/zoo/speech`), keyed by a hash of
    (text, voice, speed); later runs read the cache and need espeak-ng only for clips not yet made.
    espeak-ng is the `espeak-ng` program on PATH if there is one, else libespeak-ng from the
    `espeakng-loader` wheel (`backend` forces either); with neither, an error says how to install it.
    Each clip's metadata records the backend and espeak-ng version that made it. Sentences are drawn
    per split from independent streams of `seed`; voice and speed cycle over the clips.

    `alignments=True` adds espeak's own phoneme alignment of each clip (`phones`: IPA names joined by
    spaces, "_" for pauses; `phone_starts`: start samples, padded with -1 in batches) and
    `phoneme_vocabulary` (every name in the three splits, sorted). Only the library backend reports
    phoneme events while speaking, so with it clips cached without an alignment (made by the program,
    or before alignments were recorded) are spoken again, audio and alignment together.

    Args:
        voices: espeak-ng voices, cycled over the clips; a clip's `label` is its voice's index.
        speeds: speaking rates in words a minute, cycled over the clips.
        num_train: training clips.
        num_val: validation clips.
        num_test: test clips.
        sample_rate: rate the clips are resampled to from espeak-ng's; zoo.fit links model.sample_rate to it.
        cache_dir: folder of the synthesised clips; null: ~/.cache/zoo/speech.
        seed: seed the sentences are drawn from, and of the training order.
        backend: which espeak-ng speaks: auto (the program if on PATH, else the library), program or library.
        alignments: add espeak-ng's phoneme alignment of each clip (`phones`, `phone_starts`); needs the library.
    """

    def __init__(
        self,
        voices: tuple[str, ...] = ("en-us", "en-us+f3", "en"),
        speeds: tuple[int, ...] = (150, 175),
        num_train: int = 600,
        num_val: int = 30,
        num_test: int = 30,
        sample_rate: int = 22050,
        cache_dir: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        backend: str = "auto",
        alignments: bool = False,
    ) -> None:
        super().__init__(sample_rate, batch_size, num_workers, seed)
        self.save_hyperparameters()
        if not voices or not speeds:
            raise DataError("speech needs at least one voice and one speed")
        if backend not in ESPEAK_BACKENDS:
            raise DataError(f"speech: backend must be one of {ESPEAK_BACKENDS}, got {backend!r}")
        self.voices, self.speeds = list(voices), [int(s) for s in speeds]
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "zoo" / "speech"
        self.backend, self.alignments = backend, alignments
        self.phoneme_vocabulary: list[str] = []
        self.class_names = list(self.voices)
        self.num_classes = len(self.voices)

    def plan(self, split: str) -> list[dict[str, Any]]:
        """The clips of a split: text, voice, speed and their cache paths."""
        rng = np.random.default_rng(derived_seed(self.seed, 13, SPLITS.index(split)))
        clips = []
        for index in range(self.sizes[split]):
            text = speech_sentence(rng)
            voice, speed = self.voices[index % len(self.voices)], self.speeds[index % len(self.speeds)]
            key = hashlib.sha256(f"{text}|{voice}|{speed}".encode()).hexdigest()[:20]
            clips.append({"text": text, "voice": voice, "speed": speed, "label": self.voices.index(voice),
                          "path": self.cache_dir / f"{key}.wav", "meta": self.cache_dir / f"{key}.json"})  # fmt: skip
        return clips

    def prepare_data(self) -> None:
        """Synthesise the clips missing from the cache (Lightning calls this on one process only)."""
        missing = [
            c for s in SPLITS for c in self.plan(s) if not (c["path"].is_file() and c["meta"].is_file())
        ]
        if self.alignments:  # clips cached without an alignment are spoken again, with one
            missing += [c for s in SPLITS for c in self.plan(s) if c not in missing and "alignment" not in
                        json.loads(c["meta"].read_text())]  # fmt: skip
        if not missing:
            return
        if self.alignments:
            if self.backend == "program":
                raise DataError(
                    "speech: alignments need the library backend (libespeak-ng reports the phonemes it speaks; "
                    "the program does not): use --data.backend library or auto, with `pip install espeakng-loader`"
                )
        # fail before making anything, with the install instructions
        backend = espeak_backend("library" if self.alignments else self.backend)
        made_by = {"backend": backend, "espeak_version": espeak_version(backend)}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for clip in missing:
            partial = clip["path"].with_suffix(".part.wav")
            alignment = espeak_synthesise(clip["text"], clip["voice"], clip["speed"], partial, backend)
            phonemes = espeak_phonemes(clip["text"], clip["voice"], backend)
            partial.replace(clip["path"])  # the clip counts as cached only once complete
            meta = {"text": clip["text"], "voice": clip["voice"], "speed": clip["speed"], "phonemes": phonemes,
                    **made_by, **({"alignment": alignment} if alignment else {})}  # fmt: skip
            clip["meta"].write_text(json.dumps(meta))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # a no-op once cached; makes setup() alone enough outside a Trainer
        sets, vocabulary = [], set()
        for split in SPLITS:
            entries = []
            for clip in self.plan(split):
                meta = json.loads(clip["meta"].read_text())
                entry = {"path": clip["path"], "text": clip["text"], "phonemes": meta["phonemes"],
                         "label": torch.tensor(clip["label"], dtype=torch.int64)}  # fmt: skip
                if self.alignments:
                    entry |= phone_alignment(meta["alignment"], self.sample_rate)
                    vocabulary.update(entry["phones"].split(" "))
                entries.append(entry)
            sets.append(AudioFilesDataset(entries, self.sample_rate))
        self.train_set, self.val_set, self.test_set = sets
        self.phoneme_vocabulary = sorted(vocabulary)
