"""Why the direction word went unused, and which training change makes it matter: a small, fast lab.

Trains the tests' tiny pixel-space video_diffusion (16x16, 4 frames, moving_shapes at speed 0.10-0.12; see
TINY in tests/test_video_diffusion.py) for --steps on one thread with the given model options, then reports
- the denoising loss of 192 held-out clips per noise band, conditioned on their own captions, on the captions
  with the direction word replaced by its opposite, and on empty captions (same noise and timesteps for the
  three): a model that uses the direction word has own < opposite;
- how far apart the pooled text embeddings of "... moving right" and "... moving left" are, beside two colours;
- for 64 prompts, the share of generated clips whose centroid moves monotonically over the first half
  ("moving") and the share that move the prompted way ("right_way", chance 0.25), by the tests' tracker.

    OMP_NUM_THREADS=1 python benchmarks/video_diffusion_direction_lab.py NAME --steps 2000 \
        --options '{"freeze_text_encoder": true, "high_noise_fraction": 0.5}' [--token-std 1.0]

--token-std re-initialises the token embeddings with that standard deviation (the encoder's own is 0.02).
Each run appends one JSON line to --out (default benchmarks/out/video_diffusion_direction_lab.jsonl).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_video_diffusion import HALF, TINY, direction_of, moves, track  # noqa: E402
from video_diffusion_caption_probe import OPPOSITE  # noqa: E402

from zoo.datamodules.video import MovingShapesDataModule  # noqa: E402
from zoo.diffusion import q_sample  # noqa: E402
from zoo.diffusion.parameterization import predict_x0  # noqa: E402
from zoo.plugins.video_diffusion import VideoDiffusion  # noqa: E402

BANDS = [(0, 300), (300, 600), (600, 800), (800, 900), (900, 1000)]


def band_losses(
    model: VideoDiffusion, video: torch.Tensor, captions: list[str]
) -> dict[str, dict[str, float]]:
    opposite = [" ".join(OPPOSITE.get(w, w) for w in c.split()) for c in captions]
    n, out = len(video), {}
    for lo, hi in BANDS:
        row = {}
        for key, caps in (("own", captions), ("opposite", opposite), ("empty", [""] * n)):
            total = 0.0
            for i in range(0, n, 48):
                g = torch.Generator().manual_seed(i)  # the same draws for the three conditions
                x0 = model.encode_video(video[i : i + 48])
                t = torch.randint(lo, hi, (len(x0),), generator=g)
                x_t = q_sample(x0, t, torch.randn(x0.shape, generator=g), model.schedule)
                output = model._unet(x_t, t, model.encode_text(caps[i : i + 48]))
                alpha_bar = model.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1).float()
                total += float(
                    ((predict_x0(output, x_t, alpha_bar, model.hparams.prediction) - x0) ** 2).mean()
                ) * len(x0)
            row[key] = round(total / n, 5)
        out[f"t{lo}-{hi}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--options", default="{}", help="VideoDiffusion arguments over TINY, as JSON")
    parser.add_argument("--token-std", type=float, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/out/video_diffusion_direction_lab.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = json.loads(args.options)

    L.seed_everything(0, verbose=False)
    data = MovingShapesDataModule(
        frames=4,
        fps=6.0,
        image_size=16,
        speed=(0.1, 0.12),
        num_train=4000,
        num_val=16,
        num_test=192,
        batch_size=8,
    )
    model = VideoDiffusion(**{**TINY, **options})
    data.setup("fit")
    data.setup("test")
    if args.token_std is not None:
        torch.nn.init.normal_(model.text_encoder.token_embedding.weight, std=args.token_std)
    model._train_tokenizer(data)
    trainer = L.Trainer(
        max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=f"/tmp/direction_lab/{args.name}",
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    result: dict[str, object] = {
        "name": args.name, "steps": args.steps, "seconds": round(time.perf_counter() - start),
        "options": options, "token_std": args.token_std,
    }  # fmt: skip
    model.eval()
    with torch.no_grad():
        pooled = model.encode_text(
            ["a red circle moving right", "a red circle moving left", "a blue circle moving right"]
        )["pooled"]
        result["pooled_right_left"] = round(float((pooled[0] - pooled[1]).norm()), 3)
        result["pooled_red_blue"] = round(float((pooled[0] - pooled[2]).norm()), 3)
        items = [data.test_set[i] for i in range(192)]
        video = torch.stack([it["video"] for it in items])
        result.update(band_losses(model, video, [it["caption"] for it in items]))
        prompts = [
            f"a {c} {s} moving {d}"
            for c in ("red", "green", "blue", "yellow")
            for s in ("circle", "square")
            for d in ("right", "left", "up", "down")
        ] * 2
        clips = model.generate(len(prompts), condition=prompts, generator=torch.Generator().manual_seed(0))
        centroids = track(clips)[:, :HALF]
        result["moving"] = round(moves(centroids).float().mean().item(), 3)
        right = sum(d == p.split()[-1] for d, p in zip(direction_of(centroids), prompts, strict=True))
        result["right_way"] = round(right / len(prompts), 3)
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
