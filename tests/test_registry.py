"""The entry-point registry: discovery, laziness, broken plugins, unknown and duplicate names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import zoo
from zoo import registry


def test_builtin_families_and_datamodules_are_registered():
    assert "vae" in zoo.list_models()
    assert {"shapes", "digits", "image_folder"} <= set(zoo.list_datamodules())


def test_listing_imports_no_plugin():
    code = (
        "import sys, zoo; names = zoo.list_models() + zoo.list_datamodules(); "
        "print(sorted(m for m in sys.modules if m.startswith('zoo.plugins.') or m.startswith('zoo.datamodules.') or m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_create_by_name():
    model = zoo.create_model("vae", latent_channels=2, base_channels=8)
    assert model.hparams.latent_channels == 2
    data = zoo.create_datamodule("digits", image_size=16)
    assert data.image_size == 16 and data.modality == "image"


def test_unknown_name_lists_known_and_close_matches():
    with pytest.raises(registry.UnknownNameError) as info:
        zoo.create_model("vea")
    message = str(info.value)
    assert "'vae'" in message and "Did you mean" in message and "Known models: " in message
    with pytest.raises(registry.UnknownNameError, match="Known datamodules: .*shapes"):
        zoo.create_datamodule("shapez")


def test_duplicate_name_from_two_distributions_names_both(fake_dists):
    fake_dists.add(
        "alpha-plugins", {"zoo.models": {"twin": "alpha_mod:Twin"}}, {"alpha_mod": "class Twin: pass"}
    )
    fake_dists.add(
        "beta-plugins", {"zoo.models": {"twin": "beta_mod:Twin"}}, {"beta_mod": "class Twin: pass"}
    )
    with pytest.raises(registry.DuplicateNameError) as info:
        zoo.get_model_class("twin")
    assert "alpha-plugins" in str(info.value) and "beta-plugins" in str(info.value)
    statuses = {s.name: s for s in registry.describe(registry.model_entries())}
    assert not statuses["twin"].ok and statuses["vae"].ok


def test_one_distribution_seen_twice_is_not_a_duplicate(fake_dists, tmp_path):
    fake_dists.add(
        "gamma-plugins",
        {"zoo.models": {"solo": "gamma_mod:Solo"}},
        {"gamma_mod": "class Solo:\n    modality = 'image'"},
    )
    # the same distribution visible a second time (as an editable install's egg-info is)
    second = tmp_path / "site" / "gamma_plugins-1.0.dist-info"
    egg = tmp_path / "site" / "gamma_plugins.egg-info"
    egg.mkdir()
    for name in ("METADATA", "entry_points.txt"):
        (egg / ("PKG-INFO" if name == "METADATA" else name)).write_text((second / name).read_text())
    assert zoo.get_model_class("solo").modality == "image"


def test_broken_plugin_is_listed_and_hides_nothing(fake_dists):
    fake_dists.add(
        "broken-plugins",
        {
            "zoo.models": {"broken_gan": "broken_mod:GAN"},
            "zoo.datamodules": {"broken_data": "broken_mod:Data"},
        },
        {"broken_mod": "import torch\nraise ImportError('needs a library that is not installed')"},
    )
    statuses = {s.name: s for s in registry.describe(registry.model_entries())}
    assert statuses["vae"].ok
    broken = statuses["broken_gan"]
    assert not broken.ok and broken.distribution == "broken-plugins"
    assert "needs a library that is not installed" in broken.error
    with pytest.raises(registry.BrokenPluginError) as info:
        zoo.get_model_class("broken_gan")
    assert "broken-plugins" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)  # the original traceback is kept
    data = {s.name: s for s in registry.describe(registry.datamodule_entries())}
    assert data["shapes"].ok and not data["broken_data"].ok


def test_zoo_list_json_and_table(capsys):
    from zoo.list import main

    assert main(["--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    vae = next(m for m in listing["models"] if m["name"] == "vae")
    assert vae == {**vae, "modality": "image", "default_data": "shapes", "distribution": "zoo", "ok": True}
    assert main([]) == 0
    table = capsys.readouterr().out
    assert "vae" in table and "STATUS" in table and "ok" in table
