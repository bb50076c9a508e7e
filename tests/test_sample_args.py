"""What `zoo.sample` and `zoo.evaluate` share: the sampling flags (`zoo.cli.add_sampling_args`), each
checked for its range while the command line is parsed; one usage-error path (`PROG: error: ...`,
status 2); which condition a family takes; the writers of `zoo.io.writers`; one list of image
file types for `zoo.evaluate` folders, `image_folder` and video frame folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

from zoo import evaluate, sample
from zoo.cli import sampling_options
from zoo.io.writers import FILE_SUFFIXES, AudioWriter, ImageWriter, TextWriter, VideoWriter, writer_for
from zoo.module import GenerativeModule, inference
from zoo.sample import condition_kind

COMMANDS = {
    "sample": (sample.main, ["--ckpt", "missing.ckpt"]),
    "evaluate": (evaluate.main, ["--ckpt", "missing.ckpt", "--metrics", "fid"]),
}

OUT_OF_RANGE = [
    ("--steps", "0", ">= 1"),
    ("--steps", "ten", ">= 1"),
    ("--guidance", "-1", ">= 0"),
    ("--temperature", "-0.5", ">= 0"),
    ("--eta", "1.5", "[0, 1]"),
    ("--top-k", "0", ">= 1"),
    ("--top-p", "2", "(0, 1]"),
    ("--top-p", "0", "(0, 1]"),
    ("--top-p", "nan", "(0, 1]"),
    ("--truncation", "-0.1", ">= 0"),
    ("--frames", "0", ">= 1"),
    ("--overlap", "0", ">= 1"),
    ("--max-new-tokens", "0", ">= 1"),
    ("--min-new-tokens", "-1", ">= 0"),
    ("--min-p", "1.5", "[0, 1]"),
    ("--repetition-penalty", "0", "> 0"),
    ("--no-repeat-ngram-size", "0", ">= 1"),
    ("--frequency-penalty", "3", "[-2, 2]"),
    ("--presence-penalty", "-2.5", "[-2, 2]"),
    ("--num-beams", "0", ">= 1"),
    ("--length-penalty", "inf", "finite"),
    ("--min-prob", "2", "[0, 1]"),
]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("flag,value,span", OUT_OF_RANGE, ids=[f"{f}={v}" for f, v, _ in OUT_OF_RANGE])
def test_an_out_of_range_sampling_flag_is_refused_while_parsing(command, flag, value, span, capsys) -> None:
    """Refused before any checkpoint is read (the one given does not exist), naming flag and range."""
    main, base = COMMANDS[command]
    with pytest.raises(SystemExit) as info:
        main([*base, flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}:" in err and span in err and value in err and "missing.ckpt" not in err


GIVEN = [
    "--sampler", "ddim", "--steps", "1", "--guidance", "0", "--negative-prompt", "blue", "--temperature", "0",
    "--eta", "1", "--top-k", "1", "--top-p", "1", "--truncation", "0", "--frames", "1", "--extend", "continue",
    "--overlap", "1", "--vocoder", "v.ckpt", "--max-new-tokens", "1", "--min-new-tokens", "0", "--min-p", "0",
    "--repetition-penalty", "0.5", "--no-repeat-ngram-size", "1", "--frequency-penalty", "-2",
    "--presence-penalty", "2", "--num-beams", "1", "--length-penalty", "-1", "--early-stopping",
    "--stop", "\\n\\n", "x", "--min-prob", "0",
]  # fmt: skip
EXPECTED = {
    "sampler": "ddim", "steps": 1, "guidance": 0.0, "negative_prompt": "blue", "temperature": 0.0, "eta": 1.0,
    "top_k": 1, "top_p": 1.0, "truncation": 0.0, "frames": 1, "extend": "continue", "overlap": 1,
    "vocoder": "v.ckpt", "max_new_tokens": 1, "min_new_tokens": 0, "min_p": 0.0, "repetition_penalty": 0.5,
    "no_repeat_ngram_size": 1, "frequency_penalty": -2.0, "presence_penalty": 2.0, "num_beams": 1,
    "length_penalty": -1.0, "early_stopping": True, "stop": ["\n\n", "x"], "min_prob": 0.0,
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_both_commands_take_every_sampling_flag_at_the_edges_of_its_range(command) -> None:
    """The bounds themselves are allowed (--steps 1, --top-p 1, --min-new-tokens 0: a zero is a value,
    not "not given"), and a flag left out is not passed at all."""
    parser: argparse.ArgumentParser = (sample if command == "sample" else evaluate)._parser()
    base = COMMANDS[command][1]
    assert sampling_options(parser.parse_args([*base, *GIVEN])) == EXPECTED
    assert sampling_options(parser.parse_args(base)) == {}


def test_a_usage_error_is_printed_once_as_prog_error_with_status_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        sample.main(["--ckpt", "missing.ckpt", "--out", "one.png", "--num", "2"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "python -m zoo.sample: error: --out one.png names one file but --num is 2: give --num 1, or a folder "
        "(--out samples/) for several\n"
    )
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--real", "a", "--metrics", "fid"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "python -m zoo.evaluate: error: --real and --fake go together\n"


# --- what a family is conditioned on ------------------------------------------------------------------


class _Family:
    modality = "image"
    hparams: dict[str, Any] = {}

    def generate(self, n: int, *, condition: Any = None, generator: Any = None) -> Any: ...


class _TextFamily(_Family):
    modality = "text"


class _Speech(_Family):
    modality = "audio"

    def generate(self, n: int, *, condition: str | list[str] | None = None, generator: Any = None) -> Any: ...


class _Captioned(_Family):
    condition_key = "caption"


class _ClassConditional(_Family):
    hparams = {"num_classes": 10}
    conditional = True


class _TrainedWithoutLabels(_ClassConditional):
    conditional = False


@pytest.mark.parametrize(
    "family,kind",
    [(_TextFamily, "text"), (_Speech, "text"), (_Captioned, "text"), (_ClassConditional, "label"),
     (_TrainedWithoutLabels, None), (_Family, None)],
)  # fmt: skip
def test_condition_kind_follows_generate_modality_and_conditioning(family, kind) -> None:
    assert condition_kind(family()) == kind


class _Digits(GenerativeModule):
    """A class-conditional image family in miniature: image k is filled with k / 10."""

    modality = "image"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conditional = True
        self.scale = nn.Parameter(torch.ones(()))

    @inference
    def generate(self, n: int, *, condition: Any = None, generator: Any = None) -> torch.Tensor:
        labels = torch.as_tensor(condition if condition is not None else [0] * n, dtype=torch.float)
        return (labels / 10).view(n, 1, 1, 1).expand(n, 1, 4, 4) * self.scale


def test_sample_gives_labels_and_prompts_only_to_the_families_that_take_them(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "digits.ckpt"
    model = _Digits()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "zoo": {"class_path": f"{__name__}:_Digits"}}, ckpt)  # fmt: skip
    with pytest.raises(SystemExit) as info:
        sample.main(["--ckpt", str(ckpt), "--num", "1", "--prompt", "a seven", "--out", str(tmp_path / "x")])
    assert info.value.code == 2 and not (tmp_path / "x").exists()
    assert (
        "_Digits is class-conditional: give labels (--label K, 0..9), not prompts" in capsys.readouterr().err
    )
    sample.main(["--ckpt", str(ckpt), "--num", "2", "--label", "7", "--out", str(tmp_path / "sevens")])
    assert abs(int(np.array(Image.open(tmp_path / "sevens" / "000001.png")).max()) - 0.7 * 255) <= 0.5


# --- writers --------------------------------------------------------------------------------------------


def test_every_modality_has_one_writer_and_file_suffix() -> None:
    assert FILE_SUFFIXES == {
        ".png": "image",
        ".wav": "audio",
        ".gif": "video",
        ".mp4": "video",
        ".txt": "text",
    }
    with pytest.raises(ValueError, match="no writer for point_cloud samples"):
        writer_for("point_cloud")


def test_writers_write_what_reads_back(tmp_path: Path) -> None:
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    writer = ImageWriter(tmp_path / "images")
    written = writer.add(images[:2]) + writer.add(images[2:]) + writer.finish()
    assert [p.name for p in written] == ["000000.png", "000001.png", "000002.png", "grid.png"]
    again = torch.from_numpy(np.array(Image.open(written[2]))).permute(2, 0, 1).float() / 255
    assert (again - images[2]).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only

    audio = torch.sin(torch.arange(800) / 5.0)[None].repeat(2, 1) * 0.5
    writer = AudioWriter(tmp_path / "audio", rate=8000)
    assert [p.name for p in writer.add(audio) + writer.finish()] == ["000000.wav", "000001.wav"]
    data, rate = sf.read(str(tmp_path / "audio" / "000001.wav"))
    assert rate == 8000 and np.abs(data - audio[1].numpy()).max() < 1e-3

    clips = torch.rand(2, 4, 3, 8, 8)
    writer = VideoWriter(tmp_path / "video", rate=5.0)
    names = {p.name for p in writer.add(clips) + writer.finish()}
    assert {"000000.gif", "000001.gif", "grid.png"} <= names
    with Image.open(tmp_path / "video" / "000001.gif") as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 200  # 5 fps
    assert (
        Image.open(tmp_path / "video" / "grid.png").size[0]
        > Image.open(tmp_path / "video" / "grid.png").size[1]
    )

    writer = TextWriter(tmp_path / "text")
    writer.add(["a red", "a blue"])
    writer.add(["a green"])
    assert writer.finish()[0].read_text() == "a red\n\na blue\n\na green\n"
    assert TextWriter.write_file(["one"], tmp_path / "one.txt")[0].read_text() == "one\n"
    assert [p.name for p in VideoWriter.write_file(clips, tmp_path / "clip.gif", 5.0)] == [
        "clip.gif",
        "clip_grid.png",
    ]


# --- one list of image file types ----------------------------------------------------------------------


def _images_of_every_type(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    names = ["a.png", "b.jpg", "c.JPEG", "d.bmp", "e.webp", "f.gif", "g.tif", "h.TIFF"]
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (30 * i, 200, 10)).save(folder / name)
    (folder / ".hidden.png").write_bytes(b"not an image")  # hidden files are skipped, everywhere
    return names


def test_evaluate_folders_image_folder_and_frame_folders_take_the_same_image_files(tmp_path: Path) -> None:
    from zoo.datamodules.image_folder import ImageFolderDataModule
    from zoo.datamodules.video import frame_files

    names = _images_of_every_type(tmp_path / "images")
    assert len(evaluate.load_folder(tmp_path / "images")) == len(names)  # .gif was left out
    data = ImageFolderDataModule(root=str(tmp_path / "images"), image_size=8, val_fraction=0.25)
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) == len(names)  # .tif and .TIFF were left out
    # a frame folder takes every image type but GIF, which is a clip of its own
    assert [p.name for p in frame_files(tmp_path / "images")] == [n for n in names if n != "f.gif"]


# --- KID's subset size --------------------------------------------------------------------------------


def test_kid_subset_size_leaves_room_for_subsets_to_differ() -> None:
    from zoo.metrics.image import kernel_distance, kid_subset_size

    assert kid_subset_size(100, 400, 300) == 100
    assert kid_subset_size(300, 400, 300) == 150 and kid_subset_size(1000, 40, 40) == 20
    assert kid_subset_size(1000, 3, 50) == 2
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 16, generator=generator), torch.randn(40, 16, generator=generator) + 0.3
    _, std = kernel_distance(real, fake, subset_size=1000)  # subsets of all 40 were one set: std 1e-16
    assert std > 1e-3
