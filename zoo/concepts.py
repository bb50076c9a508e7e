"""`python -m zoo.concepts`: write a concept folder, a few images of a colour the base model never saw.

    python -m zoo.concepts --color pink --shapes circle square --num 8 --token "<s1>" --out concept/
        [--image-size 32] [--seed 0] [--template "a {token} {shape}"] [--overwrite]

writes `concept/0000.png` ... `0007.png`, one pink circle or square each (placed, sized and rotated as
the `shapes` datamodule does), and `concept/captions.csv` (`file,caption`) with captions such as
"a <s1> circle": the colour word replaced by the token. It is an `image_folder`:

    python -m zoo.fit --model ... --data image_folder --data.root concept/ --data.image_size 32

Colours: the `shapes` defaults (red, green, blue, yellow, purple, orange) and pink, cyan, brown;
shapes: circle, square, triangle and star, hexagon, cross (default: circle, square, triangle). The
same from Python: `write_concept_folder(out, color, shapes, num=..., token=...)`, which returns the
folder (the `shapes` datamodule's `write_concept_folder`, reached through the registry).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo import registry
from zoo.cli import UsageError, int_at_least, usage_errors_reported
from zoo.errors import DataError

PROG = "python -m zoo.concepts"


def _shapes_module() -> Any:
    # zoo/ reaches a datamodule only through the registry; the concept data lives beside ShapesDataModule
    return registry.datamodule_module("shapes")


def write_concept_folder(
    out: str | Path, color: str, shapes: list[str] | None = None, **options: Any
) -> Path:
    """`zoo.datamodules.shapes.write_concept_folder`: see there, and this module's docstring."""
    return _shapes_module().write_concept_folder(out, color, shapes, **options)


def build_parser() -> argparse.ArgumentParser:
    grammar = _shapes_module()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write an image_folder of one new colour's objects, captioned with a placeholder token "
        "(the data of textual inversion, DreamBooth or a LoRA).",
    )
    parser.add_argument(
        "--color", required=True, choices=grammar.ALL_COLOR_NAMES, metavar="COLOR",
        help=f"the concept's colour, one of {', '.join(grammar.ALL_COLOR_NAMES)}",
    )  # fmt: skip
    parser.add_argument(
        "--shapes", nargs="+", choices=grammar.ALL_SHAPE_NAMES, default=None, metavar="SHAPE",
        help=f"shapes to draw it on, from {', '.join(grammar.ALL_SHAPE_NAMES)} "
        f"(default: {' '.join(grammar.SHAPE_NAMES)})",
    )  # fmt: skip
    parser.add_argument("--num", type=int_at_least(1), default=8, help="images to write (default 8)")
    parser.add_argument("--token", default="<s1>", help="the word that stands for the colour (default <s1>)")
    parser.add_argument("--out", required=True, help="the folder to write: missing or empty")
    parser.add_argument("--image-size", type=int_at_least(8), default=32, help="side in pixels (default 32)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the objects' sizes and places (default 0)"
    )
    parser.add_argument(
        "--template", default=grammar.CONCEPT_TEMPLATE,
        help="caption of each image; fields {token}, {shape}, {color} (default: %(default)r)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the images and captions already in --out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of `python -m zoo.concepts`; returns the folder written."""
    with usage_errors_reported(PROG):
        args = build_parser().parse_args(argv)
        try:
            root = write_concept_folder(
                args.out, args.color, args.shapes, num=args.num, token=args.token,
                image_size=args.image_size, seed=args.seed, template=args.template, overwrite=args.overwrite,
            )  # fmt: skip
        except DataError as error:
            raise UsageError(str(error), PROG) from None
    print(f"wrote {args.num} images and captions.csv to {root}; train on them with "
          f"--data image_folder --data.root {root} --data.image_size {args.image_size}")  # fmt: skip
    return root


if __name__ == "__main__":
    main()
