"""`python -m zoo.sample --ckpt PATH --num N --out DIR [--seed S] [options]`: samples from a checkpoint.

Any family is rebuilt from its checkpoint alone. Images are written one PNG each plus
`grid.png`; text families write `samples.txt`; audio families one WAV file per sample
(`000000.wav`, ...) at the model's `sample_rate`; video families one GIF per clip (`000000.gif`,
...) at the model's `fps` (and an MP4 beside each when PyAV is installed) plus `grid.png` (one row of
frames per clip). `--out NAME.png|.wav|.gif|.mp4|.txt` writes one sample to exactly that file (a clip
also gets `NAME_grid.png`); `--num` then defaults to 1. The same checkpoint, seed
and batch size give the same samples. Sampling options (`--sampler`, `--steps`, `--guidance`, `--temperature`, ...) are
passed to the family's `generate()` only when given; a family that does not take one says so.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SAMPLING_FLAGS = (
    "sampler", "steps", "guidance", "temperature", "eta", "top_k", "top_p", "truncation",
    # text decoding (zoo.generation)
    "min_p", "max_new_tokens", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size",
    "frequency_penalty", "presence_penalty", "num_beams", "length_penalty", "early_stopping",
    "stop", "min_prob",
    # video
    "frames", "extend", "overlap",
    # speech: the vocoder checkpoint that turns an acoustic model's mels into audio
    "vocoder",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zoo.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="a checkpoint written by zoo.fit (e.g. runs/vae/<run>/checkpoints/last.ckpt)",
    )
    p.add_argument("--num", type=int, help="number of samples (default 64; with --mel / --wav, one per file)")
    p.add_argument(
        "--out",
        default="samples",
        help="output folder (default samples/), or one file: clip.gif, hello.wav, x.png",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="samples generated at once (default 64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--prompt", nargs="+", help="text condition(s), for text-conditioned families")
    p.add_argument(
        "--negative-prompt",
        dest="negative_prompt",
        help="text-conditioned families: what to steer away from (replaces the empty prompt of guidance)",
    )
    p.add_argument("--label", type=int, nargs="+", help="class label(s), for class-conditional families")
    p.add_argument("--sampler", help="sampler name, for families with several")
    p.add_argument("--steps", type=int, help="number of sampling steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--temperature", type=float, help="sampling temperature")
    p.add_argument("--eta", type=float, help="DDIM eta")
    p.add_argument("--top-k", dest="top_k", type=int, help="top-k sampling")
    p.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling")
    p.add_argument("--truncation", type=float, help="GANs: truncation psi (1 = none, 0 = the mean image)")
    p.add_argument("--frames", type=int, help="video families: frames per clip")
    p.add_argument(
        "--extend", choices=("direct", "continue"),
        help="video families, clips longer than trained: all frames at once (direct) or window by window (continue)",
    )  # fmt: skip
    p.add_argument("--overlap", type=int, help="video families, --extend continue: frames each window keeps")
    p.add_argument(
        "--vocoder",
        help="text-to-speech families: a vocoder checkpoint (e.g. a hifigan run's last.ckpt); "
        "without it, Griffin-Lim",
    )
    p.add_argument(
        "--mel", nargs="+", metavar="FILE.npy",
        help="vocoders: log-mel(s) saved with numpy, (n_mels, frames) at the model's mel settings",
    )  # fmt: skip
    p.add_argument(
        "--wav", nargs="+", metavar="FILE",
        help="vocoders: analysis-resynthesis of audio file(s) (WAV, FLAC, ... read with soundfile)",
    )  # fmt: skip
    p.add_argument(
        "--init-video",
        dest="init_video",
        help="video families: continue this clip (a GIF, a video file or a folder of frames); "
        "--init-image gives one first frame (image-to-video)",
    )
    text = p.add_argument_group("text decoding (autoregressive families)")
    text.add_argument("--min-p", dest="min_p", type=float, help="keep tokens with p >= min_p * p_max")
    text.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="tokens to generate at most")
    text.add_argument("--min-new-tokens", dest="min_new_tokens", type=int, help="no EOS before this many")
    text.add_argument(
        "--repetition-penalty", dest="repetition_penalty", type=float, help="CTRL-style penalty (> 1)"
    )
    text.add_argument(
        "--no-repeat-ngram-size", dest="no_repeat_ngram_size", type=int, help="forbid repeated n-grams"
    )
    text.add_argument("--frequency-penalty", dest="frequency_penalty", type=float, help="OpenAI-style")
    text.add_argument("--presence-penalty", dest="presence_penalty", type=float, help="OpenAI-style")
    text.add_argument("--num-beams", dest="num_beams", type=int, help="beam search with this many beams")
    text.add_argument("--length-penalty", dest="length_penalty", type=float, help="beam search alpha")
    text.add_argument(
        "--early-stopping", dest="early_stopping", action="store_true", default=None,
        help="beam search: stop once num_beams hypotheses are finished",
    )  # fmt: skip
    text.add_argument("--stop", nargs="+", help="stop strings (e.g. --stop $'\\n\\n')")
    text.add_argument(
        "--min-prob", dest="min_prob", type=float, help="stop when the chosen token's probability is below"
    )
    p.add_argument("--init-image", dest="init_image", help="img2img / inpainting: the image to start from")
    p.add_argument(
        "--strength",
        type=float,
        help="img2img: how much of the noise process to run over --init-image (0..1)",
    )
    p.add_argument(
        "--mask", help="inpainting: an image, white where to regenerate, black where to keep --init-image"
    )
    p.add_argument(
        "--outpaint",
        nargs="+",
        metavar="SIDE=PX",
        help="outpainting: extend --init-image, e.g. --outpaint left=16 top=8 (sides left, right, top, bottom)",
    )
    return p


def _outpaint(values: list[str]) -> dict[str, int]:
    sides: dict[str, int] = {}
    for value in values:
        side, _, amount = value.partition("=")
        if side not in ("left", "right", "top", "bottom") or not amount.isdigit():
            raise SystemExit(
                f"python -m zoo.sample: error: --outpaint takes SIDE=PIXELS with SIDE left, right, top or bottom "
                f"(e.g. --outpaint left=16), got {value!r}"
            )
        sides[side] = int(amount)
    return sides


def _input_files(args: argparse.Namespace) -> list[str] | None:
    """--mel / --wav: files a vocoder turns into audio, checked here so that a typo fails before loading."""
    if args.mel and args.wav:
        raise SystemExit("python -m zoo.sample: error: give --mel or --wav, not both")
    files = args.mel or args.wav
    if not files:
        return None
    for name in files:
        if not Path(name).is_file():
            raise SystemExit(f"python -m zoo.sample: error: input file '{name}' does not exist")
        if args.mel and Path(name).suffix.lower() != ".npy":
            raise SystemExit(
                f"python -m zoo.sample: error: --mel takes numpy .npy files (np.save of a (n_mels, frames) "
                f"log-mel), got '{name}'; give audio files with --wav"
            )
    return list(files)


def _condition(args: argparse.Namespace, num: int) -> Any:
    given = [flag for flag, value in (("--prompt", args.prompt), ("--label", args.label),
                                      ("--mel", args.mel), ("--wav", args.wav)) if value]  # fmt: skip
    if len(given) > 1:
        raise SystemExit(f"python -m zoo.sample: error: give one of {' / '.join(given)}, not several")
    values = args.prompt or args.label or _input_files(args)
    if not values:
        return None
    if len(values) not in (1, num):
        raise SystemExit(
            f"python -m zoo.sample: error: give one condition or --num ({num}) of them, got {len(values)}"
        )
    return list(values) * num if len(values) == 1 else list(values)


def _check_options(model: Any, options: dict[str, Any]) -> None:
    params = inspect.signature(model.generate).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return

    def flag(name: str) -> str:
        return "--" + {"init": "init-image"}.get(name, name.replace("_", "-"))

    accepted = [n for n in params if n not in ("n", "condition", "generator", "progress")]
    for name in options:
        if name not in params:
            raise SystemExit(
                f"python -m zoo.sample: error: {type(model).__name__} does not take {flag(name)}; "
                f"its sampling options: {', '.join(flag(a) for a in accepted) or '(none)'}"
            )


def _editing_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """--init-image / --strength / --mask as tensors at the model's size: init, strength, mask."""
    from zoo.io.images import load_image

    options: dict[str, Any] = {}
    if args.mask and not args.init_image:
        raise SystemExit(
            "python -m zoo.sample: error: --mask needs --init-image (the picture whose unmasked part is kept)"
        )
    if args.outpaint and not args.init_image:
        raise SystemExit("python -m zoo.sample: error: --outpaint needs --init-image (the picture to extend)")
    if args.strength is not None and not args.init_image:
        raise SystemExit("python -m zoo.sample: error: --strength needs --init-image")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise SystemExit(f"python -m zoo.sample: error: --strength must lie in [0, 1], got {args.strength}")
    hparams = getattr(model, "hparams", {})
    size, channels = hparams.get("image_size"), hparams.get("in_channels", 3)
    video = getattr(model, "modality", None) == "video"
    if args.init_video and not video:
        raise SystemExit("python -m zoo.sample: error: --init-video is for video families")
    if args.init_video and args.init_image:
        raise SystemExit(
            "python -m zoo.sample: error: give --init-image (a first frame) or --init-video, not both"
        )
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
        raise SystemExit(f"python -m zoo.sample: error: {err}") from err
    if args.strength is not None:
        options["strength"] = args.strength
    if args.outpaint:
        options["outpaint"] = _outpaint(args.outpaint)
    if args.negative_prompt is not None:
        options["negative_prompt"] = args.negative_prompt
    return options


def load_frames(path: str | Path, size: int | None, channels: int = 3) -> torch.Tensor:
    """A clip as (T, C, H, W) float in [0, 1] at `size` x `size`: a GIF, a video file (PyAV) or a folder
    of PNG/JPEG frames (in natural order). Raises ValueError naming the file when it cannot be read."""
    import torch
    from torchvision.transforms.functional import resize

    from zoo.io.video import read_video_file

    path = Path(path)
    if path.is_dir():
        from zoo.datamodules.video import frame_files
        from zoo.io.images import load_image

        files = frame_files(path)
        if not files:
            raise ValueError(f"folder '{path}' holds no PNG/JPEG frames")
        clip = torch.cat([load_image(f, size, channels) for f in files])
    else:
        clip = read_video_file(path, channels)[0].float().div(255)
        if size is not None and tuple(clip.shape[-2:]) != (size, size):
            clip = resize(clip, [size, size], antialias=True)
    return clip


def _video_fps(model: Any) -> float:
    """The rate a video family's clips play at: its `fps` attribute or hyper-parameter, else 8."""
    fps = getattr(model, "fps", None) or getattr(model, "hparams", {}).get("fps")
    return float(fps) if fps else 8.0


# `--out NAME.ext` writes one sample to that file; the modality each suffix is for
FILE_SUFFIXES = {
    ".png": ("image",),
    ".wav": ("audio",),
    ".gif": ("video",),
    ".mp4": ("video",),
    ".txt": ("text",),
}


def _mp4s_where_possible(videos: Any, folder: Path, fps: float, start: int) -> list[Path]:
    """MP4 copies of the GIFs when PyAV (`pip install "zoo[video]"`) is there: GIFs have 256 colours."""
    from zoo.io.video import pyav_available, save_mp4

    if not pyav_available():
        return []
    return [save_mp4(video, folder / f"{i:06d}.mp4", fps) for i, video in enumerate(videos, start=start)]


def _write_one(
    model: Any, args: argparse.Namespace, condition: Any, generator: Any, options: dict
) -> list[Path]:
    """--out NAME.ext: one sample written to exactly that file (a video also gets NAME_grid.png)."""
    out = Path(args.out)
    try:
        sample = model.generate(1, condition=condition, generator=generator, **options)
    except ValueError as err:
        raise SystemExit(f"python -m zoo.sample: error: {type(model).__name__}: {err}") from err
    try:
        written = _save_one(model, sample, out)
    except (ValueError, RuntimeError) as err:  # a NaN sample, a missing MP4 codec: named, no traceback
        raise SystemExit(f"python -m zoo.sample: error: {err}") from err
    print(f"wrote {', '.join(str(p) for p in written)} (seed {args.seed})")
    return written


def _save_one(model: Any, sample: Any, out: Path) -> list[Path]:
    written = [out]
    if model.modality == "image":
        from torchvision.utils import save_image

        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(sample[0], out)
    elif model.modality == "audio":
        from zoo.io.audio import save_wav

        save_wav(sample[0], out, int(model.sample_rate))
    elif model.modality == "video":
        from zoo.io.video import save_frame_grid, save_gif, save_mp4

        (save_mp4 if out.suffix.lower() == ".mp4" else save_gif)(sample[0], out, _video_fps(model))
        written.append(save_frame_grid(sample, out.with_name(out.stem + "_grid.png")))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(sample[0] + "\n", encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = _parser().parse_args(argv)
    import torch

    from zoo.checkpoint import CheckpointError, load_model
    from zoo.io.images import save_grid, save_images

    single = Path(args.out).suffix.lower() in FILE_SUFFIXES  # --out hello.wav: one file, not a folder
    if args.num is None:
        args.num = len(args.mel or args.wav or ()) or (1 if single else 64)
    if single and args.num != 1:
        raise SystemExit(
            f"python -m zoo.sample: error: --out {args.out} names one file but --num is {args.num}: "
            "give --num 1, or a folder (--out samples/) for several"
        )
    if args.num < 1:
        raise SystemExit("python -m zoo.sample: error: --num must be at least 1")
    try:
        model = load_model(args.ckpt, map_location=args.device)
    except CheckpointError as err:
        raise SystemExit(f"python -m zoo.sample: error: {err}") from err
    if args.stop:  # "\\n\\n" typed in a shell means two newlines
        args.stop = [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop]
    options = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
    options |= _editing_options(args, model)
    _check_options(model, options)
    if single and model.modality not in FILE_SUFFIXES[Path(args.out).suffix.lower()]:
        wanted = ", ".join(k for k, v in FILE_SUFFIXES.items() if model.modality in v)
        raise SystemExit(
            f"python -m zoo.sample: error: {type(model).__name__} makes {model.modality}; --out {args.out} "
            f"should end in {wanted} (or name a folder)"
        )
    condition = _condition(args, args.num)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    out = Path(args.out)
    if single:
        return _write_one(model, args, condition, generator, options)
    written: list[Path] = []
    chunks: list[Any] = []
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        cond = None if condition is None else condition[start : start + n]
        try:
            samples = model.generate(n, condition=cond, generator=generator, **options)
        except ValueError as err:  # a family's own word on a condition or option it cannot use
            raise SystemExit(f"python -m zoo.sample: error: {type(model).__name__}: {err}") from err
        if model.modality == "image":
            written += save_images(samples, out, start=start)
            chunks.append(samples)
        elif model.modality == "text":
            chunks += list(samples)
        elif model.modality == "audio":  # one WAV per sample at the model's rate
            from zoo.io.audio import save_wavs

            written += save_wavs(samples, out, int(model.sample_rate), start=start)
        elif model.modality == "video":  # one GIF per clip at the model's rate
            from zoo.io.video import save_gifs

            written += save_gifs(samples, out, _video_fps(model), start=start)
            written += _mp4s_where_possible(samples, out, _video_fps(model), start)
            chunks.append(samples)
        else:
            raise SystemExit(f"python -m zoo.sample: error: no writer for {model.modality} samples yet")
    if model.modality == "image":
        written.append(save_grid(torch.cat(chunks), out / "grid.png"))
    elif model.modality == "video":
        from zoo.io.video import save_frame_grid

        written.append(save_frame_grid(torch.cat(chunks), out / "grid.png"))
    elif model.modality == "text":
        out.mkdir(parents=True, exist_ok=True)
        path = out / "samples.txt"
        path.write_text("\n\n".join(chunks) + "\n", encoding="utf-8")
        written.append(path)
    print(f"wrote {len(written)} file(s) to {out}/ (seed {args.seed})")
    return written


if __name__ == "__main__":
    main()
