"""Zoo-trained extractors, `python -m zoo.evaluate`, the in-training MetricsCallback, and FID sanity checks."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY_VAE, run_fit
from zoo.evaluate import conditions_for
from zoo.evaluate import main as evaluate
from zoo.metrics import frechet_distance, image_extractor, train_image_classifier
from zoo.metrics.extractors import extractor_path


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private extractor cache for this module (the user's ~/.cache/zoo is never touched)."""
    root = tmp_path_factory.mktemp("zoo-cache")
    before = os.environ.get("ZOO_CACHE")
    os.environ["ZOO_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("ZOO_CACHE")
    else:
        os.environ["ZOO_CACHE"] = before


@pytest.fixture(scope="module")
def shapes16(zoo_cache):
    """The shapes extractor at 16x16 (trained once here, ~5 s; 32x32 is the default size)."""
    return image_extractor("shapes", 16, 3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run several times faster on one thread when the cores are shared (measured 5x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _real(seed: int, n: int, size: int = 16) -> torch.Tensor:
    from zoo.datamodules.shapes import ShapesDataModule

    data = ShapesDataModule(image_size=size, num_train=n, num_val=1, num_test=1, seed=seed)
    data.setup()
    return (torch.stack([data.train_set[i]["image"] for i in range(n)]) + 1) / 2


def test_extractor_is_frozen_accurate_cached_and_deterministic(shapes16, zoo_cache):
    assert not shapes16.training and not any(p.requires_grad for p in shapes16.parameters())
    assert shapes16.held_out_accuracy > 0.7  # 18 colour x shape classes at 16x16 (0.998 at 32x32)
    path = extractor_path("shapes", 16, 3)
    assert path.is_file() and str(path).startswith(str(zoo_cache))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["held_out_accuracy"]["label"] == pytest.approx(shapes16.held_out_accuracy)
    again = image_extractor("shapes", 16, 3)  # from the cache
    images = _real(5, 8)
    assert torch.equal(again(images), shapes16(images)) and again(images).shape == (8, 128)
    # training is deterministic for a seed
    data = {"image": images.repeat(4, 1, 1, 1), "label": torch.arange(32) % 3}
    a, _ = train_image_classifier(data, data, {"label": 3}, epochs=1, seed=3, batch_size=8)
    b, _ = train_image_classifier(data, data, {"label": 3}, epochs=1, seed=3, batch_size=8)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_real_vs_real_fid_is_far_below_noise_and_shuffled_colours(shapes16):
    with torch.no_grad():
        real_a = _real(1, 400)
        real_b = _real(2, 400)  # an independent draw: disjoint from real_a
        shuffled = real_b[:, [2, 0, 1]]  # the same shapes with the colour channels permuted
        noise = torch.rand_like(real_b)
        fa, fb, fs, fn = (shapes16(x) for x in (real_a, real_b, shuffled, noise))
    real_vs_real = frechet_distance(fa, fb)
    assert real_vs_real * 10 < frechet_distance(fa, fs)
    assert real_vs_real * 10 < frechet_distance(fa, fn)


def test_evaluate_a_checkpoint_writes_json_and_rejects_unfit_metrics(run_with_metrics, tmp_path, capsys):
    tiny_vae_ckpt = run_with_metrics[1] / "checkpoints" / "last.ckpt"
    out = tmp_path / "results.json"
    result = evaluate([
        "--ckpt", str(tiny_vae_ckpt), "--metrics", "fid,kid,is,precision_recall", "--num", "40",
        "--batch-size", "16", "--out", str(out), "--no-progress", "--kid-subset-size", "20",
    ])  # fmt: skip
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    names = [m["metric"] for m in written["metrics"]]
    assert names == ["fid", "kid", "kid_std", "is", "is_std", "precision", "recall"]
    assert written["data"] == "shapes" and written["seed"] == 0 and len(written["checkpoint_sha256"]) == 64
    assert written["num_fake"] == 40 and written["metrics"][0]["feature_extractor"].startswith(
        "zoo-shapes-16px"
    )
    assert "fid" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate(["--ckpt", str(tiny_vae_ckpt), "--metrics", "self_bleu"])
    err = capsys.readouterr().err
    assert "self_bleu" in err and "fid" in err and "kid" in err  # names the metrics that fit images


def test_evaluate_two_folders_and_a_folder_against_data(zoo_cache, tmp_path, capsys):
    from zoo.io.images import save_images

    save_images(_real(1, 30), tmp_path / "a")
    save_images(_real(2, 30), tmp_path / "b")
    folders = evaluate(["--real", str(tmp_path / "a"), "--fake", str(tmp_path / "b"), "--metrics", "fid",
                        "--extractor", "shapes"])  # fmt: skip
    against_data = evaluate(
        ["--real", "shapes", "--fake", str(tmp_path / "b"), "--metrics", "fid", "--num", "30"]
    )
    assert folders["num_real"] == folders["num_fake"] == 30 and folders["metrics"][0]["value"] > 0
    assert against_data["data"] == "shapes" and against_data["feature_extractor"]["name"].startswith(
        "zoo-shapes-16px"
    )
    with pytest.raises(SystemExit):
        evaluate(["--real", str(tmp_path / "a"), "--metrics", "fid"])
    assert "--real and --fake go together" in capsys.readouterr().err


def test_class_conditional_families_get_labels_spread_over_the_classes():
    class Conditional:
        hparams = {"num_classes": 4, "class_conditional": True}
        conditional = True

    class Unconditional:
        hparams = {"num_classes": 4}
        conditional = False

    assert conditions_for(Conditional(), 10, None, None, None) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert conditions_for(Unconditional(), 10, None, None, None) is None


@pytest.fixture(scope="module")
def run_with_metrics(zoo_cache, shapes16, tmp_path_factory):
    """A tiny 16x16 vae run of 6 steps with MetricsCallback every 2 steps and a 1% time budget."""
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("metrics-run"))
    try:
        cli = run_fit(
            *TINY_VAE, "--data.image_size", "16", "--trainer.max_steps", "6", "--logger", "csv",
            "--metrics.every_n_steps", "2", "--metrics.num_samples", "24", "--metrics.metrics", "fid,kid",
            "--metrics.max_time_fraction", "0.01",
        )  # fmt: skip
        root = Path(cli.trainer.default_root_dir).absolute()
    finally:
        os.chdir(cwd)
    return cli, root


@pytest.mark.slow
def test_metrics_callback_logs_val_fid_keeps_the_extractor_out_of_checkpoints_and_keeps_its_budget(
    run_with_metrics,
):
    cli, root = run_with_metrics
    callback = next(c for c in cli.trainer.callbacks if type(c).__name__ == "MetricsCallback")
    # the first evaluation (step 2) runs; with a 1% budget the later ones are skipped; the end one is forced
    assert [h["step"] for h in callback.history] == [2, 6] and callback.skipped == [4, 6]
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    logged = [(int(r["step"]), float(r["val/fid"])) for r in rows if r.get("val/fid")]
    assert [s for s, _ in logged] == [2, 6] and all(v > 0 for _, v in logged)
    state = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    extractor_keys = set(callback.extractor.state_dict())
    assert not any(k.split(".", 1)[-1] in extractor_keys or "extractor" in k for k in state["state_dict"])
    assert not any(p.requires_grad for p in callback.extractor.parameters())


@pytest.mark.slow
def test_fid_falls_as_a_training_run_progresses(in_tmp, shapes16):
    """A short vae run (lr 2e-3, 16x16 shapes): FID of its checkpoints at steps 10, 30 and 90."""
    cli = run_fit(
        "--model", "vae", "--model.base_channels", "8", "--model.lr", "2e-3",
        "--data.image_size", "16", "--data.num_train", "1000", "--data.num_val", "16", "--data.num_test", "16",
        "--data.batch_size", "32", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "null",
        "--trainer.check_val_every_n_epoch", "1000", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--samples.num_samples", "0", "--logger", "none",
        "--trainer.max_steps", "90", "--checkpoint.every_n_train_steps", "10", "--checkpoint.save_top_k", "-1",
    )  # fmt: skip
    folder = Path(cli.trainer.default_root_dir) / "checkpoints"
    fids = []
    for step in (10, 30, 90):
        ckpt = next(folder.glob(f"*step={step}.ckpt"))
        result = evaluate(["--ckpt", str(ckpt), "--metrics", "fid", "--num", "300", "--no-progress"])
        fids.append(result["metrics"][0]["value"])
    print("FID at steps 10, 30, 90:", fids)
    assert fids[0] > fids[1] > fids[2], fids


def test_kid_on_fewer_samples_than_its_subset_size_uses_half_and_says_so(shapes16, tmp_path, capsys):
    """Subsets of every sample are one set: kid_std came out 1e-16. Half the samples give a spread."""
    from zoo.io.images import save_images

    save_images(_real(1, 12), tmp_path / "a")
    save_images(_real(2, 12), tmp_path / "b")
    out = tmp_path / "kid.json"
    result = evaluate(["--real", str(tmp_path / "a"), "--fake", str(tmp_path / "b"), "--metrics", "kid",
                       "--extractor", "shapes", "--out", str(out)])  # fmt: skip
    values = {row["metric"]: row["value"] for row in result["metrics"]}
    assert result["kid_subset_size"] == 6 and values["kid_std"] > 1e-4
    assert result["notes"][0].startswith("KID used subsets of 6 samples, not --kid-subset-size 1000")
    assert "note: KID used subsets of 6 samples" in capsys.readouterr().out
    assert json.loads(out.read_text())["kid_subset_size"] == 6
