"""Seconds per training step of a latent family's recipe, side by side, on `shapes` batches of the recipe's size.

    python benchmarks/recipe_step_time.py ldm:default ldm:dit_flow dit:default [--steps 20] [--threads 2]

Each model is built from its recipe's `model:` section (a recipe is read over default.yaml, as zoo.fit does),
with an untrained first stage (its cost is the same as a trained one's) and, for text families, a tokenizer
trained on the batch's captions; then `--steps` timed steps (after 3 of warm-up) of the family's own loss,
backward and AdamW, alternating the models round by round so that a busy machine slows all alike. Medians.
What this leaves out of a recipe's wall time: the first stage's training, validation, sample grids.
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib import resources

import torch
import yaml

import zoo
from zoo import registry
from zoo.module import build_module


def recipe_model(family: str, recipe: str) -> dict:
    folder = resources.files("zoo.configs") / family
    config = yaml.safe_load((folder / "default.yaml").read_text())["model"]
    if recipe != "default":
        config.update(yaml.safe_load((folder / f"{recipe}.yaml").read_text())["model"])
    return config


def build(family: str, recipe: str, batch: dict) -> torch.nn.Module:
    config = recipe_model(family, recipe)
    cls = registry.get_model_class(family)
    if "num_classes" in cls.__init__.__code__.co_varnames:
        config["num_classes"] = 18
    model = build_module(cls, **config).train()
    model.first_stage_ready.fill_(True)
    if hasattr(model, "tokenizer"):
        from zoo.nn.text import CaptionTokenizer

        model.tokenizer = CaptionTokenizer.train(batch["caption"], model.hparams.vocab_size)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="+", help="family:recipe")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = zoo.create_datamodule("shapes", num_train=args.batch_size, batch_size=args.batch_size)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    models = {name: build(*name.split(":"), batch) for name in args.recipes}
    optimizers = {name: m.configure_optimizers() for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.steps + 3):
        for name, model in models.items():
            optimizer = optimizers[name]
            optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
            start = time.perf_counter()
            loss = model._loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 3:
                times[name].append(time.perf_counter() - start)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.steps} steps each"
    )
    print("| recipe | trained parameters | s / step (median) |\n|---|---|---|")
    for name, model in models.items():
        trained = sum(
            p.numel() for k, p in model.named_parameters() if not k.startswith(("first_stage.", "clip."))
        )
        print(f"| {name} | {trained / 1e6:.2f}M | {statistics.median(times[name]):.3f} |")


if __name__ == "__main__":
    main()
