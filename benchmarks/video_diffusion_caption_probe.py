"""Does a video_diffusion checkpoint use the direction word of its captions?

The validation loss (fixed noise and timesteps) of 96 held-out moving_shapes clips, conditioned on their
own captions, on the same captions with the direction replaced by its opposite, and on empty captions.
A model that uses the direction word has a lower loss with the right one.

    OMP_NUM_THREADS=1 python benchmarks/video_diffusion_caption_probe.py runs/video_diffusion/<run>/checkpoints/last.ckpt
"""

import sys

import torch

from zoo.checkpoint import load_model
from zoo.datamodules.video import MovingShapesDataModule

OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}


def main(path: str, clips: int = 96, batch: int = 24) -> dict[str, float]:
    torch.set_num_threads(1)
    model = load_model(path).eval()
    data = MovingShapesDataModule(num_train=8, num_val=8, num_test=clips)
    data.setup()
    items = [data.test_set[i] for i in range(clips)]
    video = torch.stack([item["video"] for item in items])
    own = [item["caption"] for item in items]
    opposite = [" ".join(OPPOSITE.get(w, w) for w in c.split()) for c in own]
    results = {}
    with torch.no_grad():
        for name, captions in (
            ("own caption", own),
            ("opposite direction", opposite),
            ("empty caption", [""] * clips),
        ):
            # the same noise and timesteps for every condition: batch k always uses seed 0
            losses = [
                model._loss(
                    {"video": video[i : i + batch], "caption": captions[i : i + batch]},
                    torch.Generator().manual_seed(0),
                ).item()
                for i in range(0, clips, batch)
            ]
            results[name] = sum(losses) / len(losses)
            print(f"{name:20s} loss {results[name]:.5f}")
    return results


if __name__ == "__main__":
    main(sys.argv[1])
