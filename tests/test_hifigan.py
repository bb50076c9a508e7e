"""The `hifigan` vocoder: its network against the paper's numbers, generation contracts, learning on
`tones` (held-out mel-L1 falls) and `zoo.sample` writing WAV files from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from zoo.audio import log_mel
from zoo.datamodules.audio import TonesDataModule
from zoo.io.audio import save_wav
from zoo.plugins.hifigan import Discriminators, HiFiGAN, PeriodDiscriminator

TINY = dict(upsample_initial_channel=32, discriminator_width=1 / 16, segment_size=4096)


def test_generator_matches_hifigan_v3_and_maps_frames_to_hops() -> None:
    v3 = HiFiGAN(upsample_initial_channel=256)  # HiFi-GAN V3 exactly: the paper reports 1.46M parameters
    assert round(sum(p.numel() for p in v3.generator.parameters()) / 1e6, 2) == 1.46
    model = HiFiGAN(**TINY)
    mel = torch.randn(2, 80, 7)
    assert model(mel).shape == (2, 7 * 256)
    with pytest.raises(ValueError, match="multiply to"):
        HiFiGAN(upsample_rates=(8, 8, 2))


def test_weight_norm_removal_keeps_the_output() -> None:
    model = HiFiGAN(**TINY).eval()
    mel = torch.randn(1, 80, 5)
    with torch.no_grad():
        before = model(mel)
        model.generator.remove_weight_norm()
        after = model(mel)
    assert not any(hasattr(m, "parametrizations") for m in model.generator.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_period_discriminator_only_mixes_samples_a_period_apart() -> None:
    """Changing one sample changes only the output column of its phase (index mod p)."""
    torch.manual_seed(0)
    d = PeriodDiscriminator(3, [4, 4, 4, 4, 4]).eval()
    x = torch.randn(1, 1, 3 * 200)
    y = x.clone()
    y[..., 301] += 1.0  # phase 301 % 3 == 1
    with torch.no_grad():
        a, b = d(x)[0].view(-1, 3), d(y)[0].view(-1, 3)
    changed = (a - b).abs().sum(0) > 0
    assert changed.tolist() == [False, True, False]
    assert len(Discriminators((2, 3, 5, 7, 11), 1 / 16)(x)) == 5 + 3


def test_generate_needs_a_mel_until_it_has_held_out_ones(tmp_path: Path) -> None:
    model = HiFiGAN(**TINY)
    with pytest.raises(ValueError, match="needs a log-mel"):
        model.generate(2)
    audio = torch.sin(torch.arange(22050 // 2) * 0.1) * 0.5
    mel = log_mel(audio[None])
    assert model.generate(1, condition=mel).shape == (1, mel.shape[-1] * 256)
    save_wav(audio, tmp_path / "in.wav", 22050)
    np.save(tmp_path / "mel.npy", mel[0, :, :10].numpy())
    out = model.generate(2, condition=[str(tmp_path / "in.wav"), str(tmp_path / "mel.npy")])
    assert out.shape == (2, mel.shape[-1] * 256) and (out[1, 10 * 256 :] == 0).all() and out.abs().max() <= 1


# --- learning and sampling from a checkpoint ------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[HiFiGAN, float, Path]:
    """~25 s of CPU training on `tones` with Lightning's Trainer; returns (model, the untrained
    network's held-out mel-L1, checkpoint path)."""
    import lightning as L

    root = tmp_path_factory.mktemp("hifigan")
    test = _held_out()
    L.seed_everything(0)
    model = HiFiGAN(**TINY, lr=1e-3)
    with torch.no_grad():
        before = float(model.eval().masked_mel_l1(test["audio"], test["length"]))
    model.train()
    trainer = L.Trainer(
        max_steps=150,  # optimiser steps: 75 batches, a D and a G step each
        limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, datamodule=TonesDataModule(num_train=64, num_val=8, num_test=16, batch_size=4))
    ckpt = root / "hifigan.ckpt"
    trainer.save_checkpoint(ckpt)
    return model, before, ckpt


def _held_out() -> dict[str, torch.Tensor]:
    data = TonesDataModule(num_train=64, num_val=8, num_test=16, batch_size=16)
    data.setup()
    return next(iter(data.test_dataloader()))


@pytest.mark.slow
def test_learns_to_vocode_held_out_tones(trained: tuple[HiFiGAN, float, Path]) -> None:
    """Trained for 75 batches (two optimiser steps each), the vocoder's log-mel L1 on 16 held-out test
    clips falls by more than a quarter from the untrained network's (3.7 -> about 2.4 here).

    What this much training learns is the overall spectral level (a noise floor in the right bands):
    the output does not yet follow the notes. Vocoding proper takes the recipe's hundreds of batches
    (benchmarks/RESULTS.md); a test cannot afford them."""
    model, before, _ = trained
    test = _held_out()
    with torch.no_grad():
        after = float(model.eval().masked_mel_l1(test["audio"], test["length"]))
    assert after < 0.75 * before, (before, after)
    assert int(model.reference_count) == 4  # the first validation batch (limit_val_batches=1), for generate()


@pytest.mark.slow
def test_zoo_sample_writes_wav_files_at_the_model_rate(
    trained: tuple[object, float, Path], tmp_path: Path
) -> None:
    from zoo.sample import main

    _, _, ckpt = trained
    written = main(["--ckpt", str(ckpt), "--num", "3", "--out", str(tmp_path / "out")])
    assert [p.name for p in written] == ["000000.wav", "000001.wav", "000002.wav"]
    for path in written:
        data, rate = sf.read(str(path), dtype="float32")
        assert rate == 22050 and data.shape == (86 * 256,) and np.abs(data).max() <= 1.0
        assert np.sqrt(np.mean(data**2)) > 1e-3  # not silence: resynthesised held-out notes
    # analysis-resynthesis of a recording given on the command line
    tone = 0.5 * np.sin(2 * np.pi * 330 * np.arange(11025) / 22050)
    save_wav(torch.from_numpy(tone), tmp_path / "in.wav", 22050)
    (path,) = main(
        ["--ckpt", str(ckpt), "--out", str(tmp_path / "re.wav"), "--wav", str(tmp_path / "in.wav")]
    )
    assert path == tmp_path / "re.wav"  # --out naming a .wav file writes exactly that file
    data, rate = sf.read(str(path))
    assert rate == 22050 and len(data) == 11025 // 256 * 256
    # a log-mel saved with numpy: one WAV per file, the mel's frame count times the hop
    from zoo.audio import log_mel

    mel = log_mel(torch.from_numpy(tone).float(), 22050)
    np.save(tmp_path / "in.npy", mel.numpy())
    (path,) = main(["--ckpt", str(ckpt), "--out", str(tmp_path / "mel"), "--mel", str(tmp_path / "in.npy")])
    data, rate = sf.read(str(path))
    assert rate == 22050 and len(data) == mel.shape[-1] * 256
    with pytest.raises(SystemExit, match="--mel takes numpy .npy files"):
        main(["--ckpt", str(ckpt), "--out", str(tmp_path / "x"), "--mel", str(tmp_path / "in.wav")])
    with pytest.raises(SystemExit, match="'missing.wav' does not exist"):
        main(["--ckpt", str(ckpt), "--out", str(tmp_path / "x"), "--wav", "missing.wav"])


def test_fit_command_line_on_tones(in_tmp: Path) -> None:
    """`python -m zoo.fit --model hifigan` with the recipe's defaults overridden to a few steps."""
    from zoo import registry

    if "hifigan" not in registry.list_models():
        pytest.skip(
            "hifigan is in setup.cfg but not in this environment's installed metadata: pip install -e ."
        )
    from conftest import run_fit

    cli = run_fit(
        "--model", "hifigan", "--model.upsample_initial_channel", "32", "--model.discriminator_width", "0.0625",
        "--model.segment_size", "2048", "--data.num_train", "8", "--data.num_val", "4", "--data.batch_size", "4",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
    )  # fmt: skip
    assert cli.trainer.global_step == 4 and "val/mel_l1" in cli.trainer.callback_metrics
