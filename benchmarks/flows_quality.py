"""Issue 20's figures for the normalizing flows on digits, from trained checkpoints: test-split bits per
dimension beside an independent-pixel baseline and the vae and ddpm bounds, samples at two temperatures
judged by a classifier of real digits, and latent attribute editing.

    python benchmarks/flows_quality.py --nice runs/nice/<run>/checkpoints/last.ckpt \
        --realnvp runs/realnvp/<run>/checkpoints/last.ckpt --glow runs/glow/<run>/checkpoints/last.ckpt \
        --vae runs/vae/<run>/checkpoints/last.ckpt --ddpm runs/ddpm/<run>/checkpoints/last.ckpt \
        [--num-test 1000] [--ddpm-num 200] [--num-samples 500] [--edit-pairs next] \
        [--edit-strength 1.0] [--out benchmarks/out/flows]

The checkpoints come from the recipes (the vae trained on digits at the flows' 16x16):

    python -m zoo.fit --model glow --logger csv                    # also nice, realnvp
    python -m zoo.fit --model vae --data digits --data.image_size 16 --logger csv
    python -m zoo.fit --model ddpm --logger csv

A checkpoint flag left out skips that model. Each checkpoint's datamodule is rebuilt from the data
hyper-parameters it saved, as `zoo.evaluate` does; they must describe the same split (data, image size,
channels, split fractions and seed), else the script stops before computing anything. Prints Markdown:

1. Test-split bits per dimension (mean ± standard error over images): the flows' exact figure (one seeded
   uniform dequantisation draw per image, `bits_per_dim`), an independent-pixel baseline (a categorical over
   the 256 levels per pixel, fitted on the train split with add-one smoothing: the exact bits/dim of a
   factorised model), the vae's and ddpm's negative-ELBO bounds. The test images are `zoo.evaluate`'s
   (`--split test --num N --seed S`, batches of 64), so each row equals `zoo.evaluate --metrics bits_per_dim`;
   ddpm (1,000 network calls a batch) is scored on `--ddpm-num` of them.
2. `--num-samples` samples of each flow at temperatures 1.0 and 0.7 (the same seeded latents, scaled),
   judged by the logistic regression of real digits of `zoo.metrics.digits_judge` (trained on the same train
   split; the real test split is the reference row): mean max-probability confidence and the share of each
   predicted class (target: none below 3%); a class-conditional flow draws its classes uniformly. Grids
   `<flow>_samples_t<T>.png`.
3. Editing: each test image of digit A edited toward digit B (`edit`, the label mean codes saved in the
   checkpoint, measured on the validation split if it has none) at `--edit-strength`, for `--edit-pairs`;
   the share the judge assigns to B (goal >= 0.8). The judge is linear in the pixels, so the first row is
   the same edit in pixel space (image + mean image of B - mean image of A): what an identity flow scores,
   the bar a flow's latent editing has to clear. Grids `<flow>_edits.png` (a column per pair, rows of
   sources and their edits in turn) and `<flow>_interpolations.png` (rows from one test image to another).
4. Wall time of each part (load, judge, each row above).
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo import registry
from zoo.checkpoint import CheckpointError, load_model, require_family
from zoo.evaluate import data_of_checkpoint, real_images
from zoo.io.images import save_grid
from zoo.metrics.digits_judge import CNNDigitsJudge, DigitsJudge, cnn_digits_judge, fit_digits_judge
from zoo.nn.flows import PIXEL_LEVELS, to_pixels

FLOWS = ("nice", "realnvp", "glow")
FAMILIES = (*FLOWS, "vae", "ddpm")
Judge = DigitsJudge | CNNDigitsJudge  # the logistic regression, or the CNN as a second opinion
KIND = {"nice": "exact", "realnvp": "exact", "glow": "exact", "vae": "ELBO bound", "ddpm": "ELBO bound"}
NOT_SPLIT = {"self", "batch_size", "num_workers"}  # datamodule arguments that do not change the split
TEMPERATURES = (1.0, 0.7)
MIN_SHARE = 0.03


@dataclass
class Loaded:
    """A family rebuilt from its checkpoint, with the data split it was trained on."""

    model: Any
    path: str
    step: int
    data: dict[str, Any]  # the datamodule name and every argument that defines its split


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for family in FAMILIES:
        parser.add_argument(f"--{family}", metavar="CKPT", help=f"a {family} checkpoint (left out: skipped)")
    parser.add_argument("--num-test", type=int, default=1000, help="test images (digits have 180)")
    parser.add_argument("--ddpm-num", type=int, default=200, help="test images for the costly ddpm bound")
    parser.add_argument("--num-samples", type=int, default=500, help="samples per flow and temperature")
    parser.add_argument("--edit-pairs", default="next", help="'next' (A to (A+1)%%10), 'all' or 'A:B,A:B'")
    parser.add_argument("--edit-strength", type=float, default=1.0)
    parser.add_argument(
        "--label-means",
        choices=("checkpoint", "train"),
        default="checkpoint",
        help="the label mean codes: the checkpoint's (its last validation: 18 images a digit) "
        "or measured on the train split (about 144 a digit); the pixel reference uses the same split",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="as zoo.evaluate's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/out/flows")
    return parser.parse_args()


# --- checkpoints and their data --------------------------------------------------------------------------


def load(path: str, family: str, device: str) -> Loaded:
    """The family at `path` (refused unless `family` wrote it) and its split's datamodule arguments: those
    it saved, the image size and channels from the model where it saved none (as zoo.evaluate does), the
    datamodule's defaults for the rest."""
    checkpoint = require_family(path, family, f"--{family}")
    model = load_model(path, device)
    name, saved = data_of_checkpoint(checkpoint, model)
    parameters = inspect.signature(registry.get_datamodule_class(name).__init__).parameters
    data = {k: p.default for k, p in parameters.items() if k not in NOT_SPLIT}
    data.update({k: v for k, v in saved.items() if k in data})
    for key, hparam in (("image_size", "image_size"), ("channels", "in_channels")):
        if key in data and key not in saved and hparam in model.hparams:
            data[key] = model.hparams[hparam]
    return Loaded(model, path, int(checkpoint.get("global_step", 0)), {"data": name, **data})


def common_datamodule(loaded: dict[str, Loaded]) -> Any:
    """The one datamodule every checkpoint was trained on; a SystemExit naming each one's data otherwise."""
    splits = {name: item.data for name, item in loaded.items()}
    first = next(iter(splits.values()))
    if any(split != first for split in splits.values()):
        lines = "\n".join(f"  --{name}: {split}" for name, split in splits.items())
        raise SystemExit(
            f"the checkpoints were trained on different data splits; bits/dim would not compare:\n{lines}"
        )
    arguments = dict(first)
    return registry.get_datamodule_class(arguments.pop("data"))(**arguments)


# --- 1. bits per dimension -------------------------------------------------------------------------------


def independent_pixel_bits(train: Tensor, test: Tensor) -> Tensor:
    """Bits/dim (N_test,) of 8-bit test images under a factorised model: a categorical over the 256 levels
    per pixel, its counts from the train images plus one (add-one smoothing). Images in [0, 1]."""
    train_pixels, test_pixels = to_pixels(train).flatten(1).long(), to_pixels(test).flatten(1).long()
    counts = torch.ones(train_pixels.shape[1], PIXEL_LEVELS, dtype=torch.float64)
    counts.scatter_add_(1, train_pixels.T, torch.ones(train_pixels.T.shape, dtype=torch.float64))
    log_probs = (counts / counts.sum(1, keepdim=True)).log()  # (D, 256)
    nats = -log_probs.gather(1, test_pixels.T).sum(0)
    return nats / (test_pixels.shape[1] * math.log(2))


def model_bits(model: Any, images: Tensor, batch_size: int, seed: int) -> Tensor:
    """The family's `bits_per_dim` (N,) in batches, with one generator seeded as zoo.evaluate seeds it."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    values = [
        model.bits_per_dim(images[start : start + batch_size].to(model.device), generator=generator)
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(values).double().cpu()


def bits_row(name: str, what: str, step: Any, score: Callable[[], Tensor]) -> tuple[str, float]:
    """One table row (mean ± standard error) and the seconds `score` took; a failure is a row saying why."""
    start = time.perf_counter()
    try:
        bits = score()
    except ValueError as err:
        return f"| {name} | {what} | {step} | - | skipped: {err} | |", time.perf_counter() - start
    seconds = time.perf_counter() - start
    error = bits.std().item() / math.sqrt(len(bits)) if len(bits) > 1 else float("nan")
    return (
        f"| {name} | {what} | {step} | {len(bits)} | {bits.mean():.3f} ± {error:.3f} | {seconds:.1f} |",
        seconds,
    )


def likelihood_table(
    loaded: dict[str, Loaded], datamodule: Any, args: argparse.Namespace
) -> dict[str, float]:
    """Table 1; the seconds of each row."""
    test, _, _ = real_images(datamodule, "test", args.num_test, args.seed)
    train, _, _ = real_images(datamodule, "train", 10**9, args.seed)
    print(f"\n### Test-split bits per dimension ({len(test)} test images; lower is better)\n")
    print("| model | what | step | test images | bits/dim (± s.e.) | seconds |\n|---|---|---|---|---|---|")
    timings = {}
    row, timings["bits/dim: independent pixels"] = bits_row(
        "independent pixels", f"exact, factorised, fitted on {len(train)} train images", "-",
        lambda: independent_pixel_bits(train, test),
    )  # fmt: skip
    print(row, flush=True)
    for name, item in loaded.items():
        images = test
        what = KIND[name]
        if name == "ddpm":
            images, _, _ = real_images(datamodule, "test", min(args.num_test, args.ddpm_num), args.seed)
            what += f" (T = {len(item.model.schedule.betas)} network calls a batch: {len(images)} images)"
        score = partial(model_bits, item.model, images, args.batch_size, args.seed)
        row, timings[f"bits/dim: {name}"] = bits_row(name, what, item.step, score)
        print(row, flush=True)
    return timings


# --- 2. samples judged by the real-digits classifier ------------------------------------------------------


def judged(judge: Judge, images: Tensor) -> tuple[float, np.ndarray]:
    """The judge's mean max-probability confidence on images, and the share of each predicted class (10,)."""
    probabilities = judge.probabilities(images)
    shares = np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]) / len(images)
    return float(probabilities.max(1).mean()), shares


def shares_cells(confidence: float, shares: np.ndarray) -> str:
    low = int(shares.argmin())
    below = int((shares < MIN_SHARE).sum())
    listed = " ".join(f"{s:.2f}" for s in shares)
    return f"{confidence:.3f} | {shares[low]:.3f} (digit {low}) | {below} | {listed}"


def sample_table(
    flows: dict[str, Loaded], judge: Judge, test: Tensor, args: argparse.Namespace
) -> dict[str, float]:
    """Table 2: samples at each temperature, judged; grids to --out. The seconds of each flow's sampling."""
    accuracy = judge.held_out_accuracy
    print(f"\n### Samples judged by the real-digits classifier (held-out accuracy {accuracy:.3f}; "
          f"target: no class below {MIN_SHARE:.0%})\n")  # fmt: skip
    print("| model | temperature | images | mean confidence | lowest class share | classes below 3% | "
          "shares of digits 0-9 | seconds |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    print(f"| real test digits (reference) | - | {len(test)} | {shares_cells(*judged(judge, test))} | - |")
    timings = {}
    for name, item in flows.items():
        for temperature in TEMPERATURES:
            start = time.perf_counter()
            generator = torch.Generator(device=item.model.device).manual_seed(args.seed)
            images = item.model.generate(args.num_samples, generator=generator, temperature=temperature)
            images = images.cpu()
            seconds = time.perf_counter() - start
            timings[f"samples: {name} T={temperature}"] = seconds
            cells = shares_cells(*judged(judge, images))
            print(f"| {name} | {temperature} | {len(images)} | {cells} | {seconds:.1f} |", flush=True)
            save_grid(images[:100], Path(args.out) / f"{name}_samples_t{temperature}.png", nrow=10)
    return timings


# --- 3. editing and interpolation -------------------------------------------------------------------------


def edit_pairs(spec: str, classes: int = 10) -> list[tuple[int, int]]:
    """'next': every digit A to (A + 1) % 10; 'all': every A != B; else 'A:B,A:B,...'."""
    if spec == "next":
        return [(a, (a + 1) % classes) for a in range(classes)]
    if spec == "all":
        return [(a, b) for a in range(classes) for b in range(classes) if a != b]
    return [(int(a), int(b)) for a, b in (pair.split(":") for pair in spec.split(","))]


def ensure_label_means(
    name: str, model: Any, datamodule: Any, labels: set[int], seed: int, source: str = "checkpoint"
) -> None:
    """The checkpoint's label mean codes; measured on the validation split (and said) if it lacks some.
    `source` "train": measured on the train split whatever the checkpoint holds."""
    if model.hparams.num_classes == 0:
        raise ValueError("trained without labels (num_classes 0): no label means to edit with")
    if source == "train":
        images, train_labels, _ = real_images(datamodule, "train", 10**9, seed)
        model.measure_label_means(images, torch.tensor(train_labels))
        return
    if all(model.label_code_counts[label] > 0 for label in labels):
        return
    images, val_labels, _ = real_images(datamodule, "val", 10**9, seed)
    model.measure_label_means(images, torch.tensor(val_labels))
    print(f"note: the {name} checkpoint holds no label mean codes (no validation ran): measured on the "
          f"{len(images)} validation images")  # fmt: skip


def edit_grid(sources: list[Tensor], edits: list[Tensor], path: Path, rows: int = 4) -> None:
    """A column per pair; `rows` examples, each a row of sources above a row of their edits."""
    blank = torch.zeros_like(sources[0][0])
    grid = []
    for j in range(rows):
        for group in (sources, edits):
            grid += [images[j] if j < len(images) else blank for images in group]
    save_grid(torch.stack(grid), path, nrow=len(sources))


def interpolation_grid(model: Any, test: Tensor, labels: Tensor, path: Path, steps: int = 8) -> None:
    """Rows from the first test image of digit d to the first of digit d + 1 (d = 0..7); a class-conditional
    model interpolates between two images of digit d instead, under label d."""
    rows = []
    for digit in range(8):
        same, following = (labels == digit).nonzero().flatten(), (labels == digit + 1).nonzero().flatten()
        if model.conditional and len(same) > 1:
            a, b, label = test[same[0]], test[same[1]], torch.tensor([digit], device=model.device)
        elif not model.conditional and len(same) and len(following):
            a, b, label = test[same[0]], test[following[0]], None
        else:
            continue  # too few test images (--num-test)
        rows.append(model.interpolate(a, b, steps, label=label).cpu())
    if rows:
        save_grid(torch.cat(rows), path, nrow=steps)


Editor = Callable[[Tensor, int, int], Tensor]  # (images of digit A in [0, 1], A, B) -> edited images


def flow_edit(model: Any, images: Tensor, a: int, b: int, strength: float) -> Tensor:
    """The flow's latent edit (`edit`: code + strength * (mean code of B - mean code of A), decoded)."""
    return model.edit(images, a, b, strength)


def pixel_editor(datamodule: Any, strength: float, seed: int, split: str = "val") -> Editor:
    """The reference edit in pixel space: image + strength * (mean `split` image of B - that of A), as
    8-bit pixels. What an identity flow's editing does; a linear judge reads it as B almost by construction,
    so a flow's editing is worth its share only above this row."""
    images, labels, _ = real_images(datamodule, split, 10**9, seed)
    labels = torch.tensor(labels)
    means = torch.stack([images[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
    return lambda x, a, b: to_pixels((x + strength * (means[b] - means[a])).clamp(0, 1)) / 255


def edit_row(
    name: str, editor: Editor, judge: Judge, test: Tensor, labels: Tensor, args: argparse.Namespace
) -> str:
    """A row of table 3: each test image of A edited toward B, for each pair; the grid `<name>_edits.png`."""
    pairs = [(a, b) for a, b in edit_pairs(args.edit_pairs) if (labels == a).any()]
    sources = [test[labels == a] for a, _ in pairs]
    edits = [editor(images, a, b).cpu() for images, (a, b) in zip(sources, pairs, strict=True)]
    origins = np.concatenate([np.full(len(s), a) for s, (a, _) in zip(sources, pairs, strict=True)])
    targets = np.concatenate([np.full(len(s), b) for s, (_, b) in zip(sources, pairs, strict=True)])
    source, edited = torch.cat(sources), torch.cat(edits)
    predicted, probabilities = judge.predict(edited), judge.probabilities(edited)
    per_pair = [f"{a}→{b} {np.mean(predicted[(origins == a) & (targets == b)] == b):.2f}" for a, b in pairs]
    change = (to_pixels(edited) - to_pixels(source)).abs().mean().item()
    edit_grid(sources, edits, Path(args.out) / f"{name.split()[0]}_edits.png")
    return (f"| {name} | {len(pairs)} | {len(edited)} | {np.mean(judge.predict(source) == origins):.3f} | "
            f"**{np.mean(predicted == targets):.3f}** | {np.mean(predicted == origins):.3f} | "
            f"{probabilities[np.arange(len(edited)), targets].mean():.3f} | {change:.1f} | "
            f"{', '.join(per_pair) if len(pairs) <= 12 else '-'} |")  # fmt: skip


def edit_table(
    flows: dict[str, Loaded], judge: Judge, datamodule: Any, args: argparse.Namespace
) -> dict[str, float]:
    """Table 3, with the pixel-space reference row; the seconds of each flow's edits and interpolations."""
    test, labels, _ = real_images(datamodule, "test", args.num_test, args.seed)
    labels = torch.tensor(labels)
    print(f"\n### Attribute editing of {len(test)} held-out test digits, strength {args.edit_strength} "
          f"(pairs: {args.edit_pairs}; label means: {args.label_means}; goal: >= 0.8 judged as the target)\n")  # fmt: skip
    print("| model | pairs | edits | sources judged A | edits judged B | edits still judged A | mean p(B) | "
          "mean pixel change (levels) | judged B per pair | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    split = "train" if args.label_means == "train" else "val"
    reference = pixel_editor(datamodule, args.edit_strength, args.seed, split)
    row = edit_row("pixels (reference: mean-image difference)", reference, judge, test, labels, args)
    print(f"{row} {time.perf_counter() - start:.1f} |", flush=True)
    needed = {label for pair in edit_pairs(args.edit_pairs) for label in pair}
    timings = {}
    for name, item in flows.items():
        start = time.perf_counter()
        try:
            ensure_label_means(name, item.model, datamodule, needed, args.seed, args.label_means)
            editor = partial(flow_edit, item.model, strength=args.edit_strength)
            row = edit_row(name, editor, judge, test, labels, args)
            interpolation_grid(item.model, test, labels, Path(args.out) / f"{name}_interpolations.png")
        except ValueError as err:
            row = f"| {name} | skipped: {err} | | | | | | | |"
        timings[f"edits and interpolations: {name}"] = time.perf_counter() - start
        print(f"{row} {timings[f'edits and interpolations: {name}']:.1f} |", flush=True)
    return timings


# --- 4. the run -------------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    try:
        loaded = {f: load(getattr(args, f), f, args.device) for f in FAMILIES if getattr(args, f)}
    except CheckpointError as err:
        raise SystemExit(str(err)) from err
    if not loaded:
        raise SystemExit("no checkpoint given: pass at least one of " + ", ".join(f"--{f}" for f in FAMILIES))
    datamodule = common_datamodule(loaded)
    timings = {"load checkpoints": time.perf_counter() - started}
    print(f"data: {next(iter(loaded.values())).data}")
    for name, item in loaded.items():
        print(f"--{name} {item.path}: step {item.step}")
    timings.update(likelihood_table(loaded, datamodule, args))
    flows = {name: item for name, item in loaded.items() if name in FLOWS}
    if flows:
        start = time.perf_counter()
        test, _, _ = real_images(datamodule, "test", args.num_test, args.seed)
        judges = {"logistic regression": fit_digits_judge(datamodule),
                  "zoo digits CNN": cnn_digits_judge(test.shape[-1], test.shape[1])}  # fmt: skip
        timings["fit the real-digits judges"] = time.perf_counter() - start
        for name, judge in judges.items():
            print(f"\n## Judge: {name}")
            timings.update({f"{k} ({name})": v for k, v in sample_table(flows, judge, test, args).items()})
            timings.update(
                {f"{k} ({name})": v for k, v in edit_table(flows, judge, datamodule, args).items()}
            )
        print(f"\ngrids in {args.out}/")
    timings["total"] = time.perf_counter() - started
    print("\n### Wall time\n\n| part | seconds |\n|---|---|")
    for part, seconds in timings.items():
        print(f"| {part} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
