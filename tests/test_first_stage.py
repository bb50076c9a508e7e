"""`zoo.first_stage` (the first stage every latent family shares) and the checks on checkpoints that one
family takes from another: a file of the wrong family, or a damaged one, is named in one line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import zoo
from zoo.checkpoint import CheckpointError
from zoo.first_stage import FIRST_STAGE_FILE, build_first_stage, prepare_first_stage, wait_for_file
from zoo.plugins.ldm import LDM
from zoo.plugins.video_diffusion import VideoDiffusion

VAE_CONFIG = {
    "in_channels": 3,
    "image_size": 16,
    "latent_channels": 4,
    "downsample_factor": 4,
    "base_channels": 8,
}
SMALL_LATENT = {"image_size": 16, "base_channels": 16, "num_res_blocks": 1, "text_width": 32, "text_depth": 1}


def _save(module: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints of three families, untrained (what they hold is all that matters here)."""
    root = tmp_path_factory.mktemp("families")
    torch.manual_seed(0)
    vae = zoo.create_model("vae", **VAE_CONFIG)
    vae.latent_scale.fill_(0.5)  # as if measured on data: a usable first stage
    gpt = zoo.create_model("gpt", vocab_size=32, block_size=8, n_layer=1, n_head=1, n_embd=8)
    ldm = LDM(first_stage_config=VAE_CONFIG, **SMALL_LATENT)
    truncated = root / "truncated.ckpt"
    truncated.write_bytes(_save(vae, root / "whole.ckpt").read_bytes()[:2000])
    return {
        "vae": _save(vae, root / "vae.ckpt"),
        "gpt": _save(gpt, root / "gpt.ckpt"),
        "ldm": _save(ldm, root / "ldm.ckpt"),
        "truncated": truncated,
    }


def _one_line_error(build, *args, **kwargs) -> str:  # noqa: ANN001
    with pytest.raises(CheckpointError) as info:
        build(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_ldm_text_encoder_must_be_a_clip_checkpoint(checkpoints):
    vae = checkpoints["vae"]
    message = _one_line_error(LDM, text_encoder=str(vae), first_stage_config=VAE_CONFIG, **SMALL_LATENT)
    assert (
        message
        == f"{vae} is a checkpoint of the `vae` family; --model.text_encoder needs one of the `clip` family"
    )


@pytest.mark.parametrize("family", [LDM, VideoDiffusion], ids=["ldm", "video_diffusion"])
def test_first_stage_must_be_a_vae_checkpoint(checkpoints, family):
    gpt = checkpoints["gpt"]
    message = _one_line_error(family, first_stage=str(gpt), **SMALL_LATENT)
    assert (
        message
        == f"{gpt} is a checkpoint of the `gpt` family; --model.first_stage needs one of the `vae` family"
    )


def test_video_image_model_must_be_an_ldm_checkpoint(checkpoints):
    vae = checkpoints["vae"]
    message = _one_line_error(VideoDiffusion, image_model=str(vae), **SMALL_LATENT)
    assert (
        message
        == f"{vae} is a checkpoint of the `vae` family; --model.image_model needs one of the `ldm` family"
    )


@pytest.mark.parametrize(
    "family,option",
    [
        (LDM, "first_stage"),
        (LDM, "text_encoder"),
        (VideoDiffusion, "first_stage"),
        (VideoDiffusion, "image_model"),
    ],
)
def test_a_truncated_checkpoint_is_named(checkpoints, family, option):
    truncated = checkpoints["truncated"]
    message = _one_line_error(family, **{option: str(truncated)}, **SMALL_LATENT)
    assert str(truncated) in message and "truncated" in message


def test_a_waiting_rank_trains_nothing_and_loads_rank_zeros_file(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    (tmp_path / "first_stage").mkdir()
    (tmp_path / "first_stage" / FIRST_STAGE_FILE).write_bytes(checkpoints["vae"].read_bytes())
    vae = build_first_stage(VAE_CONFIG)
    trainer = SimpleNamespace(default_root_dir=str(tmp_path))  # no accelerator: training would fail
    prepare_first_stage(vae, given=None, trainer=trainer, datamodule=None, steps=5, family="test")
    expected = torch.load(checkpoints["vae"], weights_only=True)["state_dict"]
    assert all(torch.equal(value, expected[key]) for key, value in vae.state_dict().items())
    assert float(vae.latent_scale) == 0.5


def test_waiting_returns_once_the_file_appears_and_gives_up_by_name(tmp_path):
    target = tmp_path / FIRST_STAGE_FILE
    threading.Timer(0.3, target.write_bytes, args=(b"done",)).start()
    start = time.monotonic()
    wait_for_file(target, timeout_s=30, poll_s=0.05)
    assert 0.25 < time.monotonic() - start < 10
    with pytest.raises(TimeoutError, match=str(tmp_path / "missing.ckpt")):
        wait_for_file(tmp_path / "missing.ckpt", timeout_s=0.2, poll_s=0.05)


def test_video_diffusion_takes_its_first_stage_without_importing_ldm(checkpoints):
    """No family imports another family's module for its parts (docs/architecture.md)."""
    script = (
        "import sys\n"
        "from zoo.plugins.video_diffusion import VideoDiffusion\n"
        f"model = VideoDiffusion(first_stage={str(checkpoints['vae'])!r}, **{SMALL_LATENT!r})\n"
        "model.on_fit_start()\n"
        "assert bool(model.first_stage_ready)\n"
        "print(sorted(m for m in sys.modules if m.startswith('zoo.plugins.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zoo.plugins.ldm" not in result.stdout


def test_posterior_cache_gives_the_encoders_latents_and_encodes_each_image_once():
    """Cached or not, the latents are `encode_latents`' own (the mean exactly; a draw from the same random
    stream); a second pass over the same images calls the encoder for none of them; a changed image misses."""
    from zoo.first_stage import PosteriorCache

    vae = build_first_stage({"latent_channels": 4, "downsample_factor": 4, "base_channels": 8}).eval()
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    torch.manual_seed(3)
    expected = {sample: vae.encode_latents(images, sample=sample) for sample in (False, True)}
    cache, encoded = PosteriorCache(), []
    encode = vae.encode
    vae.encode = lambda x: encoded.append(len(x)) or encode(x)
    for _ in range(2):  # the first pass fills the cache, the second reads it
        torch.manual_seed(3)
        for sample in (False, True):
            torch.testing.assert_close(cache.latents(vae, images, sample=sample), expected[sample])
    assert encoded == [6]
    changed = images.clone()
    changed[2] += 0.01
    cache.latents(vae, changed, sample=False)
    assert encoded == [6, 1]


def test_max_time_is_the_budget_of_both_stages(tmp_path):
    """With --trainer.max_time, the first stage may take at most half of it, and the time it took is
    charged to the family's Timer (saved in its state, as a resumed run's would be)."""
    from zoo.first_stage import _charge_first_stage_to_timer, _stage_trainer, _time_budget

    trainer = L.Trainer(max_time={"minutes": 10}, logger=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path))  # fmt: skip
    timer, seconds = _time_budget(trainer)
    assert seconds == 600
    _charge_first_stage_to_timer(trainer, 90.0)
    assert timer.time_remaining() == pytest.approx(510.0)
    assert timer.state_dict()["time_elapsed"]["train"] == pytest.approx(90.0)
    stage = _stage_trainer(trainer, tmp_path / "first_stage", steps=5, max_seconds=300.0)
    assert _time_budget(stage)[1] == 300.0
    assert _time_budget(L.Trainer(logger=False, enable_checkpointing=False)) is None
