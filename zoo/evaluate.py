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
`--inception-weights PATH` or $ZOO_INCEPTION_WEIGHTS). The sampling flags are `zoo.sample`'s
(`zoo.cli.add_sampling_args`), range-checked while parsing. Prints a table and notes (e.g. KID's
subset size, halved when not smaller than the samples); `--out FILE.json` writes each metric with its
value, sample counts, feature extractor, seed, the checkpoint's sha256 and the notes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.cli import (
    UsageError,
    add_sampling_args,
    int_at_least,
    positive_int,
    sampling_options,
    usage_errors_reported,
)

PROG = "python -m zoo.evaluate"
USAGE = f"{PROG} (--ckpt PATH | --real DIR_OR_DATA --fake DIR) --metrics NAMES [--num N] [--out FILE.json] [options]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, usage=USAGE, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
        "--num",
        type=int_at_least(2),
        default=2000,
        help="samples to generate and real images to use (>= 2, default 2000)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="samples generated at once (default 64)"
    )
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
    p.add_argument(
        "--kid-subset-size",
        type=int_at_least(2),
        default=1000,
        help="KID subset size (default 1000; half the samples when not smaller than them)",
    )
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_sampling_args(p)
    return p


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
    """Every image under `folder` (sorted; `grid.png` and hidden files skipped), float (N, C, H, W) in
    [0, 1], resized to `size` if given."""
    import torch
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, resize

    from zoo.io.images import IMAGE_EXTENSIONS, find_image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"'{folder}' is not a folder of images")
    paths = [p for p in find_image_files(folder) if p.name != "grid.png"]  # a zoo.sample folder's grid
    if not paths:
        raise ValueError(f"no images in '{folder}' (looked for {', '.join(IMAGE_EXTENSIONS)}, any case)")
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


@dataclass
class Comparison:
    """What the metrics compare: gathered by `_from_checkpoint` or `_from_folders`, then measured."""

    modality: str
    specs: list[Any]  # the metrics asked for (zoo.metrics.registry.MetricSpec)
    real: Any = None
    fake: Any = None
    model: Any = None
    data_name: str | None = None
    image_size: int | None = None
    channels: int = 3
    prompts: list[str] | None = None
    conditions: list[Any] | None = None
    split: str | None = None  # the real data's split, when it came from a datamodule
    sampling: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(
        default_factory=dict
    )  # for the JSON: checkpoint and sha256, or real / fake

    @property
    def needs(self) -> set[str]:
        return {need for spec in self.specs for need in spec.needs}

    @property
    def num_fake(self) -> int | None:
        return None if self.fake is None else len(self.fake)

    @property
    def num_real(self) -> int | None:
        return None if self.real is None else len(self.real)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `python -m zoo.evaluate`; returns the results dictionary (also written by --out)."""
    with usage_errors_reported(PROG):
        args = _parser().parse_args(argv)
        if bool(args.ckpt) == bool(args.real or args.fake):
            raise UsageError("give --ckpt PATH, or --real DIR_OR_DATA with --fake DIR (not both)", PROG)
        if not args.ckpt and not (args.real and args.fake):
            raise UsageError("--real and --fake go together", PROG)
        try:
            return _evaluate(args)
        except (ValueError, FileNotFoundError, TypeError) as err:
            raise UsageError(str(err), PROG) from err


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """From a checkpoint or from folders, run the metrics, report."""
    started = time.perf_counter()
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    comparison = _from_checkpoint(args, names) if args.ckpt else _from_folders(args, names)
    extractor = _extractor_for(args, comparison)
    rows = _run_metrics(args, comparison, extractor)
    return _report(args, comparison, extractor, rows, seconds=time.perf_counter() - started)


# --- step 1: what to compare -------------------------------------------------------------------


def _from_checkpoint(args: argparse.Namespace, names: list[str]) -> Comparison:
    """The checkpoint's family, its real data, and `--num` samples generated from it."""
    from zoo.checkpoint import CheckpointError, load_model, read_checkpoint
    from zoo.metrics.registry import get_metric

    try:
        checkpoint = read_checkpoint(args.ckpt)
        model = load_model(args.ckpt, map_location=args.device)
    except CheckpointError as err:
        raise ValueError(str(err)) from err
    hparams = getattr(model, "hparams", {})
    comparison = Comparison(
        modality=model.modality,
        specs=[get_metric(n, model.modality) for n in names],  # an unfit metric fails before any work
        model=model,
        image_size=hparams.get("image_size"),
        channels=hparams.get("in_channels", 3),
        prompts=_read_prompts(args.prompts),
        sampling=sampling_options(args),
    )
    comparison.data_name, datamodule = _datamodule_of(args, checkpoint, comparison)
    labels = captions = None
    if {"real", "prompts"} & comparison.needs or hparams.get("num_classes"):
        comparison.real, labels, captions = real_images(datamodule, args.split, args.num, args.seed)
        comparison.split = args.split
    if {"fake", "prompts"} & comparison.needs:  # metrics that only need the model (geneval) bring their own
        comparison.conditions = conditions_for(model, args.num, labels, captions, comparison.prompts)
    if comparison.prompts is None and comparison.conditions and isinstance(comparison.conditions[0], str):
        comparison.prompts = comparison.conditions
    if "fake" in comparison.needs:
        comparison.fake = _generate(args, comparison, comparison.conditions, args.num)
    comparison.sources |= {
        "checkpoint": str(args.ckpt),
        "checkpoint_sha256": sha256_of(args.ckpt),
        "model": (checkpoint.get("zoo") or {}).get("model"),
    }
    return comparison


def _read_prompts(path: str | None) -> list[str] | None:
    if not path:
        return None
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _datamodule_of(
    args: argparse.Namespace, checkpoint: dict[str, Any], comparison: Comparison
) -> tuple[str, Any]:
    """The datamodule the checkpoint was trained on (or `--data`), at the model's image size and channels."""
    import inspect

    from zoo import registry

    data_name, data_args = data_of_checkpoint(checkpoint, comparison.model)
    if args.data and args.data != data_name:
        data_name, data_args = args.data, {}
    data_class = registry.get_datamodule_class(data_name)
    accepted = set(inspect.signature(data_class.__init__).parameters)
    for key, value in (("image_size", comparison.image_size), ("channels", comparison.channels)):
        if value is not None and key in accepted:
            data_args.setdefault(key, value)
    return data_name, data_class(**{k: v for k, v in data_args.items() if k in accepted})


def _generate(
    args: argparse.Namespace, comparison: Comparison, conditions: Sequence[Any] | None, n: int
) -> Any:
    return generate(
        comparison.model, n, conditions=conditions, batch_size=args.batch_size, seed=args.seed,
        options=comparison.sampling, device=args.device, progress=not args.no_progress,
    )  # fmt: skip


def _from_folders(args: argparse.Namespace, names: list[str]) -> Comparison:
    """`--fake` images against `--real` images: a folder, or a datamodule built at the fake images' size."""
    from zoo import registry
    from zoo.metrics.registry import get_metric

    fake = load_folder(args.fake)
    comparison = Comparison(
        modality="image", specs=[get_metric(n, "image") for n in names], fake=fake,
        image_size=fake.shape[-1], channels=fake.shape[1],
    )  # fmt: skip
    comparison.sources |= {"real": str(args.real), "fake": str(args.fake)}
    if Path(args.real).is_dir():
        comparison.real = load_folder(args.real, size=comparison.image_size)
        return comparison
    try:
        data_class = registry.get_datamodule_class(args.real)
    except registry.RegistryError as err:
        raise ValueError(f"--real '{args.real}' is neither a folder nor a datamodule: {err}") from err
    datamodule = data_class(image_size=comparison.image_size)
    comparison.data_name, comparison.channels = args.real, getattr(datamodule, "channels", 3)
    comparison.real, _, _ = real_images(datamodule, args.split, args.num, args.seed)
    comparison.split = args.split
    if fake.shape[1] != comparison.channels:  # grey data: read the folder as grey too
        comparison.fake = load_folder(args.fake, channels=comparison.channels)
    return comparison


# --- step 2: the metrics -----------------------------------------------------------------------


def _extractor_for(args: argparse.Namespace, comparison: Comparison) -> Any:
    """The feature network, when a metric needs one; generated images are resized to its input size."""
    import torch

    if "extractor" not in comparison.needs:
        return None
    some = comparison.fake if comparison.fake is not None else comparison.real
    size = int(comparison.image_size or some.shape[-1])
    choice = args.extractor
    extractor = make_extractor(
        choice, comparison.data_name, size, int(comparison.channels), args.inception_weights
    )
    fake = comparison.fake
    if fake is not None and torch.is_tensor(fake) and choice != "inception" and comparison.data_name:
        comparison.fake = _resize(fake, size)
    return extractor.to(args.device)


def _metric_context(args: argparse.Namespace, comparison: Comparison, extractor: Any) -> Any:
    from zoo.checkpoint import load_model
    from zoo.metrics.registry import MetricContext

    clip = None
    if "clip" in comparison.needs and args.clip:
        clip = load_model(args.clip, map_location=args.device) if args.clip.endswith(".ckpt") else args.clip
    ctx = MetricContext(
        modality=comparison.modality, real=comparison.real, fake=comparison.fake, extractor=extractor,
        model=comparison.model, prompts=comparison.prompts, conditions=comparison.conditions, clip=clip,
        seed=args.seed, batch_size=max(args.batch_size, 256), device=args.device,
        options={"kid_subset_size": args.kid_subset_size},
    )  # fmt: skip
    if comparison.model is not None:  # metrics that generate for their own conditions (geneval)

        def generate_fn(conditions: Sequence[Any] | None = None, n: int | None = None) -> Any:
            count = len(conditions) if conditions is not None else int(n or args.num)
            return _generate(args, comparison, conditions, count)

        ctx.generate_fn = generate_fn
    return ctx


def _run_metrics(args: argparse.Namespace, comparison: Comparison, extractor: Any) -> list[dict[str, Any]]:
    """One row per value each metric returns (fid; kid and kid_std; ...)."""
    ctx = _metric_context(args, comparison, extractor)
    num_fake, num_real = comparison.num_fake, comparison.num_real
    if num_real is not None and num_fake is not None and num_real < num_fake:
        warnings.warn(
            f"the {comparison.split or 'real'} data has only {num_real} images for {num_fake} samples: "
            "metrics compare sets of different sizes (FID is biased upward for small sets)",
            stacklevel=2,
        )
    rows: list[dict[str, Any]] = []
    for spec in comparison.specs:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
            values = spec.fn(ctx)
        uses_extractor = extractor is not None and "extractor" in spec.needs
        rows += [
            {
                "metric": key, "value": float(value), "num_fake": num_fake,
                "num_real": num_real if "real" in spec.needs else None,
                "feature_extractor": extractor.name if uses_extractor else None,
                "higher_is_better": spec.higher_is_better,
            }
            for key, value in values.items()
        ]  # fmt: skip
    return rows


# --- step 3: the report ------------------------------------------------------------------------


def _format_table(rows: list[dict[str, Any]]) -> str:
    header = ("metric", "value", "fake", "real")
    lines = [header] + [
        (r["metric"], f"{r['value']:.6g}", str(r["num_fake"] or "-"), str(r["num_real"] or "-")) for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _kid_note(args: argparse.Namespace, comparison: Comparison) -> tuple[int | None, str | None]:
    """The KID subset size used, and a note when it is not --kid-subset-size."""
    from zoo.metrics.image import kid_subset_size

    if not any(spec.name == "kid" for spec in comparison.specs):
        return None, None
    smaller = min(comparison.num_real or 0, comparison.num_fake or 0)
    used = kid_subset_size(args.kid_subset_size, smaller, smaller)
    if used == args.kid_subset_size:
        return used, None
    return used, (
        f"KID used subsets of {used} samples, not --kid-subset-size {args.kid_subset_size}: that is not smaller "
        f"than the {smaller} samples, and subsets of every sample are all the same set (kid_std would be 0)"
    )


def _report(
    args: argparse.Namespace,
    comparison: Comparison,
    extractor: Any,
    rows: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """Print the table (and notes), write --out; returns the results dictionary."""
    from zoo import __version__

    extractor_info = None
    if extractor is not None:
        extractor_info = {"name": extractor.name, "held_out_accuracy": extractor.held_out_accuracy}
    kid_subset, kid_note = _kid_note(args, comparison)
    result: dict[str, Any] = {"seed": args.seed, "split": comparison.split, "sampling": comparison.sampling}
    result |= comparison.sources | {
        "data": comparison.data_name, "modality": comparison.modality,
        "num_fake": comparison.num_fake, "num_real": comparison.num_real,
        "feature_extractor": extractor_info, "metrics": rows,
    }  # fmt: skip
    if kid_subset is not None:
        result["kid_subset_size"] = kid_subset
    result |= {
        "notes": [kid_note] if kid_note else [],
        "seconds": round(seconds, 2),
        "zoo_version": __version__,
    }
    accuracy = extractor_info["held_out_accuracy"] if extractor_info else float("nan")
    if accuracy == accuracy:  # NaN: an extractor without a measured accuracy (inception)
        print(f"feature extractor: {extractor_info['name']} (held-out accuracy {accuracy:.3f})")  # type: ignore[index]
    print(_format_table(rows))
    for note in result["notes"]:
        print(f"note: {note}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
