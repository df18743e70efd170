"""Reading logged models leaves nothing in the temporary folder (MLflow's own readers left a copy of
the model per call: 48 GB of them filled this machine's disk)."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from medfake.core import logged_models


@pytest.fixture
def registered(tracking_store, tmp_path, monkeypatch):
    """A tiny Keras model logged by a run and registered with alias champion; the temporary folder
    is an empty ``scratch`` from here on."""
    import keras
    import mlflow
    from mlflow.models import infer_signature

    images = keras.Input((8, 8, 1))
    model = keras.Model(images, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(images)))
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    with mlflow.start_run() as run:
        info = mlflow.keras.log_model(model, name="model", signature=infer_signature(x, model.predict(x, verbose=0)),
                                      pip_requirements=["keras"])
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "medfake-detector")
    mlflow.MlflowClient().set_registered_model_alias("medfake-detector", "champion", version.version)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return {"run": run.info.run_id, "model_id": info.model_id, "x": x, "y": model.predict(x, verbose=0),
            "scratch": scratch}


def test_every_uri_form_loads_in_place_without_a_copy(registered):
    import mlflow

    folder = logged_models._local_folder("models:/medfake-detector/1")
    uris = ["models:/medfake-detector@champion", "models:/medfake-detector/1", f"runs:/{registered['run']}/model",
            f"models:/{registered['model_id']}", folder]
    for uri in uris:
        assert logged_models._local_folder(uri) == folder, uri
        info = logged_models.model_info(uri)
        assert set(info.flavors) == {"keras", "python_function"}
        assert (info.run_id, info.model_uuid) == (registered["run"], registered["model_id"])
        np.testing.assert_allclose(logged_models.load_keras(uri).predict(registered["x"], verbose=0), registered["y"],
                                   atol=1e-6)
        pyfunc = logged_models.load_pyfunc(uri).predict(registered["x"])
        np.testing.assert_allclose(np.asarray(pyfunc).reshape(-1), registered["y"].reshape(-1), atol=1e-6)
        assert list(registered["scratch"].iterdir()) == [], uri
    # what this replaces: MLflow's reader copies a run's model into the temporary folder, and leaves it
    mlflow.keras.load_model(f"runs:/{registered['run']}/model")
    assert list(registered["scratch"].iterdir())


def test_errors_are_mlflows_own(registered):
    from mlflow.exceptions import MlflowException

    for uri, message in (("models:/medfake-detector@nope", "alias nope not found"),
                         ("models:/nobody/1", "name=nobody not found"), ("runs:/0123/model", "0123 not found")):
        with pytest.raises(MlflowException, match=message):
            logged_models.model_info(uri)
        with pytest.raises(MlflowException, match=message):
            logged_models.load_keras(uri)
    assert list(registered["scratch"].iterdir()) == []
