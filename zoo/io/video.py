"""Video writers and readers: GIF (with PIL, always available), MP4 (with PyAV, when installed), frame grids.

Videos are float tensors (T, C, H, W) in [0, 1] with C = 1 (grey) or 3 (RGB), the range `generate()`
returns; batches of clips are (N, T, C, H, W).

GIF stores frame durations in hundredths of a second, so fps is kept to that precision (8 fps is written
as 12 or 13 cs a frame, read back as 8.0). PIL merges identical consecutive frames into one longer frame
when it writes a GIF; `load_gif` expands them again from their durations, so a clip that stands still
for a few frames still reads back with its full frame count.
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from zoo.errors import DataError
from zoo.io.images import save_grid

# Written into the GIF's comment block, so `load_gif` knows a frame's nominal duration exactly even when
# PIL merged every frame of a still clip into one.
_FPS_COMMENT = "zoo fps="


class VideoFileError(DataError):
    """A video file that cannot be written or read; the message names the file."""


def _check_video(video: torch.Tensor) -> torch.Tensor:
    if video.ndim != 4 or video.shape[1] not in (1, 3):
        raise ValueError(f"expected a video of shape (T, C, H, W) with C 1 or 3, got {tuple(video.shape)}")
    if len(video) < 1:
        raise ValueError("a video needs at least one frame")
    video = video.detach().float().cpu()
    if not torch.isfinite(video).all():
        raise ValueError("video has NaN or infinite values")
    return video.clamp(0, 1)


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) in [0, 1] -> (T, H, W, C) uint8."""
    return video.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _check_fps(fps: float) -> float:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return float(fps)


def save_gif(video: torch.Tensor, path: str | Path, fps: float = 8.0, loop: int = 0) -> Path:
    """Write `video` (T, C, H, W) in [0, 1] as an animated GIF playing at `fps`, looping `loop` times (0: forever).

    Colours are quantised to a 256-colour palette per frame (GIF's limit); grey clips are exact.
    """
    from PIL import Image

    video, fps = _check_video(video), _check_fps(fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _to_uint8(video)
    mode = "L" if frames.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(frame[..., 0] if mode == "L" else frame, mode) for frame in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=1000.0 / fps,
        loop=loop,
        comment=f"{_FPS_COMMENT}{fps!r}".encode(),
    )
    return path


def save_gifs(videos: torch.Tensor, directory: str | Path, fps: float = 8.0, start: int = 0) -> list[Path]:
    """Write each clip of `videos` (N, T, C, H, W) as `directory/000123.gif`, numbered from `start`."""
    if videos.ndim != 5:
        raise ValueError(f"expected videos of shape (N, T, C, H, W), got {tuple(videos.shape)}")
    directory = Path(directory)
    return [save_gif(video, directory / f"{i:06d}.gif", fps) for i, video in enumerate(videos, start=start)]


def load_gif(path: str | Path, channels: int = 3) -> tuple[torch.Tensor, float]:
    """An animated GIF as ((T, C, H, W) float in [0, 1], fps).

    Frames that PIL merged on writing (identical neighbours, one frame shown for several durations) are
    repeated again: a frame shown for k nominal durations counts k times. The nominal duration is the
    one `save_gif` recorded, else the shortest frame's. Raises `VideoFileError` naming the file when it
    is missing or not a readable GIF.
    """
    from PIL import Image, ImageSequence

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    path = Path(path)
    if not path.is_file():
        raise VideoFileError(f"GIF file '{path}' does not exist")
    try:
        with Image.open(path) as image:
            if image.format != "GIF":
                raise VideoFileError(f"'{path}' is a {image.format} file, not a GIF")
            comment = image.info.get("comment", b"")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                durations.append(float(frame.info.get("duration", 0) or 0))
                frames.append(np.asarray(frame.convert("L" if channels == 1 else "RGB")))
    except VideoFileError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, EOFError, ... on broken files
        raise VideoFileError(f"cannot read GIF file '{path}': {type(error).__name__}: {error}") from error

    text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
    if text.startswith(_FPS_COMMENT):
        fps = float(text[len(_FPS_COMMENT) :])
        nominal = 1000.0 / fps
    else:
        positive = [d for d in durations if d > 0]
        nominal = min(positive) if positive else 100.0  # browsers play 0-duration frames at about 10 fps
        fps = 1000.0 / nominal
    # GIF durations are whole hundredths of a second, so round to the nearest number of nominal frames.
    repeats = [max(1, round(d / nominal)) if d > 0 else 1 for d in durations]
    stacked = np.repeat(np.stack(frames), repeats, axis=0)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    video = torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div(255)
    return video, fps


def pyav_available() -> bool:
    """Whether PyAV (`av`, FFmpeg's libraries) is importable: MP4 writing and reading video files need it."""
    return importlib.util.find_spec("av") is not None


def save_mp4(video: torch.Tensor, path: str | Path, fps: float = 8.0, codec: str | None = None) -> Path:
    """Write `video` (T, C, H, W) in [0, 1] as an MP4 file with PyAV.

    The codec is `codec`, else H.264 (libx264) when the FFmpeg build has it, else MPEG-4 part 2. Both
    store yuv420p, which needs even sizes: an odd width or height is padded by one black pixel.
    torchvision's `write_video` was a thin layer over PyAV and is absent from the installed torchvision
    (0.29), so PyAV is used directly. Raises `VideoFileError` when PyAV is not installed.
    """
    if not pyav_available():
        raise VideoFileError(
            f"cannot write '{path}': MP4 needs PyAV (pip install av), which is not installed; "
            "save_gif needs nothing beyond PIL"
        )
    import av

    video, fps = _check_video(video), _check_fps(fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _to_uint8(video)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        # crf 18: visually lossless for these small clips
        options = {"crf": "18"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
            )
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


def read_video_file(
    path: str | Path, channels: int = 3, stop: int | None = None
) -> tuple[torch.Tensor, float]:
    """A video file as ((T, C, H, W) uint8, fps): GIFs with PIL, anything else with PyAV.

    With `stop`, only the first `stop` frames are returned (PyAV stops decoding there).

    Raises `VideoFileError` naming the file when it cannot be decoded, or when PyAV is needed and missing.
    """
    path = Path(path)
    if path.suffix.lower() == ".gif":
        video, fps = load_gif(path, channels)
        return video[:stop].mul(255).round().to(torch.uint8), fps
    if not path.is_file():
        raise VideoFileError(f"video file '{path}' does not exist")
    if not pyav_available():
        raise VideoFileError(
            f"cannot read video file '{path}': decoding {path.suffix or 'this'} files needs PyAV "
            "(pip install av), which is not installed; GIFs and folders of PNG/JPEG frames need nothing extra"
        )
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"'{path}' has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fmt = "gray" if channels == 1 else "rgb24"
            frames = []
            for frame in container.decode(stream):
                if stop is not None and len(frames) >= stop:
                    break
                frames.append(frame.to_ndarray(format=fmt))
    except VideoFileError:
        raise
    except Exception as error:  # av.error.InvalidDataError and friends
        raise VideoFileError(f"cannot read video file '{path}': {type(error).__name__}: {error}") from error
    if not frames:
        raise VideoFileError(f"video file '{path}' has no frames")
    array = np.stack(frames)
    if array.ndim == 3:
        array = array[..., None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), float(rate) if rate else 0.0


def count_video_frames(path: str | Path) -> int:
    """The number of frames of a video file, decoding every frame (and keeping none) so that a broken
    file shows up now. Raises `VideoFileError` naming the file, as `read_video_file` does."""
    path = Path(path)
    if path.suffix.lower() == ".gif" or not pyav_available():
        return len(read_video_file(path, channels=1)[0])  # GIFs are small; without PyAV this raises
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoFileError(f"'{path}' has no video stream")
            count = sum(1 for _ in container.decode(container.streams.video[0]))
    except VideoFileError:
        raise
    except Exception as error:
        raise VideoFileError(f"cannot read video file '{path}': {type(error).__name__}: {error}") from error
    if count == 0:
        raise VideoFileError(f"video file '{path}' has no frames")
    return count


def save_frame_grid(videos: torch.Tensor, path: str | Path) -> Path:
    """Write clips as one PNG: each clip a row, its frames side by side left to right.

    `videos` is one clip (T, C, H, W) or a batch (N, T, C, H, W), in [0, 1].
    """
    if videos.ndim == 4:
        videos = videos[None]
    if videos.ndim != 5:
        raise ValueError(f"expected (T, C, H, W) or (N, T, C, H, W), got {tuple(videos.shape)}")
    return save_grid(videos.flatten(0, 1), path, nrow=videos.shape[1])
