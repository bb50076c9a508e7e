"""Quality and sampling speed of a `video_diffusion` checkpoint on `moving_shapes`.

    OMP_NUM_THREADS=1 python benchmarks/video_diffusion_quality.py --ckpt runs/video_diffusion/<run>/checkpoints/last.ckpt

- Motion-direction accuracy judged by an independent tracker (no trained model): for every prompt
  "a <colour> <shape> moving <direction>" (all 6 colours x 3 shapes x 4 directions, `--per-prompt` clips
  each), the object is the set of pixels within `--colour-radius` of the prompted colour's RGB value; its
  centroid is tracked over the first half of the clip (the dataset guarantees the captioned motion there;
  a bounce may follow), and the clip's direction is the larger axis of that displacement. Also reported:
  the share of clips whose centroid moves monotonically over that half, the share where the prompted
  colour is found in every frame, and the same tracker on real test clips with their captions (the
  ceiling: what the tracker itself gets right).
- Per-frame FID with the zoo `shapes` image extractor (`zoo.metrics.image_extractor`) over every frame,
  generated clips for the test split's captions against the test split; real-vs-real floor (val vs test).
- FVD-style Fréchet distance with a 3D-conv classifier trained by zoo on moving_shapes
  (`zoo.metrics.video_extractor`; its held-out direction/shape/colour accuracy is printed); same sets.
- Sampling time per clip (batch of 16, the checkpoint's sampler, steps and guidance).
- Longer clips: 16 frames from a model trained on 8, in one pass (`extend="direct"`, relative frame
  positions) and window by window (`extend="continue"`), scored by the same tracker over their first 8
  frames and by presence of the object in every frame.
Writes a JSON file of the figures, frame grids and a few GIFs to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from zoo.checkpoint import load_model
from zoo.io.video import save_frame_grid, save_gifs
from zoo.metrics import frechet_distance, image_extractor
from zoo.metrics.video_extractor import features_of, video_extractor

COLOURS = {  # the moving_shapes palette (datamodules/shapes.py COLOR_RGB), in 0..255
    "red": (225, 30, 30), "green": (30, 175, 55), "blue": (40, 85, 235),
    "yellow": (245, 220, 35), "purple": (150, 55, 205), "orange": (250, 135, 15),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("right", "left", "up", "down")


def colour_centroids(clips: torch.Tensor, colours: list[str], radius: float) -> torch.Tensor:
    """Centroids (N, T, 2) as (x, y) of the pixels within `radius` (RGB, 0..255) of each clip's colour; NaN
    in frames where fewer than 3 pixels match."""
    rgb = torch.tensor([COLOURS[c] for c in colours], dtype=torch.float32)[:, None, :, None, None]
    mask = ((clips * 255 - rgb).pow(2).sum(2).sqrt() < radius).float()  # (N, T, H, W)
    h, w = clips.shape[-2:]
    area = mask.sum((2, 3))
    cx = (mask * torch.arange(w, dtype=torch.float32)).sum((2, 3)) / area
    cy = (mask * torch.arange(h, dtype=torch.float32)[:, None]).sum((2, 3)) / area
    centroids = torch.stack([cx, cy], -1)
    centroids[area < 3] = float("nan")
    return centroids


def judge(centroids: torch.Tensor, horizon: int) -> dict[str, torch.Tensor]:
    """Direction over frames 0..horizon, monotone motion along that axis, and presence in every frame."""
    part = centroids[:, : horizon + 1]
    found = ~torch.isnan(centroids).any(-1).any(-1)
    travel = part[:, -1] - part[:, 0]
    axis = travel.abs().argmax(1)
    sign = torch.sign(travel.gather(1, axis[:, None]))[:, 0]
    names = []
    for a, s, ok in zip(axis.tolist(), sign.tolist(), found.tolist(), strict=True):
        names.append(
            None if not ok else ("right" if s > 0 else "left") if a == 0 else ("down" if s > 0 else "up")
        )
    path = part.gather(2, axis[:, None, None].expand(-1, part.shape[1], 1))[..., 0]
    monotone = ((path[:, 1:] - path[:, :-1]) * sign[:, None] > 0).all(1) & found
    return {"direction": names, "monotone": monotone, "found": found}


def direction_accuracy(names: list[str | None], prompts: list[str]) -> float:
    return sum(n == p.split()[-1] for n, p in zip(names, prompts, strict=True)) / len(prompts)


def generate(model, prompts: list[str], batch: int, seed: int, **options) -> torch.Tensor:  # noqa: ANN001
    generator = torch.Generator().manual_seed(seed)
    out = [model.generate(len(prompts[i : i + batch]), condition=prompts[i : i + batch], generator=generator, **options)
           for i in range(0, len(prompts), batch)]  # fmt: skip
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--per-prompt", type=int, default=2, help="clips per direction prompt (72 prompts)")
    parser.add_argument("--fid-num", type=int, default=256, help="clips for per-frame FID and FVD")
    parser.add_argument("--long-num", type=int, default=48, help="clips for the 16-frame check")
    parser.add_argument("--colour-radius", type=float, default=80.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/video_diffusion")
    parser.add_argument(
        "--direction-only", action="store_true", help="stop after the direction prompts (a quick check)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = load_model(args.ckpt).eval()
    frames, size, channels = model.hparams.frames, model.hparams.image_size, model.hparams.in_channels
    horizon = (frames - 1) // 2 + 1 if frames > 2 else frames - 1  # the half the caption is guaranteed for
    results: dict[str, object] = {"ckpt": args.ckpt, "frames": frames, "threads": args.threads}

    # --- real clips: the tracker's ceiling, and the reference sets for FID / FVD
    from zoo import registry

    data = registry.create_datamodule("moving_shapes", frames=frames, image_size=size, channels=channels)
    data.setup("fit")
    n_real = min(args.fid_num, len(data.test_set))
    test = [data.test_set[i] for i in range(n_real)]
    real = (torch.stack([it["video"] for it in test]) + 1) / 2
    captions = [it["caption"] for it in test]
    val = (torch.stack([data.val_set[i]["video"] for i in range(min(n_real, len(data.val_set)))]) + 1) / 2
    real_colours = [c.split()[1] for c in captions]
    verdict = judge(colour_centroids(real, real_colours, args.colour_radius), horizon)
    results["tracker_on_real"] = {
        "direction_accuracy": direction_accuracy(verdict["direction"], captions),
        "monotone": verdict["monotone"].float().mean().item(),
        "found": verdict["found"].float().mean().item(),
    }
    print("tracker on real test clips:", results["tracker_on_real"])

    # --- direction prompts
    prompts = [f"a {c} {s} moving {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS] * args.per_prompt
    start = time.perf_counter()
    clips = generate(model, prompts, args.batch, seed=0)
    sample_seconds = time.perf_counter() - start
    verdict = judge(colour_centroids(clips, [p.split()[1] for p in prompts], args.colour_radius), horizon)
    per_direction = {
        d: direction_accuracy(
            [v for v, p in zip(verdict["direction"], prompts, strict=True) if p.endswith(d)],
            [p for p in prompts if p.endswith(d)],
        )
        for d in DIRECTIONS
    }
    results["generated"] = {
        "num_clips": len(prompts),
        "direction_accuracy": direction_accuracy(verdict["direction"], prompts),
        "per_direction": per_direction,
        "monotone": verdict["monotone"].float().mean().item(),
        "found": verdict["found"].float().mean().item(),
        "seconds_per_clip": sample_seconds / len(prompts),
    }
    print("generated:", results["generated"])
    order = [i for c in ("red", "blue") for i, p in enumerate(prompts[:72]) if f"{c} " in p][:24]
    save_frame_grid(clips[order], out / "direction_prompts.png")
    save_gifs(clips[order[:8]], out / "gifs", fps=model.fps)
    (out / "direction_prompts.txt").write_text("\n".join(prompts[i] for i in order) + "\n")
    if args.direction_only:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        return

    # --- sampling time for a batch of 16 (the checkpoint's defaults)
    start = time.perf_counter()
    model.generate(16, condition=prompts[:16], generator=torch.Generator().manual_seed(1))
    results["seconds_per_clip_batch16"] = (time.perf_counter() - start) / 16

    # --- per-frame FID and FVD-style distance: generated for the test captions vs the test split
    fake = generate(model, captions, args.batch, seed=2)
    images = image_extractor("shapes", size, channels)

    def frame_features(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            flat = v.flatten(0, 1)
            return torch.cat([images(flat[i : i + 512]) for i in range(0, len(flat), 512)])

    video = video_extractor("moving_shapes", frames, size, channels)
    results["video_extractor_held_out_accuracy"] = video.accuracies
    results["per_frame_fid"] = frechet_distance(frame_features(real), frame_features(fake))
    results["per_frame_fid_real_vs_real"] = frechet_distance(frame_features(real), frame_features(val))
    results["fvd_zoo"] = frechet_distance(features_of(video, real), features_of(video, fake))
    results["fvd_zoo_real_vs_real"] = frechet_distance(features_of(video, real), features_of(video, val))
    with torch.no_grad():
        logits = torch.cat(
            [video.all_logits(fake[i : i + 128])["directions"] for i in range(0, len(fake), 128)]
        )
    truth = torch.tensor([DIRECTIONS.index(c.split()[-1]) for c in captions])
    results["video_classifier_direction_accuracy_on_generated"] = (
        (logits.argmax(1) == truth).float().mean().item()
    )
    print({k: v for k, v in results.items() if k.startswith(("per_frame", "fvd", "video"))})

    # --- 16 frames from a model trained on `frames`
    long_prompts = prompts[: args.long_num]
    results["long"] = {}
    for mode in ("direct", "continue"):
        start = time.perf_counter()
        long = generate(model, long_prompts, args.batch, seed=3, frames=2 * frames, extend=mode)
        seconds = time.perf_counter() - start
        verdict = judge(
            colour_centroids(long, [p.split()[1] for p in long_prompts], args.colour_radius), horizon
        )
        results["long"][mode] = {
            "frames": 2 * frames,
            "direction_accuracy_first_half": direction_accuracy(verdict["direction"], long_prompts),
            "found_in_every_frame": verdict["found"].float().mean().item(),
            "per_frame_fid": frechet_distance(frame_features(real), frame_features(long)),
            "seconds_per_clip": seconds / len(long_prompts),
        }
        save_frame_grid(long[:8], out / f"long_{mode}.png")
        print(mode, results["long"][mode])

    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
