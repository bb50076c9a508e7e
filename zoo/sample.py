"""`python -m zoo.sample --ckpt PATH --num N --out DIR [--seed S] [options]`: samples from a checkpoint.

Any family is rebuilt from its checkpoint alone. Images are written one PNG each plus
`grid.png`; text families write `samples.txt`; audio families one WAV file per sample
(`000000.wav`, ...) at the model's `sample_rate`; video families one GIF per clip (`000000.gif`,
...) at the model's `fps` (and an MP4 beside each when PyAV is installed) plus `grid.png` (one row of
frames per clip); see `zoo.io.writers`. `--out NAME.png|.wav|.gif|.mp4|.txt` writes one sample to
exactly that file (a clip also gets `NAME_grid.png`); `--num` then defaults to 1. The same checkpoint,
seed and batch size give the same samples. Sampling options (`--sampler`, `--steps`, `--guidance`,
`--temperature`, ...) are checked for their range when parsed and passed to the family's `generate()`
only when given; a family that does not take one says so. `--label` goes to class-conditional
families and `--prompt` to text-conditioned ones (text families, text-to-image, text-to-speech).

Super-resolution and cascades (`zoo.cascade`): `--ckpt SR --init-image low.png --out up.png` upscales that
image with a super-resolution model (sr_diffusion; without --init-image it upscales low-resolution training
images the model keeps); `--ckpt BASE --cascade SR [--cascade SR2] --prompt ...` runs the base model (any
image family) and then each super-resolution stage on the previous one's images, whose size and channels
must be the stage's input (`low_resolution`). `--noise-level` (the low-resolution input's noise-conditioning
augmentation), `--sr-steps` and `--sr-sampler` go to the stages; the other sampling flags to the base (or to
the SR model of --ckpt). A folder output of a cascade also gets `cascade.json`: each stage's size and the
noise level, sampler and steps it used.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.cascade import is_upscaler
from zoo.cli import (
    UsageError,
    add_sampling_args,
    flag_of,
    positive_int,
    sampling_options,
    unit_interval,
    usage_errors_reported,
)

if TYPE_CHECKING:
    import torch

PROG = "python -m zoo.sample"
USAGE = (
    f"{PROG} --ckpt PATH [--num N] [--out DIR|FILE] [--seed S] [--prompt TEXT ... | --label K ...] [options]"
)
OUTPAINT_SIDES = ("left", "right", "top", "bottom")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, usage=USAGE, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="a checkpoint written by zoo.fit (e.g. runs/vae/<run>/checkpoints/last.ckpt)",
    )
    p.add_argument(
        "--num", type=positive_int, help="number of samples (default 64; with --mel / --wav, one per file)"
    )
    p.add_argument(
        "--out",
        default="samples",
        help="output folder (default samples/), or one file: clip.gif, hello.wav, x.png",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="samples generated at once (default 64)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--prompt", nargs="+", help="text condition(s), for text-conditioned families")
    p.add_argument("--label", type=int, nargs="+", help="class label(s), for class-conditional families")
    p.add_argument(
        "--mel",
        nargs="+",
        metavar="FILE.npy",
        help="vocoders: log-mel(s) saved with numpy, (n_mels, frames) at the model's mel settings",
    )
    p.add_argument(
        "--wav",
        nargs="+",
        metavar="FILE",
        help="vocoders: analysis-resynthesis of audio file(s) (WAV, FLAC, ... read with soundfile)",
    )
    _add_editing_args(p.add_argument_group("editing (image and video families)"))
    _add_control_args(p.add_argument_group("control (controlnet, ip_adapter)"))
    _add_customization_args(p.add_argument_group("customization (lora, textual_inversion, dreambooth)"))
    _add_cascade_args(p.add_argument_group("super-resolution and cascades (sr_diffusion)"))
    add_sampling_args(p)
    return p


def _add_cascade_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--cascade",
        action="append",
        metavar="SR_CKPT",
        help="a super-resolution checkpoint (sr_diffusion) run on the images of --ckpt; repeat for more stages, "
        "in order (each stage's low_resolution must be the previous output's size), e.g. --ckpt base16.ckpt "
        "--cascade sr16to32.ckpt --cascade sr32to64.ckpt",
    )
    group.add_argument(
        "--noise-level",
        dest="noise_level",
        type=unit_interval,
        help="super-resolution: noise-conditioning augmentation of the low-resolution input, in [0, 1] "
        "(0 clean, 1 pure noise; default the model's, 0.2); for --cascade stages or an SR --ckpt",
    )
    group.add_argument(
        "--sr-steps",
        dest="sr_steps",
        type=positive_int,
        help="--cascade stages: sampling steps (default theirs)",
    )
    group.add_argument(
        "--sr-sampler",
        dest="sr_sampler",
        help="--cascade stages: sampler, e.g. ddim, dpmpp_2m (default theirs)",
    )


def _add_customization_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--lora",
        action="append",
        metavar="FILE[:SCALE]",
        help="a LoRA file written by the lora or dreambooth families (or a peft adapter folder) for the ldm of "
        "--ckpt, at SCALE (default 1); repeat for several, e.g. --lora a.safetensors:0.8 --lora b.safetensors:0.5",
    )
    group.add_argument(
        "--embedding",
        action="append",
        metavar="FILE",
        help="a textual-inversion file (new tokens, e.g. <s1>) for the ldm of --ckpt; repeat for several",
    )


def _add_control_args(control: argparse._ArgumentGroup) -> None:
    control.add_argument(
        "--control",
        nargs="+",
        metavar="FILE",
        help="controlnet: control image(s) (edges, segmentation map, keypoints as the net was trained on): "
        "one for --ckpt, then one for each --controlnet",
    )
    control.add_argument(
        "--controlnet",
        nargs="+",
        metavar="CKPT",
        help="more controlnet checkpoints (or .safetensors files, with --base) on the same base ldm, their "
        "residuals added (multi-ControlNet)",
    )
    control.add_argument(
        "--base",
        metavar="LDM_CKPT",
        help="with a --ckpt or --controlnet that is a .safetensors file (a controlnet or ip_adapter written at "
        "the end of training): the ldm checkpoint it was trained on",
    )
    control.add_argument(
        "--control-scale",
        dest="control_scale",
        type=float,
        nargs="+",
        help="controlnet: scale of the residuals, one for all or one per net (default: as trained, 1)",
    )
    control.add_argument(
        "--control-from",
        dest="control_from",
        metavar="FILE",
        help="controlnet: make each net's kind of control image from this ordinary image (Canny edges, ...)",
    )
    control.add_argument(
        "--image-prompt", dest="image_prompt", metavar="FILE", help="ip_adapter: the reference image"
    )
    control.add_argument(
        "--ip-scale",
        dest="ip_scale",
        type=float,
        help="ip_adapter: weight of the image prompt (0: the base alone)",
    )


def _add_editing_args(editing: argparse._ArgumentGroup) -> None:
    editing.add_argument(
        "--init-image", dest="init_image", help="img2img / inpainting: the image to start from"
    )
    editing.add_argument(
        "--strength",
        type=unit_interval,
        help="img2img: how much of the noise process to run over --init-image, in [0, 1]",
    )
    editing.add_argument(
        "--mask", help="inpainting: an image, white where to regenerate, black where to keep --init-image"
    )
    editing.add_argument(
        "--outpaint",
        nargs="+",
        metavar="SIDE=PX",
        help="outpainting: extend --init-image, e.g. --outpaint left=16 top=8 (sides left, right, top, bottom)",
    )
    editing.add_argument(
        "--edit-from",
        dest="edit_from",
        type=int,
        metavar="LABEL",
        help="flows (nice, realnvp, glow): edit --init-image in latent space from this label's mean code ...",
    )
    editing.add_argument(
        "--edit-to",
        dest="edit_to",
        type=int,
        metavar="LABEL",
        help="... towards this label's: code + strength * (mean[TO] - mean[FROM]); --num N > 1: a sweep 0..strength",
    )
    editing.add_argument(
        "--edit-strength", dest="edit_strength", type=float, help="flows: the edit's strength (default 1.0)"
    )
    editing.add_argument(
        "--init-video",
        dest="init_video",
        help="video families: continue this clip (a GIF, a video file or a folder of frames); "
        "--init-image gives one first frame (image-to-video)",
    )


# --- conditions ------------------------------------------------------------------------------------


def _text_only(hint: Any) -> bool:
    """Whether a type hint admits only strings (and None): str, list[str], Sequence[str] | None, ..."""
    if hint is str:
        return True
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return bool(args) and all(_text_only(a) for a in args)
    return origin is not None and args == [str]  # list[str], Sequence[str], tuple[str]


def condition_kind(model: Any) -> str | None:
    """What a family is conditioned on: "text" (its `generate` takes strings only, it has
    `condition_key` caption/text, or it writes text), "label" (class-conditional: `num_classes` > 0
    and `conditional`, or `condition_key` label), or None (unconditional, files, or unknown: the family
    says what it takes)."""
    try:
        hint = typing.get_type_hints(model.generate).get("condition")
    except Exception:  # an annotation that does not resolve tells nothing
        hint = None
    key = getattr(model, "condition_key", None)
    if (hint is not None and _text_only(hint)) or key in ("caption", "text") or model.modality == "text":
        return "text"
    num_classes = int(getattr(model, "hparams", {}).get("num_classes", 0) or 0)
    if key == "label" or (num_classes > 0 and getattr(model, "conditional", False)):
        return "label"
    return None


def _check_condition_kind(args: argparse.Namespace, model: Any) -> None:
    """--label for a text-conditioned family (gpt would write the prompt "3") or --prompt for a
    class-conditional one is refused, naming the flag it takes."""
    name, kind = type(model).__name__, condition_kind(model)
    if args.label and kind == "text":
        raise UsageError(
            f"{name} is conditioned on text: give prompts (--prompt TEXT), not labels (--label)", PROG
        )
    if args.prompt and kind == "label":
        classes = int(model.hparams["num_classes"])
        raise UsageError(
            f"{name} is class-conditional: give labels (--label K, 0..{classes - 1}), not prompts (--prompt)",
            PROG,
        )


def _input_files(args: argparse.Namespace) -> list[str] | None:
    """--mel / --wav: files a vocoder turns into audio, checked here so that a typo fails before loading."""
    if args.mel and args.wav:
        raise UsageError("give --mel or --wav, not both", PROG)
    files = args.mel or args.wav
    if not files:
        return None
    for name in files:
        if not Path(name).is_file():
            raise UsageError(f"input file '{name}' does not exist", PROG)
        if args.mel and Path(name).suffix.lower() != ".npy":
            raise UsageError(
                f"--mel takes numpy .npy files (np.save of a (n_mels, frames) log-mel), got '{name}'; "
                "give audio files with --wav",
                PROG,
            )
    return list(files)


def _condition(args: argparse.Namespace, num: int) -> list[Any] | None:
    """The `num` conditions: --prompt, --label, --mel or --wav (one for all, or one each), else None."""
    given = [flag for flag, value in (("--prompt", args.prompt), ("--label", args.label),
                                      ("--mel", args.mel), ("--wav", args.wav)) if value]  # fmt: skip
    if len(given) > 1:
        raise UsageError(f"give one of {' / '.join(given)}, not several", PROG)
    values = args.prompt or args.label or _input_files(args)
    if not values:
        return None
    if len(values) not in (1, num):
        raise UsageError(f"give one condition or --num ({num}) of them, got {len(values)}", PROG)
    return list(values) * num if len(values) == 1 else list(values)


# --- options ---------------------------------------------------------------------------------------


def _check_options(model: Any, options: dict[str, Any]) -> None:
    """Every option must be a keyword of the family's `generate()` (unless it takes **kwargs)."""
    params = inspect.signature(model.generate).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n not in ("n", "condition", "generator", "progress")]
    for name in options:
        if name not in params:
            raise UsageError(
                f"{type(model).__name__} does not take {flag_of(name)}; "
                f"its sampling options: {', '.join(flag_of(a) for a in accepted) or '(none)'}",
                PROG,
            )


def _outpaint(values: list[str]) -> dict[str, int]:
    sides: dict[str, int] = {}
    for value in values:
        side, _, amount = value.partition("=")
        if side not in OUTPAINT_SIDES or not amount.isdigit():
            raise UsageError(
                f"--outpaint takes SIDE=PIXELS with SIDE left, right, top or bottom (e.g. --outpaint left=16), "
                f"got {value!r}",
                PROG,
            )
        sides[side] = int(amount)
    return sides


def _check_editing_flags(args: argparse.Namespace, video: bool) -> None:
    if args.mask and not args.init_image:
        raise UsageError("--mask needs --init-image (the picture whose unmasked part is kept)", PROG)
    if args.outpaint and not args.init_image:
        raise UsageError("--outpaint needs --init-image (the picture to extend)", PROG)
    if args.strength is not None and not args.init_image:
        raise UsageError("--strength needs --init-image", PROG)
    editing = [args.edit_from, args.edit_to]
    if any(v is not None for v in editing) and None in editing:
        raise UsageError("--edit-from and --edit-to go together (the labels to edit from and to)", PROG)
    if (args.edit_from is not None or args.edit_strength is not None) and not args.init_image:
        raise UsageError(
            "--edit-from / --edit-to / --edit-strength need --init-image (the picture to edit)", PROG
        )
    if args.init_video and not video:
        raise UsageError("--init-video is for video families", PROG)
    if args.init_video and args.init_image:
        raise UsageError("give --init-image (a first frame) or --init-video, not both", PROG)


def _editing_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """--init-image / --init-video / --strength / --mask / --outpaint as `generate()` keywords, the
    pictures as tensors at the model's size: init, strength, mask, outpaint."""
    from zoo.io.images import load_image

    video = getattr(model, "modality", None) == "video"
    _check_editing_flags(args, video)
    hparams = getattr(model, "hparams", {})
    size, channels = hparams.get("image_size"), hparams.get("in_channels", 3)
    options: dict[str, Any] = {}
    try:
        if args.init_video:
            options["init"] = load_frames(args.init_video, size, channels)[None]
        elif args.init_image and video:  # image-to-video: the clip's first frame, (1, 1, C, H, W)
            options["init"] = load_image(args.init_image, size, channels)[:, None]
        elif args.init_image:
            options["init"] = load_image(args.init_image, size, channels)
        if args.mask:
            options["mask"] = (load_image(args.mask, size, channels=1) > 0.5).float()
    except ValueError as err:
        raise UsageError(str(err), PROG) from err
    if args.strength is not None:
        options["strength"] = args.strength
    if args.outpaint:
        options["outpaint"] = _outpaint(args.outpaint)
    if args.edit_from is not None:
        if "edit_from" not in inspect.signature(model.generate).parameters:
            raise UsageError(
                f"{type(model).__name__} cannot edit in latent space: --edit-from / --edit-to need an invertible "
                "model with label mean codes (the flows nice, realnvp, glow)",
                PROG,
            )
        options |= {"edit_from": args.edit_from, "edit_to": args.edit_to}
        if args.edit_strength is not None:
            options["edit_strength"] = args.edit_strength
    return options


def load_frames(path: str | Path, size: int | None, channels: int = 3) -> torch.Tensor:
    """A clip as (T, C, H, W) float in [0, 1] at `size` x `size`: a GIF, a video file (PyAV) or a folder
    of image frames (in natural order). Raises ValueError naming the file when it cannot be read."""
    import torch
    from torchvision.transforms.functional import resize

    from zoo.io.video import read_video_file

    path = Path(path)
    if path.is_dir():
        from zoo.datamodules.video import FRAME_EXTENSIONS, frame_files
        from zoo.io.images import load_image

        files = frame_files(path)
        if not files:
            raise ValueError(f"folder '{path}' holds no image frames ({', '.join(FRAME_EXTENSIONS)})")
        clip = torch.cat([load_image(f, size, channels) for f in files])
    else:
        clip = read_video_file(path, channels)[0].float().div(255)
        if size is not None and tuple(clip.shape[-2:]) != (size, size):
            clip = resize(clip, [size, size], antialias=True)
    return clip


# --- super-resolution and cascades -----------------------------------------------------------------


def _upscaler_inputs(args: argparse.Namespace, model: Any) -> tuple[dict[str, Any], Any]:
    """The options and condition of a super-resolution --ckpt: --init-image, the low-resolution image to
    upscale (at the model's low_resolution), --num times; None (the model's own low-resolution examples)
    without it. Prompts, labels and the editing flags are refused."""
    name = registry_name(model)
    if args.prompt or args.label or args.mel or args.wav:
        raise UsageError(
            f"{args.ckpt} is a super-resolution model ({name}): it takes the image to upscale (--init-image "
            f"LOW.png), not prompts or labels; to draw from a prompt, run it after a base model: "
            f"--ckpt BASE.ckpt --cascade {args.ckpt}",
            PROG,
        )
    editing = {"--mask": args.mask, "--strength": args.strength, "--outpaint": args.outpaint,
               "--edit-from": args.edit_from, "--init-video": args.init_video, "--control": args.control,
               "--control-from": args.control_from, "--image-prompt": args.image_prompt}  # fmt: skip
    given = [flag for flag, value in editing.items() if value is not None]
    if given:
        raise UsageError(f"{name} upscales --init-image and takes no {', '.join(given)}", PROG)
    options = sampling_options(args)
    if args.noise_level is not None:
        options["noise_level"] = args.noise_level
    if not args.init_image:
        return options, None
    low = _low_resolution_image(args.init_image, model)
    return options, low.expand(args.num, *low.shape[1:])


def _low_resolution_image(path: str, model: Any) -> torch.Tensor:
    """--init-image for an upscaler, (1, C, h, w) in [0, 1] at its low_resolution (resized, with a note, when
    the file has another size)."""
    import sys

    from zoo.io.images import load_image

    hparams = model.hparams
    low, channels = int(hparams["low_resolution"]), int(hparams.get("in_channels", 3))
    try:
        image = load_image(path, None, channels)
        if tuple(image.shape[-2:]) != (low, low):
            print(
                f"note: {path} is {image.shape[-1]}x{image.shape[-2]}; {registry_name(model)} upscales "
                f"{low}x{low} images to {hparams['image_size']}x{hparams['image_size']}: resized to {low}x{low} first",
                file=sys.stderr,
            )
            image = load_image(path, low, channels)
    except ValueError as err:
        raise UsageError(str(err), PROG) from err
    return image


def registry_name(model: Any) -> str:
    from zoo import registry

    try:
        return registry.name_of(type(model))
    except Exception:  # a class outside the registry
        return type(model).__name__


def _cascade(args: argparse.Namespace, model: Any) -> Any:
    """--cascade SR_CKPT ...: `model` followed by those super-resolution stages (a `zoo.cascade.Cascade`),
    their sizes checked now; without --cascade, `model` itself (and the stage-only flags refused)."""
    from zoo.cascade import Cascade, CascadeError, is_upscaler
    from zoo.checkpoint import CheckpointError

    if not args.cascade:
        stage_flags = [f for f, v in (("--sr-steps", args.sr_steps), ("--sr-sampler", args.sr_sampler)) if v]
        if stage_flags:
            raise UsageError(
                f"{', '.join(stage_flags)} set the --cascade stages; give --cascade SR_CKPT", PROG
            )
        if args.noise_level is not None and not is_upscaler(model):
            raise UsageError(
                f"--noise-level is for super-resolution models (sr_diffusion): give --cascade SR_CKPT, or an "
                f"SR checkpoint as --ckpt; {args.ckpt} holds a {registry_name(model)}",
                PROG,
            )
        return model
    stage_options = {name: value for name, value in (("noise_level", args.noise_level), ("steps", args.sr_steps),
                                                     ("sampler", args.sr_sampler)) if value is not None}  # fmt: skip
    try:
        stages = [(path, _load_file(path, args, flag="--cascade")) for path in args.cascade]
        cascade = Cascade(model, stages, base_name=args.ckpt, stage_options=stage_options)
    except (CheckpointError, CascadeError) as err:
        raise UsageError(str(err), PROG) from err
    for _, stage in stages:
        _check_options(stage, stage_options)
    return cascade


def _report_stages(args: argparse.Namespace, model: Any, single: bool) -> list[Path]:
    """What each super-resolution stage did (sizes, noise level, sampler, steps), printed; for a folder
    output of a cascade also written as `cascade.json`, which is returned."""
    import json

    from zoo.cascade import Cascade

    if isinstance(model, Cascade):
        record = model.record
    elif getattr(model, "last_sampling", None):
        record = [{"stage": args.ckpt, "family": registry_name(model), **model.last_sampling}]
    else:
        return []
    for entry in record:
        if "noise_level" in entry:
            low, high = entry["low_resolution"], entry["image_size"]
            print(f"{entry['stage']}: {low}x{low} -> {high}x{high} at noise level {entry['noise_level']} "
                  f"({entry['sampler']}, {entry['steps']} steps)")  # fmt: skip
    if single or not isinstance(model, Cascade):
        return []
    path = Path(args.out) / "cascade.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return [path]


# --- the command -----------------------------------------------------------------------------------


def _control_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """--control / --controlnet / --control-scale / --control-from / --image-prompt / --ip-scale as
    `generate()` keywords: control (one image per net), control_scale, controlnets, image_prompt, ip_scale."""
    from zoo.checkpoint import CheckpointError
    from zoo.io.images import load_image

    options: dict[str, Any] = {}
    size = getattr(model, "hparams", {}).get("image_size") or getattr(
        getattr(model, "base", None), "hparams", {}
    ).get("image_size")
    if args.control and args.control_from:
        raise UsageError(
            "give control images (--control) or an image to make them from (--control-from), not both", PROG
        )
    if (args.controlnet or args.control_scale) and not (args.control or args.control_from):
        raise UsageError(
            "--controlnet and --control-scale need control images: --control FILE ... or --control-from FILE",
            PROG,
        )
    try:
        if args.controlnet:
            options["controlnets"] = [
                _load_file(path, args, family="controlnet", flag="--controlnet") for path in args.controlnet
            ]
        if args.control:
            options["control"] = [load_image(path, size) for path in args.control]
        if args.control_from:
            if not hasattr(model, "control_from_image"):
                raise UsageError(
                    f"{type(model).__name__} takes no control image (--control-from is for controlnet)", PROG
                )
            picture = load_image(args.control_from, size)
            options["control"] = [
                net.control_from_image(picture) for net in [model, *options.get("controlnets", [])]
            ]
        if args.image_prompt:
            options["image_prompt"] = load_image(args.image_prompt, size)
    except (ValueError, CheckpointError) as err:
        raise UsageError(str(err), PROG) from err
    if args.control_scale:
        options["control_scale"] = args.control_scale
    if args.ip_scale is not None:
        options["ip_scale"] = args.ip_scale
    return options


def _lora_spec(spec: str) -> tuple[str, float]:
    """FILE or FILE:SCALE."""
    path, _, scale = spec.rpartition(":")
    try:
        return (path, float(scale)) if path else (spec, 1.0)
    except ValueError:
        return spec, 1.0  # a colon that is part of the path


def _customize(args: argparse.Namespace, model: Any) -> None:
    """--lora / --embedding: the files' tokens and LoRA adapters added to the ldm of --ckpt (or to the base ldm
    of a family built on one), each LoRA at its scale, with any adapter the model already has at 1."""
    if not (args.lora or args.embedding):
        return
    from zoo import registry
    from zoo.checkpoint import CheckpointError
    from zoo.customize import apply_customization, lora_layers, set_lora_scales
    from zoo.evaluate import sha256_of

    own = registry.name_of(type(model)) == "ldm"
    ldm = model if own else getattr(model, "base", None)
    if ldm is None or registry.name_of(type(ldm)) != "ldm":
        raise UsageError(
            f"--lora and --embedding apply to an ldm; {args.ckpt} holds a {registry.name_of(type(model))}",
            PROG,
        )
    sha = sha256_of(args.ckpt) if own else model.hparams.get("base_sha256")
    scales = {name: 1.0 for layer in lora_layers(ldm) for name in layer.active_adapters}
    try:
        for i, spec in enumerate(args.lora or []):
            path, scale = _lora_spec(spec)
            apply_customization(ldm, path, name=f"lora{i}", lora=True, base_sha256=sha)
            scales[f"lora{i}"] = scale
        for path in args.embedding or []:
            apply_customization(ldm, path, name="", lora=False, base_sha256=sha)
    except (ValueError, CheckpointError) as err:
        raise UsageError(str(err), PROG) from err
    set_lora_scales(ldm, scales)


def _generate(model: Any, n: int, condition: Any, generator: Any, options: dict[str, Any]) -> Any:
    try:
        return model.generate(n, condition=condition, generator=generator, **options)
    except ValueError as err:  # a family's own word on a condition or option it cannot use
        raise UsageError(f"{type(model).__name__}: {err}", PROG) from err


def _write_file(
    model: Any, args: argparse.Namespace, condition: Any, generator: Any, options: dict
) -> list[Path]:
    """--out NAME.ext: one sample written to exactly that file (a video also gets NAME_grid.png)."""
    from zoo.io.writers import writer_for

    writer = writer_for(model.modality)
    sample = _generate(model, 1, condition, generator, options)
    try:
        written = writer.write_file(sample, args.out, writer.rate_of(model))
    except (ValueError, RuntimeError) as err:  # a NaN sample, a missing MP4 codec: named, no traceback
        raise UsageError(str(err), PROG) from err
    print(f"wrote {', '.join(str(p) for p in written)} (seed {args.seed})")
    return written


def _write_folder(
    model: Any, args: argparse.Namespace, condition: Any, generator: Any, options: dict
) -> list[Path]:
    """`--num` samples in batches of `--batch-size` into the folder `--out`."""
    from zoo.io.writers import writer_for

    writer_class = writer_for(model.modality)
    writer = writer_class(args.out, writer_class.rate_of(model))
    written: list[Path] = []
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        batch_condition = None if condition is None else condition[start : start + n]
        written += writer.add(_generate(model, n, batch_condition, generator, options))
    written += writer.finish()
    print(f"wrote {len(written)} file(s) to {args.out}/ (seed {args.seed})")
    return written


def _one_file_requested(args: argparse.Namespace) -> bool:
    """--out hello.wav names one file, not a folder: --num defaults to 1 and must be 1."""
    from zoo.io.writers import FILE_SUFFIXES

    single = Path(args.out).suffix.lower() in FILE_SUFFIXES
    if args.num is None:
        args.num = len(args.mel or args.wav or ()) or (
            1 if single else 8 if args.edit_from is not None else 64
        )
    if single and args.num != 1:
        raise UsageError(
            f"--out {args.out} names one file but --num is {args.num}: give --num 1, or a folder "
            "(--out samples/) for several",
            PROG,
        )
    return single


def _check_out_suffix(model: Any, out: str) -> None:
    from zoo.io.writers import FILE_SUFFIXES, writer_for

    suffix = Path(out).suffix.lower()
    if FILE_SUFFIXES[suffix] != model.modality:
        wanted = ", ".join(writer_for(model.modality).suffixes)
        raise UsageError(
            f"{type(model).__name__} makes {model.modality}; --out {out} should end in {wanted} (or name a folder)",
            PROG,
        )


def _load_file(path: str, args: argparse.Namespace, family: str | None = None, flag: str = "--ckpt") -> Any:
    """A checkpoint, or (.safetensors) an adapter written by `zoo.adapters.save_adapter` on `--base`."""
    from zoo.checkpoint import load_model

    if Path(path).suffix != ".safetensors":
        return load_model(path, map_location=args.device, family=family, flag=flag)
    if not args.base:
        raise UsageError(
            f"{flag} {path} is an adapter file: give the ldm it was trained on with --base LDM_CKPT", PROG
        )
    from zoo import registry
    from zoo.adapters import load_adapter

    model = load_adapter(path, args.base, map_location=args.device)
    if family is not None and registry.name_of(type(model)) != family:
        raise UsageError(f"{flag} {path} holds a {registry.name_of(type(model))}, not a {family}", PROG)
    return model


def _load(args: argparse.Namespace) -> Any:
    from zoo.checkpoint import CheckpointError
    from zoo.io.writers import writer_for

    try:
        model = _load_file(args.ckpt, args)
    except CheckpointError as err:
        raise UsageError(str(err), PROG) from err
    try:
        writer_for(model.modality)
    except ValueError as err:
        raise UsageError(str(err), PROG) from err
    return model


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Entry point of `python -m zoo.sample`; returns the files written."""
    with usage_errors_reported(PROG):
        args = _parser().parse_args(argv)
        import torch

        single = _one_file_requested(args)
        model = _load(args)
        _customize(args, model)
        _check_condition_kind(args, model)
        if is_upscaler(model):
            options, condition = _upscaler_inputs(args, model)
        else:
            options = sampling_options(args) | _editing_options(args, model) | _control_options(args, model)
            condition = _condition(args, args.num)
        _check_options(model, options)
        model = _cascade(args, model)
        if single:
            _check_out_suffix(model, args.out)
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        write = _write_file if single else _write_folder
        written = write(model, args, condition, generator, options)
        return written + _report_stages(args, model, single)


if __name__ == "__main__":
    main()
