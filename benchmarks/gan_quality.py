"""Train each GAN family with its default CPU recipe, one after another, and measure it.

    OMP_NUM_THREADS=1 python benchmarks/gan_quality.py [--families dcgan,lsgan,wgan_gp,sngan,stylegan]
        [--data digits] [--recipe default] [--num 1000] [--out benchmarks/gan_runs]

Per family: `python -m zoo.fit --model F --data D --logger none` (wall time, and the time per batch
= wall time / batches, validation and sample grids included), then `python -m zoo.evaluate --ckpt
last.ckpt --metrics fid,precision_recall --num N` twice: on the checkpoint's `state_dict` (the EMA
weights written by the recipe's EMAWeightAveraging callback) and on its `current_model_state` (the
raw weights), the class accuracy of conditional samples (the data's zoo-trained extractor
classifying samples drawn for each class), and FID at truncation psi 1 / 0.7 / 0.5 (same extractor
and real subset). Grids of the EMA model (one class per column, seed 0) at psi 1 and 0.7 (0.7
only for <= 10 classes) go to benchmarks/grids/gan_<family>_<data>[_psi0.7].png. `--no-train`
redoes only the last two for finished runs. Prints a Markdown table and writes results.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def _run(cmd: list[str], log: Path) -> float:
    began = time.perf_counter()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=os.environ)
    return time.perf_counter() - began


def _fid(ckpt: Path, num: int, out: Path, log: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "zoo.evaluate", "--ckpt", str(ckpt), "--metrics", "fid,precision_recall"]
    _run([*cmd, "--num", str(num), "--no-progress", "--out", str(out)], log)
    results = json.loads(out.read_text())
    return {row["metric"]: row["value"] for row in results["metrics"]}


def _raw_weights(ckpt: Path) -> Path | None:
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    if "current_model_state" not in state:
        return None
    state["state_dict"] = state.pop("current_model_state")
    state.pop("averaging_state", None)
    raw = ckpt.with_name("raw_weights.ckpt")
    torch.save(state, raw)
    return raw


def _class_accuracy(ckpt: Path, data: str, per_class: int = 100) -> float | None:
    from zoo.checkpoint import load_model
    from zoo.metrics.extractors import image_extractor

    model = load_model(str(ckpt))
    if not getattr(model, "conditional", False):
        return None
    classes = model.hparams.num_classes
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = model.generate(
        len(labels), condition=labels.tolist(), generator=torch.Generator().manual_seed(0)
    )
    extractor = image_extractor(data, model.hparams.image_size, model.hparams.in_channels, verbose=False)
    with torch.no_grad():
        predicted = extractor.logits(images).argmax(1)
    return float((predicted == labels).float().mean())


def _truncation_and_grids(ckpt: Path, data: str, family: str, grids: Path, num: int) -> dict[str, float]:
    """FID (the same extractor and real subset as zoo.evaluate) at truncation 1, 0.7 and 0.5, and the
    EMA model's grids (one class per column, a fixed seed) at psi 1 and 0.7."""
    from zoo import registry
    from zoo.checkpoint import load_model, read_checkpoint
    from zoo.evaluate import data_of_checkpoint, make_extractor, real_images
    from zoo.io.images import save_grid
    from zoo.metrics.image import frechet_distance

    model = load_model(str(ckpt))
    hp = model.hparams
    name, data_args = data_of_checkpoint(read_checkpoint(str(ckpt)), model)
    datamodule = registry.get_datamodule_class(name)(**data_args)
    real, _, _ = real_images(datamodule, "train", num, 0)
    extractor = make_extractor("auto", name, hp.image_size, hp.in_channels, None)
    real_features = extractor(real)
    classes = hp.num_classes if model.conditional else 0
    out = {}
    for psi in (1.0, 0.7, 0.5):
        labels = [i % classes for i in range(num)] if classes else None
        images = model.generate(
            num, condition=labels, generator=torch.Generator().manual_seed(0), truncation=psi
        )
        out[f"fid_psi{psi}"] = frechet_distance(real_features, extractor(images))
    grids.mkdir(parents=True, exist_ok=True)
    columns = classes if classes else 10
    rows = 10 if columns <= 10 else 4  # keep the PNGs small
    for psi, suffix in ((1.0, ""), (0.7, "_psi0.7"))[: 2 if columns <= 10 else 1]:
        labels = [i % classes for i in range(columns * rows)] if classes else None
        images = model.generate(
            columns * rows, condition=labels, generator=torch.Generator().manual_seed(0), truncation=psi
        )
        save_grid(images, grids / f"gan_{family}_{data}{suffix}.png", nrow=columns)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="dcgan,lsgan,wgan_gp,sngan,stylegan")
    p.add_argument("--data", default="digits")
    p.add_argument("--recipe", default="default")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--out", default="benchmarks/gan_runs")
    p.add_argument("--grids", default="benchmarks/grids")
    p.add_argument(
        "--no-train", action="store_true", help="only the truncation sweep and grids of finished runs"
    )
    args, extra = (
        p.parse_known_args()
    )  # anything else goes to zoo.fit (e.g. --trainer.max_steps 20 to try it)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for family in args.families.split(","):
        key = f"{family}/{args.data}/{args.recipe}"
        run = out / family / args.data / args.recipe
        if args.no_train:
            ckpt = run / "checkpoints" / "last.ckpt"
            results[key] |= _truncation_and_grids(ckpt, args.data, family, Path(args.grids), args.num)
            results[key]["class_accuracy"] = _class_accuracy(ckpt, args.data)
            results_path.write_text(json.dumps(results, indent=2))
            print(json.dumps({key: results[key]}), flush=True)
            continue
        if run.exists():
            shutil.rmtree(run)
        cmd = [
            sys.executable, "-m", "zoo.fit", "--model", family, "--data", args.data, "--logger", "none",
            "--recipe", args.recipe, "--trainer.default_root_dir", str(run),
            "--trainer.enable_progress_bar", "false", *extra,
        ]  # fmt: skip
        print(f"[{time.strftime('%H:%M:%S')}] training {key}", flush=True)
        wall = _run(cmd, out / f"{family}_{args.data}_{args.recipe}_fit.log")
        ckpt = run / "checkpoints" / "last.ckpt"
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        steps = state["global_step"]
        n_critic = state["hyper_parameters"].get("n_critic", 1)
        batches = steps * n_critic // (n_critic + 1)
        row = {"wall_s": wall, "global_step": steps, "batches": batches, "s_per_batch": wall / batches}
        print(f"[{time.strftime('%H:%M:%S')}] evaluating {key}", flush=True)
        row["ema"] = _fid(ckpt, args.num, run / "fid_ema.json", run / "fid_ema.log")
        raw = _raw_weights(ckpt)
        if raw is not None:
            row["raw"] = _fid(raw, args.num, run / "fid_raw.json", run / "fid_raw.log")
        row["class_accuracy"] = _class_accuracy(ckpt, args.data)
        row |= _truncation_and_grids(ckpt, args.data, family, Path(args.grids), args.num)
        results[key] = row
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps({key: row}), flush=True)

    print(
        "| family | data | wall | s/batch | batches (D steps) | FID (EMA) | FID (raw) "
        "| precision / recall (EMA) | class acc. |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, row in results.items():
        family, data, _ = key.split("/")
        ema, raw = row["ema"], row.get("raw", {})
        acc = row["class_accuracy"]
        print(
            f"| {family} | {data} | {row['wall_s'] / 60:.1f} min | {row['s_per_batch'] * 1000:.0f} ms | "
            f"{row['batches']} | {ema.get('fid', float('nan')):.2f} | {raw.get('fid', float('nan')):.2f} | "
            f"{ema.get('precision', float('nan')):.2f} / {ema.get('recall', float('nan')):.2f} | "
            f"{'-' if acc is None else f'{acc:.2f}'} |"
        )


if __name__ == "__main__":
    main()
