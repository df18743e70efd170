"""``medfake backbones``: the registry as a table or JSON, parameter counts cached."""

from __future__ import annotations

import json

import pytest

from medfake.models import backbones as backbones_table

from medfake import cli
from medfake.models.registry import list_backbones


@pytest.fixture
def params_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    backbones_table.detector_params_m.cache_clear()
    yield backbones_table.params_cache_file()
    backbones_table.detector_params_m.cache_clear()


def test_params_are_counted_once_then_read_from_the_cache(params_cache):
    assert backbones_table.detector_params_m("MobileNetV3Large") == pytest.approx(3.62, abs=0.01)
    cached = json.loads(params_cache.read_text())
    key = backbones_table.params_cache_key("MobileNetV3Large")
    assert cached[key] == pytest.approx(3.62, abs=0.01)
    params_cache.write_text(json.dumps({key: 99.0}))
    backbones_table.detector_params_m.cache_clear()
    assert backbones_table.detector_params_m("mobilenetv3large") == 99.0


def test_json_lists_every_backbone(params_cache, capsys):
    params_cache.parent.mkdir(parents=True)
    params_cache.write_text(json.dumps({backbones_table.params_cache_key(b.name): 1.5 for b in list_backbones()}))
    assert cli.main(["backbones", "--size", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [b.name for b in list_backbones()]
    xception = next(row for row in rows if row["name"] == "Xception")
    assert xception["fits_size"] is False and xception["min_size"] == 71
    assert xception["weights_file"] == "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert xception["cached"] is False and xception["params_m"] == 1.5


def test_table_marks_cached_weights_and_small_sizes(params_cache, capsys, tmp_path):
    params_cache.parent.mkdir(parents=True)
    params_cache.write_text(json.dumps({backbones_table.params_cache_key(b.name): 2.0 for b in list_backbones()}))
    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    (models / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"")
    assert cli.main(["backbones", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    vgg = next(line for line in lines if line.startswith("VGG19"))
    xception = next(line for line in lines if line.startswith("Xception"))
    assert vgg.split()[-1] == "yes" and "caffe" in vgg
    assert xception.split()[-1] == "no" and "too small" in xception
