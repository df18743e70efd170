"""Where a tune study lives and how a second ``medfake tune`` joins or resumes it.

Optuna storage is a journal file beside the MLflow store by default (safe for several processes
on one machine) or any RDB URL for workers on several machines. A study records what it was made
for (model, objective, config, space and data); joining with another setup is refused.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfake.core import tracking
from medfake.core.contract import TAG_FAILURE, TAG_STUDY, TAG_TRIAL
from medfake.core.errors import UserError
from medfake.study.tune_space import TuneSpec, make_pruner, make_sampler

JOURNAL_NAME = "optuna.journal"


def default_storage_path(tracking_uri: str | None = None) -> Path:
    """The journal file beside the MLflow store (``mlflow.db``'s folder, or ``mlruns``'s parent);
    for a remote tracking server, ``.medfake/optuna.journal`` in the working directory."""
    from urllib.parse import urlparse

    uri = tracking_uri or tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / JOURNAL_NAME
    if uri.startswith("file:"):
        return Path(urlparse(uri).path).parent / JOURNAL_NAME
    if "://" not in uri:
        return Path(uri).parent / JOURNAL_NAME
    return Path(".medfake") / JOURNAL_NAME


def redact(url: str) -> str:
    """A storage URL without its password, for messages, params and the table."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable as a database URL: drop anything between ':' and '@'
        import re

        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_storage(text: str):
    """``--storage`` → (Optuna storage, how to show it). An RDB URL (``postgresql://…``,
    ``sqlite:///…``) or a journal file path; one that cannot be used is a one-line error."""
    import optuna

    if "://" in text:
        shown = redact(text)
        kwargs = {}
        if text.startswith(("postgresql", "mysql")):
            kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": 10}}
            kwargs |= heartbeat_options()
        if text.startswith("postgresql://"):  # SQLAlchemy 2.1 reads this as psycopg 3; the server extra has psycopg2
            text = "postgresql+psycopg2://" + text[len("postgresql://"):]
        try:
            storage = optuna.storages.RDBStorage(text, **kwargs)
        except Exception as exc:  # a driver error of any kind: the URL cannot be used
            detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
            raise UserError(f"--storage {shown}: cannot be reached or opened ({type(exc).__name__}: {detail})") from None
        if text.startswith("sqlite"):
            print("medfake tune: note: SQLite storage is for one worker; parallel workers need a journal "
                  "file or a database server", file=sys.stderr)
        return storage, shown
    path = Path(text).expanduser()
    if path.is_dir():
        raise UserError(f"--storage {path}: is a folder; give a journal file path or a database URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--storage {path}: cannot create folder {path.parent} ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--storage {path}: not writable")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        return JournalStorage(JournalFileBackend(str(path))), str(path.resolve())
    except Exception as exc:
        raise UserError(f"--storage {path}: cannot be used as a journal ({type(exc).__name__}: {exc})") from None


# -- workers that die ----------------------------------------------------------------------------
HEARTBEAT_S = 60      # a running trial's worker writes a heartbeat this often (Optuna's thread)
GRACE_S = 180         # ... and is taken for dead after this long without one
TRIAL_RETRIES = 1     # a dead worker's trial is run again once, by whichever worker notices


def heartbeat_options(interval_s: int | None = None, grace_s: int | None = None) -> dict:
    """RDBStorage arguments: heartbeats, and a stale trial failed, retried and its MLflow run ended.

    ``MEDFAKE_TUNE_HEARTBEAT_S`` / ``MEDFAKE_TUNE_GRACE_S`` shorten them (the kill test does).
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    interval = interval_s or int(os.environ.get("MEDFAKE_TUNE_HEARTBEAT_S", HEARTBEAT_S))
    grace = grace_s or int(os.environ.get("MEDFAKE_TUNE_GRACE_S", GRACE_S))
    retry = RetryHeartbeatStaleTrialCallback(max_retry=TRIAL_RETRIES)

    def on_stale(study, trial) -> None:
        end_stale_trial_run(study.study_name, trial.number, grace)
        retry(study, trial)

    return {"heartbeat_interval": interval, "grace_period": grace, "heartbeat_stale_trial_callback": on_stale}


def end_stale_trial_run(study_name: str, trial_number: int, grace_s: int) -> list[str]:
    """End FAILED the RUNNING MLflow runs of a trial whose worker stopped beating; their ids."""
    from mlflow.tracking import MlflowClient

    tracking.use_store()
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    runs = client.search_runs(ids, max_results=100, filter_string=(
        f"attributes.status = 'RUNNING' and tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_TRIAL}` = '{trial_number}'"))
    reason = (f"worker lost: no Optuna heartbeat for over {grace_s} s (killed, out of memory or node gone); "
              f"trial {trial_number} failed and is retried")
    for run in runs:
        client.set_tag(run.info.run_id, TAG_FAILURE, reason)
        client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in runs]


# -- the study ---------------------------------------------------------------------------------
@dataclass
class Search:
    """Everything a trial needs, resolved before the first one starts."""

    spec: TuneSpec
    plan: Any                  # train.Plan of the base config
    data_digest: str
    study_name: str
    storage_shown: str
    progress: bool


def study_identity(search: Search) -> dict:
    """What must match for a second ``medfake tune`` to join a study."""
    return {"model": search.plan.model, "objective": search.spec.metric, "direction": search.spec.direction,
            "config_digest": search.plan.cfg.digest(), "space_digest": search.spec.digest(),
            "data_digest": search.data_digest}


def open_study(search: Search, storage):
    """Create the study or load it (``load_if_exists``); refuse to mix trials of another setup."""
    import optuna

    spec = search.spec
    study = optuna.create_study(study_name=search.study_name, storage=storage, direction=spec.direction,
                                pruner=make_pruner(spec), load_if_exists=True)
    mine = study_identity(search)
    stored = study.user_attrs.get("medfake")
    if stored is None:
        study.set_user_attr("medfake", mine)
    elif stored != mine:
        differ = ", ".join(k.replace("_", " ") for k in mine if stored.get(k) != mine[k])
        raise UserError(f"study '{search.study_name}' in {search.storage_shown} was made with another {differ}; "
                        "use the same settings to join it or another --study")
    study.sampler = make_sampler(spec, len(study.trials))
    return study


def counted_trials(study) -> list:
    """Trials that count toward ``--trials``: complete or pruned (failed ones are run again)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
