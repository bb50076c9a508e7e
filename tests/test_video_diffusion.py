"""`video_diffusion`: factorised space-time attention, exact inflation of an image U-Net, learning motion,
GIFs through `zoo.sample`, image-to-video and continuation by inpainting over time, and clear errors.

Checked on behaviour: perturbation tests on the network (which outputs a change can reach), the image
U-Net as the reference for inflation, a colour-threshold centroid tracker (not a trained model) for the
motion of generated clips, and GIFs read back from disk. Budget: about 90 s on one thread, most of it the
one-minute training of the tiny pixel-space model shared by the sampling tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from zoo.io.video import load_gif
from zoo.nn.unet import UNet
from zoo.nn.video_unet import TemporalAttention, VideoUNet, inflate_image_unet, rotary_embedding

os.environ.setdefault("OMP_NUM_THREADS", "1")

SMALL = dict(
    in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
    num_heads=2, context_dim=8, pooled_dim=8,
)  # fmt: skip


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Non-zero weights everywhere (zero-initialised output layers would hide any mixing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return module


def _text(b: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[:, 3:] = False
    return {
        "context": torch.randn(b, 5, 8, generator=g),
        "context_mask": mask,
        "pooled": torch.randn(b, 8, generator=g),
    }


# ------------------------------------------------------------------------------ factorised attention


def test_temporal_attention_mixes_only_along_time():
    torch.manual_seed(0)
    block = _randomise(TemporalAttention(16, 2), scale=0.05).eval()  # softmax not saturated
    b, t, h, w = 2, 5, 6, 6
    x = torch.randn(b * t, 16, h, w)
    frame, y, xx = 2, 3, 4  # perturb clip 0, frame 2, one position
    bumped = x.clone()
    bumped[frame, :, y, xx] += torch.randn(16)  # not constant over channels: LayerNorm would remove that
    with torch.no_grad():
        change = (block(bumped, t) - block(x, t)).abs().sum(1)  # (B*T, H, W)
    change = change.view(b, t, h, w)
    outside = change.clone()
    outside[0, :, y, xx] = 0
    assert outside.max() == 0  # no other position, no other clip
    assert (change[0, :, y, xx] > 1e-4).all()  # every frame of that clip at that position


FRAME_OPTIONS = {
    "plain": {},
    "adaln": {"temporal_conditioning": True},
    "absolute": {"absolute_positions": True},
    "frame_embedding": {"frame_embedding": True, "absolute_positions": True},
}


@pytest.mark.parametrize("options", FRAME_OPTIONS.values(), ids=FRAME_OPTIONS.keys())
def test_spatial_layers_mix_only_within_a_frame_and_temporal_layers_across(options):
    torch.manual_seed(0)
    net = VideoUNet(**options, **SMALL)
    _randomise(net.image)  # spatial layers non-trivial, temporal layers still the identity
    x = torch.randn(2, 4, 3, 16, 16)
    bumped = x.clone()
    bumped[0, 1, :, 5, 5] += 1.0  # one pixel of clip 0, frame 1
    text = _text(2)
    t = torch.tensor([300.0, 600.0])
    with torch.no_grad():
        change = (net(bumped, t, **text) - net(x, t, **text)).abs().sum(2)  # (B, T, H, W)
    others = change.clone()
    others[0, 1] = 0
    assert others.max() == 0  # frames and clips are independent without temporal layers
    assert (change[0, 1] > 1e-5).float().mean() > 0.5  # ... and the frame mixes spatially

    _randomise(net, seed=1)  # now the temporal layers are active too
    with torch.no_grad():
        change = (net(bumped, t, **text) - net(x, t, **text)).abs().sum((2, 3, 4))  # (B, T)
    assert change[1].max() == 0  # still nothing crosses clips
    assert (change[0] > 1e-5).all()  # every frame of the clip now sees the bumped frame


def test_rotary_positions_make_attention_scores_depend_on_frame_distance_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)

    def score(i: int, j: int) -> float:
        qi = rotary_embedding(q, torch.tensor([i]))
        kj = rotary_embedding(k, torch.tensor([j]))
        return float((qi * kj).sum())

    assert score(0, 3) == pytest.approx(score(5, 8), abs=1e-5) == pytest.approx(score(12, 15), abs=1e-5)
    assert score(0, 3) != pytest.approx(score(0, 4), abs=1e-3)
    # no rotation at position 0: the embedding keeps the vector as it is
    assert torch.equal(rotary_embedding(q, torch.tensor([0])), q)


def test_absolute_frame_positions_tell_frames_of_a_still_clip_apart():
    """Why the absolute options exist: with rotary positions alone, a clip whose frames are all the same gives
    the same output on every frame (attention over equal values returns them, at any relative weights), so
    nothing can draw "frame 0 of a clip moving left" differently from frame 7."""
    torch.manual_seed(0)
    still = torch.randn(1, 1, 3, 16, 16).expand(1, 6, 3, 16, 16).contiguous()
    t, text = torch.tensor([500.0]), _text(1)

    def spread_over_frames(**options: bool) -> float:
        net = _randomise(VideoUNet(**options, **SMALL), seed=2).eval()
        with torch.no_grad():
            out = net(still, t, **text)[0]  # (T, C, H, W)
        return float((out - out.mean(0)).abs().max())

    assert spread_over_frames() < 1e-5
    assert spread_over_frames(absolute_positions=True) > 1e-2
    assert spread_over_frames(frame_embedding=True) > 1e-2


@pytest.mark.parametrize("options", FRAME_OPTIONS.values(), ids=FRAME_OPTIONS.keys())
def test_inflated_image_unet_reproduces_the_image_model_on_every_frame(options):
    torch.manual_seed(0)
    image = _randomise(UNet(**SMALL)).eval()
    video = inflate_image_unet(image, **options).eval()
    x = torch.randn(2, 3, 3, 16, 16)
    t = torch.tensor([10.0, 900.0])
    text = _text(2)
    with torch.no_grad():
        out = video(x, t, **text)
        flat = image(
            x.flatten(0, 1), t.repeat_interleave(3), **{k: v.repeat_interleave(3, 0) for k, v in text.items()}
        )
        assert torch.equal(out, flat.unflatten(0, (2, 3)))  # bit for bit: the very same operations
        for i in range(2):  # and frame by frame, each frame alone through the image model
            for f in range(3):
                single = image(x[i, f][None], t[i][None], **{k: v[i][None] for k, v in text.items()})
                torch.testing.assert_close(out[i, f], single[0], rtol=1e-5, atol=1e-5)
    # from a state dict with the UNet arguments; wrong arguments are named
    again = inflate_image_unet(image.state_dict(), **options, **SMALL)
    with torch.no_grad():
        assert torch.equal(again(x, t, **text), out)
    with pytest.raises(ValueError, match="do not fit"):
        inflate_image_unet(image.state_dict(), **{**SMALL, "base_channels": 8})


def test_video_unet_errors_are_named():
    net = VideoUNet(**SMALL)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        net(torch.randn(2, 3, 16, 16), torch.zeros(2), **_text(2))
    with pytest.raises(ValueError, match="temporal_levels"):
        VideoUNet(temporal_levels=(5,), **SMALL)


# ------------------------------------------------------------------------ tracker (independent of zoo)


def track(video: torch.Tensor, threshold: float = 0.35) -> torch.Tensor:
    """Object centroids (N, T, 2) as (x, y) pixels of clips (N, T, C, H, W) in [0, 1] on a black background:
    the mean position of pixels whose brightest channel exceeds `threshold`; NaN where none does."""
    mask = (video.amax(2) > threshold).float()
    size = video.shape[-1]
    coords = torch.arange(size, dtype=torch.float32)
    area = mask.sum((2, 3))
    cx = (mask * coords[None, None, None, :]).sum((2, 3)) / area
    cy = (mask * coords[None, None, :, None]).sum((2, 3)) / area
    return torch.stack([cx, cy], -1)


def moves(centroids: torch.Tensor, min_travel: float = 1.0) -> torch.Tensor:
    """Per clip: the centroid moves monotonically (every step the same sign) along the axis of its larger net
    displacement, by at least `min_travel` pixels."""
    travel = centroids[:, -1] - centroids[:, 0]  # (N, 2)
    axis = travel.abs().argmax(1)
    path = centroids.gather(2, axis[:, None, None].expand(-1, centroids.shape[1], 1))[..., 0]
    steps = path[:, 1:] - path[:, :-1]
    sign = torch.sign(travel.gather(1, axis[:, None]))
    monotone = ((steps * sign) > 0).all(1)
    return monotone & (travel.abs().amax(1) >= min_travel) & ~torch.isnan(centroids).any((1, 2))


def direction_of(centroids: torch.Tensor) -> list[str]:
    travel = centroids[:, -1] - centroids[:, 0]
    names = []
    for dx, dy in travel.tolist():
        names.append(("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up"))
    return names


HALF = 3  # frames 0..2 of a 4-frame clip: the half the caption holds for


def test_the_tracker_follows_real_clips():
    from zoo.datamodules.video import MovingShapesDataModule

    data = MovingShapesDataModule(
        frames=4, image_size=16, speed=(0.1, 0.12), num_train=8, num_val=32, num_test=8
    )
    data.setup()
    items = [data.val_set[i] for i in range(32)]
    video = (torch.stack([it["video"] for it in items]) + 1) / 2
    centroids = track(video)
    torch.testing.assert_close(
        centroids, torch.stack([it["centers"][:, 0] for it in items]), atol=1.0, rtol=0
    )
    # judged over the first half of the clip, where moving_shapes guarantees the captioned motion (a bounce
    # may follow: at 16 px, over all 4 frames only ~56% of real clips are monotone)
    assert moves(centroids[:, :HALF]).float().mean() > 0.95
    truth = [it["caption"].split()[-1] for it in items]
    assert sum(a == b for a, b in zip(direction_of(centroids[:, :HALF]), truth, strict=True)) >= 30


# -------------------------------------------------------------------- a tiny model that learns motion

TINY = dict(
    in_channels=3, image_size=16, frames=4, fps=6.0, pixel_space=True, base_channels=16, channel_mults=(1, 2),
    num_res_blocks=1, attention_levels=(1,), temporal_levels=(1,), num_heads=2, text_width=32, text_depth=1,
    vocab_size=320, max_length=12, prediction="sample", lr=2e-3, warmup_steps=50, sampler="ddim",
    sampling_steps=20, guidance=2.0,
)  # fmt: skip
TRAIN_STEPS = 500  # about 55 s on one thread; a step count, not a time, so the outcome is repeatable
PROMPTS = [
    f"a {c} {s} moving {d}"
    for c in ("red", "green", "blue", "yellow")
    for s in ("circle", "square")
    for d in ("right", "left", "up", "down")
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """Pixel-space video diffusion on 4-frame 16x16 moving shapes, trained for 500 steps (~55 s, one thread)."""
    import lightning as L

    from zoo.datamodules.video import MovingShapesDataModule
    from zoo.plugins.video_diffusion import VideoDiffusion

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    data = MovingShapesDataModule(
        frames=4, fps=6.0, image_size=16, speed=(0.1, 0.12), num_train=4000, num_val=16, batch_size=8
    )
    model = VideoDiffusion(**TINY)
    data.setup("fit")
    model._train_tokenizer(data)
    root = tmp_path_factory.mktemp("video_diffusion")
    trainer = L.Trainer(
        max_steps=TRAIN_STEPS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    elapsed = time.perf_counter() - start
    ckpt = root / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    torch.set_num_threads(threads)
    return model.eval(), ckpt, trainer.global_step, elapsed


def test_generated_clips_move_after_the_training_budget(tiny_model):
    from zoo.plugins.video_diffusion import VideoDiffusion

    model, _, steps, elapsed = tiny_model
    generator = torch.Generator().manual_seed(0)
    clips = model.generate(len(PROMPTS), condition=PROMPTS, generator=generator)
    assert clips.shape == (len(PROMPTS), 4, 3, 16, 16)
    centroids = track(clips)[:, :HALF]
    moving = moves(centroids).float().mean().item()
    right = sum(d == p.split()[-1] for d, p in zip(direction_of(centroids), PROMPTS, strict=True))
    print(f"after {steps} steps ({elapsed:.0f} s): {moving:.2f} of clips move monotonically, "
          f"{right / len(PROMPTS):.2f} the prompted way")  # fmt: skip
    # most clips move (measured 0.62; real clips > 0.95, test_the_tracker_follows_real_clips). The prompted
    # direction is not asserted: at this budget it is near chance (0.31 measured; see the family's docs)
    assert moving > 0.5
    # the same measure on the untrained model: no object, no motion (the threshold means something)
    untrained = VideoDiffusion(**TINY)
    untrained.tokenizer = model.tokenizer
    noise = untrained.generate(len(PROMPTS), condition=PROMPTS, generator=torch.Generator().manual_seed(0))
    assert moves(track(noise)[:, :HALF]).float().mean() < 0.3


def test_sample_command_writes_gifs_that_read_back_with_their_frames_and_size(tiny_model, tmp_path):
    from zoo.sample import main

    _, ckpt, _, _ = tiny_model
    out = tmp_path / "clips"
    written = main(
        ["--ckpt", str(ckpt), "--prompt", "a blue square moving left", "--frames", "7", "--num", "2",
         "--steps", "8", "--out", str(out)]
    )  # fmt: skip
    assert sorted(p.name for p in written) == ["000000.gif", "000001.gif", "grid.png"]
    video, fps = load_gif(out / "000000.gif")
    assert video.shape == (7, 3, 16, 16)  # 7 frames from a model trained on 4 (relative frame positions)
    assert fps == pytest.approx(6.0)  # the model's rate
    from PIL import Image

    with Image.open(out / "grid.png") as grid:  # 2 rows of 7 frames, 2-pixel padding
        assert grid.size == (7 * 16 + 8 * 2, 2 * 16 + 3 * 2)


def test_image_to_video_keeps_the_first_frame_and_continues_it(tiny_model, tmp_path):
    from zoo.datamodules.video import MovingShapesDataModule
    from zoo.io.images import save_images
    from zoo.sample import main

    model, ckpt, _, _ = tiny_model
    data = MovingShapesDataModule(
        frames=4, image_size=16, speed=(0.1, 0.12), num_train=8, num_val=8, num_test=16
    )
    data.setup()
    items = [data.test_set[i] for i in range(16)]
    first = (torch.stack([it["video"][0] for it in items]) + 1) / 2  # (16, C, H, W)
    clips = model.generate(
        16,
        condition=[it["caption"] for it in items],
        init=first[:, None],
        generator=torch.Generator().manual_seed(1),
    )
    assert clips.shape == (16, 4, 3, 16, 16)
    torch.testing.assert_close(clips[:, 0], first, atol=1e-6, rtol=0)  # kept exactly
    # the generated frames continue the given one: the object stays near where it was
    centroids = track(clips)
    near = ((centroids[:, 1] - centroids[:, 0]).norm(dim=-1) < 3.0).float().mean()
    assert near > 0.6

    # continuation: two given frames kept, and through the command line with --init-image
    two = (torch.stack([it["video"][:2] for it in items[:2]]) + 1) / 2
    more = model.generate(2, condition="a red circle moving up", init=two, frames=6, steps=5)
    assert more.shape == (2, 6, 3, 16, 16)
    torch.testing.assert_close(more[:, :2], two, atol=1e-6, rtol=0)
    save_images(first[:1], tmp_path / "first")
    out = tmp_path / "i2v"
    main(["--ckpt", str(ckpt), "--prompt", items[0]["caption"], "--init-image", str(tmp_path / "first" / "000000.png"),
          "--num", "1", "--steps", "5", "--out", str(out)])  # fmt: skip
    video, _ = load_gif(out / "000000.gif")
    assert video.shape == (4, 3, 16, 16)
    # GIF palettes quantise; the few colours of a shapes frame survive within one level
    torch.testing.assert_close(video[0], first[0], atol=1.5 / 255, rtol=0)


def test_windowed_extension_gives_the_frames_asked_for(tiny_model, tmp_path):
    from zoo.sample import main

    model, ckpt, _, _ = tiny_model
    clips = model.generate(
        2, condition="a red circle moving right", frames=7, extend="continue", overlap=2, steps=5
    )
    assert clips.shape == (2, 7, 3, 16, 16)
    # the same from the command line, to one named file
    written = main(["--ckpt", str(ckpt), "--prompt", "a red circle moving right", "--frames", "7", "--extend",
                    "continue", "--overlap", "2", "--steps", "5", "--out", str(tmp_path / "long.gif")])  # fmt: skip
    assert written == [tmp_path / "long.gif", tmp_path / "long_grid.png"]
    assert load_gif(tmp_path / "long.gif")[0].shape == (7, 3, 16, 16)
    with pytest.raises(ValueError, match="overlap"):
        model.generate(1, frames=7, extend="continue", overlap=4, steps=2)
    with pytest.raises(ValueError, match="extend must be one of"):
        model.generate(1, extend="loop", steps=2)


def test_bad_inputs_are_named(tiny_model):
    from zoo.plugins.video_diffusion import VideoDiffusion

    model, _, _, _ = tiny_model
    with pytest.raises(ValueError, match="ask for more frames"):
        model.generate(1, init=torch.rand(1, 4, 3, 16, 16), steps=2)
    with pytest.raises(ValueError, match=r"init must be the first frames"):
        model.generate(1, init=torch.rand(1, 2, 3, 32, 32), steps=2)
    with pytest.raises(ValueError, match="prompts"):
        model.generate(1, condition=[3], steps=2)
    with pytest.raises(ValueError, match="pixel_space"):
        VideoDiffusion(pixel_space=True, first_stage="x.ckpt")
    latent = VideoDiffusion(**{**TINY, "pixel_space": False})  # no first stage trained or given
    with pytest.raises(RuntimeError, match="first stage is untrained"):
        latent.training_step({"video": torch.zeros(1, 4, 3, 16, 16), "caption": ["a"]}, 0)
    from zoo.datamodules.shapes import ShapesDataModule

    with pytest.raises(ValueError, match="not a video datamodule"):
        model._check_data(ShapesDataModule(num_train=8, num_val=8, num_test=8))


# ------------------------------------------------------------------- the one command, latent version


def test_fit_trains_a_per_frame_first_stage_then_the_video_model(in_tmp):
    from conftest import run_fit
    from zoo.checkpoint import load_model
    from zoo.plugins.video_diffusion import VideoFramesDataModule

    cli = run_fit(
        "--model", "video_diffusion", "--logger", "none",
        "--data.frames", "3", "--data.image_size", "16", "--data.num_train", "16", "--data.num_val", "8",
        "--data.num_test", "8", "--data.batch_size", "4",
        "--model.first_stage_steps", "4", "--model.first_stage_batch_size", "8",
        "--model.first_stage_config", '{"in_channels": 3, "image_size": 16, "latent_channels": 4, '
        '"downsample_factor": 4, "base_channels": 8}',
        "--model.base_channels", "8", "--model.channel_mults", "[1]", "--model.attention_levels", "[0]",
        "--model.text_width", "16", "--model.text_depth", "1", "--model.vocab_size", "300",
        "--model.sampling_steps", "2", "--model.num_heads", "2",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--samples.num_samples", "6",
    )  # fmt: skip
    run = Path(cli.trainer.default_root_dir)
    assert (run / "first_stage" / "first_stage.ckpt").exists()
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert model.hparams.frames == 3 and model.fps == 8.0  # linked from the data
    assert bool(model.first_stage_ready)
    assert model.encode_video(torch.zeros(1, 3, 3, 16, 16)).shape == (1, 3, 4, 4, 4)
    assert model.generate(1, condition="a red circle moving up").shape == (1, 3, 3, 16, 16)
    assert list((run / "samples").glob("samples_step*.png"))  # previews: frames of clips

    # the frames the first stage trains on are the clips' own frames
    data = cli.datamodule
    frames = VideoFramesDataModule(data, batch_size=4)
    assert len(frames.train_dataloader().dataset) == 16 * 3
    assert torch.equal(frames.train_dataloader().dataset[4]["image"], data.train_set[1]["video"][1])


def test_an_ldm_inflates_into_a_video_model_that_reproduces_it_frame_by_frame(in_tmp):
    from conftest import run_fit
    from zoo.checkpoint import load_model
    from zoo.plugins.video_diffusion import VideoDiffusion

    sizes = dict(base_channels=8, channel_mults=(1,), attention_levels=(0,), num_res_blocks=1, num_heads=2,
                 text_width=16, text_depth=1, vocab_size=300)  # fmt: skip
    cli = run_fit(
        "--model", "ldm", "--logger", "none", "--data.image_size", "16", "--data.num_train", "32",
        "--data.num_val", "8", "--data.num_test", "8", "--data.batch_size", "8",
        "--model.first_stage_steps", "2",
        "--model.first_stage_config", '{"in_channels": 3, "image_size": 16, "latent_channels": 4, '
        '"downsample_factor": 4, "base_channels": 8}',
        *[a for k, v in sizes.items() for a in (f"--model.{k}", str(list(v)) if isinstance(v, tuple) else str(v))],
        "--model.lr", "0.01", "--model.warmup_steps", "1",
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.callbacks", "[]", "--samples.num_samples", "0",
    )  # fmt: skip
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    ldm = load_model(ckpt).eval()
    video = VideoDiffusion(in_channels=3, image_size=16, frames=3, image_model=str(ckpt), **sizes).eval()
    assert bool(video.first_stage_ready) and video.tokenizer is not None
    x = torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([100.0, 700.0])
    prompts = ["a red circle moving up", "a blue square"]
    with torch.no_grad():
        out = video._unet(x, t, video.encode_text(prompts))
        text = ldm.encode_text([p for p in prompts for _ in range(3)])
        reference = ldm._unet(x.flatten(0, 1), t.repeat_interleave(3), text).unflatten(0, (2, 3))
        assert reference.abs().max() > 1e-3  # a trained (non-trivial) image model
        assert torch.equal(out, reference)
        frames = torch.rand(1, 3, 3, 16, 16) * 2 - 1
        torch.testing.assert_close(
            video.decode_video(video.encode_video(frames)),
            ldm.first_stage.decode_latents(ldm.first_stage.encode_latents(frames[0], sample=False))[None],
        )
    # other sizes are named; a rebuild from the saved hyper-parameters needs no ldm file
    with pytest.raises(ValueError, match="base_channels"):
        VideoDiffusion(
            in_channels=3, image_size=16, frames=3, image_model=str(ckpt), **{**sizes, "base_channels": 16}
        )
    ckpt.rename(ckpt.with_suffix(".moved"))
    rebuilt = VideoDiffusion(**dict(video.hparams))
    assert rebuilt.hparams.first_stage_config == video.hparams.first_stage_config


@pytest.mark.parametrize(
    "network, refusal",
    [
        (["--recipe", "dit_flow", "--model.dit_width", "16", "--model.dit_depth", "1"],
         "backbone dit and objective flow; video_diffusion inflates a U-Net"),
        (["--model.coordinates", "true", "--model.base_channels", "16", "--model.num_res_blocks", "1"],
         "reads coordinate channels"),
    ],
    ids=["dit_flow", "coordinates"],
)  # fmt: skip
def test_an_ldm_video_diffusion_cannot_inflate_is_refused(in_tmp, network, refusal):
    from conftest import run_fit
    from zoo.plugins.video_diffusion import VideoDiffusion

    cli = run_fit(
        "--model", "ldm", *network, "--logger", "none", "--data.image_size", "16",
        "--data.num_train", "16", "--data.num_val", "8", "--data.num_test", "8", "--data.batch_size", "8",
        "--model.first_stage_steps", "1", "--model.first_stage_config", '{"in_channels": 3, "image_size": 16, '
        '"latent_channels": 4, "downsample_factor": 4, "base_channels": 8}',
        "--model.num_heads", "2", "--model.text_width", "16", "--model.vocab_size", "300",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", "[]", "--samples.num_samples", "0",
    )  # fmt: skip
    ckpt = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=refusal):
        VideoDiffusion(in_channels=3, image_size=16, frames=3, image_model=str(ckpt), text_width=16,
                       vocab_size=300)  # fmt: skip


def test_a_frozen_text_encoder_is_left_out_of_the_optimiser():
    from zoo.plugins.video_diffusion import VideoDiffusion

    model = VideoDiffusion(**{**TINY, "freeze_text_encoder": True})
    optimised = {
        id(p) for group in model.configure_optimizers()["optimizer"].param_groups for p in group["params"]
    }
    assert not any(id(p) in optimised for p in model.text_encoder.parameters())
    assert all(id(p) in optimised for p in model.unet.parameters())


def test_image_model_and_first_stage_together_are_refused():
    """An inflated ldm brings its own vae; a first_stage given beside it used to be ignored without a word."""
    from zoo.plugins.video_diffusion import VideoDiffusion

    with pytest.raises(ValueError, match="image_model brings its ldm's first stage: leave first_stage unset"):
        VideoDiffusion(image_model="ldm.ckpt", first_stage="vae.ckpt")
