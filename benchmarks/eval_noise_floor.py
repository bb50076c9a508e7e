"""Real-vs-real FID / KID / precision-recall of the zoo-trained extractors: the noise floor of each.

What `zoo.evaluate` does with a perfect generator: its real set is n images of the train split, its
"fake" set n *other* real images from the same distribution. For `shapes`, the second set is a fresh
draw (the datamodule with another seed, so images the extractor never saw); for `digits`, which has
only 1,797 images, it is the held-out 360 (val + test), and train-vs-train halves up to 718.

    python benchmarks/eval_noise_floor.py            # about 1 minute with the extractors cached
"""

from __future__ import annotations

import torch

from zoo import create_datamodule
from zoo.metrics import frechet_distance as fid
from zoo.metrics import image_extractor, kernel_distance, precision_recall
from zoo.metrics.registry import batched


def images(dataset, indices) -> torch.Tensor:  # noqa: ANN001
    return (torch.stack([dataset[i]["image"] for i in indices]) + 1) / 2


def row(name: str, n_a: int, n_b: int, fa: torch.Tensor, fb: torch.Tensor) -> None:
    kid, _ = kernel_distance(fa, fb, subset_size=min(1000, n_a, n_b), subsets=50)
    p, r = precision_recall(fa, fb)
    print(f"| {name} | {n_a} vs {n_b} | {fid(fa, fb):.3f} | {kid:.4f} | {p:.3f} | {r:.3f} |")


def main() -> None:
    torch.set_num_threads(1)
    print("| data | sets | FID | KID | precision | recall |")
    print("|---|---|---|---|---|---|")
    shapes = image_extractor("shapes", 32, 3)
    a = create_datamodule("shapes", num_train=5000, num_val=1, num_test=1, seed=0)
    b = create_datamodule("shapes", num_train=5000, num_val=1, num_test=1, seed=1)
    a.setup(), b.setup()
    fa = batched(shapes, images(a.train_set, range(5000)), 500, "cpu")
    fb = batched(shapes, images(b.train_set, range(5000)), 500, "cpu")
    for n in (1000, 2000, 5000):
        row("shapes 32x32 (train vs fresh draw)", n, n, fa[:n], fb[:n])
    digits = image_extractor("digits", 32, 1)
    d = create_datamodule("digits")
    d.setup()
    train = batched(digits, images(d.train_set, range(len(d.train_set))), 500, "cpu")
    held = torch.cat([batched(digits, images(s, range(len(s))), 500, "cpu") for s in (d.val_set, d.test_set)])
    for n in (180, 360):
        row("digits 32x32 (train vs held-out)", n, n, train[:n], held[:n])
    half = len(train) // 2
    row("digits 32x32 (train halves)", half, len(train) - half, train[:half], train[half:])


if __name__ == "__main__":
    main()
