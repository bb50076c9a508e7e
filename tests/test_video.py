"""Video data and IO: moving_shapes, moving_digits, video_folder, GIF/MP4/frame-grid files, zoo.sample's video output.

Checks are measured on the pixels, independently of the code under test: motion from mask and ink
centroids against the caption's words, bounces against the border, colours by hue, digits by conserved
ink, video_folder frames by a marker drawn into each frame, files by reading them back with PIL.
"""

from __future__ import annotations

import colorsys
import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data import ZooDataModule
from zoo.datamodules.video import (
    BadVideoError,
    MovingDigitsDataModule,
    MovingShapesDataModule,
    VideoFolderDataModule,
    bounce,
)
from zoo.io.video import (
    VideoFileError,
    load_gif,
    pyav_available,
    read_video_file,
    save_frame_grid,
    save_gif,
    save_mp4,
)
from zoo.module import GenerativeModule, inference

needs_pyav = pytest.mark.skipif(not pyav_available(), reason="PyAV (av) is not installed")
without_pyav = pytest.mark.skipif(pyav_available(), reason="checks the error shown when PyAV is missing")

UNIT = {
    "right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up-right": (1.0, -1.0), "up-left": (-1.0, -1.0), "down-right": (1.0, 1.0), "down-left": (-1.0, 1.0),
}  # fmt: skip
HUES = {"red": 0, "orange": 30, "yellow": 55, "green": 125, "blue": 225, "purple": 280}  # degrees
COLOR = "red|green|blue|yellow|purple|orange"
CLIP_CAPTION = re.compile(
    rf"an? ({COLOR}) (circle|square|triangle) moving ({'|'.join(UNIT)})"
    rf"(?:, (?:turning ({COLOR}))?(?: and )?(growing|shrinking)?)?"
)


def centroids(masks: torch.Tensor) -> torch.Tensor:
    """(T, H, W) binary masks -> (T, 2) centroids (x, y) of the pixel centres."""
    t, h, w = masks.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    area = masks.sum((1, 2))
    assert (area > 0).all(), "an object vanished"
    return torch.stack([(masks * xs).sum((1, 2)) / area, (masks * ys).sum((1, 2)) / area], 1)


def hue_of(video: torch.Tensor, mask: torch.Tensor) -> float:
    """Hue in degrees of the mean colour of a (3, H, W) frame in [-1, 1] inside a mask."""
    rgb = ((video + 1) / 2)[:, mask > 0].mean(1).tolist()
    return colorsys.rgb_to_hsv(*rgb)[0] * 360


def hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


def items(dataset, num: int) -> list[dict]:
    return [dataset[i] for i in range(num)]


# ------------------------------------------------------------------------------------------ motion


def test_bounce_matches_a_step_by_step_reflection():
    rng = np.random.default_rng(0)
    for _ in range(50):
        low, high = sorted(rng.uniform(0, 30, size=2))
        start, velocity = rng.uniform(low, high), rng.uniform(-9, 9)
        x, v, expected = start, velocity, []
        for _ in range(40):  # move, then reflect whatever overshoots until it is inside
            expected.append(x)
            x += v
            while not low <= x <= high:
                x, v = (2 * high - x, -v) if x > high else (2 * low - x, -v)
        got = bounce(np.array(start), np.array(velocity), np.arange(40.0), low, high)
        np.testing.assert_allclose(got, expected, atol=1e-9)


# ------------------------------------------------------------------------------------ moving shapes

SMALL = dict(num_train=24, num_val=8, num_test=8, batch_size=4)


def test_moving_shapes_contract():
    dm = MovingShapesDataModule(**SMALL)
    assert isinstance(dm, ZooDataModule) and dm.modality == "video"
    assert (dm.frames, dm.fps, dm.image_size, dm.channels) == (8, 8.0, 32, 3)
    assert dm.class_names == ["right", "left", "up", "down"] and dm.num_classes == 4
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    B, T, S = 4, 8, 32
    assert batch["video"].shape == (B, T, 3, S, S) and batch["video"].dtype == torch.float32
    assert batch["video"].min() == -1 and batch["video"].max() <= 1 and batch["video"].max() > 0.5
    assert batch["masks"].shape == (B, T, 1, S, S) and set(batch["masks"].unique().tolist()) == {0.0, 1.0}
    assert batch["centers"].shape == (B, T, 1, 2) and batch["label"].shape == (B,)
    assert len(batch["caption"]) == B and all(CLIP_CAPTION.fullmatch(c) for c in batch["caption"])
    for i in range(B):  # the label is the direction the caption names
        assert dm.class_names[batch["label"][i]] == CLIP_CAPTION.fullmatch(batch["caption"][i]).group(3)

    other = MovingShapesDataModule(frames=16, image_size=24, channels=1, fps=12, diagonal=True, **SMALL)
    other.setup()
    assert other.num_classes == 8 and other.fps == 12.0
    item = other.train_set[0]
    assert item["video"].shape == (16, 1, 24, 24) and item["masks"].shape == (16, 1, 24, 24)
    with pytest.raises(ValueError, match="image_size"):
        MovingShapesDataModule(image_size=8)


def test_moving_shapes_deterministic_per_seed():
    a, b, c = (MovingShapesDataModule(seed=s, max_objects=2, color_change=0.5, **SMALL) for s in (3, 3, 4))
    for dm in (a, b, c):
        dm.setup()
    for split in ("train_set", "val_set", "test_set"):
        for i in range(len(getattr(a, split))):
            x, y, z = getattr(a, split)[i], getattr(b, split)[i], getattr(c, split)[i]
            assert x["caption"] == y["caption"]
            assert all(torch.equal(x[k], y[k]) for k in x if k != "caption"), (split, i)
            assert not torch.equal(x["video"], z["video"])
    assert not torch.equal(a.train_set[0]["video"], a.val_set[0]["video"])  # splits have their own seeds


def test_moving_shapes_motion_follows_the_caption_until_a_bounce():
    dm = MovingShapesDataModule(diagonal=True, num_train=120, num_val=1, num_test=1)
    dm.setup()
    S, T = dm.image_size, dm.frames
    bounced = 0
    for item in items(dm.train_set, 120):
        color, shape, direction, _, _ = CLIP_CAPTION.fullmatch(item["caption"]).groups()
        masks = item["masks"][:, 0]
        # The brightness-weighted centroid of the anti-aliased frame: one object on black, so this is the
        # object's centroid to a small fraction of a pixel (binary masks would add +-0.3 px of noise).
        path = centroids((item["video"] + 1).sum(1) / 6)
        # the centroid is the reported centre (for equilateral triangles and squares too), to the 0.2 px
        # that rasterisation at 4x and uint8 colours allow; a step between two frames is good to 0.35 px
        assert (path - item["centers"][:, 0]).abs().max() < 0.2, item["caption"]
        assert (centroids(masks) - path).abs().max() < 0.5, item["caption"]  # the masks are the object
        assert hue_distance(hue_of(item["video"][0], masks[0]), HUES[color]) < 25, item["caption"]
        step = path.diff(dim=0)  # (T - 1, 2)
        speed = step[0].norm()
        assert 0.03 * S - 0.35 < speed < 0.06 * S + 0.35, (item["caption"], speed)
        ux, uy = UNIT[direction]
        for axis, sign in ((0, ux), (1, uy)):
            moves = step[:, axis] * sign
            if sign == 0:  # no motion across the named direction
                assert moves.abs().max() < 0.35, item["caption"]
                continue
            v = moves[0]
            # the first step goes the named way, at least the slowest speed's component along the axis
            assert v > 0.03 * S * abs(sign) / math.hypot(ux, uy) - 0.35, item["caption"]
            off = torch.nonzero((moves - v).abs() > 0.35)
            bounce_step = int(off[0]) if len(off) else T - 1  # the first step that is not the straight one
            if bounce_step < T - 1:
                bounced += 1
                # the step that meets the wall is part forward, part back; then it comes back at the same speed
                assert -v - 0.35 < moves[bounce_step] < v + 0.35, item["caption"]
                assert ((moves[bounce_step + 1 :] + v).abs() < 0.35).all(), item["caption"]
                if (
                    shape == "circle"
                ):  # a circle reaches its circumradius: it turns one clear pixel from the wall
                    ahead = masks[bounce_step : bounce_step + 2].amax(0).nonzero()[:, 1 - axis]
                    gap = S - 1 - ahead.max() if sign > 0 else ahead.min()
                    assert 1 <= gap <= 2 + v, (item["caption"], gap)
            # Straight for at least half the clip, unless the clip starts with the object at the wall behind it.
            if bounce_step < math.ceil((T - 1) / 2):
                behind = masks[0].nonzero()[:, 1 - axis]
                gap = behind.min() if sign > 0 else S - 1 - behind.max()
                assert gap <= 4, (item["caption"], bounce_step, gap)  # one clear pixel; shapes are not round
    assert bounced >= 10, "premise: some clips bounce"


def test_moving_shapes_bounces_keep_objects_whole_and_inside():
    dm = MovingShapesDataModule(
        frames=24, speed=(0.08, 0.1), max_objects=2, num_train=30, num_val=1, num_test=1
    )
    dm.setup()
    reversals = 0
    for item in items(dm.train_set, 30):
        for k in range(int(item["num_objects"])):
            masks = item["masks"][:, k]
            border = torch.cat([masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1]], 1)
            assert border.sum() == 0, "an object touched the border"  # one clear pixel, always
            area = masks.sum((1, 2))
            assert area.max() - area.min() <= 0.15 * area.max()  # never cut off: the area barely changes
            dx = centroids(masks).diff(dim=0)[:, 0]
            dx = dx[dx.abs() > 0.3]  # steps that clearly move along x
            reversals += int((dx.sign().diff() != 0).sum())
    assert reversals > 20, "premise: fast objects over 24 frames bounce"


def test_moving_shapes_colour_and_size_changes_match_the_caption():
    dm = MovingShapesDataModule(color_change=1.0, size_change=1.0, num_train=30, num_val=1, num_test=1)
    dm.setup()
    for item in items(dm.train_set, 30):
        color, _, _, new_color, growth = CLIP_CAPTION.fullmatch(item["caption"]).groups()
        assert new_color and new_color != color and growth, item["caption"]
        masks, video = item["masks"][:, 0], item["video"]
        assert hue_distance(hue_of(video[0], masks[0]), HUES[color]) < 25, item["caption"]
        assert hue_distance(hue_of(video[-1], masks[-1]), HUES[new_color]) < 25, item["caption"]
        ratio = masks[-1].sum() / masks[0].sum()
        # small and large scales are >= 0.20 / 0.16 apart: areas at least 1.56x (less the pixel rounding)
        assert (ratio > 1.3) if growth == "growing" else (ratio < 1 / 1.3), (item["caption"], ratio)


PHRASE = re.compile(
    rf"an? (small )?({COLOR}) (circle|square|triangle) moving ({'|'.join(UNIT)})"
    rf"(, (turning ({COLOR}))?(?: and )?(growing|shrinking)?)?"
)


def test_moving_shapes_captions_of_two_objects_name_each_one():
    dm = MovingShapesDataModule(
        min_objects=2, max_objects=2, color_change=0.5, num_train=30, num_val=1, num_test=1
    )
    dm.setup()
    for item in items(dm.train_set, 30):
        first = PHRASE.match(item["caption"])
        joiner = ", and " if first.group(5) else " and "
        assert item["caption"][first.end() : first.end() + len(joiner)] == joiner, item["caption"]
        second = PHRASE.fullmatch(item["caption"], first.end() + len(joiner))
        assert second, item["caption"]
        masks = item["masks"][0]  # frame 0, (2, S, S)
        visible = [masks[0] * (1 - masks[1]), masks[1]]  # the second object is drawn over the first
        areas = masks.sum((1, 2))
        for k, phrase in enumerate((first, second)):
            if visible[k].sum() >= 4:
                assert hue_distance(hue_of(item["video"][0], visible[k]), HUES[phrase.group(2)]) < 25
            # "small" is said of small objects only (large ones cover at least 1.3x the area of small ones)
            if first.group(3) == second.group(3) and bool(first.group(1)) != bool(second.group(1)):
                small = 0 if first.group(1) else 1
                assert areas[small] < areas[1 - small]


# ------------------------------------------------------------------------------------ moving digits


def test_moving_digits_stay_on_the_canvas_and_move():
    dm = MovingDigitsDataModule(min_digits=1, max_digits=1, num_train=40, num_val=4, num_test=4, batch_size=4)
    assert (dm.frames, dm.image_size, dm.channels, dm.num_classes) == (8, 32, 1, 10)
    dm.setup()
    for item in items(dm.train_set, 40):
        ink = (item["video"][:, 0] + 1) / 2  # (T, S, S) in [0, 1]
        # Whole-pixel shifts of one digit conserve its ink exactly unless part of it leaves the canvas.
        totals = ink.sum((1, 2))
        assert torch.allclose(totals, totals[0], rtol=1e-5), "a digit left the canvas"
        match = re.fullmatch(r"a digit (\d) moving (\S+)", item["caption"])
        assert match and int(match.group(1)) == item["label"]
        path = centroids(ink)
        # The caption's compass direction is within 22.5 degrees of the motion, which runs straight for
        # at least half the clip (4 steps of >= 0.96 px): the first 4 steps go the named way.
        ux, uy = UNIT[match.group(2)]
        travelled = (path[4] - path[0]) @ torch.tensor([ux, uy]) / math.hypot(ux, uy)
        assert travelled > 2.0, (item["caption"], travelled)

    two = MovingDigitsDataModule(min_digits=2, max_digits=2, channels=3, num_train=8, num_val=4, num_test=4)
    two.setup()
    batch = next(iter(two.make_dataloader(two.train_set, train=True)))
    assert batch["video"].shape == (8, 8, 3, 32, 32) and batch["masks"].shape == (8, 8, 2, 32, 32)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert all(re.fullmatch(r"a digit \d moving \S+ and a digit \d moving \S+", c) for c in batch["caption"])
    assert ((batch["digits"] >= 0) & (batch["digits"] <= 9)).all()


# ------------------------------------------------------------------------------------- video folder


def write_frames(folder: Path, count: int, size: int = 16) -> None:
    """Frame i has a white column at x = i (mod size): the frame's index is readable from its pixels."""
    folder.mkdir(parents=True)
    for i in range(count):
        frame = np.zeros((size, size, 3), np.uint8)
        frame[:, i % size] = 255
        Image.fromarray(frame).save(folder / f"f{i}.png")  # no zero padding: f10 sorts after f9


def frame_indices(video: torch.Tensor) -> list[int]:
    """The marker column of each frame of a (T, C, S, S) clip in [-1, 1]."""
    return [int(frame[0].mean(0).argmax()) for frame in video]


def test_video_folder_reads_frame_folders_with_stride_and_random_start(tmp_path):
    for name in "abcde":
        write_frames(tmp_path / "clips" / name, 12)
    with open(tmp_path / "clips" / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows([name, f"clip {name}"] for name in "abcde")
    dm = VideoFolderDataModule(str(tmp_path / "clips"), frames=4, frame_stride=2, image_size=16, batch_size=2)
    assert dm.modality == "video" and (dm.frames, dm.fps, dm.channels) == (4, 8.0, 3)
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_set) == 1
    starts = set()
    for _ in range(30):
        item = dm.train_set[0]
        assert (
            item["video"].shape == (4, 3, 16, 16) and item["video"].min() == -1 and item["video"].max() == 1
        )
        index = frame_indices(item["video"])
        assert index == [index[0] + 2 * k for k in range(4)]  # consecutive frames, every second one
        starts.add(index[0])
    assert starts <= set(range(6)) and len(starts) >= 4  # random starts, the clip never runs past the end
    assert frame_indices(dm.val_set[0]["video"]) == [0, 2, 4, 6]  # evaluation clips start at frame 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 4, 3, 16, 16) and all(c.startswith("clip ") for c in batch["caption"])


def test_video_folder_reads_gifs_without_a_video_library(tmp_path):
    for k in range(3):
        video = torch.zeros(10, 3, 16, 16)
        for t in range(10):
            video[t, :, :, t] = 1.0
        save_gif(video, tmp_path / f"clip{k}.gif")
    dm = VideoFolderDataModule(str(tmp_path), frames=5, image_size=16, channels=1, random_start=False)
    dm.setup()
    item = dm.train_set[0]
    assert item["video"].shape == (5, 1, 16, 16)
    assert frame_indices(item["video"]) == [0, 1, 2, 3, 4]


def test_video_folder_errors_name_the_bad_file(tmp_path):
    write_frames(tmp_path / "good1", 8)
    write_frames(tmp_path / "good2", 8)
    write_frames(tmp_path / "broken", 8)
    (tmp_path / "broken" / "f3.png").write_bytes(b"not a png")
    (tmp_path / "bad.gif").write_bytes(b"GIF89a garbage")
    with pytest.raises(BadVideoError, match=r"bad\.gif") as info:  # the first one in full, then all of them
        VideoFolderDataModule(str(tmp_path), frames=4).setup()
    assert re.search(r"2 unreadable videos in all: .*bad\.gif.*broken", str(info.value))
    (tmp_path / "broken" / "f3.png").unlink()
    with pytest.raises(BadVideoError, match=r"bad\.gif"):
        VideoFolderDataModule(str(tmp_path), frames=4).setup()
    with pytest.warns(UserWarning, match=r"bad\.gif"):
        dm = VideoFolderDataModule(str(tmp_path), frames=4, skip_bad_files=True)
        dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 3
    with pytest.warns(UserWarning) as caught, pytest.raises(ValueError, match="0 readable video"):
        VideoFolderDataModule(str(tmp_path), frames=9, skip_bad_files=True).setup()
    messages = [str(w.message) for w in caught]
    assert any("bad.gif" in m for m in messages)
    assert any("shorter than a clip's 9 frames" in m and "good1" in m for m in messages)
    with pytest.raises(FileNotFoundError, match=r"nothing' does not exist"):
        VideoFolderDataModule(str(tmp_path / "nothing"))
    write_frames(tmp_path / "sizes" / "same", 8)
    write_frames(tmp_path / "sizes" / "mixed", 8)
    Image.new("RGB", (20, 16)).save(tmp_path / "sizes" / "mixed" / "f8.png")
    with pytest.raises(BadVideoError, match=r"frames in '.*mixed' differ in size"):
        VideoFolderDataModule(str(tmp_path / "sizes"), frames=4).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no videos found"):
        VideoFolderDataModule(str(tmp_path / "empty"))


@without_pyav
def test_video_folder_names_the_file_that_needs_pyav(tmp_path):
    write_frames(tmp_path / "a", 8)
    (tmp_path / "movie.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(BadVideoError, match=r"movie\.mp4.*PyAV"):
        VideoFolderDataModule(str(tmp_path), frames=4).setup()


@needs_pyav
def test_video_folder_reads_video_files_with_pyav(tmp_path):
    for k in range(3):
        video = torch.zeros(12, 3, 16, 16)
        for t in range(12):
            video[t, :, :, t] = 1.0
        save_mp4(video, tmp_path / f"clip{k}.mp4", fps=10)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(BadVideoError, match=r"broken\.mp4"):
        VideoFolderDataModule(str(tmp_path), frames=4).setup()
    (tmp_path / "broken.mp4").unlink()
    dm = VideoFolderDataModule(str(tmp_path), frames=4, frame_stride=3, image_size=16, random_start=False)
    dm.setup()
    assert frame_indices(dm.train_set[0]["video"]) == [0, 3, 6, 9]


# ---------------------------------------------------------------------------------------------- files


def moving_bar(frames: int = 6, channels: int = 3, size: tuple[int, int] = (12, 20)) -> torch.Tensor:
    """A (T, C, H, W) clip in [0, 1] of a bar moving right, standing still for frames 2-3 (identical frames)."""
    video = torch.full((frames, channels, *size), 0.2)
    for t, x in enumerate([0, 2, 4, 4, 6, 8, 10, 12][:frames]):
        video[t, 0, :, x : x + 2] = 1.0
    return video


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_reads_back_with_its_frame_count_size_and_rate(tmp_path, channels):
    video = moving_bar(channels=channels)
    path = save_gif(video, tmp_path / "clip.gif", fps=8)
    with Image.open(path) as image:  # premise: PIL merged the two identical frames into one
        assert image.n_frames == 5 and image.size == (20, 12)
    loaded, fps = load_gif(path, channels=channels)
    assert loaded.shape == video.shape and fps == 8.0
    # a handful of colours fit the GIF palette exactly, up to the uint8 rounding
    assert (loaded - video).abs().max() <= 0.5 / 255 + 1e-6


def test_load_gif_expands_frames_of_foreign_gifs_by_duration(tmp_path):
    frames = [Image.new("L", (8, 8), value) for value in (0, 128, 255)]
    frames[0].save(tmp_path / "x.gif", save_all=True, append_images=frames[1:], duration=[100, 300, 100])
    video, fps = load_gif(tmp_path / "x.gif", channels=1)
    assert fps == 10.0 and video.shape == (5, 1, 8, 8)
    assert video[:, 0, 0, 0].mul(255).round().tolist() == [0, 128, 128, 128, 255]
    with pytest.raises(VideoFileError, match=r"nope\.gif"):
        load_gif(tmp_path / "nope.gif")


def test_frame_grid_puts_clips_in_rows_and_frames_in_columns(tmp_path):
    videos = torch.rand(2, 3, 3, 5, 4)  # N clips, T frames, C, H, W
    path = save_frame_grid(videos, tmp_path / "grid.png")
    grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    pad = 2  # make_grid's padding
    assert grid.shape == (3, 2 * (5 + pad) + pad, 3 * (4 + pad) + pad)
    for n in range(2):
        for t in range(3):
            y, x = pad + n * (5 + pad), pad + t * (4 + pad)
            assert (grid[:, y : y + 5, x : x + 4] - videos[n, t]).abs().max() <= 1 / 255 + 1e-6


@without_pyav
def test_save_mp4_without_pyav_is_a_clear_error(tmp_path):
    with pytest.raises(VideoFileError, match=r"clip\.mp4.*PyAV"):
        save_mp4(moving_bar(), tmp_path / "clip.mp4")


@needs_pyav
def test_mp4_reads_back_with_its_frame_count_and_size(tmp_path):
    video = moving_bar(frames=8, size=(16, 24))
    save_mp4(video, tmp_path / "clip.mp4", fps=8)
    frames, fps = read_video_file(tmp_path / "clip.mp4")
    assert frames.shape == (8, 3, 16, 24) and fps == 8.0
    assert (frames.float() / 255 - video).abs().mean() < 0.05  # lossy, but close


# ------------------------------------------------------------------------------------------- zoo.sample


class MovingSquare(GenerativeModule):
    """A stand-in video family: a white square stepping one pixel right per frame."""

    modality = "video"

    def __init__(self, image_size: int = 16, fps: float = 5.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fps = fps
        self.scale = torch.nn.Parameter(torch.ones(()))

    @inference
    def generate(self, n, *, condition=None, generator=None, frames: int = 4):
        s = self.hparams.image_size
        video = torch.zeros(n, frames, 3, s, s)
        for t in range(frames):
            video[:, t, :, 4:8, t : t + 4] = self.scale
        return video


def test_sample_writes_a_gif_per_clip_and_a_frame_grid(tmp_path):
    from zoo.sample import main as sample

    model = MovingSquare()
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "zoo": {"class_path": f"{__name__}:MovingSquare"},
        },
        ckpt,
    )
    out = tmp_path / "out"
    written = sample(
        ["--ckpt", str(ckpt), "--num", "3", "--batch-size", "2", "--frames", "6", "--out", str(out)]
    )
    assert sorted(p.name for p in written) == ["000000.gif", "000001.gif", "000002.gif", "grid.png"]
    video, fps = load_gif(out / "000001.gif")
    assert video.shape == (6, 3, 16, 16) and fps == 5.0
    x = centroids(video[:, 0])[:, 0]  # the square steps one pixel right per frame, from x = 2
    assert torch.allclose(x, torch.arange(6.0) + 2)
    with Image.open(out / "grid.png") as grid:  # 3 clips as rows, 6 frames as columns
        assert grid.size == (6 * 18 + 2, 3 * 18 + 2)


class KeepsGivenFrames(MovingSquare):
    """Returns the clip it was given (`init`, 1 x T0 frames) followed by black frames."""

    @inference
    def generate(self, n, *, condition=None, generator=None, frames: int = 4, init=None):
        s = self.hparams.image_size
        video = torch.zeros(n, frames, 3, s, s)
        if init is not None:
            assert init.ndim == 5 and init.shape[0] == 1, init.shape
            video[:, : init.shape[1]] = init
        return video


def _save_model(model, path):
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "zoo": {"class_path": f"{__name__}:{type(model).__name__}"},
        },
        path,
    )
    return path


def test_sample_passes_init_video_and_init_image_as_given_first_frames(tmp_path):
    from zoo.io.images import save_images
    from zoo.io.video import save_gif
    from zoo.sample import main as sample

    ckpt = _save_model(KeepsGivenFrames(image_size=16), tmp_path / "model.ckpt")
    # a 3-frame 32x32 GIF: a white frame, a grey frame, a black frame; resized to the model's 16x16
    clip = torch.stack([torch.full((3, 32, 32), v) for v in (1.0, 0.5, 0.0)])
    save_gif(clip, tmp_path / "given.gif", fps=4)
    out = tmp_path / "continued"
    sample(["--ckpt", str(ckpt), "--num", "1", "--frames", "5", "--init-video", str(tmp_path / "given.gif"),
            "--out", str(out)])  # fmt: skip
    video, _ = load_gif(out / "000000.gif")
    assert video.shape == (5, 3, 16, 16)
    assert torch.allclose(video[:3].mean(dim=(1, 2, 3)), torch.tensor([1.0, 0.5, 0.0]), atol=0.01)

    # a folder of frames, in natural order (frame2 before frame10)
    frames = tmp_path / "frames"
    save_images(torch.stack([torch.full((3, 16, 16), v) for v in (0.0, 1.0)]), frames)
    (frames / "000000.png").rename(frames / "frame2.png")
    (frames / "000001.png").rename(frames / "frame10.png")
    sample(
        ["--ckpt", str(ckpt), "--num", "1", "--frames", "4", "--init-video", str(frames), "--out", str(out)]
    )
    video, _ = load_gif(out / "000000.gif")
    assert torch.allclose(video[:2].mean(dim=(1, 2, 3)), torch.tensor([0.0, 1.0]), atol=0.01)

    # one image: image-to-video, the clip's first frame
    save_images(torch.full((1, 3, 16, 16), 1.0), tmp_path / "first")
    sample(["--ckpt", str(ckpt), "--num", "2", "--frames", "3", "--init-image", str(tmp_path / "first" / "000000.png"),
            "--out", str(out)])  # fmt: skip
    video, _ = load_gif(out / "000001.gif")
    assert video[0].min() > 0.99 and video[1].max() < 0.01


def test_sample_init_video_errors(tmp_path):
    from zoo.io.video import save_gif
    from zoo.sample import main as sample

    ckpt = _save_model(KeepsGivenFrames(image_size=16), tmp_path / "model.ckpt")
    out = ["--out", str(tmp_path / "out")]
    broken = tmp_path / "broken.gif"
    broken.write_bytes(b"GIF89a not really")
    with pytest.raises(SystemExit, match="broken.gif"):
        sample(["--ckpt", str(ckpt), "--num", "1", "--init-video", str(broken), *out])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SystemExit, match=r"holds no image frames \(.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff\)"
    ):
        sample(["--ckpt", str(ckpt), "--num", "1", "--init-video", str(tmp_path / "empty"), *out])
    good = save_gif(torch.zeros(2, 3, 16, 16), tmp_path / "good.gif")
    with pytest.raises(SystemExit, match="not both"):
        sample(
            ["--ckpt", str(ckpt), "--num", "1", "--init-video", str(good), "--init-image", str(good), *out]
        )
    square = _save_model(MovingSquare(image_size=16), tmp_path / "square.ckpt")  # takes no init
    with pytest.raises(SystemExit, match="does not take --init-image"):
        sample(["--ckpt", str(square), "--num", "1", "--init-video", str(good), *out])


def test_sample_out_naming_a_gif_writes_that_one_file_and_its_grid(tmp_path):
    from zoo.sample import main as sample

    ckpt = _save_model(MovingSquare(image_size=16), tmp_path / "model.ckpt")
    written = sample(["--ckpt", str(ckpt), "--frames", "5", "--out", str(tmp_path / "clip.gif")])
    assert written == [tmp_path / "clip.gif", tmp_path / "clip_grid.png"]
    video, fps = load_gif(tmp_path / "clip.gif")
    assert video.shape == (5, 3, 16, 16) and fps == 5.0
    with pytest.raises(SystemExit, match="names one file but --num is 3"):
        sample(["--ckpt", str(ckpt), "--num", "3", "--out", str(tmp_path / "clip.gif")])
    with pytest.raises(SystemExit, match="makes video; --out x.wav should end in .gif, .mp4"):
        sample(["--ckpt", str(ckpt), "--out", "x.wav"])
