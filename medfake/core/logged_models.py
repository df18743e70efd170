"""Reading MLflow models (``models:/``, ``runs:/``, a model folder) without leaving copies behind.

MLflow's own readers (``mlflow.keras.load_model``, ``mlflow.pyfunc.load_model``,
``mlflow.models.get_model_info``) copy a run's model (``runs:/``, a run id, an ensemble's members;
a registry model on a tracking server) into a new temporary folder on every call and never remove
it. A quickstart detector is 265–353 MB: days of tests and scans left 48 GB in 1,291 such folders
and filled this machine's disk.
Here a model on a local artifact store is read where it lies (no copy at all), and one on another
store (a tracking server, S3 …) is downloaded into a folder removed once the model is in memory.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator
from urllib.parse import urlparse

from medfake.core import tracking


def _underlying(uri: str) -> str:
    """The artifact location behind a models:/ or runs:/ URI (the URI itself for anything else)."""
    if uri.startswith("models:/"):
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        return ModelsArtifactRepository.get_underlying_uri(uri)
    if uri.startswith("runs:/"):
        from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

        logged = _logged_model_of_run(uri)
        return _underlying(logged) if logged else RunsArtifactRepository.get_underlying_uri(uri)
    return uri


def _logged_model_of_run(uri: str) -> str | None:
    """``models:/<model id>`` of the model a run logged under the name in ``runs:/<run id>/<name>``
    (MLflow 3 keeps a run's model apart from the run's own artifacts), None when it has none."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking import MlflowClient

    run_id, path = RunsArtifactRepository.parse_runs_uri(uri)
    name, _, rest = (path or "").partition("/")
    if not name or rest:
        return None
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(experiment_ids=[experiment], max_results=1,
                                        filter_string=f"name = '{name}' AND source_run_id = '{run_id}'")
    return f"models:/{found[0].model_id}" if found else None


def _local_folder(uri: str) -> str | None:
    """The local folder holding the model at ``uri``, when its artifact store is this file system."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    location = _underlying(uri)
    if urlparse(location).scheme not in ("", "file"):
        return None
    folder = local_file_uri_to_path(location)
    return folder if os.path.isfile(os.path.join(folder, "MLmodel")) else None


@contextlib.contextmanager
def model_folder(uri: str) -> Iterator[str]:
    """A local folder with the MLflow model at ``uri`` for the ``with`` block; a downloaded copy is
    removed when the block ends (MLflow errors — a missing alias, an unknown run — pass through)."""
    local = _local_folder(uri)
    if local is not None:
        yield local
        return
    from mlflow.artifacts import download_artifacts

    with tracking.artifact_tempdir() as scratch:
        yield download_artifacts(artifact_uri=uri, dst_path=scratch)


def model_info(uri: str):
    """MLflow's ModelInfo of the model at ``uri``, reading only its MLmodel file."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    local = _local_folder(uri)
    if local is not None:
        return Model.load(local).get_model_info()
    with tracking.artifact_tempdir() as scratch:
        return Model.load(download_artifacts(artifact_uri=f"{uri.rstrip('/')}/MLmodel", dst_path=scratch)).get_model_info()


def load_keras(uri: str):
    """The Keras model at ``uri``, without its optimizer (scoring and maps never need it, and Keras
    would warn that it skips the optimizer's variables). The caller registers custom layers first."""
    import mlflow

    with model_folder(uri) as folder:
        return mlflow.keras.load_model(folder, load_model_kwargs={"compile": False})


def load_pyfunc(uri: str):
    """The MLflow pyfunc model at ``uri`` (the HU-histogram baseline), held in memory."""
    import mlflow

    with model_folder(uri) as folder:
        return mlflow.pyfunc.load_model(folder)
