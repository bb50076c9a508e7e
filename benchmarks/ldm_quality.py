"""Quality and sampling speed of an `ldm` checkpoint (or any text-to-image one on `shapes`: `dit`, `lcm`,
`maskgit`, `vq_transformer`): GenEval-style prompt adherence, FID, timing.

    python benchmarks/ldm_quality.py --ckpt runs/ldm/<run>/checkpoints/last.ckpt [--per-prompt 8] [--fid-num 1000]
    python benchmarks/ldm_quality.py --ckpt ... --steps 4,8,10 --categories single_object --fid-num 0

- Prompt adherence: `zoo.metrics.geneval` (the judge is trained on real shapes scenes only; its
  held-out accuracy is printed), per category, with the checkpoint's default sampler.
- FID with the zoo-trained `shapes` feature extractor: `--fid-num` samples for the captions of the
  real test split (so both sides have the same caption distribution; the scenes, 1 or 1-3 objects, of the
  data the checkpoint was trained on) against the test split, and
  the real-vs-real baseline at the same count (the train split against the test split).
- Sampling time: a batch of 16 with guidance, with the sampling options measured.
Each step count of --steps is measured in turn; a grid of the single-object prompts goes to --out/steps<N>/.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch

import zoo
from zoo.checkpoint import load_model
from zoo.evaluate import data_of_checkpoint
from zoo.io.images import save_grid
from zoo.metrics import frechet_distance, image_extractor
from zoo.metrics.geneval import CATEGORIES, geneval, geneval_prompts, shapes_judge


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--per-prompt", type=int, default=8, help="images per GenEval prompt")
    parser.add_argument("--fid-num", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", default=None, help="sampler steps, or several: 4,8,10 (each measured)")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument(
        "--attend-excite-scale",
        type=float,
        default=None,
        help="sample with Attend-and-Excite on the prompts' subject words, at this step size",
    )
    parser.add_argument("--out", default="benchmarks/out/ldm")
    args = parser.parse_args()
    model = load_model(args.ckpt)
    hp, own = ldm_hparams(model), model.hparams
    step_counts = [None] if args.steps is None else [int(s) for s in args.steps.split(",")]
    judge = shapes_judge(hp.image_size)
    print(f"checkpoint {args.ckpt}: {hp.get('backbone', 'unet')}, {hp.get('objective', 'diffusion')}; defaults "
          f"{own.get('sampler', type(model).__name__)}, {own.get('sampling_steps')} steps, guidance {own.get('guidance') or hp.get('guidance')}")  # fmt: skip
    print(f"judge held-out accuracy on real scenes: {judge.held_out_accuracy}")
    for steps in step_counts:
        sampling = {
            k: v
            for k, v in (("guidance", args.guidance), ("sampler", args.sampler), ("steps", steps))
            if v is not None
        }
        if args.attend_excite_scale is not None:
            sampling |= {"attend_excite": True, "attend_excite_scale": args.attend_excite_scale}
        print(f"\n## sampling {sampling or 'defaults'}")
        measure(
            model, sampling, args, Path(args.out) / f"steps{steps or own.get('sampling_steps', 'default')}"
        )


def ldm_hparams(model: torch.nn.Module) -> dict:
    """The ldm's arguments (image size, channels, backbone): an lcm checkpoint's are its student's."""
    return getattr(model, "student", model).hparams


def measure(model: torch.nn.Module, sampling: dict, args: argparse.Namespace, out: Path) -> None:
    """Sampling time, a grid of the single-object prompts, GenEval-style adherence and FID, for `sampling`."""
    hp = ldm_hparams(model)
    generator = torch.Generator().manual_seed(0)
    warm = {"steps": 2} if "steps" in inspect.signature(model.generate).parameters else {}
    model.generate(2, condition="a red circle", generator=generator, **warm)  # warm-up
    start = time.perf_counter()
    model.generate(16, condition="a red circle", generator=generator, **sampling)
    print(
        f"batch of 16 with guidance: {time.perf_counter() - start:.2f} s ({torch.get_num_threads()} threads)"
    )

    # a grid of every single-object prompt, 8 seeds each (rows: prompts)
    singles = [s.text for s in geneval_prompts() if s.category == "single_object"]
    images = model.generate(len(singles) * 8, condition=[p for p in singles for _ in range(8)],
                            generator=torch.Generator().manual_seed(0), **sampling)  # fmt: skip
    print(f"grid: {save_grid(images, out / 'single_object_prompts.png', nrow=8)}")

    start = time.perf_counter()
    report = geneval(
        model, images_per_prompt=args.per_prompt, categories=tuple(args.categories.split(",")), **sampling
    )
    print(
        f"GenEval-style adherence ({args.per_prompt} images per prompt, {time.perf_counter() - start:.0f} s):"
    )
    print("| category | accuracy |\n|---|---|")
    for name, value in report.items():
        print(f"| {name} | {value:.3f} |")
    failure_modes(model, sampling, args, out)

    if args.fid_num > 0:
        size = hp.image_size
        # the scenes the checkpoint trained on (1-3 objects for the default recipe), other splits' sizes
        checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        _, data_args = data_of_checkpoint(checkpoint, model)
        scenes = {k: data_args[k] for k in ("min_objects", "max_objects", "object_weights") if k in data_args}
        data = zoo.create_datamodule(
            "shapes", image_size=size, num_test=args.fid_num, num_train=max(args.fid_num, 2000), **scenes
        )
        data.setup()
        real_test = torch.stack([data.test_set[i]["image"] for i in range(args.fid_num)]).add(1).div(2)
        real_train = torch.stack([data.train_set[i]["image"] for i in range(args.fid_num)]).add(1).div(2)
        captions = [data.test_set[i]["caption"] for i in range(args.fid_num)]
        generator = torch.Generator().manual_seed(1)
        fakes = torch.cat([
            model.generate(len(captions[i : i + 100]), condition=captions[i : i + 100], generator=generator, **sampling)
            for i in range(0, len(captions), 100)
        ])  # fmt: skip
        extractor = image_extractor("shapes", size, hp.in_channels)
        with torch.no_grad():
            f_test, f_train, f_fake = (extractor(x) for x in (real_test, real_train, fakes))
        fid, baseline = frechet_distance(f_test, f_fake), frechet_distance(f_test, f_train)
        print(f"FID (zoo shapes extractor, {args.fid_num} samples): {fid:.3f}; real-vs-real baseline {baseline:.3f}; "
              f"ratio {fid / baseline:.2f}")  # fmt: skip
        save_grid(fakes[:64], out / "fid_samples.png", nrow=8)


def failure_modes(model: torch.nn.Module, sampling: dict, args: argparse.Namespace, out: Path) -> None:
    """How multi-object samples fail, by what the judge found in them: the wrong number of objects; the
    right number, but a colour or shape that was not asked for (or the asked ones mixed up); the asked
    objects, but the wrong relation."""
    specs = [s for s in geneval_prompts() if s.category in ("position", "counting")]
    specs = [s for s in specs if s.category in args.categories.split(",")]
    if not specs:
        return
    judge = shapes_judge(ldm_hparams(model).image_size)
    prompts = [s.text for s in specs for _ in range(args.per_prompt)]
    generator = torch.Generator().manual_seed(0)
    images = torch.cat([model.generate(len(prompts[i : i + 64]), condition=prompts[i : i + 64], generator=generator,
                                       **sampling) for i in range(0, len(prompts), 64)])  # fmt: skip
    first = [i for i, s in enumerate(specs) if s.category == "position"][:8]  # rows: the first 8 pair prompts
    grid = torch.cat([images[i * args.per_prompt : (i + 1) * args.per_prompt][:8] for i in first])
    print(f"two-object grid ({'; '.join(specs[i].text for i in first)}): "
          f"{save_grid(grid, out / 'two_object_prompts.png', nrow=min(8, args.per_prompt))}")  # fmt: skip
    rows: dict[str, list[str]] = {}
    for i, objects in enumerate(judge.detect(images)):
        spec = specs[i // args.per_prompt]
        asked, seen = sorted(spec.objects), sorted((o.color, o.shape) for o in objects)
        if len(objects) != len(asked):
            mode = f"{len(objects)} objects" if len(objects) < 4 else "4+ objects"
        elif sorted(c for c, _ in seen) != sorted(c for c, _ in asked):
            mode = "a colour not asked for"
        elif seen != asked:
            mode = "asked colours, a wrong shape"
        elif spec.category == "position" and not judge.judge(spec, objects)["correct"]:
            mode = "asked objects, wrong relation"
        else:
            mode = "right"
        rows.setdefault(spec.category, []).append(mode)
    print("failure modes (share of samples):")
    for category, modes in rows.items():
        counts = {m: modes.count(m) / len(modes) for m in sorted(set(modes))}
        print(f"- {category}: " + ", ".join(f"{m} {v:.3f}" for m, v in counts.items()))


if __name__ == "__main__":
    main()
