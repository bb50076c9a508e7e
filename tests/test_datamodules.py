"""The built-in image datamodules: shapes, digits, image_folder.

Checks are independent of the code under test where it matters: shape captions against the pixels
(hue inside each instance mask, mask areas, mask centroids, mask compactness), digits against
scikit-learn's originals, image_folder against images the tests draw themselves.
"""

from __future__ import annotations

import colorsys
import csv
import importlib.metadata
import json
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zoo.data import ZooDataModule
from zoo.datamodules.digits import DigitsDataModule
from zoo.datamodules.image_folder import ImageFolderDataModule
from zoo.datamodules.shapes import ShapesDataModule, render_shapes
from zoo.errors import DataError


def first_batch(dm: ZooDataModule) -> dict:
    dm.setup()
    return next(iter(dm.train_dataloader()))


def image_hashes(dataset) -> set[bytes]:
    return {dataset[i]["image"].numpy().tobytes() for i in range(len(dataset))}


# ----------------------------------------------------------------------------------------------- shapes

SMALL_SHAPES = dict(num_train=48, num_val=16, num_test=16, batch_size=8)


def test_shapes_attributes_before_setup():
    dm = ShapesDataModule(**SMALL_SHAPES)
    assert dm.modality == "image" and isinstance(dm, ZooDataModule)
    assert (dm.image_size, dm.channels) == (32, 3)
    assert dm.num_classes == 18 == len(dm.class_names)
    assert dm.class_names[0] == "red circle" and "orange triangle" in dm.class_names
    assert dm.train_set is None


def test_shapes_deterministic_for_a_seed_and_different_across_seeds():
    kwargs = dict(SMALL_SHAPES, min_objects=1, max_objects=3)
    a, b, c = (
        ShapesDataModule(seed=3, **kwargs),
        ShapesDataModule(seed=3, **kwargs),
        ShapesDataModule(seed=4, **kwargs),
    )
    for dm in (a, b, c):
        dm.setup()
    for split in ("train_set", "val_set", "test_set"):
        da, db, dc = getattr(a, split).data, getattr(b, split).data, getattr(c, split).data
        for key in ("images", "instance_masks", "edges", "colors", "shapes", "sizes", "num_objects"):
            assert da[key].tobytes() == db[key].tobytes(), (split, key)
        assert da["captions"] == db["captions"]
        assert da["images"].tobytes() != dc["images"].tobytes()
    item_a, item_b = a.train_set[5], b.train_set[5]
    assert all(torch.equal(item_a[k], item_b[k]) for k in item_a if k != "caption")


def test_shapes_splits_are_disjoint_even_when_images_repeat():
    # At 8x8 the same small circle at the same place recurs across seeds, so disjointness needs work.
    a = render_shapes(300, image_size=8, min_objects=1, max_objects=1, seed=0)["images"]
    b = render_shapes(300, image_size=8, min_objects=1, max_objects=1, seed=1)["images"]
    assert {x.tobytes() for x in a} & {x.tobytes() for x in b}, "premise: repeats are likely at 8x8"
    dm = ShapesDataModule(image_size=8, num_train=300, num_val=300, num_test=300)
    dm.setup()
    train, val, test = (image_hashes(s) for s in (dm.train_set, dm.val_set, dm.test_set))
    assert len(dm.val_set) == len(dm.test_set) == 300
    assert not train & val and not train & test and not val & test


def test_shapes_item_and_batch_contract():
    dm = ShapesDataModule(image_size=24, min_objects=1, max_objects=3, **SMALL_SHAPES)
    batch = first_batch(dm)
    B, K, S = 8, 3, 24
    assert set(batch) == {
        "image",
        "caption",
        "label",
        "num_objects",
        "colors",
        "shapes",
        "sizes",
        "instance_masks",
        "edges",
        "segmentation",
        "keypoints",
        "centers",
    }
    expected = {
        "image": ((B, 3, S, S), torch.float32),
        "label": ((B,), torch.int64),
        "num_objects": ((B,), torch.int64),
        "colors": ((B, K), torch.int64),
        "shapes": ((B, K), torch.int64),
        "sizes": ((B, K), torch.int64),
        "instance_masks": ((B, K, S, S), torch.float32),
        "edges": ((B, 1, S, S), torch.float32),
        "segmentation": ((B, 3, S, S), torch.float32),
        "keypoints": ((B, 3, S, S), torch.float32),
        "centers": ((B, K, 2), torch.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert (
        isinstance(batch["caption"], list)
        and len(batch["caption"]) == B
        and all(isinstance(c, str) for c in batch["caption"])
    )
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["image"].min() == -1 and batch["image"].max() > 0.5
    assert set(batch["instance_masks"].unique().tolist()) <= {0.0, 1.0}
    assert batch["edges"].min() >= 0 and batch["edges"].max() <= 1 and batch["edges"].max() > 0.5

    present = batch["colors"] >= 0
    assert torch.equal(present.sum(1), batch["num_objects"])
    assert torch.equal(present, batch["shapes"] >= 0) and torch.equal(present, batch["sizes"] >= 0)
    assert torch.equal(present, batch["instance_masks"].flatten(2).amax(2) > 0)  # absent objects: empty masks
    assert torch.equal(batch["label"], batch["colors"][:, 0] * 3 + batch["shapes"][:, 0])
    for i in range(B):
        assert dm.class_names[batch["label"][i]] in batch["caption"][i]  # the first object named is the label
    # Edges trace the outlines: every edge pixel lies within a pixel of a mask boundary.
    union = batch["instance_masks"].amax(1, keepdim=True)
    boundary = F.max_pool2d(union, 3, 1, 1) - (-F.max_pool2d(-union, 3, 1, 1))
    near_boundary = F.max_pool2d(boundary, 3, 1, 1)
    assert (batch["edges"][near_boundary == 0] == 0).all()
    assert (batch["edges"] > 0.25).sum() > 0.5 * boundary.sum() / 2

    grey = ShapesDataModule(channels=1, **SMALL_SHAPES)
    assert grey.channels == 1 and first_batch(grey)["image"].shape == (8, 1, 32, 32)


HUES = {"red": 0, "orange": 30, "yellow": 55, "green": 125, "blue": 225, "purple": 280}  # degrees
PHRASE = re.compile(r"an? (small )?(red|green|blue|yellow|purple|orange) (circle|square|triangle)")


def parse_caption(caption: str) -> tuple[list[tuple[bool, str, str]], str | None]:
    """[(small, colour, shape), ...] and the relation, read from the caption text alone."""
    objects = [(bool(m.group(1)), m.group(2), m.group(3)) for m in PHRASE.finditer(caption)]
    relation = re.search(r"\b(left of|right of|above|below)\b", caption)
    if len(objects) == 1:
        assert PHRASE.fullmatch(caption), caption
    elif len(objects) == 2:
        assert re.fullmatch(rf"{PHRASE.pattern} (left of|right of|above|below) {PHRASE.pattern}", caption), (
            caption
        )
    else:
        assert re.fullmatch(rf"{PHRASE.pattern}(, {PHRASE.pattern})* and {PHRASE.pattern}", caption), caption
    return objects, relation.group(1) if relation else None


def hue_of(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb / 255.0))[0] * 360.0


def test_shapes_object_weights_set_the_mix_of_object_counts():
    data = render_shapes(600, image_size=24, min_objects=1, max_objects=3, object_weights=[1, 0, 3], seed=3)
    counts = np.bincount(data["num_objects"], minlength=4)
    assert counts[2] == 0 and counts[0] == 0
    assert 0.68 < counts[3] / 600 < 0.82, counts  # 3/4 expected; binomial sd 0.018
    with pytest.raises(DataError, match="object_weights needs 3 non-negative weights"):
        ShapesDataModule(max_objects=3, object_weights=[1, 1])


def test_shapes_shuffled_captions_are_other_true_sentences_of_the_scene():
    from zoo.datamodules.shapes import COLOR_NAMES, RELATIONS, SHAPE_NAMES, parse_caption, relation

    dm = ShapesDataModule(max_objects=3, shuffle_captions=True, num_train=60, num_val=20, num_test=1, seed=2)
    dm.setup()
    torch.manual_seed(0)
    seen_orders, data = set(), dm.train_set.data
    for i in range(60):
        captions = {dm.train_set[i]["caption"] for _ in range(12)}
        count = int(data["num_objects"][i])
        assert (len(captions) > 1) == (count > 1), captions  # 12 draws: both orders of a pair, nearly surely
        for caption in captions:
            objects = parse_caption(caption)
            assert sorted(objects) == sorted(parse_caption(data["captions"][i])), (
                caption,
                data["captions"][i],
            )
            if count == 2:  # the relation said between the named objects is the one their centres have
                named = [(c, sh) for _, c, sh in objects]
                stored = [
                    (COLOR_NAMES[data["colors"][i, k]], SHAPE_NAMES[data["shapes"][i, k]]) for k in range(2)
                ]
                if stored[0] == stored[1]:
                    continue
                first = stored.index(named[0])
                said = next(r for r in RELATIONS if f" {r} " in caption)
                assert said == relation(
                    tuple(data["centers"][i, first]), tuple(data["centers"][i, 1 - first])
                )
                seen_orders.add(first)
    assert seen_orders == {0, 1}
    assert all(dm.val_set[i]["caption"] == dm.val_set.data["captions"][i] for i in range(20))  # fixed


def test_shapes_captions_describe_the_pixels():
    data = render_shapes(300, image_size=64, min_objects=1, max_objects=3, seed=7)
    counts = np.bincount(data["num_objects"], minlength=4)
    assert counts[1:].min() > 50
    checked_sizes = checked_relations = 0
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for image, masks, caption in zip(data["images"], data["instance_masks"], data["captions"], strict=True):
        objects, relation = parse_caption(caption)
        present = [m.astype(bool) for m in masks if m.any()]
        assert len(objects) == len(present), caption
        areas, centroids = [], []
        for (_, colour, shape), mask in zip(objects, present, strict=True):
            mean = image[mask].astype(float).mean(0)
            assert mean.max() > 150, caption  # the mask covers a bright object, not the black background
            hue = hue_of(mean)
            nearest = min(HUES, key=lambda name: min(abs(hue - HUES[name]), 360 - abs(hue - HUES[name])))
            assert nearest == colour, (caption, mean, hue)
            area, cx, cy = mask.sum(), xs[mask].mean(), ys[mask].mean()
            # Compactness: area over the disc through the farthest pixel: 1 circle, 2/pi square, 0.41 triangle.
            far = np.sqrt((xs[mask] - cx) ** 2 + (ys[mask] - cy) ** 2).max() + 0.5
            compactness = area / (np.pi * far**2)
            expected_shape = (
                "circle" if compactness > 0.78 else "square" if compactness > 0.52 else "triangle"
            )
            assert expected_shape == shape, (caption, compactness)
            areas.append(area)
            centroids.append((cx, cy))
        small = [a for (is_small, _, _), a in zip(objects, areas, strict=True) if is_small]
        large = [a for (is_small, _, _), a in zip(objects, areas, strict=True) if not is_small]
        if small and large:
            assert max(small) < min(large), (caption, areas)
            checked_sizes += 1
        if relation is not None:
            (x0, y0), (x1, y1) = centroids
            dominant_x = abs(x1 - x0) >= abs(y1 - y0)
            truth = (
                ("left of" if x0 < x1 else "right of") if dominant_x else ("above" if y0 < y1 else "below")
            )
            assert truth == relation, (caption, centroids)
            checked_relations += 1
    assert checked_sizes > 20 and checked_relations > 50


def test_shapes_are_inside_the_image_and_apart():
    data = render_shapes(200, image_size=32, min_objects=3, max_objects=3, seed=1)
    masks = torch.from_numpy(data["instance_masks"]).float()
    assert (
        masks[..., 0, :].sum() == masks[..., -1, :].sum() == masks[..., 0].sum() == masks[..., -1].sum() == 0
    )
    grown = F.max_pool2d(masks, 3, 1, 1)  # objects never touch, not even diagonally
    others = masks.sum(1, keepdim=True) - masks
    assert (grown * others).sum() == 0


# ----------------------------------------------------------------------------------------------- digits


def test_digits_attributes_splits_and_determinism():
    dm = DigitsDataModule(batch_size=16)
    assert (dm.image_size, dm.channels, dm.num_classes) == (32, 1, 10)
    assert dm.class_names == [str(d) for d in range(10)]
    dm.setup()
    splits = [set(s.indices) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sum(map(len, splits)) == 1797 and set.union(*splits) == set(range(1797))
    assert 170 <= len(splits[1]) <= 190 and 170 <= len(splits[2]) <= 190
    labels = [int(dm.val_set[i]["label"]) for i in range(len(dm.val_set))]
    assert np.bincount(labels, minlength=10).min() >= 15  # stratified: every digit in validation

    again, other = DigitsDataModule(), DigitsDataModule(seed=1)
    again.setup()
    other.setup()
    assert again.val_set.indices == dm.val_set.indices and other.val_set.indices != dm.val_set.indices
    assert torch.equal(again.train_set[3]["image"], dm.train_set[3]["image"])

    batch = first_batch(dm)
    assert batch["image"].shape == (16, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == torch.int64
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1 and batch["image"].min() == -1
    assert batch["caption"] == [f"a handwritten digit {int(y)}" for y in batch["label"]]

    rgb = DigitsDataModule(image_size=16, channels=3)
    rgb.setup()
    image = rgb.train_set[0]["image"]
    assert image.shape == (3, 16, 16) and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_digits_match_scikit_learns_originals():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(test_fraction=0.0)
    dm.setup()
    dataset = dm.train_set.dataset
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # (1797, 1, 32, 32)
    small = F.avg_pool2d((images + 1) / 2, 4).flatten(1).numpy()  # back to 8x8
    original = digits.images.reshape(len(digits.images), -1)
    assert [int(dataset[i]["label"]) for i in range(len(dataset))] == digits.target.tolist()

    def standardise(x):
        x = x - x.mean(1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    corr = standardise(small) @ standardise(original).T  # Pearson correlation, every pair
    corr[digits.target[:, None] != digits.target[None, :]] = -1  # compare with the same label only
    own = np.diag(corr)  # each image against the original it came from
    assert (own > 0.9).all() and np.median(own) > 0.97
    assert (corr.argmax(1) == np.arange(len(dataset))).mean() > 0.99  # a few near-duplicate digits aside
    assert dm.test_set is dm.val_set


# ----------------------------------------------------------------------------------------- image_folder

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}


def write_image(path, colour=(255, 0, 0), size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_flat_folder_resize_crop_and_split(tmp_path):
    names = [
        f"img{i:02d}.{ext}" for i, ext in enumerate(["png", "PNG", "jpg", "JPEG", "bmp", "webp", "gif"] * 3)
    ]
    for name in names:
        write_image(tmp_path / name, COLOURS["red"])
    (tmp_path / "notes.txt").write_text("not an image")
    # 40x20: blue | red | green bands; the short side goes to 16 (x0.8), the centre crop keeps x in
    # [10, 30) of the original, red with a 2-pixel margin for the antialiasing filter.
    banded = np.zeros((20, 40, 3), dtype=np.uint8)
    banded[:, :8] = COLOURS["blue"]
    banded[:, 8:32] = COLOURS["red"]
    banded[:, 32:] = COLOURS["green"]
    Image.fromarray(banded).save(tmp_path / "banded.png")

    dm = ImageFolderDataModule(
        str(tmp_path), image_size=16, val_fraction=0.2, test_fraction=0.1, batch_size=4
    )
    assert dm.num_classes == 0 and dm.class_names == [] and dm.image_size == 16
    dm.setup()
    sizes = [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert sizes == [16, 4, 2]  # 22 images: round(4.4), round(2.2), the rest
    files = [
        {dm.train_set.dataset.files[i] for i in s.indices} for s in (dm.train_set, dm.val_set, dm.test_set)
    ]
    assert not files[0] & files[1] and not files[0] & files[2] and not files[1] & files[2]

    banded_index = dm.files.index(tmp_path / "banded.png")
    image = dm.train_set.dataset[banded_index]["image"]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    assert (image - red).abs().max() < 0.05

    batch = first_batch(dm)
    assert set(batch) == {"image"} and batch["image"].shape == (4, 3, 16, 16)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1

    same = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, test_fraction=0.1)
    other = ImageFolderDataModule(str(tmp_path), val_fraction=0.2, test_fraction=0.1, seed=1)
    same.setup()
    other.setup()
    assert same.val_set.indices == dm.val_set.indices and other.val_set.indices != dm.val_set.indices

    grey = ImageFolderDataModule(str(tmp_path), image_size=8, channels=1)
    grey.setup()
    assert grey.test_set is grey.val_set  # test_fraction 0: test is validation
    pixel = grey.train_set[0]["image"]
    assert pixel.shape == (1, 8, 8)
    assert abs(pixel.mean().item() - (0.299 * 2 - 1)) < 0.02  # PIL luma of pure red


def test_image_folder_class_subfolders(tmp_path):
    for i in range(6):
        write_image(tmp_path / "cats" / f"c{i}.png", COLOURS["red"])
        write_image(tmp_path / "dogs" / ("puppies" if i % 2 else ".") / f"d{i}.jpg", COLOURS["blue"])
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    write_image(tmp_path / ".hidden" / "x.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_fraction=0.25, batch_size=4)
    assert dm.num_classes == 2 and dm.class_names == ["cats", "dogs"]
    dm.setup()
    dataset = dm.train_set.dataset
    assert len(dataset) == 12
    for i in range(len(dataset)):
        item = dataset[i]
        is_red = item["image"][0].mean() > 0
        assert int(item["label"]) == (0 if is_red else 1)
    batch = first_batch(dm)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)

    write_image(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="loose.png"):
        ImageFolderDataModule(str(tmp_path))


def test_image_folder_captions_csv_and_jsonl(tmp_path):
    root = tmp_path / "data"
    for i, colour in enumerate(["red", "blue", "green", "red", "blue"]):
        write_image(root / "sub" / f"{colour}{i}.png", COLOURS[colour])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    with open(root / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        for name in files:
            writer.writerow([name, f"a {re.sub(r'[0-9]', '', name.split('/')[1][:-4])} square, with a comma"])
    dm = ImageFolderDataModule(str(root), image_size=8, val_fraction=0.2, batch_size=2)
    assert dm.num_classes == 1 and dm.class_names == ["sub"]  # one class folder
    dm.setup()
    dataset = dm.train_set.dataset
    for i in range(len(dataset)):
        item = dataset[i]
        colour = item["caption"].split()[1]
        assert item["caption"].endswith("square, with a comma")
        expected = torch.tensor(COLOURS[colour], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(item["image"].mean((1, 2)), expected, atol=0.02)
    batch = first_batch(dm)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 2

    (root / "captions.csv").unlink()
    jsonl = tmp_path / "elsewhere.jsonl"
    jsonl.write_text("\n".join(json.dumps({"file": f, "caption": f"caption of {f}"}) for f in files) + "\n")
    dm = ImageFolderDataModule(str(root), captions_file=str(jsonl), val_fraction=0.2)
    dm.setup()
    dataset = dm.train_set.dataset
    assert [dataset[i]["caption"] for i in range(len(dataset))] == [f"caption of {f}" for f in files]

    jsonl.write_text("\n".join(json.dumps({"file": f, "caption": "x"}) for f in files[1:]))
    dm = ImageFolderDataModule(str(root), captions_file=str(jsonl))
    with pytest.raises(ValueError, match=re.escape(files[0])):
        dm.setup()


def test_image_folder_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        ImageFolderDataModule(str(tmp_path / "nope"))
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"no images found.*" + re.escape(str(tmp_path))):
        ImageFolderDataModule(str(tmp_path))


@pytest.mark.parametrize("kind", ["random_bytes", "truncated_png"])
def test_image_folder_bad_files(tmp_path, kind):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"good{i}.png")
    bad = tmp_path / "broken.png"
    if kind == "random_bytes":
        bad.write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    else:
        whole = (tmp_path / "good0.png").read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])

    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_fraction=0.2)
    with pytest.raises(Exception, match="broken.png") as error:
        dm.setup()
    assert "skip_bad_files=True" in str(error.value)

    dm = ImageFolderDataModule(
        str(tmp_path), image_size=8, val_fraction=0.2, skip_bad_files=True, batch_size=2
    )
    with pytest.warns(UserWarning, match="broken.png") as record:
        dm.setup()
    assert len([w for w in record if "broken.png" in str(w.message)]) == 1
    assert len(dm.train_set.dataset) == 6 and bad not in dm.train_set.dataset.files
    assert first_batch(dm)["image"].shape == (2, 3, 8, 8)


def test_image_folder_file_changed_after_setup(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"ok{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), val_fraction=0.25, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup()
    (tmp_path / "ok2.png").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"ok2\.png.*skip_bad_files=True"):
        dm.train_set.dataset[2]
    with pytest.raises(RuntimeError, match="ok2.png"):
        next(iter(dm.val_dataloader())) if 2 in dm.val_set.indices else next(iter(dm.train_dataloader()))


# ------------------------------------------------------------------------------------------ registration


@pytest.mark.parametrize(
    "name, cls",
    [("shapes", ShapesDataModule), ("digits", DigitsDataModule), ("image_folder", ImageFolderDataModule)],
)
def test_registered_and_usable_as_cli_flags(name, cls):
    from jsonargparse import ArgumentParser

    entry = next(e for e in importlib.metadata.entry_points(group="zoo.datamodules") if e.name == name)
    assert entry.load() is cls and cls.modality == "image" and cls.__doc__
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    args = ["--data.root", "/somewhere"] if name == "image_folder" else []
    config = parser.parse_args(
        [*args, "--data.image_size", "16", "--data.channels", "1", "--data.batch_size", "3"]
    )
    assert (config.data.image_size, config.data.channels, config.data.batch_size) == (16, 1, 3)
    assert {"num_workers", "seed"} <= set(vars(config.data))
