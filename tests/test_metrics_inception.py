"""InceptionV3 for FID from a local file: loading a file in the right format, and the errors when there is none."""

from __future__ import annotations

import pytest
import torch

from zoo.metrics.extractors import (
    INCEPTION_FILE,
    InceptionWeightsError,
    inception_extractor,
    inception_weights_path,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory):
    """Random weights in the format of pytorch-fid's pt_inception file: torchvision's Inception3, 1008 classes."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008
    )
    path = tmp_path_factory.mktemp("weights") / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_loads_a_local_weights_file_and_maps_images_to_2048_features(random_inception_weights, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(random_inception_weights.parent / "empty-cache"))
    extractor = inception_extractor(random_inception_weights)
    state = torch.load(random_inception_weights, weights_only=True)
    loaded = extractor.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # every tensor from the file
    assert not any(p.requires_grad for p in extractor.parameters()) and not extractor.training
    images = torch.rand(2, 1, 32, 32)  # grey images are repeated to RGB
    assert extractor(images).shape == (2, 2048)
    assert extractor.logits(images).shape == (2, 1008)
    extractor.train()
    assert not extractor.training  # frozen: never leaves eval mode


def test_environment_variable_and_cache_folder_are_found(random_inception_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_INCEPTION_WEIGHTS", str(random_inception_weights))
    assert inception_weights_path() == random_inception_weights
    monkeypatch.delenv("ZOO_INCEPTION_WEIGHTS")
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / INCEPTION_FILE).symlink_to(random_inception_weights)
    assert inception_weights_path() == tmp_path / "weights" / INCEPTION_FILE


def test_missing_weights_say_exactly_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.delenv("ZOO_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    with pytest.raises(InceptionWeightsError) as err:
        inception_extractor()
    message = str(err.value)
    assert str(tmp_path / "weights" / INCEPTION_FILE) in message
    assert "--inception-weights" in message and "ZOO_INCEPTION_WEIGHTS" in message
    with pytest.raises(InceptionWeightsError, match="not a file"):
        inception_extractor(tmp_path / "nowhere.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(InceptionWeightsError, match="not an FID InceptionV3 state dict"):
        inception_extractor(bad)
