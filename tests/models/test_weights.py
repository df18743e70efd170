"""Weights resolution: imagenet through the Keras cache, none, or a file; never a silent fallback."""

from __future__ import annotations

import pytest

from medfake.models.registry import get_backbone
from medfake.core.errors import UserError
from medfake.models.weights import cache_dir, is_cached, is_offline, resolve_weights


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("MEDFAKE_OFFLINE", "1")
    return home


def test_cache_dir_follows_keras_home(keras_home):
    assert cache_dir() == keras_home / "models"


def test_none_means_random_weights(keras_home):
    assert resolve_weights(get_backbone("Xception"), "none") == (None, "none")
    assert resolve_weights(get_backbone("Xception"), "None") == (None, "none")


def test_imagenet_offline_and_not_cached_says_where_to_put_which_file(keras_home):
    xception = get_backbone("xception")
    assert is_offline()
    assert not is_cached(xception)
    with pytest.raises(UserError) as error:
        resolve_weights(xception, "imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert "ImageNet weights for Xception are not in the Keras cache and there is no network" in message
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert xception.weights_url in message
    assert str(keras_home / "models") in message


def test_imagenet_in_cache_resolves_to_imagenet_not_a_path(keras_home):
    backbone = get_backbone("EfficientNetB4")  # a path would drop its rescaling layer: keep "imagenet"
    (keras_home / "models").mkdir()
    (keras_home / "models" / backbone.weights_file).write_bytes(b"")
    assert is_cached(backbone)
    assert resolve_weights(backbone, "imagenet") == ("imagenet", "imagenet:efficientnetb4_notop.h5")


def test_weights_file_path(tmp_path, keras_home):
    weights_file = tmp_path / "my_backbone.h5"
    weights_file.write_bytes(b"")
    assert resolve_weights(get_backbone("ResNet50V2"), str(weights_file)) == (str(weights_file), "file:my_backbone.h5")


def test_missing_weights_file_is_named(tmp_path, keras_home):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(UserError, match="nowhere.h5 does not exist"):
        resolve_weights(get_backbone("ResNet50V2"), str(missing))


def test_offline_check_uses_env_first_then_a_one_second_connect(monkeypatch):
    import contextlib

    import medfake.models.weights as weights

    attempts = []

    def refused(address, timeout):
        attempts.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(weights.socket, "create_connection", refused)
    monkeypatch.setenv("MEDFAKE_OFFLINE", "1")
    assert is_offline() and attempts == []  # the flag alone decides: no connection tried
    monkeypatch.delenv("MEDFAKE_OFFLINE")
    assert is_offline() and attempts == [(("storage.googleapis.com", 443), 1.0)]
    monkeypatch.setattr(weights.socket, "create_connection", lambda address, timeout: contextlib.nullcontext())
    assert not is_offline()
