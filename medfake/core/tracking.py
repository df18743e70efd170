"""Everything MLflow: tracking store, experiments, run lifecycle, search helpers.

Runs never stay RUNNING: an exception ends them FAILED (reason in tag ``medfake.failure``),
Ctrl-C or SIGTERM ends them KILLED. Under ``mlflow run`` the entry point attaches to the run the
project launcher created (``MLFLOW_RUN_ID``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Iterator

from medfake.core.contract import (  # noqa: F401 - re-exported for the steps
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_CONFIG_DIGEST,
    TAG_DATA_DIGEST,
    TAG_DEVICE,
    TAG_FAILURE,
    TAG_HEARTBEAT,
    TAG_PROCESS,
    TAG_REDIRECTED_TO,
    TAG_RESOLVED_PREFIX,
    TAG_RUN_NAME,
    TAG_STAGE,
    UI_DEFAULT_URL,
    UI_WORKFLOW_QUERY,
)
from medfake.core.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
HEARTBEAT_S = 30  # a live run rewrites TAG_HEARTBEAT this often; `medfake runs --stale` reads it


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run can end KILLED."""


def tracking_uri() -> str:
    """The store every step uses: env ``MLFLOW_TRACKING_URI``, else ./mlflow.db (DESIGN.md section 5)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_store() -> str:
    """Point MLflow at the store, quietly, without creating any experiment; returns the URI."""
    import logging
    import warnings

    import mlflow

    for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent",
                  "mlflow.system_metrics.system_metrics_monitor"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Hints that say nothing to a medfake user (our inputs are float arrays, our sources local).
    warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways.*")
    warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        _create_sqlite_store(uri)
    return uri


def _create_sqlite_store(uri: str) -> None:
    """Open a local SQLite store under an exclusive lock on its folder. MLflow creates a new store's
    tables by running its migrations, which are not atomic: two steps started at once on a fresh
    ./mlflow.db (two `medfake train` in two terminals) both migrated and one died ('duplicate column
    name: step'). The first opener creates the tables; the others wait, then find them."""
    import fcntl

    from mlflow.tracking import MlflowClient

    folder = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])) or "."
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise UserError(f"tracking store {uri}: its folder cannot be opened ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    finally:
        os.close(fd)


def setup(experiment: str) -> str:
    """Point MLflow at the store (env ``MLFLOW_TRACKING_URI`` or ./mlflow.db) and the experiment."""
    import mlflow

    use_store()
    exp = mlflow.set_experiment(experiment)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # The experiment's kind for MLflow 3 (issue 15). MLflow 3.17's UI still opens a bare
        # experiment link on its GenAI overview with this tag set (seen in Chromium): the
        # model-training layout comes from the link's query, see ui_url.
        from mlflow.tracking import MlflowClient

        MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def ui_url(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI link of an experiment's runs table (or one run) in the model-training layout.

    The one place medfake builds UI links: against a tracking server its own address, for a local
    store where `mlflow ui` serves it. A bare ``#/experiments/<id>`` opens MLflow 3.17's GenAI
    overview (traces, tokens) even with the experiment-kind tag (issue 15, seen in Chromium).
    """
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT_URL
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base}/{page}?{UI_WORKFLOW_QUERY}"


def run_ui_url(run_id: str) -> str:
    """``ui_url`` of a run looked up in the store."""
    from mlflow.tracking import MlflowClient

    use_store()
    return ui_url(MlflowClient().get_run(run_id).info.experiment_id, run_id)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):  # noqa: ARG001
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _heartbeat(run_id: str) -> threading.Event:
    """A daemon thread rewriting the run's heartbeat tag until the returned event is set.

    A process killed with SIGKILL (or out of memory, or a lost node) cannot end its run; a stale
    heartbeat is how `medfake runs --stale` tells such a run from a slow one (issue 15).
    """
    from mlflow.tracking import MlflowClient

    stop = threading.Event()
    client = MlflowClient()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                client.set_tag(run_id, TAG_HEARTBEAT, str(int(time.time())))
            except Exception:  # noqa: BLE001 - a store hiccup must not end the run; the next beat retries
                continue

    threading.Thread(target=beat, name="medfake-heartbeat", daemon=True).start()
    return stop


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str,
    stage: str,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    nested: bool = False,
    system_metrics: bool = False,
    detached: bool = False,
) -> Iterator[Any]:
    """Start (or resume/attach to) a run; end it FINISHED, FAILED or KILLED — never RUNNING.

    ``detached`` starts a separate run even under ``mlflow run`` (a step that needs another step
    first, e.g. train running preprocess), instead of attaching to ``MLFLOW_RUN_ID``.
    """
    import mlflow

    experiment_id = setup(experiment)
    launcher_run = os.environ.get("MLFLOW_RUN_ID")
    attach = run_id or (None if nested or detached else launcher_run)
    redirected_from = None
    if attach and attach == launcher_run and not run_id:
        # `mlflow run` without --experiment-name files its run under "Default": the step's run
        # goes to the config's experiment instead (where select/report look), and the launcher's
        # run points to it.
        from mlflow.tracking import MlflowClient

        if MlflowClient().get_run(launcher_run).info.experiment_id != experiment_id:
            attach, redirected_from = None, launcher_run
    if not attach and launcher_run:
        os.environ.pop("MLFLOW_RUN_ID")  # start_run() would otherwise attach to it
    all_tags = {TAG_STAGE: stage, **(tags or {}), TAG_PROCESS: f"{socket.gethostname()}:{os.getpid()}",
                TAG_HEARTBEAT: str(int(time.time()))}
    kwargs: dict[str, Any] = {"nested": nested, "log_system_metrics": system_metrics or None}
    if attach:
        active = mlflow.start_run(run_id=attach, **kwargs)
    else:
        active = mlflow.start_run(run_name=run_name, tags=all_tags, **kwargs)
    if attach:
        if attach == launcher_run:
            # `mlflow run` named the run itself (`puzzled-cat-816`); the UI shows the step's name.
            all_tags.setdefault(TAG_RUN_NAME, run_name)
        mlflow.set_tags(all_tags)
    if redirected_from:
        from mlflow.tracking import MlflowClient

        MlflowClient().set_tag(redirected_from, TAG_REDIRECTED_TO, f"{experiment}/{active.info.run_id}")
        print(f"mlflow run filed its run under another experiment; this step logs to '{experiment}' "
              f"(run {active.info.run_id}); pass --experiment-name {experiment} to avoid the extra run",
              file=sys.stderr)
    heartbeat = _heartbeat(active.info.run_id)
    with _sigterm_as_interrupt():
        try:
            yield active
        except KeyboardInterrupt:
            mlflow.set_tag(TAG_FAILURE, "interrupted (Ctrl-C or SIGTERM)")
            mlflow.end_run(status="KILLED")
            raise
        except UserError as exc:
            mlflow.set_tag(TAG_FAILURE, str(exc)[:4000])
            mlflow.end_run(status="FAILED")
            raise
        except BaseException as exc:
            mlflow.set_tag(TAG_FAILURE, f"{type(exc).__name__}: {exc}"[:4000])
            mlflow.end_run(status="FAILED")
            raise
        else:
            mlflow.end_run(status="FINISHED")
        finally:
            heartbeat.set()
            if launcher_run:
                os.environ["MLFLOW_RUN_ID"] = launcher_run


def log_params(params: dict[str, Any]) -> None:
    """Log params in chunks (MLflow takes at most 100 per call); values as strings.

    Under ``mlflow run`` the launcher has already logged the entry point's raw ``-P`` values
    (``model=xception``, ``seed=''`` for "the config's"), and MLflow forbids changing a param. Where
    the step resolves one to another value, the raw value stays the param and the resolved one is
    the tag ``medfake.resolved.<key>``; ``params_of`` reads them back merged.
    """
    import mlflow

    items = [(k, "null" if v is None else str(v)) for k, v in params.items()]
    active = mlflow.active_run()
    logged = dict(mlflow.get_run(active.info.run_id).data.params) if active is not None else {}
    resolved = {k: v for k, v in items if k in logged and logged[k] != v}
    items = [(k, v) for k, v in items if k not in resolved]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))
    if resolved:
        mlflow.set_tags({f"{TAG_RESOLVED_PREFIX}{k}": v for k, v in resolved.items()})


def params_of(run) -> dict[str, str]:
    """A run's params with the step's resolved values (``medfake.resolved.*`` tags) over raw launcher values."""
    merged = dict(run.data.params)
    merged.update({k[len(TAG_RESOLVED_PREFIX):]: v for k, v in run.data.tags.items() if k.startswith(TAG_RESOLVED_PREFIX)})
    return merged


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    mlflow.log_text(text, artifact_file)


def log_config(cfg) -> None:
    """The resolved config: flattened as params and as ``config.yaml``; its digest as a tag."""
    import mlflow

    log_params(cfg.flat())
    mlflow.set_tag(TAG_CONFIG_DIGEST, cfg.digest())
    mlflow.log_text(cfg.to_yaml(), "config.yaml")


def finished_runs(experiment: str, filter_string: str = "", order_by: list[str] | None = None) -> list:
    """FINISHED runs of an experiment matching an MLflow filter, newest first."""
    from mlflow.tracking import MlflowClient

    setup(experiment)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = ["attributes.status = 'FINISHED'"] + ([filter_string] if filter_string else [])
    return client.search_runs(
        [exp.experiment_id],
        filter_string=" and ".join(clauses),
        order_by=order_by or ["attributes.start_time DESC"],
        max_results=5000,
    )


def find_finished_run(experiment: str, *, stage: str, tags: dict[str, str] | None = None,
                      params: dict[str, Any] | None = None):
    """The newest FINISHED run of ``stage`` whose tags and params all match, or None: the one
    "reuse a finished run" query.

    A step about to redo work asks here first, matching everything that decides the result
    (data digest, config digest, model, seed, ranking options …): a run found is reused, a run
    with any input different is not. Params compare as MLflow stores them, as strings. An
    experiment that does not exist yet holds nothing to reuse (and is not created).
    """
    from mlflow.tracking import MlflowClient

    use_store()
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    clauses = ["attributes.status = 'FINISHED'", f"tags.`{TAG_STAGE}` = '{stage}'"]
    clauses += [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
    clauses += [f"params.`{key}` = '{'null' if value is None else value}'" for key, value in (params or {}).items()]
    runs = client.search_runs([exp.experiment_id], filter_string=" and ".join(clauses), max_results=1,
                              order_by=["attributes.start_time DESC", "attributes.run_id ASC"])
    return runs[0] if runs else None


def artifact_tempdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="medfake-")
