"""Evaluation throughput: zoo (torchmetrics' InceptionV3 + zoo.metrics FID) against torch-fidelity, same images.

Both sides load the same InceptionV3 weights file (random weights in the FID network's format, since
this machine cannot download the real ones; speed does not depend on the values) and compute FID
between the same two sets of 32x32 `shapes` images, upsampled to 299x299 inside the network. The
time covers feature extraction and the FID itself; the two runs alternate, median of `--repeats`.
The zoo-trained `shapes` extractor's throughput is measured too, for scale.

    pip install -e ".[bench]"
    python benchmarks/eval_speed.py --num 256 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def shapes_uint8(num: int, seed: int) -> torch.Tensor:
    from zoo.datamodules.shapes import render_shapes

    images = render_shapes(num, image_size=32, seed=seed)["images"]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8


class Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def zoo_fid(extractor: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, batch: int) -> float:
    from zoo.metrics import frechet_distance
    from zoo.metrics.registry import batched

    fa = batched(extractor, a.float() / 255, batch, "cpu")
    fb = batched(extractor, b.float() / 255, batch, "cpu")
    return frechet_distance(fa, fb)


def fidelity_fid(weights: Path, a: torch.Tensor, b: torch.Tensor, batch: int) -> float:
    import torch_fidelity

    out = torch_fidelity.calculate_metrics(
        input1=Images(a), input2=Images(b), fid=True, cuda=False, batch_size=batch, cache=False,
        feature_extractor_weights_path=str(weights), verbose=False, save_cpu_ram=True,
    )  # fmt: skip
    return float(out["frechet_inception_distance"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=256, help="images per set (two sets)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision

    from zoo.metrics import image_extractor, inception_extractor

    a, b = shapes_uint8(args.num, 1), shapes_uint8(args.num, 2)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "pt_inception-2015-12-05-6726825d.pth"
        torch.manual_seed(0)
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=False, init_weights=False, num_classes=1008
        )
        torch.save(net.state_dict(), weights)
        inception = inception_extractor(weights)
        zoo_fid(inception, a[:4], b[:4], 4)  # warm-up, both sides share the kernels
        times: dict[str, list[float]] = {"zoo": [], "torch-fidelity": []}
        values: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, run in (
                ("zoo", lambda: zoo_fid(inception, a, b, args.batch)),
                ("torch-fidelity", lambda: fidelity_fid(weights, a, b, args.batch)),
            ):
                start = time.perf_counter()
                values[name] = run()
                times[name].append(time.perf_counter() - start)
    images = 2 * args.num
    print(
        f"{images} images (2 sets of {args.num}, 32x32 -> 299x299), batch {args.batch}, {args.threads} threads"
    )
    print("| side | median time (s) | images/s | FID (random weights) |")
    print("|---|---|---|---|")
    for name in times:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.2f} | {images / t:.1f} | {values[name]:.4g} |")
    ratio = statistics.median(times["torch-fidelity"]) / statistics.median(times["zoo"])
    print(f"throughput zoo / torch-fidelity: {ratio:.2f}x")
    shapes = image_extractor("shapes", 32, 3)
    start = time.perf_counter()
    zoo_fid(shapes, a, b, 256)
    t = time.perf_counter() - start
    print(f"zoo shapes extractor + FID: {t:.3f} s, {images / t:.0f} images/s")


if __name__ == "__main__":
    main()
