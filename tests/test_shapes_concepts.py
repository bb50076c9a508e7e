"""Concepts the default `shapes` data never shows: the extra colours (pink, cyan, brown) and shapes (star,
hexagon, cross), the `colors` / `shapes` options, `python -m zoo.concepts`, and judges that know them.

Checked against the pixels (colours at object centres, areas against pi s^2, coverage inside and outside
the stated radii, disjoint masks) and against the default lists written out by hand; no judge is trained
for real here (a few steps, for the shape of its heads and its cache).
"""

from __future__ import annotations

import csv
import itertools
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from zoo.datamodules.image_folder import ImageFolderDataModule
from zoo.datamodules.shapes import (
    ALL_COLOR_NAMES,
    ALL_COLOR_RGB,
    ALL_SHAPE_NAMES,
    CIRCUMRADIUS,
    INRADIUS,
    SEGMENTATION_PALETTE,
    ShapeObject,
    ShapesDataModule,
    caption_for,
    class_names,
    parse_caption,
    render_shapes,
    shape_alpha,
    shape_keypoints,
    write_concept_folder,
)
from zoo.errors import DataError

DEFAULT_COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
DEFAULT_SHAPES = ["circle", "square", "triangle"]
NEW_COLORS = {"pink": (255, 105, 180), "cyan": (0, 210, 210), "brown": (130, 85, 55)}
NEW_SHAPES = ["star", "hexagon", "cross"]
SMALL = dict(num_train=24, num_val=8, num_test=8, batch_size=8)


# --------------------------------------------------------------------------------- the tables and defaults


def test_full_tables_keep_the_defaults_first():
    assert list(ALL_COLOR_NAMES) == [*DEFAULT_COLORS, *NEW_COLORS]
    assert list(ALL_SHAPE_NAMES) == [*DEFAULT_SHAPES, *NEW_SHAPES]
    assert [tuple(c) for c in ALL_COLOR_RGB[6:]] == list(NEW_COLORS.values())
    # each new colour far from every other in RGB (more than the defaults yellow and orange, 87 apart), so
    # pink is not red, purple or orange, nor brown red or orange
    for a, b in itertools.product(range(6, 9), range(9)):
        distance = np.linalg.norm(ALL_COLOR_RGB[a].astype(float) - ALL_COLOR_RGB[b])
        assert a == b or distance > 110, (ALL_COLOR_NAMES[a], ALL_COLOR_NAMES[b], distance)
    assert np.array_equal(SEGMENTATION_PALETTE[:3], np.eye(3))
    assert len({tuple(row) for row in SEGMENTATION_PALETTE}) == 6 and (SEGMENTATION_PALETTE.sum(1) > 0).all()


def test_defaults_are_the_six_colours_and_three_shapes_written_out():
    """None renders exactly what the explicit default lists render, and the 18 classes are the old ones."""
    kwargs = dict(image_size=24, min_objects=1, max_objects=3, seed=11)
    implicit = render_shapes(60, **kwargs)
    explicit = render_shapes(60, colors=DEFAULT_COLORS, shapes=DEFAULT_SHAPES, **kwargs)
    assert implicit.keys() == explicit.keys()
    for key, value in implicit.items():
        if isinstance(value, list):
            assert value == explicit[key], key
        else:
            assert value.dtype == explicit[key].dtype and value.tobytes() == explicit[key].tobytes(), key
    assert set(np.unique(implicit["colors"])) <= {-1, *range(6)}
    assert set(np.unique(implicit["shapes"])) <= {-1, 0, 1, 2}
    assert class_names() == [f"{c} {s}" for c in DEFAULT_COLORS for s in DEFAULT_SHAPES]

    a = ShapesDataModule(max_objects=2, seed=4, **SMALL)
    b = ShapesDataModule(max_objects=2, seed=4, colors=DEFAULT_COLORS, shapes=DEFAULT_SHAPES, **SMALL)
    assert a.class_names == b.class_names and a.num_classes == 18
    a.setup()
    b.setup()
    for i in range(len(a.train_set)):
        x, y = a.train_set[i], b.train_set[i]
        assert x["caption"] == y["caption"]
        assert all(torch.equal(x[k], y[k]) for k in x if k != "caption")


# --------------------------------------------------------------------------------- colours and shapes


@pytest.mark.parametrize("color", list(NEW_COLORS))
def test_extra_colours_render_with_their_rgb(color):
    data = render_shapes(20, image_size=32, colors=[color], shapes=[*DEFAULT_SHAPES, *NEW_SHAPES], seed=1)
    assert (data["colors"][:, 0] == ALL_COLOR_NAMES.index(color)).all()
    for image, (cx, cy) in zip(data["images"], data["centers"][:, 0], strict=True):
        assert tuple(image[int(cy), int(cx)]) == NEW_COLORS[color]
    assert all(caption.startswith(f"a {color} ") for caption in data["captions"])


def test_new_shapes_have_about_a_circles_area():
    scale, size = 20.0, 128
    circle = shape_alpha("circle", 64, 64, scale, 0.0, size).astype(float).sum() / 255
    assert abs(circle / (math.pi * scale**2) - 1) < 0.01
    for shape, angle in itertools.product(NEW_SHAPES, (0.0, 0.4, 1.3)):
        coverage = shape_alpha(shape, 64, 64, scale, angle, size)
        area = (coverage >= 128).sum()
        assert abs(area / circle - 1) < 0.1, (shape, angle, area / circle)


@pytest.mark.parametrize("shape", [*DEFAULT_SHAPES, *NEW_SHAPES])
def test_circumradius_and_inradius_bound_the_drawn_shape(shape):
    """Nothing is drawn beyond CIRCUMRADIUS * scale (the border margin relies on it), all is covered within
    INRADIUS * scale (placement rejects overlaps on it), and both bounds are tight (within 1.5 pixels)."""
    size, scale, centre = 96, 16.0, 48.0
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    for angle in (0.0, 0.7, 2.1):
        coverage = shape_alpha(shape, centre, centre, scale, angle, size)
        distance = np.hypot(xs - centre, ys - centre)
        reach, inner = CIRCUMRADIUS[shape] * scale, INRADIUS[shape] * scale
        assert distance[coverage > 0].max() <= reach + 0.75, (shape, angle)
        assert distance[coverage > 0].max() >= reach - 1.5, (shape, angle)
        assert (coverage[distance <= inner - 0.75] == 255).all(), (shape, angle)
        assert (coverage[distance <= inner + 1.5] < 255).any(), (shape, angle)


def test_new_shapes_keypoints_are_their_tips_and_corners():
    scale = 10.0
    for shape, count, radius in (("star", 5, CIRCUMRADIUS["star"]), ("hexagon", 6, 1.1),
                                 ("cross", 8, CIRCUMRADIUS["cross"])):  # fmt: skip
        points = shape_keypoints(shape, 50.0, 40.0, scale, 0.3)
        assert len(points) == count
        assert np.allclose([math.hypot(x - 50.0, y - 40.0) for x, y in points], radius * scale)
        # each a corner of the drawn shape: covered nearby inside, empty just outside
        coverage = shape_alpha(shape, 50.0, 40.0, scale, 0.3, 100)
        for x, y in points:  # 1.5 pixels in from the point towards the centre, and 1.5 pixels out
            ux, uy = (x - 50.0) / (radius * scale), (y - 40.0) / (radius * scale)
            assert coverage[int(y - 1.5 * uy), int(x - 1.5 * ux)] > 0, (shape, x, y)
            assert coverage[int(y + 1.5 * uy), int(x + 1.5 * ux)] == 0, (shape, x, y)


def test_new_shapes_stay_apart_and_inside_the_image():
    data = render_shapes(120, image_size=32, min_objects=3, max_objects=3, seed=2,
                         colors=list(ALL_COLOR_NAMES), shapes=list(ALL_SHAPE_NAMES))  # fmt: skip
    assert set(np.unique(data["shapes"])) == set(range(6)) and set(np.unique(data["colors"])) == set(range(9))
    masks = torch.from_numpy(data["instance_masks"]).float()
    assert masks.flatten(2).sum(2).min() > 0
    assert (
        masks[..., 0, :].sum() == masks[..., -1, :].sum() == masks[..., 0].sum() == masks[..., -1].sum() == 0
    )
    grown = torch.nn.functional.max_pool2d(masks, 3, 1, 1)  # never touching, not even diagonally
    assert (grown * (masks.sum(1, keepdim=True) - masks)).sum() == 0
    # the segmentation map paints each new shape in its own palette colour
    dm_item = ShapesDataModule(max_objects=3, colors=["cyan"], shapes=NEW_SHAPES, seed=1, **SMALL)
    dm_item.setup()
    item = dm_item.train_set[0]
    for k in range(int(item["num_objects"])):
        inside = item["instance_masks"][k] > 0
        colour = torch.from_numpy(SEGMENTATION_PALETTE[int(item["shapes"][k])])
        assert torch.equal(item["segmentation"][:, inside], colour[:, None].expand(3, int(inside.sum())))


def test_chosen_colours_and_shapes_in_any_order_set_the_labels():
    dm = ShapesDataModule(colors=["pink", "red"], shapes=["star", "circle"], **SMALL)
    assert dm.class_names == ["pink star", "pink circle", "red star", "red circle"] and dm.num_classes == 4
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["colors"][:, 0].tolist()) <= {6, 0} and set(batch["shapes"][:, 0].tolist()) <= {3, 0}
    position = {6: 0, 0: 1}, {3: 0, 0: 1}
    for i in range(len(batch["label"])):
        c, s = int(batch["colors"][i, 0]), int(batch["shapes"][i, 0])
        assert batch["label"][i] == position[0][c] * 2 + position[1][s]
        assert dm.class_names[batch["label"][i]] in batch["caption"][i]
    one = ShapesDataModule(colors="pink", **SMALL)  # one name, as --data.colors pink gives it
    assert one.class_names == ["pink circle", "pink square", "pink triangle"]


def test_unknown_names_are_data_errors_listing_the_known_ones():
    with pytest.raises(DataError, match=r"unknown colour 'magenta'.*red, green.*pink, cyan, brown"):
        ShapesDataModule(colors=["pink", "magenta"])
    with pytest.raises(DataError, match=r"unknown shape 'pentagon'.*star, hexagon, cross"):
        render_shapes(2, shapes=["pentagon"])
    with pytest.raises(DataError, match="distinct colours"):
        ShapesDataModule(colors=[])
    with pytest.raises(DataError, match="distinct shapes"):
        ShapesDataModule(shapes=["star", "star"])


def test_captions_name_new_colours_and_shapes_and_parse():
    def obj(shape: str, color: str, size: int = 1, cx: float = 5.0) -> ShapeObject:
        return ShapeObject(
            ALL_SHAPE_NAMES.index(shape), ALL_COLOR_NAMES.index(color), size, cx, 5.0, 3.0, 0.0
        )

    assert caption_for([obj("star", "pink")]) == "a pink star"
    assert caption_for([obj("hexagon", "orange")]) == "an orange hexagon"
    pair = caption_for([obj("cross", "brown", 0), obj("hexagon", "cyan", 1, 20.0)])
    assert pair == "a small brown cross left of a cyan hexagon"
    assert parse_caption(pair) == [("small", "brown", "cross"), ("large", "cyan", "hexagon")]
    assert parse_caption("a pink star, a small cyan square and a brown circle") == [
        ("large", "pink", "star"), ("small", "cyan", "square"), ("large", "brown", "circle")]  # fmt: skip
    assert parse_caption("an pink star") is None and parse_caption("a magenta star") is None


# --------------------------------------------------------------------------------- concept folders


def test_concept_command_writes_an_image_folder_that_loads_with_its_captions(tmp_path, capsys):
    from zoo.concepts import main

    out = tmp_path / "concept"
    root = main(["--color", "pink", "--shapes", "circle", "square", "--num", "6", "--token", "<s1>",
                 "--out", str(out), "--image-size", "32", "--seed", "3"])  # fmt: skip
    assert root == out and "--data image_folder" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"{i:04d}.png" for i in range(6)] + ["captions.csv"]
    with open(out / "captions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == [f"{i:04d}.png" for i in range(6)]
    assert all(re.fullmatch(r"a <s1> (circle|square)", r["caption"]) for r in rows), rows
    assert len({r["caption"] for r in rows}) == 2  # both shapes among six images (1/32 chance otherwise)

    dm = ImageFolderDataModule(str(out), image_size=32, val_fraction=0.2)
    dm.setup()
    items = [dm.train_set.dataset[i] for i in range(6)]
    assert [it["caption"] for it in items] == [r["caption"] for r in rows]
    pink = torch.tensor(NEW_COLORS["pink"]) / 255 * 2 - 1
    for it in items:  # one pink object on black: its brightest pixels are exactly pink
        pixels = it["image"].flatten(1).T
        brightest = pixels[pixels.sum(1).argmax()]
        torch.testing.assert_close(brightest, pink.float(), atol=1e-6, rtol=0)
        assert ((pixels - pink).abs().amax(1) < 1e-6).sum() >= 20  # a whole object, not a pixel
    also = zoo.create_datamodule("image_folder", root=str(out), image_size=32)  # `--data image_folder`
    also.setup()
    assert len(also.train_set) + len(also.val_set) == 6


def test_concept_folder_refuses_bad_requests_and_overwrites_on_request(tmp_path, capsys):
    from zoo.concepts import main

    out = tmp_path / "c"
    with pytest.raises(DataError, match=r"unknown colour 'magenta'.*pink"):
        write_concept_folder(out, "magenta")
    with pytest.raises(DataError, match="at least one image"):
        write_concept_folder(out, "pink", num=0)
    with pytest.raises(SystemExit) as error:
        main(["--color", "magenta", "--out", str(out)])
    assert error.value.code == 2 and "pink" in capsys.readouterr().err
    assert (
        write_concept_folder(
            out, "cyan", ["star"], num=5, token="sks", template="a photo of a {token} {shape}"
        )
        == out
    )
    assert (out / "captions.csv").read_text().splitlines()[1] == "0000.png,a photo of a sks star"
    with pytest.raises(SystemExit):
        main(["--color", "brown", "--num", "2", "--out", str(out)])
    assert "not empty" in capsys.readouterr().err and len(list(out.glob("*.png"))) == 5
    (out / "notes.txt").write_text("kept")
    main(["--color", "brown", "--num", "2", "--out", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "captions.csv", "notes.txt"]


# --------------------------------------------------------------------------------- judges that know them


@pytest.fixture(scope="module")
def tiny_wide_judge():
    """A judge of all nine colours after two training steps: its shape, not its skill."""
    from zoo.metrics.geneval import train_shapes_judge

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the suite's thread count back afterwards: later test files would otherwise run on one thread
        return train_shapes_judge(
            image_size=16, num_train=128, num_test=16, epochs=1, colors=list(ALL_COLOR_NAMES)
        )
    finally:
        torch.set_num_threads(threads)


def test_extended_judge_has_nine_colours_and_its_own_cache_file(tiny_wide_judge):
    from zoo.metrics.geneval import judge_path

    judge = tiny_wide_judge
    assert judge.net.color_head.out_channels == 9 + 1 and judge.net.shape_head.out_channels == 3 + 1
    assert judge.colors == tuple(range(9)) and judge.shapes == (0, 1, 2)
    assert {"scenes", "color_pink", "shape_circle"} <= set(judge.held_out_accuracy)
    wide = judge_path(16, list(ALL_COLOR_NAMES))
    assert wide != judge_path(16) and "pink" in wide.name
    assert judge_path(16) == judge_path(16, DEFAULT_COLORS, DEFAULT_SHAPES)
    assert judge_path(32).name == "shapes-32px-v1.safetensors"  # the default judge's cache stays valid


def test_shapes_judge_trains_caches_and_reloads_an_extended_judge(tiny_wide_judge, tmp_path, monkeypatch):
    import zoo.metrics.geneval as geneval

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    asked = []
    monkeypatch.setattr(geneval, "train_shapes_judge",
                        lambda size, **kw: asked.append((size, kw)) or tiny_wide_judge)  # fmt: skip
    colors = list(ALL_COLOR_NAMES)
    geneval.shapes_judge(16, colors, verbose=False)
    assert asked == [(16, {"colors": colors, "shapes": None})]
    assert geneval.judge_path(16, colors).exists() and not geneval.judge_path(16).exists()
    again = geneval.shapes_judge(16, colors=colors)  # from the cache: no second training
    assert len(asked) == 1 and again.colors == tuple(range(9))
    assert again.held_out_accuracy == tiny_wide_judge.held_out_accuracy
    for key, value in tiny_wide_judge.net.state_dict().items():
        assert torch.equal(again.net.state_dict()[key], value), key


def test_detected_objects_index_the_full_tables():
    """A judge of pink and red stars and circles (heads in that order) reports pink as 6 and star as 3."""
    from zoo.metrics.geneval import ShapesJudge

    class Painted(nn.Module):  # colour class 1 (pink) and shape class 1 (star) on the left, 2 and 2 right
        def __init__(self) -> None:
            super().__init__()
            self.color_head, self.shape_head = nn.Conv2d(1, 3, 1), nn.Conv2d(1, 3, 1)

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            colors, shapes = torch.zeros(len(images), 3, 16, 16), torch.zeros(len(images), 3, 16, 16)
            colors[:, 0] = 1
            colors[:, 1, 2:6, 2:6] = colors[:, 2, 9:14, 9:14] = 5
            shapes[:, 1, :, :8] = shapes[:, 2, :, 8:] = 5
            return colors, shapes

    judge = ShapesJudge(Painted(), 16, colors=["pink", "red"], shapes=["star", "circle"])
    (objects,) = judge.detect(torch.zeros(1, 3, 16, 16))
    assert sorted((o.color, o.shape, o.pixels) for o in objects) == [(0, 0, 25), (6, 3, 16)]
    assert [judge.color_names[o.color] for o in objects] == ["red", "pink"]
    with pytest.raises(ValueError, match="cannot judge"):
        ShapesJudge(Painted(), 16, colors=["pink"], shapes=["star", "circle"])
