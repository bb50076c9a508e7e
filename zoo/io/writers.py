"""Writers of generated samples, one per modality, for every front end (`zoo.sample`, and later a web UI).

`writer_for(modality)` gives the class; a command opens one over a folder and feeds it batches:

    writer_class = writer_for(model.modality)
    writer = writer_class(folder, rate=writer_class.rate_of(model))
    for batch in batches:
        written += writer.add(batch)        # one file per sample: 000000.png, 000001.wav, ...
    written += writer.finish()              # what needs every sample: grid.png, samples.txt

or writes one sample to exactly one file with `write_file(sample, path, rate)`, whose suffix must be
one of the class's `suffixes` (`FILE_SUFFIXES` maps each suffix to its modality).

| modality | one per sample | at the end | one file |
|---|---|---|---|
| image | `000000.png` | `grid.png` | `.png` |
| audio | `000000.wav` at the model's `sample_rate` | | `.wav` |
| video | `000000.gif` at the model's fps (and `.mp4` when PyAV is installed) | `grid.png`, a row of frames per clip | `.gif`, `.mp4` (+ `NAME_grid.png`) |
| text | | `samples.txt`, samples separated by blank lines | `.txt` |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch


class SampleWriter:
    """Files for one modality's samples in `folder`, numbered across batches; `rate` is the playback
    rate (audio: samples per second, video: frames per second), None where there is none."""

    modality: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # what a one-sample file may be called

    def __init__(self, folder: str | Path, rate: float | None = None) -> None:
        self.folder, self.rate, self.count = Path(folder), rate, 0

    @classmethod
    def rate_of(cls, model: Any) -> float | None:
        """The rate `model`'s samples play at (None: not a time series)."""
        return None

    def add(self, samples: Any) -> list[Path]:
        """Write one batch; returns the files written."""
        written = self._write_batch(samples)
        self.count += len(samples)
        return written

    def _write_batch(self, samples: Any) -> list[Path]:
        raise NotImplementedError

    def finish(self) -> list[Path]:
        """Write what needs every sample (a grid, a text file); returns the files written."""
        return []

    @classmethod
    def write_file(cls, samples: Any, path: str | Path, rate: float | None = None) -> list[Path]:
        """Write the first of `samples` to exactly `path` (plus companions, e.g. a video's frame grid)."""
        raise NotImplementedError


class ImageWriter(SampleWriter):
    modality, suffixes = "image", (".png",)

    def __init__(self, folder: str | Path, rate: float | None = None) -> None:
        super().__init__(folder, rate)
        self.kept: list[torch.Tensor] = []  # for the grid

    def _write_batch(self, samples: torch.Tensor) -> list[Path]:
        from zoo.io.images import save_images

        self.kept.append(samples.detach().cpu())
        return save_images(samples, self.folder, start=self.count)

    def finish(self) -> list[Path]:
        from zoo.io.images import save_grid

        return [save_grid(torch.cat(self.kept), self.folder / "grid.png")] if self.kept else []

    @classmethod
    def write_file(cls, samples: torch.Tensor, path: str | Path, rate: float | None = None) -> list[Path]:
        from zoo.io.images import save_png

        return [save_png(samples[0], path)]


class AudioWriter(SampleWriter):
    modality, suffixes = "audio", (".wav",)

    @classmethod
    def rate_of(cls, model: Any) -> float | None:
        return int(model.sample_rate)

    def _write_batch(self, samples: torch.Tensor) -> list[Path]:
        from zoo.io.audio import save_wavs

        return save_wavs(samples, self.folder, int(self.rate), start=self.count)  # type: ignore[arg-type]

    @classmethod
    def write_file(cls, samples: torch.Tensor, path: str | Path, rate: float | None = None) -> list[Path]:
        from zoo.io.audio import save_wav

        return [save_wav(samples[0], path, int(rate))]  # type: ignore[arg-type]


class VideoWriter(SampleWriter):
    modality, suffixes = "video", (".gif", ".mp4")
    default_fps = 8.0

    def __init__(self, folder: str | Path, rate: float | None = None) -> None:
        super().__init__(folder, rate or self.default_fps)
        self.kept: list[torch.Tensor] = []  # for the frame grid

    @classmethod
    def rate_of(cls, model: Any) -> float | None:
        """A video family's `fps` attribute or hyper-parameter, else 8."""
        fps = getattr(model, "fps", None) or getattr(model, "hparams", {}).get("fps")
        return float(fps) if fps else cls.default_fps

    def _write_batch(self, samples: torch.Tensor) -> list[Path]:
        from zoo.io.video import pyav_available, save_gifs, save_mp4

        self.kept.append(samples.detach().cpu())
        written = save_gifs(samples, self.folder, self.rate, start=self.count)  # type: ignore[arg-type]
        if pyav_available():  # GIFs have 256 colours: an MP4 beside each when PyAV is there
            written += [
                save_mp4(clip, self.folder / f"{i:06d}.mp4", self.rate)  # type: ignore[arg-type]
                for i, clip in enumerate(samples, start=self.count)
            ]
        return written

    def finish(self) -> list[Path]:
        from zoo.io.video import save_frame_grid

        return [save_frame_grid(torch.cat(self.kept), self.folder / "grid.png")] if self.kept else []

    @classmethod
    def write_file(cls, samples: torch.Tensor, path: str | Path, rate: float | None = None) -> list[Path]:
        from zoo.io.video import save_frame_grid, save_gif, save_mp4

        path = Path(path)
        save = save_mp4 if path.suffix.lower() == ".mp4" else save_gif
        written = save(samples[0], path, rate or cls.default_fps)
        return [written, save_frame_grid(samples[:1], path.with_name(path.stem + "_grid.png"))]


class TextWriter(SampleWriter):
    modality, suffixes = "text", (".txt",)

    def __init__(self, folder: str | Path, rate: float | None = None) -> None:
        super().__init__(folder, rate)
        self.texts: list[str] = []

    def _write_batch(self, samples: list[str]) -> list[Path]:
        self.texts += list(samples)
        return []

    def finish(self) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "samples.txt"
        path.write_text("\n\n".join(self.texts) + "\n", encoding="utf-8")
        return [path]

    @classmethod
    def write_file(cls, samples: list[str], path: str | Path, rate: float | None = None) -> list[Path]:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(samples[0] + "\n", encoding="utf-8")
        return [path]


WRITERS: dict[str, type[SampleWriter]] = {
    w.modality: w for w in (ImageWriter, AudioWriter, VideoWriter, TextWriter)
}
FILE_SUFFIXES: dict[str, str] = {suffix: w.modality for w in WRITERS.values() for suffix in w.suffixes}


def writer_for(modality: str) -> type[SampleWriter]:
    """The writer of `modality`'s samples; ValueError for a modality nothing writes yet."""
    if modality not in WRITERS:
        raise ValueError(f"no writer for {modality} samples yet (writers: {', '.join(WRITERS)})")
    return WRITERS[modality]
