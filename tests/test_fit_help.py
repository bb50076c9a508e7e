"""`python -m zoo.fit --model NAME --help`: every argument of the families and datamodules shows a
description (their docstrings' `Args:` sections, read by jsonargparse, base classes' included)."""

from __future__ import annotations

import inspect
import re

import pytest

from zoo import fit, registry

# every family of zoo.plugins (the gan families are one class with other defaults, `zoo.gan.variant`;
# stylegan forwards options to `zoo.gan.GANModule` as **training)
FAMILIES = (
    "clip", "consistency", "controlnet", "dcgan", "ddpm", "dit", "dreambooth", "flow_matching", "glow", "gpt",
    "hifigan", "ip_adapter", "lcm", "ldm", "lora", "lsgan", "nice", "realnvp", "textual_inversion",
    "progressive_distillation", "sngan", "stylegan", "tts",
    "vae", "video_diffusion", "wgan_gp", "vqgan", "maskgit", "vq_transformer", "sr_diffusion",
)  # fmt: skip
# (family, datamodule): every datamodule of zoo.datamodules, each with a family of its modality
CASES = [
    ("ddpm", "digits"),
    ("ldm", "shapes"),
    ("ddpm", "image_folder"),
    ("gpt", "captions"),
    ("gpt", "python_source"),
    ("gpt", "text_file"),
    ("tts", "speech"),
    ("tts", "tones"),
    ("tts", "audio_folder"),
    ("video_diffusion", "moving_shapes"),
    ("video_diffusion", "moving_digits"),
    ("video_diffusion", "video_folder"),
    ("vae", "streaming"),  # any modality: what zoo.data.optimize wrote (tests/test_streaming.py)
]


def _parameters(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _descriptions(text: str, section: str) -> dict[str, str]:
    """{argument: description} of the `--section.NAME METAVAR  description (type: ..., default: ...)` entries."""
    described = {}
    for entry in re.split(r"\n(?=  -)", text):
        match = re.match(rf"\s*--{section}\.(\w+)\s+\S+(.*)", entry, re.S)
        if match:
            described[match.group(1)] = " ".join(match.group(2).split()).split("(type:")[0].strip()
    return described


def _family_part(out: str) -> str:
    return out.split("\nthe family '", 1)[1].split("\nthe data '", 1)[0]


def test_every_family_is_covered():
    shipped = {
        name
        for name, entry in registry.model_entries().items()
        if entry.load().__module__.startswith("zoo.plugins.")
    }
    assert shipped <= set(FAMILIES), sorted(shipped - set(FAMILIES))


@pytest.mark.parametrize("family", FAMILIES)
def test_help_describes_every_model_argument(family, capsys):
    fit.main(["--model", family, "--help"])
    described = _descriptions(_family_part(capsys.readouterr().out), "model")
    cls = registry.get_model_class(family)
    # the signature's own arguments, and those jsonargparse follows through **kwargs to a base class
    absent = [name for name in _parameters(cls) if name not in described]
    assert not absent, f"{cls.__qualname__}: not in --help: {absent}"
    missing = [name for name, description in described.items() if not description]
    assert not missing, f"{cls.__qualname__}: no description in --help for {missing}"


def test_every_datamodule_is_covered():
    covered = {data for _, data in CASES}
    shipped = {
        name
        for name, entry in registry.datamodule_entries().items()
        if entry.load().__module__.startswith("zoo.datamodules.")
    }
    assert shipped <= covered, sorted(shipped - covered)


@pytest.mark.parametrize(("family", "data"), CASES)
def test_help_describes_every_argument(family, data, capsys):
    fit.main(["--model", family, "--data", data, "--help"])
    out = capsys.readouterr().out
    sections = [
        ("data", registry.get_datamodule_class(data), out.split("\nthe data '", 1)[1]),
        ("model", registry.get_model_class(family), _family_part(out)),
    ]
    for section, cls, text in sections:
        described = _descriptions(text, section)
        missing = [name for name in _parameters(cls) if not described.get(name)]
        assert not missing, f"{cls.__qualname__}: no description in --help for {missing}"
