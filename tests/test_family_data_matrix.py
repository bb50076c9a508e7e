"""Every family x every datamodule of its modality, trained for 2 steps from the command line (issue 26, defect 1).

The pairs come from the registry itself (`list_models()`, `list_datamodules()`, each class's `modality`), so
a new family or datamodule joins the matrix by being installed; the test then asks for its tiny flags in
FAMILY_FLAGS / DATA_FLAGS below. Each pair either trains (global_step reached, `last.ckpt` written) or, where
the combination cannot work, is listed in INCOMPATIBLE with its reason and fails with one clear line (a
`zoo.cli.UsageError` or a data error), never a raw exception from deep inside. Folder datamodules read
small folders this file writes: class folders of PNGs with captions, an LJSpeech layout, GIFs, text files.

Everything is tiny (16 px images, 3-frame clips, one-layer networks, a handful of items, first stages of 2
steps, the recipes' own callbacks kept), so the whole file runs in about 80 s on 2 busy CPU cores
(`OMP_NUM_THREADS=1`; the slowest pairs, video_diffusion with its first stage, take about 3 s each).
"""

from __future__ import annotations

import csv
import inspect
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_fit
from zoo import registry

# --- tiny flags ----------------------------------------------------------------------------------

# Every run: two optimiser steps (one batch of a GAN or hifigan, which step D and G), no logger, one
# validation batch (the sanity check), no progress bar, two samples at the end.
COMMON = [
    "--trainer.max_steps", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "1",
    "--trainer.val_check_interval", "null",
    "--trainer.check_val_every_n_epoch", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--samples.num_samples", "2",
    "--logger", "none",
]  # fmt: skip

GAN = ["--model.g_channels", "8", "--model.d_channels", "8", "--model.latent_dim", "16"]
# ldm's, dit's and video_diffusion's first stage (a vae), sized to the data's channels and frame size
FIRST_STAGE = (
    '{{"in_channels": {channels}, "image_size": {image_size}, "latent_channels": 4, "downsample_factor": 4, '
    '"base_channels": 8}}'
)

# Tiny model flags per family; "{channels}" and "{image_size}" are the data's (DATA_SHAPE).
TOKENIZER = (
    '{{"in_channels": {channels}, "image_size": {image_size}, "downsample_factor": 4, "base_channels": 8, '
    '"codebook_size": 16}}'
)
FAMILY_FLAGS: dict[str, list[str]] = {
    "vae": ["--model.base_channels", "8"],
    "ddpm": [
        "--model.base_channels", "8", "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[1]",
        "--model.num_train_timesteps", "100", "--model.sampling_steps", "2",
    ],
    "lcm": [],
    "progressive_distillation": [],
    "controlnet": ["--model.base", "no_such_ldm.ckpt"],
    "ip_adapter": ["--model.base", "no_such_ldm.ckpt", "--model.image_encoder", "no_such_clip.ckpt"],
    **{name: ["--model.base", "no_such_ldm.ckpt"] for name in ("lora", "textual_inversion", "dreambooth")},
    "consistency": [
        "--model.base_channels", "8", "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[1]",
        "--model.num_heads", "2", "--model.curriculum_steps", "2",
    ],
    "flow_matching": [
        "--model.base_channels", "8", "--model.channel_mults", "[1, 2]", "--model.attention_levels", "[1]",
        "--model.num_heads", "2", "--model.sampling_steps", "2",
    ],
    "ldm": [
        "--model.first_stage_steps", "2", "--model.first_stage_config", FIRST_STAGE,
        "--model.base_channels", "8", "--model.channel_mults", "[1]", "--model.attention_levels", "[0]",
        "--model.num_res_blocks", "1", "--model.num_heads", "2", "--model.text_width", "16",
        "--model.text_depth", "1", "--model.text_heads", "2", "--model.vocab_size", "300",
        "--model.num_train_timesteps", "100", "--model.sampling_steps", "2",
    ],
    "dit": [
        "--model.first_stage_steps", "2", "--model.first_stage_config", FIRST_STAGE,
        "--model.patch_size", "1", "--model.dit_width", "16", "--model.dit_depth", "1", "--model.num_heads", "2",
        "--model.sampling_steps", "2",
    ],
    "clip": [
        "--model.patch_size", "4", "--model.image_width", "16", "--model.image_depth", "1",
        "--model.image_heads", "2", "--model.text_width", "16", "--model.text_depth", "1",
        "--model.text_heads", "2", "--model.embed_dim", "16", "--model.vocab_size", "300",
    ],
    "gpt": [
        "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16", "--model.max_new_tokens", "8",
    ],
    "dcgan": GAN,
    "lsgan": GAN,
    "wgan_gp": GAN,
    "sngan": GAN,
    "stylegan": [
        "--model.g_channels", "8", "--model.d_channels", "8", "--model.max_channels", "16",
        "--model.latent_dim", "16", "--model.w_dim", "16", "--model.mapping_layers", "1",
    ],
    "hifigan": [
        "--model.upsample_initial_channel", "32", "--model.discriminator_width", "0.0625",
        "--model.segment_size", "2048",
    ],
    "tts": [
        "--model.dim", "16", "--model.heads", "2", "--model.hidden", "32", "--model.encoder_layers", "1",
        "--model.decoder_layers", "1", "--model.duration_filters", "16",
    ],
    **{
        flow: ["--model.levels", "2", "--model.steps_per_level", "1", "--model.hidden_channels", "8"]
        for flow in ("nice", "realnvp", "glow")
    },
    "vqgan": ["--model.base_channels", "8", "--model.codebook_size", "16"],
    **{
        tokens: [
            "--model.tokenizer_steps", "2", "--model.tokenizer_config", TOKENIZER, "--model.n_layer", "1",
            "--model.n_head", "2", "--model.n_embd", "16", "--model.vocab_size", "300",
        ]
        for tokens in ("maskgit", "vq_transformer")
    },
    "sr_diffusion": [
        "--model.low_resolution", "8", "--model.base_channels", "8", "--model.channel_mults", "[1, 2]",
        "--model.num_heads", "2", "--model.num_train_timesteps", "100", "--model.sampling_steps", "2",
        "--model.bank_size", "4",
    ],
    "video_diffusion": [
        "--model.first_stage_steps", "2", "--model.first_stage_batch_size", "8",
        "--model.first_stage_config", FIRST_STAGE,
        "--model.base_channels", "8", "--model.channel_mults", "[1]", "--model.attention_levels", "[0]",
        "--model.num_res_blocks", "1", "--model.num_heads", "2", "--model.text_width", "16",
        "--model.text_depth", "1", "--model.vocab_size", "300", "--model.sampling_steps", "2",
    ],
}  # fmt: skip

# Tiny data flags per datamodule; "{root}" is the folder the `folders` fixture writes.
DATA_FLAGS: dict[str, list[str]] = {
    "shapes": [
        "--data.image_size", "16", "--data.num_train", "16", "--data.num_val", "4", "--data.num_test", "4",
        "--data.batch_size", "4",
    ],
    "digits": ["--data.image_size", "16", "--data.batch_size", "4"],
    "image_folder": ["--data.root", "{root}/images", "--data.image_size", "16", "--data.batch_size", "4"],
    "captions": [
        "--data.num_train", "64", "--data.num_val", "8", "--data.num_test", "8", "--data.tokenizer", "char",
        "--data.block_size", "16", "--data.batch_size", "4",
    ],
    "python_source": [
        "--data.root", "{root}/python", "--data.val_fraction", "0.3", "--data.test_fraction", "0.3",
        "--data.tokenizer", "char", "--data.block_size", "16", "--data.batch_size", "4",
    ],
    "text_file": [
        "--data.path", "{root}/book.txt", "--data.val_fraction", "0.2", "--data.test_fraction", "0.2",
        "--data.tokenizer", "char", "--data.block_size", "16", "--data.batch_size", "4",
    ],
    "tones": ["--data.num_train", "4", "--data.num_val", "2", "--data.num_test", "2", "--data.batch_size", "2"],
    "speech": [
        "--data.voices", "[en-us]", "--data.speeds", "[175]", "--data.num_train", "2", "--data.num_val", "1",
        "--data.num_test", "1", "--data.cache_dir", "{root}/speech_cache", "--data.batch_size", "2",
    ],
    "audio_folder": ["--data.root", "{root}/ljspeech", "--data.val_fraction", "0.3", "--data.batch_size", "2"],
    "moving_shapes": [
        "--data.frames", "3", "--data.image_size", "16", "--data.num_train", "8", "--data.num_val", "4",
        "--data.num_test", "4", "--data.batch_size", "4",
    ],
    "moving_digits": [
        "--data.frames", "3", "--data.image_size", "16", "--data.digit_size", "8", "--data.num_train", "8",
        "--data.num_val", "4", "--data.num_test", "4", "--data.batch_size", "4",
    ],
    "video_folder": [
        "--data.root", "{root}/videos", "--data.frames", "3", "--data.image_size", "16", "--data.val_fraction",
        "0.25", "--data.batch_size", "2",
    ],
}  # fmt: skip

# (channels, image_size) of the image and video datamodules with the flags above
DATA_SHAPE = {"digits": (1, 16), "moving_digits": (1, 16)}
DEFAULT_SHAPE = (3, 16)

# Pairs of the matrix that cannot work: {pair: (why, what the one-line error must say)}.
INCOMPATIBLE: dict[tuple[str, str], tuple[str, str]] = {
    ("tts", "tones"): (
        "tones has no transcripts or phoneme alignments",
        r"phoneme alignments.*speech.*--data\.alignments true",
    ),
    ("tts", "audio_folder"): (
        "an LJSpeech folder has transcripts but no phoneme alignments (only espeak-ng's `speech` makes them)",
        r"phoneme alignments.*speech.*--data\.alignments true",
    ),
    # lcm and progressive_distillation distil a trained model (their own tests train one); without
    # --model.teacher they say so
    **{
        ("lcm", data): (
            "lcm needs a teacher ldm checkpoint",
            r"lcm distils a trained ldm: pass --model\.teacher",
        )
        for data in ("shapes", "digits", "image_folder")
    },
    # controlnet, ip_adapter, lora, textual_inversion and dreambooth adapt a trained ldm; zoo.fit trains one
    # first when --model.base is not given (tests/test_controlnet.py, with a tiny one): here a --model.base that
    # is not there is one line
    **{
        (family, data): (
            f"{family} is built on a trained ldm (its own tests train one)",
            r"--model\.base: checkpoint 'no_such_ldm\.ckpt' does not exist",
        )
        for family in ("controlnet", "ip_adapter", "lora", "textual_inversion", "dreambooth")
        for data in ("shapes", "digits", "image_folder")
    },
    **{
        ("progressive_distillation", data): (
            "progressive_distillation needs a teacher ddpm checkpoint",
            r"distils a trained ddpm: pass --model\.teacher",
        )
        for data in ("shapes", "digits", "image_folder")
    },
}

# An input a family needs that a folder datamodule has only sometimes: the pair again, with it missing.
# (family, datamodule, data flags used instead of DATA_FLAGS, what the one-line error must say, why)
MISSING_INPUT = [
    ("ldm", "image_folder", ["--data.root", "{root}/plain_images", "--data.image_size", "16", "--data.batch_size", "4"],
     r"caption.*captions file", "text-to-image needs captions; this image_folder has none"),
    ("clip", "image_folder", ["--data.root", "{root}/plain_images", "--data.image_size", "16", "--data.batch_size", "4"],
     r"caption.*captions file", "contrastive image-text training needs captions; this image_folder has none"),
    ("video_diffusion", "video_folder",
     ["--data.root", "{root}/plain_videos", "--data.frames", "3", "--data.image_size", "16", "--data.val_fraction",
      "0.25", "--data.batch_size", "2"],
     r"caption.*video_folder.*captions file", "text-to-video needs captions; this video_folder has none"),
]  # fmt: skip

# An input a family can do without: the pair trains without it.
OPTIONAL_INPUT = [
    # class-conditional families on a folder without class folders train unconditionally
    ("ddpm", "image_folder", ["--data.root", "{root}/plain_images", "--data.image_size", "16", "--data.batch_size", "4"]),
    ("dcgan", "image_folder", ["--data.root", "{root}/plain_images", "--data.image_size", "16", "--data.batch_size", "4"]),
    ("dit", "image_folder", ["--data.root", "{root}/plain_images", "--data.image_size", "16", "--data.batch_size", "4"]),
]  # fmt: skip

# Failures caused by known defects outside this file: {(family, datamodule): defect}, run as
# xfail(strict=True), so each mark has to go once its defect is fixed. (Empty: tts's setup and the caption
# tokenizer raised plain ValueErrors, printed as tracebacks, until they became DataErrors.)
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
MISSING_INPUT_DEFECTS: dict[tuple[str, str], str] = {}


def _modality(cls: type) -> str | None:
    return getattr(cls, "modality", None)


BROKEN: dict[str, str] = {}  # registry names whose class does not import: {name: error}


def _load_modality(name: str, get: object) -> str | None:
    try:
        return _modality(get(name))
    except registry.RegistryError as err:  # reported by test_every_pair_is_covered, not as a collection error
        BROKEN[name] = str(err)
        return None


def matrix() -> list[tuple[str, str]]:
    """(family, datamodule) for every installed family and every datamodule of the same modality."""
    data = {name: _load_modality(name, registry.get_datamodule_class) for name in registry.list_datamodules()}
    pairs = []
    for family in registry.list_models():
        modality = _load_modality(family, registry.get_model_class)
        pairs += [(family, name) for name, kind in data.items() if modality is not None and kind == modality]
    return pairs


PAIRS = matrix()


def flags_for(family: str, data: str, root: Path, data_flags: list[str] | None = None) -> list[str]:
    """The command line of a pair: its tiny model and data flags (`data_flags` instead of DATA_FLAGS) and COMMON."""
    missing = [
        f"{kind} '{name}': add its tiny flags to {table} in {Path(__file__).name}"
        for kind, name, table, known in (
            ("family", family, "FAMILY_FLAGS", FAMILY_FLAGS),
            ("datamodule", data, "DATA_FLAGS", DATA_FLAGS),
        )
        if name not in known
    ]
    if missing:
        pytest.fail("no tiny flags known for " + "; ".join(missing), pytrace=False)
    channels, image_size = DATA_SHAPE.get(data, DEFAULT_SHAPE)
    model = [f.format(channels=channels, image_size=image_size) for f in FAMILY_FLAGS[family]]
    given = DATA_FLAGS[data] if data_flags is None else data_flags
    return ["--model", family, "--data", data, *model, *(f.format(root=root) for f in given), *COMMON]


# --- the folders the folder datamodules read -----------------------------------------------------

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


def _picture(colour: tuple[int, int, int], k: int, size: int = 20) -> Image.Image:
    """A square of `colour` on grey, shifted by `k` pixels."""
    array = np.full((size, size, 3), 128, np.uint8)
    array[3 + k % 6 : 11 + k % 6, 4:12] = colour
    return Image.fromarray(array)


def write_images(root: Path, *, classes: bool, captions: bool) -> Path:
    root.mkdir(parents=True)
    rows = []
    for colour, rgb in COLOURS.items():
        for k in range(5):
            relative = f"{colour}/{k}.png" if classes else f"{colour}_{k}.png"
            (root / relative).parent.mkdir(exist_ok=True)
            _picture(rgb, k).save(root / relative)
            rows.append({"file": relative, "caption": f"a {colour} square"})
    if captions:
        with open(root / "captions.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def write_videos(root: Path, *, captions: bool) -> Path:
    """Four 5-frame GIFs of a square moving right or down, written with PIL."""
    root.mkdir(parents=True)
    rows = []
    for k, (colour, direction) in enumerate(
        [("red", "right"), ("blue", "down"), ("red", "down"), ("blue", "right")]
    ):
        frames = []
        for t in range(5):
            array = np.full((16, 16, 3), 128, np.uint8)
            x, y = (2 + 2 * t, 5) if direction == "right" else (5, 2 + 2 * t)
            array[y : y + 5, x : x + 5] = COLOURS[colour]
            frames.append(Image.fromarray(array))
        frames[0].save(root / f"clip{k}.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
        rows.append({"file": f"clip{k}.gif", "caption": f"a {colour} square moving {direction}"})
    if captions:
        with open(root / "captions.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def write_ljspeech(root: Path, sample_rate: int = 22050) -> Path:
    """LJSpeech's layout: wavs/<id>.wav (0.4-0.6 s of two tones, 16-bit) and metadata.csv `id|text|text`."""
    import soundfile as sf

    (root / "wavs").mkdir(parents=True)
    lines = []
    for k in range(6):
        t = np.arange(int(sample_rate * (0.4 + 0.04 * k))) / sample_rate
        audio = 0.3 * np.sin(2 * math.pi * (220 + 40 * k) * t) + 0.1 * np.sin(2 * math.pi * 660 * t)
        sf.write(
            root / "wavs" / f"LJ001-{k:04d}.wav", audio.astype(np.float32), sample_rate, subtype="PCM_16"
        )
        lines.append(f"LJ001-{k:04d}|Clip {k} of the test.|Clip {k} of the test.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


SOURCE = '''"""Module {k}."""


def add_{k}(a, b):
    """Add two numbers."""
    return a + b * {k}


class Counter{k}:
    def __init__(self):
        self.count = {k}

    def step(self):
        self.count += 1
        return self.count
'''


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix_data")
    write_images(root / "images", classes=True, captions=True)
    write_images(root / "plain_images", classes=False, captions=False)
    write_videos(root / "videos", captions=True)
    write_videos(root / "plain_videos", captions=False)
    write_ljspeech(root / "ljspeech")
    (root / "python").mkdir()
    for k in range(12):
        (root / "python" / f"module_{k}.py").write_text(SOURCE.format(k=k))
    sentences = [
        f"The {c} square moved {d} {n} times." for c in COLOURS for d in ("left", "right") for n in range(8)
    ]
    (root / "book.txt").write_text(" ".join(sentences) * 3, encoding="utf-8")
    return root


# --- the matrix ----------------------------------------------------------------------------------


def _train(args: list[str]) -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 cores shared with other processes, two threads per process run far slower
    try:
        return run_fit(*args)
    finally:
        torch.set_num_threads(threads)


def _assert_trained(cli: object, what: str) -> None:
    assert cli.trainer.global_step == 2, f"{what} stopped at step {cli.trainer.global_step}"
    last = Path(cli.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file(), f"{what}: no {last}"


def _expect_one_line_error(args: list[str], pattern: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The run stops with `PROG: error: ...` or `PROG: data error: ...` on stderr, one line matching
    `pattern` (the problem and its fix), no traceback, a non-zero status; returns that line."""
    with pytest.raises(SystemExit) as info:
        _train(args)
    err = capsys.readouterr().err
    assert info.value.code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if re.match(r"python -m zoo\.fit\b.*?: (data )?error: ", line)]
    assert lines, f"no error line on stderr:\n{err}"
    assert re.search(pattern, lines[-1], re.IGNORECASE), lines[-1]
    return lines[-1]


def dropped_recipe_keys(family: str, data: str) -> list[str]:
    """The `data:` keys of the family's recipe that the datamodule's `__init__` does not take."""
    import yaml

    recipe = resources.files("zoo.configs") / family / "default.yaml"
    if not recipe.is_file():
        return []
    keys = (yaml.safe_load(recipe.read_text()) or {}).get("data") or {}
    accepted = inspect.signature(registry.get_datamodule_class(data)).parameters
    return sorted(k for k in keys if k not in accepted)


def _pair_param(family: str, data: str, defects: dict[tuple[str, str], str], **extra: object) -> object:
    marks = (
        [pytest.mark.xfail(strict=True, reason=defects[(family, data)])] if (family, data) in defects else []
    )
    return pytest.param(family, data, *extra.values(), id=f"{family}-{data}", marks=marks)


@pytest.mark.parametrize(("family", "data"), [_pair_param(f, d, KNOWN_DEFECTS) for f, d in PAIRS])
def test_family_trains_on_data_from_the_command_line(
    family: str, data: str, folders: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = flags_for(family, data, folders)
    if (family, data) in INCOMPATIBLE:
        _, pattern = INCOMPATIBLE[(family, data)]
        _expect_one_line_error(args, pattern, capsys)
        return
    _assert_trained(_train(args), f"{family} on {data}")
    err = capsys.readouterr().err
    for key in dropped_recipe_keys(family, data):  # the recipe's keys for its own data: left out, with a note
        assert re.search(rf"note: recipe .*data\.{key}\b.*left out", err), err


@pytest.mark.parametrize(
    ("family", "data", "data_flags", "pattern"),
    [_pair_param(f, d, MISSING_INPUT_DEFECTS, flags=flags, pattern=p) for f, d, flags, p, _ in MISSING_INPUT],
)
def test_a_missing_input_is_one_clear_line(
    family: str,
    data: str,
    data_flags: list[str],
    pattern: str,
    folders: Path,
    in_tmp: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _expect_one_line_error(flags_for(family, data, folders, data_flags), pattern, capsys)


@pytest.mark.parametrize(
    ("family", "data", "data_flags"), [_pair_param(f, d, {}, flags=flags) for f, d, flags in OPTIONAL_INPUT]
)
def test_an_optional_input_can_be_missing(
    family: str, data: str, data_flags: list[str], folders: Path, in_tmp: Path
) -> None:
    cli = _train(flags_for(family, data, folders, data_flags))
    _assert_trained(cli, f"{family} on {data} without classes")
    assert cli.model.hparams.num_classes == 0  # unconditional: the folder has no class folders


def test_every_pair_is_covered() -> None:
    """The matrix is the registry's; every family and datamodule in it has tiny flags, and the lists of
    special cases name only pairs of the matrix."""
    assert not BROKEN, f"plugins that do not import: {BROKEN}"
    families = {f for f, _ in PAIRS}
    datamodules = {d for _, d in PAIRS}
    missing = sorted(families - FAMILY_FLAGS.keys()) + sorted(datamodules - DATA_FLAGS.keys())
    assert not missing, f"add tiny flags for {missing} to FAMILY_FLAGS / DATA_FLAGS in {Path(__file__).name}"
    assert {"vae", "gpt", "hifigan", "tts", "video_diffusion"} <= families
    assert {"image", "text", "audio", "video"} == {
        _modality(registry.get_datamodule_class(d)) for d in datamodules
    }
    assert set(INCOMPATIBLE) | set(KNOWN_DEFECTS) <= set(PAIRS)
    assert {(f, d) for f, d, *_ in MISSING_INPUT + OPTIONAL_INPUT} <= set(PAIRS)
    assert set(MISSING_INPUT_DEFECTS) <= {(f, d) for f, d, *_ in MISSING_INPUT}


def _folder_flags() -> dict[str, str]:
    """{datamodule: its folder flag} for every datamodule that cannot work without a folder or file given
    (a `root` or `path` argument that is required or defaults to "")."""
    needed = {}
    for name in registry.list_datamodules():
        params = inspect.signature(registry.get_datamodule_class(name)).parameters
        for arg in ("root", "path"):
            if arg in params and params[arg].default in (inspect.Parameter.empty, ""):
                needed[name] = f"--data.{arg}"
    return needed


@pytest.mark.parametrize(("data", "flag"), sorted(_folder_flags().items()))
def test_a_folder_datamodule_without_its_folder_names_the_flag(
    data: str, flag: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    family = next((f for f, d in PAIRS if d == data), "vae")  # streaming: of no modality until read
    _expect_one_line_error(
        ["--model", family, "--data", data, "--logger", "none"], re.escape(flag[2:]), capsys
    )


@pytest.mark.parametrize("family", registry.list_models())
def test_a_recipe_fits_its_own_default_data(family: str) -> None:
    """Leaving recipe keys out is for other data: every key a recipe sets, its own datamodule takes."""
    data = getattr(registry.get_model_class(family), "default_data", None)
    assert data, f"{family} names no default_data"
    assert dropped_recipe_keys(family, data) == []
