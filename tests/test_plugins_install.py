"""Third-party plugins, installed for real with pip into the running environment."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "zoo-plugin-example"


def _pip(*args: str) -> None:
    # Offline and without build isolation: the environment's own setuptools builds the wheel.
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _zoo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _listing(cwd: Path) -> dict:
    done = _zoo("zoo.list", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    return {s["name"]: s for s in listing["models"] + listing["datamodules"]}


@pytest.fixture
def install(tmp_path: Path) -> Iterator:
    installed: list[str] = []

    def _install(source: Path, dist: str) -> None:
        copy = tmp_path / "src" / source.name  # build in a copy: pip leaves build/ folders behind
        shutil.copytree(source, copy)
        _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(copy))
        installed.append(dist)

    yield _install
    for dist in installed:
        _pip("uninstall", "--yes", dist)


@pytest.mark.slow
def test_example_plugin_installs_lists_trains_and_samples(install, tmp_path):
    before = _listing(tmp_path)
    assert "gaussian_pixels" not in before
    install(EXAMPLE, "zoo-plugin-example")

    listed = _listing(tmp_path)
    assert (
        listed["gaussian_pixels"]["distribution"] == "zoo-plugin-example" and listed["gaussian_pixels"]["ok"]
    )
    assert listed["gaussian_pixels"]["default_data"] == "stripes"
    assert listed["stripes"]["ok"] and listed["vae"]["ok"]

    fit = _zoo(
        "zoo.fit", "--model", "gaussian_pixels", "--logger", "csv", "--trainer.max_steps", "60",
        "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "30", cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = next((tmp_path / "runs" / "gaussian_pixels").iterdir())
    rows = (next(run.rglob("metrics.csv"))).read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("val/loss")
    val_losses = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    # Stripes' pixels are uniform on [-1, 1]; the best per-pixel Gaussian has std 1/sqrt(3), so
    # the optimal NLL is 1/2 + ln(1/sqrt(3)) + ln(2 pi)/2 = 0.8704 nats (1.0856 at initialisation).
    optimum = 0.5 + math.log(1 / math.sqrt(3)) + 0.5 * math.log(2 * math.pi)
    assert abs(val_losses[-1] - optimum) < 0.03, (val_losses, optimum)
    assert (run / "samples" / "samples_step000060.png").is_file()

    out = tmp_path / "samples"
    sample = _zoo(
        "zoo.sample",
        "--ckpt",
        str(run / "checkpoints" / "last.ckpt"),
        "--num",
        "4",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 5


@pytest.mark.slow
def test_broken_plugin_is_named_and_hides_nothing(install, tmp_path):
    broken = tmp_path / "zoo-broken-plugin"
    (broken / "zoo_broken_plugin").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(
        textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "zoo-broken-plugin"
        version = "0.0.1"

        [project.entry-points."zoo.models"]
        exploding = "zoo_broken_plugin:Model"

        [tool.setuptools]
        packages = ["zoo_broken_plugin"]
        """)
    )
    (broken / "zoo_broken_plugin" / "__init__.py").write_text(
        "raise RuntimeError('boom: broken on purpose')\n"
    )
    install(broken, "zoo-broken-plugin")

    listed = _listing(tmp_path)
    assert listed["vae"]["ok"] and listed["shapes"]["ok"]  # the others still work
    assert not listed["exploding"]["ok"]
    assert listed["exploding"]["distribution"] == "zoo-broken-plugin"
    assert "boom: broken on purpose" in listed["exploding"]["error"]

    table = _zoo("zoo.list", cwd=tmp_path)
    assert table.returncode == 0 and "broken: RuntimeError: boom" in table.stdout

    fit = _zoo("zoo.fit", "--model", "exploding", cwd=tmp_path)
    assert fit.returncode == 2
    assert "zoo-broken-plugin" in fit.stderr and "boom" in fit.stderr and "Traceback" not in fit.stderr
