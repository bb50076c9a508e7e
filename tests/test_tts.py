"""`tts`: espeak-ng's phoneme alignment, the length regulator, learning, and `zoo.sample` end to end.

Needs libespeak-ng from the espeakng-loader wheel for everything that speaks (skipped without it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from zoo.audio import LogMel
from zoo.audio.alignment import frame_durations, length_regulate
from zoo.plugins.tts import PAUSE, TTS

TINY = dict(
    dim=32, heads=2, hidden=64, encoder_layers=1, decoder_layers=1, duration_filters=32, num_speakers=1
)
SENTENCE = "Seven apples. The old man opened the green door near the river."


# --- closed forms --------------------------------------------------------------------------------


def test_frame_durations_give_each_frame_to_the_phoneme_holding_its_centre() -> None:
    rng = np.random.default_rng(0)
    hop = 256
    for _ in range(20):
        length = int(rng.integers(3000, 60000))
        starts = torch.tensor(np.sort(rng.integers(1, length, size=int(rng.integers(1, 30)))))
        durations = frame_durations(starts, length, hop)
        assert durations.shape == (len(starts) + 1,) and (durations >= 0).all()
        assert int(durations.sum()) == length // hop  # exactly the front end's frame count
        owner = torch.repeat_interleave(torch.arange(len(durations)), durations)  # frame -> phoneme
        edges = torch.cat([torch.zeros(1, dtype=torch.long), starts, torch.tensor([length + hop])])
        centres = torch.arange(length // hop) * hop + hop // 2  # LogMel's frame t is centred here
        assert ((edges[owner] <= centres) & (centres < edges[owner + 1])).all()
    assert (
        LogMel()(torch.zeros(1, 10 * hop + 7)).shape[-1]
        == frame_durations(torch.tensor([300]), 10 * hop + 7, hop).sum()
    )
    with pytest.raises(ValueError, match="increasing"):
        frame_durations(torch.tensor([500, 100]), 4096, hop)


def test_length_regulator_repeats_each_phoneme_its_duration() -> None:
    x = torch.randn(3, 4, 5)
    durations = torch.tensor([[2, 0, 3, 1], [1, 1, 0, 0], [0, 0, 0, 4]])
    frames, mask = length_regulate(x, durations)
    assert frames.shape == (3, 6, 5) and mask.sum(1).tolist() == [6, 2, 4]
    for row in range(3):
        expected = torch.repeat_interleave(x[row], durations[row], dim=0)  # the definition, row by row
        n = len(expected)
        assert torch.equal(frames[row, :n], expected) and (frames[row, n:] == 0).all()
        assert mask[row, :n].all() and not mask[row, n:].any()


def test_shapes_with_true_and_predicted_durations() -> None:
    model = TTS(**TINY).eval()
    model.phonemes = ["<pad>", "<unk>", "_", "a", "b"]
    ids, padding = model.phoneme_ids([["_", "a", "b", "zz"], ["_", "b"]])
    assert ids.tolist() == [[2, 3, 4, 1], [2, 4, 0, 0]] and padding.tolist()[1] == [False, False, True, True]
    durations = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    out = model(ids, padding, torch.zeros(2, dtype=torch.long), durations)
    assert out["mel"].shape == (2, 80, 11) and out["frame_mask"].sum(1).tolist() == [10, 11]
    assert out["log_durations"].shape == (2, 4) and (out["log_durations"][1, 2:] == 0).all()
    free = model(ids, padding, torch.zeros(2, dtype=torch.long))
    assert free["mel"].shape[-1] == int(free["durations"].sum(1).max()) >= 1
    # previews for the sample-logging callback: mel images in [0, 1], black past each clip's end
    batch = {"audio": torch.randn(2, 4000) * 0.1, "length": torch.tensor([4000, 2000]), "phones": ["a b", "b"],
             "phone_starts": torch.tensor([[300, 1500], [300, -1]]), "label": torch.zeros(2, dtype=torch.long)}  # fmt: skip
    images = model.previews(batch, n=2, generator=torch.Generator())
    assert set(images) == {"target_mel", "mel", "predicted_mel"}
    assert images["mel"].shape == images["target_mel"].shape == (2, 1, 80, 15)
    assert all(0 <= float(v.min()) and float(v.max()) <= 1 for v in images.values())
    assert (images["mel"][1, :, :, 7:] == 0).all() and not (images["mel"][0, :, :, 7:] == 0).all()


# --- espeak-ng's alignment -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def espeak():
    pytest.importorskip("espeakng_loader")
    import zoo.audio.espeak as espeak

    espeak.engine()
    return espeak


def _segments(audio: np.ndarray, phones: list[tuple[str, int]]) -> list[tuple[str, np.ndarray]]:
    ends = [start for _, start in phones[1:]] + [len(audio)]
    return [(name, audio[start:end]) for (name, start), end in zip(phones, ends, strict=True)]


def test_espeak_phoneme_events_align_with_the_audio(espeak) -> None:
    """The phonemes espeak-ng reports while speaking are its transcription, and their start samples
    match what is heard: pauses are quiet, /s/ is a hiss above 3 kHz, vowels are not, and the
    final pause starts where the sound ends. Every check is measured on the audio, not taken from espeak."""
    audio, phones, rate = espeak.synthesise_aligned(SENTENCE, "en-us", 150)
    x = audio.astype(np.float64) / 32768
    assert rate == 22050 and phones[0][1] < 0.02 * rate and phones[-1][1] == len(audio)
    # the names are espeak_TextToPhonemes' IPA (another code path): same phonemes, stress marks aside
    spoken = "".join(name for name, _ in phones if name != PAUSE).replace("ˈ", "").replace("ˌ", "")
    transcribed = espeak.phonemes(SENTENCE, "en-us").replace(" ", "").replace("ˈ", "").replace("ˌ", "")
    assert spoken == transcribed, (spoken, transcribed)

    def rms(seg: np.ndarray) -> float:
        return float(np.sqrt((seg**2).mean()))

    def high_share(seg: np.ndarray) -> float:  # the share of the segment's energy above 3 kHz
        power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
        return float(power[np.fft.rfftfreq(len(seg), 1 / rate) > 3000].sum() / power.sum())

    segments = _segments(x, phones)
    vowels = [seg for name, seg in segments if name.startswith(("ˈ", "ˌ")) and len(seg) > 400]
    hisses = [seg for name, seg in segments if name == "s"]
    # an empty IPA name is not always a pause: espeak-ng also leaves a short (50 ms) voiced onset between
    # "the" and "old" unnamed, so only the long ones (the full stop, the end) are checked for silence
    pauses = [seg for name, seg in segments if name == PAUSE and len(seg) > 0.1 * rate]
    speech_rms = rms(np.concatenate(vowels))
    assert len(vowels) >= 8 and len(hisses) == 1 and len(pauses) >= 2  # "Seven", the full stop, the end
    assert all(rms(seg) < 0.1 * speech_rms for seg in pauses), [rms(s) / speech_rms for s in pauses]
    assert high_share(hisses[0]) > 0.8 and all(high_share(seg) < 0.15 for seg in vowels)
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    final_pause = phones[-2][1]  # the last real event is the sentence-final pause; then the end marker
    assert phones[-2][0] == PAUSE and abs(int(loud[-1]) - final_pause) < 0.01 * rate, (loud[-1], final_pause)


def test_phoneme_events_leave_the_audio_byte_identical(espeak) -> None:
    """The engine now starts with phoneme events on; espeak-ng's first utterance in a fresh process (it
    carries pitch state from one utterance to the next) is the same bytes as with the option off."""
    raw = textwrap.dedent(f"""
        import ctypes, hashlib, sys, espeakng_loader
        from pathlib import Path
        from zoo.audio import espeak
        if sys.argv[1] == "zoo":
            print(hashlib.sha256(espeak.synthesise({SENTENCE!r}, "en-us", 150)[0].tobytes()).hexdigest())
            raise SystemExit
        lib = ctypes.CDLL(espeakng_loader.get_library_path())  # the old initialisation: no events
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize(2, 0, str(Path(espeakng_loader.get_data_path()).parent).encode(), 0x8000)
        chunks = []
        callback = espeak.SYNTH_CALLBACK(lambda w, n, e: (n > 0 and chunks.append(ctypes.string_at(w, 2 * n))) and 0)
        lib.espeak_SetSynthCallback(callback)
        lib.espeak_SetVoiceByName(b"en-us")
        lib.espeak_SetParameter(1, 150, 0)
        text = {SENTENCE!r}.encode()
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth(text, len(text) + 1, 0, 1, 0, 0x1 | 0x100 | 0x1000, None, None)
        lib.espeak_Synchronize()
        print(hashlib.sha256(b"".join(chunks)).hexdigest())
    """)
    digests = [
        subprocess.run([sys.executable, "-c", raw, which], capture_output=True, text=True, check=True).stdout
        for which in ("zoo", "raw")
    ]
    assert digests[0] == digests[1] and len(digests[0].strip()) == 64


# --- the speech datamodule with alignments, and learning -----------------------------------------


def _speech(cache: Path, alignments: bool = True, **kwargs):
    from zoo.datamodules.audio import SpeechDataModule

    options = dict(voices=("en-us",), speeds=(150,), num_train=48, num_val=8, num_test=4, batch_size=8)
    return SpeechDataModule(cache_dir=str(cache), alignments=alignments, **(options | kwargs))


def test_speech_batches_carry_alignments_that_cover_every_frame(espeak, tmp_path: Path) -> None:
    small = dict(num_train=3, num_val=1, num_test=1, batch_size=3)
    _speech(tmp_path, alignments=False, **small).setup()  # the library records alignments anyway
    metas = sorted(tmp_path.glob("*.json"))
    assert len(metas) == 5 and all("alignment" in json.loads(p.read_text()) for p in metas)
    for path in metas:  # a cache made before alignments were recorded (or by the program) ...
        meta = json.loads(path.read_text())
        del meta["alignment"]
        path.write_text(json.dumps(meta))
    dm = _speech(tmp_path, **small)  # ... is spoken again, with them, when they are asked for
    dm.setup()
    assert all("alignment" in json.loads(p.read_text()) for p in metas)
    assert PAUSE in dm.phoneme_vocabulary and "ˈæ" in dm.phoneme_vocabulary
    batch = next(iter(dm.train_dataloader()))
    counts = [len(p.split(" ")) for p in batch["phones"]]
    assert batch["phone_starts"].shape == (3, max(counts))
    for row, (starts, count, length) in enumerate(
        zip(batch["phone_starts"], counts, batch["length"], strict=True)
    ):
        assert (starts[:count] >= 0).all() and (starts[count:] == -1).all()
        frames = LogMel()(batch["audio"][row, : int(length)]).shape[-1]
        assert int(frame_durations(starts[:count], int(length), 256).sum()) == frames
    with pytest.raises(ValueError, match="library backend"):
        _speech(tmp_path / "other", backend="program", **small).prepare_data()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TTS, list[float], Path]:
    """A tiny tts trained for 120 batches on 48 clips of one voice; (model, validation mel L1 before and
    after, checkpoint)."""
    pytest.importorskip("espeakng_loader")
    import lightning as L

    root = tmp_path_factory.mktemp("tts")
    L.seed_everything(0)
    dm = _speech(root / "cache")
    model = TTS(**TINY, lr=3e-3, warmup_steps=20)
    trainer = L.Trainer(
        max_steps=120, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0,
    )  # fmt: skip
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/mel_l1"]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/mel_l1"]
    ckpt = root / "tts.ckpt"
    trainer.save_checkpoint(ckpt)
    return model, [before, after], ckpt


@pytest.mark.slow
def test_validation_mel_loss_falls(trained) -> None:
    """120 batches take the held-out log-mel L1 (true durations) from the untrained 3.1 to about 0.9."""
    _, (before, after), _ = trained
    assert after < 0.7 * before, (before, after)


def _save_vocoder(path: Path, **hparams) -> Path:
    """An untrained (tiny) hifigan as a zoo checkpoint, the way zoo.fit writes one."""
    from zoo.plugins.hifigan import HiFiGAN

    model = HiFiGAN(upsample_initial_channel=16, discriminator_width=1 / 16, **hparams)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_zoo_sample_speaks_a_prompt_with_griffin_lim_and_with_a_vocoder(trained, tmp_path: Path) -> None:
    from zoo.sample import main

    _, _, ckpt = trained
    (path,) = main(
        ["--ckpt", str(ckpt), "--num", "1", "--prompt", "hello world", "--out", str(tmp_path / "gl")]
    )
    audio, rate = sf.read(str(path))
    assert rate == 22050 and audio.ndim == 1 and 0.3 < len(audio) / rate < 3.0
    assert (
        np.isfinite(audio).all() and np.sqrt((audio**2).mean()) > 1e-3
    )  # Griffin-Lim of a real mel: not silent
    vocoder = _save_vocoder(tmp_path / "hifigan.ckpt")
    written = main(["--ckpt", str(ckpt), "--num", "2", "--prompt", "hello world", "The cat found a red box.",
                    "--vocoder", str(vocoder), "--out", str(tmp_path / "voc")])  # fmt: skip
    short, long = (sf.read(str(p)) for p in written)
    assert short[1] == long[1] == 22050 and len(short[0]) == len(long[0])  # padded to the longest
    tail = np.flatnonzero(short[0])  # zeros after "hello world" ends, and the longer text speaks longer
    assert len(tail) and tail[-1] < 0.9 * len(long[0])


@pytest.mark.slow
def test_clear_errors_for_bad_input(trained, tmp_path: Path) -> None:
    from zoo.sample import main

    _, _, ckpt = trained
    base = ["--ckpt", str(ckpt), "--num", "1", "--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit, match="prompt is empty"):
        main([*base, "--prompt", "  "])
    with pytest.raises(SystemExit, match="give a prompt"):
        main(base)
    with pytest.raises(SystemExit, match="not a vocoder"):
        main([*base, "--prompt", "hi", "--vocoder", str(ckpt)])
    other_rate = _save_vocoder(tmp_path / "16k.ckpt", sample_rate=16000, f_max=7600.0)
    with pytest.raises(SystemExit, match=r"other mels than this tts model: sample_rate 16000 \(tts: 22050\)"):
        main([*base, "--prompt", "hi", "--vocoder", str(other_rate)])
    with pytest.raises(SystemExit, match="does not exist"):
        main([*base, "--prompt", "hi", "--vocoder", str(tmp_path / "missing.ckpt")])
