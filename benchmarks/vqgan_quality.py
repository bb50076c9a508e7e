"""Reconstruction quality of image autoencoders on `shapes`: a `vqgan` tokenizer and/or a `vae` first stage.

    python benchmarks/vqgan_quality.py --ckpt runs/vqgan/<run>/checkpoints/last.ckpt \
        [--ckpt runs/vae/<run>/checkpoints/last.ckpt] [--num 1000]

For each checkpoint: reconstructions of `--num` real training images (a vqgan through its codes, a vae
through its posterior mean), their FID with the zoo `shapes` extractor against the test split (as
benchmarks/RESULTS.md measures the ldm's first stage: 11.2 for the ldm recipe's vae), L1, and for a vqgan
the fraction of its codebook used on those images and the codes' perplexity. Also the real-vs-real
baseline (train split against test split).
"""

from __future__ import annotations

import argparse

import torch

import zoo
from zoo.checkpoint import load_model
from zoo.metrics.extractors import image_extractor
from zoo.metrics.image import frechet_distance
from zoo.tokens import code_usage


@torch.no_grad()
def features(extractor: torch.nn.Module, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([extractor(images[i : i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module, x: torch.Tensor, batch: int = 100
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reconstructions in [-1, 1] of x in [-1, 1], and the codes (vqgan) or None (vae)."""
    outs, codes = [], []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        if hasattr(model, "encode_codes"):
            c = model.encode_codes(chunk)
            codes.append(c)
            outs.append(model.decode_codes(c))
        else:
            outs.append(model.decode(model.encode(chunk)[0]).clamp(-1, 1))
    return torch.cat(outs), (torch.cat(codes) if codes else None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", action="append", required=True, help="a vqgan or vae checkpoint; repeatable"
    )
    parser.add_argument("--num", type=int, default=1000)
    args = parser.parse_args()
    models = [load_model(path).eval() for path in args.ckpt]
    size = models[0].hparams.image_size
    data = zoo.create_datamodule("shapes", image_size=size, num_test=args.num, num_train=max(args.num, 2000))
    data.setup("fit")
    train = torch.stack([data.train_set[i]["image"] for i in range(args.num)])
    test = torch.stack([data.test_set[i]["image"] for i in range(args.num)])
    extractor = image_extractor("shapes", size, 3)
    f_test = features(extractor, (test + 1) / 2)
    print(
        f"real-vs-real (train vs test, {args.num} each): FID {frechet_distance(f_test, features(extractor, (train + 1) / 2)):.3f}"
    )
    for path, model in zip(args.ckpt, models, strict=True):
        reconstruction, codes = reconstruct(model, train)
        fid = frechet_distance(f_test, features(extractor, (reconstruction + 1) / 2))
        line = f"{path}: reconstruction FID {fid:.3f}, L1 {(reconstruction - train).abs().mean():.4f}"
        if codes is not None:
            usage, perplexity = code_usage(torch.bincount(codes.flatten(), minlength=model.codebook_size))
            line += f", codebook usage {usage:.3f} of {model.codebook_size}, perplexity {perplexity:.1f}"
        print(line)


if __name__ == "__main__":
    main()
