"""`python -m zoo.evaluate`: metrics of a checkpoint's samples against real data, or of two image sets.

    python -m zoo.evaluate --ckpt runs/ddpm/<run>/checkpoints/last.ckpt --metrics fid,kid,is,precision_recall \\
        --num 2000 [--data shapes] [--sampler ddim --steps 50] [--out results.json]
    python -m zoo.evaluate --real DIR_OR_DATA --fake DIR --metrics fid      # no checkpoint

With `--ckpt`, the family is rebuilt from the checkpoint, `--num` samples are generated in batches
from a generator seeded with `--seed` (class-conditional families get labels spread evenly over the
classes; text-conditioned ones the real split's captions), and compared with `--num` images of the
real split (`--split`, default train) of the checkpoint's datamodule, rebuilt from the
hyper-parameters the checkpoint recorded (or `--data NAME`). Features come from the zoo-trained
extractor of that data (`shapes`, `digits`) or InceptionV3 (`--extractor inception`, with
`--inception-weights PATH` or $ZOO_INCEPTION_WEIGHTS). Prints a table; `--out FILE.json` writes
each metric with its value, sample counts, feature extractor, seed and the checkpoint's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "python -m zoo.evaluate"
SAMPLING_FLAGS = (
    "sampler", "steps", "guidance", "temperature", "eta", "top_k", "top_p", "min_p", "max_new_tokens", "truncation",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("what to compare")
    src.add_argument("--ckpt", help="a checkpoint written by zoo.fit: generate from it")
    src.add_argument(
        "--real", help="with --fake: a datamodule name (shapes, digits, ...) or a folder of images"
    )
    src.add_argument("--fake", help="with --real: a folder of generated images")
    src.add_argument(
        "--data", help="with --ckpt: the real data's datamodule name (default: the checkpoint's)"
    )
    src.add_argument(
        "--split", default="train", choices=("train", "val", "test"), help="real split (default train)"
    )
    p.add_argument(
        "--metrics", required=True, help="comma-separated metric names, e.g. fid,kid,is,precision_recall"
    )
    p.add_argument(
        "--num", type=int, default=2000, help="samples to generate and real images to use (default 2000)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="samples generated at once (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of generation and of random subsets (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument(
        "--extractor",
        default="auto",
        help="auto (the data's zoo-trained extractor, else inception), inception, or an embedded data name: shapes, digits",
    )
    p.add_argument(
        "--inception-weights", help="the FID InceptionV3 weights file (pt_inception-2015-12-05-6726825d.pth)"
    )
    p.add_argument("--clip", help="for clip_score: a local Hugging Face CLIP folder or a zoo clip checkpoint")
    p.add_argument(
        "--prompts", help="a text file, one prompt per line: conditions for text-conditioned families"
    )
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    s = p.add_argument_group("sampling options, passed to the family's generate()")
    s.add_argument("--sampler")
    s.add_argument("--steps", type=int)
    s.add_argument("--guidance", type=float)
    s.add_argument("--temperature", type=float)
    s.add_argument("--eta", type=float)
    s.add_argument("--top-k", dest="top_k", type=int)
    s.add_argument("--top-p", dest="top_p", type=float)
    s.add_argument("--min-p", dest="min_p", type=float)
    s.add_argument("--truncation", type=float, help="GANs: truncation psi (1 = none, 0 = the mean image)")
    s.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="text families")
    return p


def _fail(message: str) -> SystemExit:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- real data ---------------------------------------------------------------------------------


def data_of_checkpoint(checkpoint: dict[str, Any], model: Any) -> tuple[str, dict[str, Any]]:
    """The datamodule name and arguments a checkpoint was trained with (see GenerativeModule)."""
    from zoo import registry

    hparams = {
        k: v
        for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items()
        if not k.startswith("_")
    }
    name = (checkpoint.get("zoo") or {}).get("data")
    if not name and hparams:  # checkpoints from before zoo recorded the name: match the arguments
        import inspect

        candidates = [getattr(model, "default_data", None), *registry.list_datamodules()]
        for candidate in dict.fromkeys(c for c in candidates if c):
            try:
                params = set(inspect.signature(registry.get_datamodule_class(candidate).__init__).parameters)
            except registry.RegistryError:
                continue
            if set(hparams) <= params:
                name = candidate
                break
    name = name or getattr(model, "default_data", None)
    if not name:
        raise ValueError("the checkpoint does not say which data it was trained on: pass --data NAME")
    return name, hparams


def real_images(
    datamodule: Any, split: str, num: int, seed: int
) -> tuple[Any, list[Any] | None, list[Any] | None]:
    """Up to `num` images of a split (a seeded random subset) in [0, 1], with their labels and captions
    (for a text datamodule: up to `num` of the split's documents)."""
    import torch

    if getattr(datamodule, "modality", "image") == "text":  # text corpora: the split's documents
        texts = datamodule.texts(split)
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:num].sort().values
        return [texts[i] for i in order.tolist()], None, None
    datamodule.setup("fit")
    dataset = getattr(datamodule, f"{split}_set")
    if dataset is None:
        raise ValueError(f"{type(datamodule).__name__} has no {split} split")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:num].sort().values.tolist()
    subset = torch.utils.data.Subset(dataset, order)
    images, labels, captions = [], [], []
    for batch in torch.utils.data.DataLoader(subset, batch_size=256):
        images.append((batch["image"].float() + 1) / 2)
        if "label" in batch:
            labels += batch["label"].tolist()
        if "caption" in batch:
            captions += list(batch["caption"])
    return torch.cat(images).clamp(0, 1), labels or None, captions or None


def load_folder(folder: str | Path, size: int | None = None, channels: int = 3) -> Any:
    """Every image under `folder` (sorted), float (N, C, H, W) in [0, 1], resized to `size` if given."""
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, resize

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"'{folder}' is not a folder of images")
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.name != "grid.png")
    if not paths:
        raise ValueError(f"no images in '{folder}' (looked for {', '.join(sorted(suffixes))})")
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                tensor = pil_to_tensor(image.convert("RGB" if channels == 3 else "L"))
        except Exception as err:
            raise ValueError(f"cannot read image '{path}': {err}") from err
        size = size or tensor.shape[-1]
        if tensor.shape[-2:] != (size, size):
            tensor = resize(tensor, [size, size], antialias=True)
        images.append(tensor)
    return torch.stack(images).float() / 255.0


# --- generation --------------------------------------------------------------------------------


def conditions_for(
    model: Any, num: int, labels: list[int] | None, captions: list[str] | None, prompts: list[str] | None
) -> list[Any] | None:
    """What to condition `num` samples on: prompts or captions for text-conditioned families, labels spread
    evenly over the classes for class-conditional ones, else None."""
    hparams = getattr(model, "hparams", {})
    key = getattr(model, "condition_key", None)
    if prompts or key in ("caption", "text"):
        source = prompts or captions
        if not source:
            raise ValueError(
                f"{type(model).__name__} is text-conditioned: pass --prompts FILE (one prompt per line)"
            )
        return [source[i % len(source)] for i in range(num)]
    num_classes = int(hparams.get("num_classes", 0) or 0)
    conditional = getattr(model, "conditional", hparams.get("class_conditional", True))
    if num_classes > 0 and (key == "label" or conditional):
        return [i % num_classes for i in range(num)]
    return None


def generate(
    model: Any,
    num: int,
    *,
    conditions: Sequence[Any] | None,
    batch_size: int,
    seed: int,
    options: dict[str, Any],
    device: str = "cpu",
    progress: bool = True,
) -> Any:
    """`num` samples in batches from one generator seeded with `seed`, with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    generator = torch.Generator(device=device).manual_seed(seed)
    chunks: list[Any] = []
    with tqdm(total=num, desc="generating", unit="sample", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            cond = None if conditions is None else list(conditions[start : start + n])
            samples = model.generate(n, condition=cond, generator=generator, **options)
            chunks.append(samples.cpu() if torch.is_tensor(samples) else samples)
            bar.update(n)
    if torch.is_tensor(chunks[0]):
        return torch.cat(chunks)
    return [s for chunk in chunks for s in chunk]


# --- extractors --------------------------------------------------------------------------------


def make_extractor(choice: str, data: str | None, image_size: int, channels: int, weights: str | None) -> Any:
    from zoo.metrics.extractors import RECIPES, image_extractor, inception_extractor

    if choice == "inception" or (choice == "auto" and data not in RECIPES):
        return inception_extractor(weights)
    name = data if choice == "auto" else choice
    if name not in RECIPES:
        raise ValueError(
            f"unknown --extractor '{choice}': use auto, inception, or one of {', '.join(RECIPES)}"
        )
    return image_extractor(name, image_size, channels)


def _resize(images: Any, size: int) -> Any:
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


# --- the command -------------------------------------------------------------------------------


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("metric", "value", "fake", "real")
    lines = [header] + [
        (r["metric"], f"{r['value']:.6g}", str(r["num_fake"] or "-"), str(r["num_real"] or "-")) for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `python -m zoo.evaluate`; returns the results dictionary (also written by --out)."""
    args = _parser().parse_args(argv)
    if bool(args.ckpt) == bool(args.real or args.fake):
        raise _fail("give --ckpt PATH, or --real DIR_OR_DATA with --fake DIR (not both)")
    if not args.ckpt and not (args.real and args.fake):
        raise _fail("--real and --fake go together")
    if args.num < 2:
        raise _fail("--num must be at least 2")
    try:
        return _evaluate(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        raise _fail(str(err)) from err


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from zoo import registry
    from zoo.checkpoint import CheckpointError, load_model, read_checkpoint
    from zoo.metrics.registry import MetricContext, get_metric

    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    start_time = time.perf_counter()
    result: dict[str, Any] = {"seed": args.seed, "split": None, "sampling": {}}
    model, prompts, conditions, labels, captions = None, None, None, None, None
    data_name: str | None = None
    if args.prompts:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]

    if args.ckpt:
        try:
            checkpoint = read_checkpoint(args.ckpt)
            model = load_model(args.ckpt, map_location=args.device)
        except CheckpointError as err:
            raise ValueError(str(err)) from err
        modality = model.modality
        specs = [get_metric(n, modality) for n in names]  # an unfit metric fails before any work
        hparams = getattr(model, "hparams", {})
        image_size, channels = hparams.get("image_size"), hparams.get("in_channels", 3)
        data_name, data_args = data_of_checkpoint(checkpoint, model)
        if args.data and args.data != data_name:
            data_name, data_args = args.data, {}
        data_class = registry.get_datamodule_class(data_name)
        import inspect

        accepted = set(inspect.signature(data_class.__init__).parameters)
        for key, value in (("image_size", image_size), ("channels", channels)):
            if value is not None and key in accepted:
                data_args.setdefault(key, value)
        datamodule = data_class(**{k: v for k, v in data_args.items() if k in accepted})
        needs = {n for s in specs for n in s.needs}
        real = None
        if "real" in needs or "prompts" in needs or hparams.get("num_classes"):
            real, labels, captions = real_images(datamodule, args.split, args.num, args.seed)
            result["split"] = args.split
        options = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
        result["sampling"] = options
        fake = conditions = None
        if (
            "fake" in needs or "prompts" in needs
        ):  # metrics that only need the model (geneval) bring their own
            conditions = conditions_for(model, args.num, labels, captions, prompts)
        if prompts is None and conditions and isinstance(conditions[0], str):
            prompts = conditions
        if "fake" in needs:
            fake = generate(
                model, args.num, conditions=conditions, batch_size=args.batch_size, seed=args.seed,
                options=options, device=args.device, progress=not args.no_progress,
            )  # fmt: skip
        result |= {"checkpoint": str(args.ckpt), "checkpoint_sha256": sha256_of(args.ckpt)}
        result["model"] = (checkpoint.get("zoo") or {}).get("model")
    else:
        modality = "image"
        specs = [get_metric(n, modality) for n in names]
        fake = load_folder(args.fake)
        image_size, channels = fake.shape[-1], fake.shape[1]
        if Path(args.real).is_dir():
            real = load_folder(args.real, size=image_size)
        else:
            data_name = args.real
            try:
                data_class = registry.get_datamodule_class(data_name)
            except registry.RegistryError as err:
                raise ValueError(f"--real '{args.real}' is neither a folder nor a datamodule: {err}") from err
            datamodule = data_class(image_size=image_size)
            channels = getattr(datamodule, "channels", 3)
            real, labels, captions = real_images(datamodule, args.split, args.num, args.seed)
            result["split"] = args.split
            if fake.shape[1] != channels:
                fake = load_folder(args.fake, channels=channels)
        result |= {"real": str(args.real), "fake": str(args.fake)}

    needs = {n for s in specs for n in s.needs}
    extractor = None
    if "extractor" in needs:
        choice = args.extractor
        size = image_size or (fake.shape[-1] if fake is not None else real.shape[-1])
        extractor = make_extractor(choice, data_name, int(size), int(channels), args.inception_weights)
        extractor = extractor.to(args.device)
        if fake is not None and torch.is_tensor(fake) and choice != "inception" and data_name:
            fake = _resize(fake, int(size))
    clip = None
    if "clip" in needs and args.clip:
        clip = load_model(args.clip, map_location=args.device) if args.clip.endswith(".ckpt") else args.clip
    ctx = MetricContext(
        modality=modality, real=real, fake=fake, extractor=extractor, model=model, prompts=prompts,
        conditions=conditions, clip=clip, seed=args.seed, batch_size=max(args.batch_size, 256), device=args.device,
        options={"kid_subset_size": args.kid_subset_size},
    )  # fmt: skip
    if model is not None:
        sampling = result["sampling"]

        def generate_fn(conditions: Sequence[Any] | None = None, n: int | None = None) -> Any:
            count = len(conditions) if conditions is not None else int(n or args.num)
            return generate(
                model, count, conditions=conditions, batch_size=args.batch_size, seed=args.seed,
                options=sampling, device=args.device, progress=not args.no_progress,
            )  # fmt: skip

        ctx.generate_fn = generate_fn

    num_fake = len(fake) if fake is not None else None
    num_real = len(real) if real is not None else None
    if num_real is not None and num_fake is not None and num_real < num_fake:
        warnings.warn(
            f"the {result['split'] or 'real'} data has only {num_real} images for {num_fake} samples: "
            "metrics compare sets of different sizes (FID is biased upward for small sets)",
            stacklevel=2,
        )
    extractor_info = None
    if extractor is not None:
        extractor_info = {"name": extractor.name, "held_out_accuracy": extractor.held_out_accuracy}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
            values = spec.fn(ctx)
        for key, value in values.items():
            rows.append({
                "metric": key,
                "value": float(value),
                "num_fake": num_fake,
                "num_real": num_real if "real" in spec.needs else None,
                "feature_extractor": extractor_info["name"] if extractor_info and "extractor" in spec.needs else None,
                "higher_is_better": spec.higher_is_better,
            })  # fmt: skip
    result |= {
        "data": data_name,
        "modality": modality,
        "num_fake": num_fake,
        "num_real": num_real,
        "feature_extractor": extractor_info,
        "metrics": rows,
        "seconds": round(time.perf_counter() - start_time, 2),
    }
    from zoo import __version__

    result["zoo_version"] = __version__
    if extractor_info and extractor_info["held_out_accuracy"] == extractor_info["held_out_accuracy"]:
        print(
            f"feature extractor: {extractor_info['name']} (held-out accuracy {extractor_info['held_out_accuracy']:.3f})"
        )
    print(_format_table(rows))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
