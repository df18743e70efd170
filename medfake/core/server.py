"""Start a team tracking server: ``mlflow server`` on a PostgreSQL backend store, artifacts proxied.

SQLite takes one writer at a time, so parallel trainings (``select --parallel``, Optuna workers,
several machines) share a database server instead. Without ``--backend-store-uri`` this step runs
a private PostgreSQL (Debian's ``postgresql`` package: ``initdb``/``pg_ctl``) in ``--state-dir``,
listening on 127.0.0.1 only on a free port; with it, an existing server is used. The database is
created when missing. Artifacts go through the tracking server (``--serve-artifacts``) into
``--artifacts-destination``, so no client needs a shared file system. The step prints the
``MLFLOW_TRACKING_URI`` to export and runs until Ctrl-C or SIGTERM, then stops what it started.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from medfake.core.errors import UserError

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # where Debian's postgresql package puts initdb and pg_ctl
PG_SERVICE_USER = "postgres"  # initdb refuses root; Debian's package creates this user
PG_ROLE = "medfake"
DEFAULT_DATABASE = "medfake"
DEFAULT_STATE_DIR = ".medfake/server"
DEFAULT_PORT = 5000
WORKER_HEALTHCHECK_S = 120
START_TIMEOUT_S = 180.0  # a loaded machine: MLflow's first start migrates the empty database


def postgres_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian install."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob(f"{PG_BIN_GLOB}/pg_ctl"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise UserError("PostgreSQL not found (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
                        "install it with `apt-get install -y postgresql` or pass --backend-store-uri postgresql://…")
    return Path(found[-1]).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _as_service_user(cmd: list[str]) -> list[str]:
    """``initdb`` and ``postgres`` refuse to run as root: run them as the ``postgres`` user."""
    return ["runuser", "-u", PG_SERVICE_USER, "--", *cmd] if _running_as_root() else cmd


def _hand_to_service_user(path: Path) -> None:
    if _running_as_root():
        shutil.chown(path, user=PG_SERVICE_USER, group=PG_SERVICE_USER)


def _check_reachable(folder: Path) -> None:
    """As root, the ``postgres`` user must be able to walk down to the data folder."""
    if not _running_as_root():
        return
    for parent in folder.resolve().parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise UserError(f"the postgres user cannot reach {folder} ({parent} is not world-searchable): "
                            "pass a --state-dir under a folder like /srv or /tmp, or run as a normal user")


@dataclass
class Postgres:
    """A private PostgreSQL cluster in ``data_dir``, reachable on 127.0.0.1:``port``."""

    data_dir: Path
    port: int
    password: str
    bin_dir: Path

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://{PG_ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.data_dir}")
        log = self.data_dir / "server.log"
        _run(_as_service_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w",
                               "-t", "120", "-o", options, "start"]), f"pg_ctl start (log: {log})")

    def stop(self) -> None:
        subprocess.run(_as_service_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                                         "-w", "stop"]), capture_output=True, check=False)


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{what} failed (exit {done.returncode}): {tail[0]}")


def init_postgres(state_dir: Path, port: int | None = None) -> Postgres:
    """The cluster in ``state_dir/postgres``, created on first use (role ``medfake``, password auth).

    The password lives in ``state_dir/postgres.password`` (mode 0600) and reaches ``mlflow server``
    through its environment, never its command line (``ps`` shows command lines to every user).
    """
    bin_dir = postgres_bin_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    _check_reachable(state_dir)
    data_dir = state_dir / "postgres"
    secret = state_dir / "postgres.password"
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists() and any(data_dir.iterdir()):
            raise UserError(f"{data_dir} is neither empty nor a PostgreSQL data folder: move it away")
        data_dir.mkdir(mode=0o700, exist_ok=True)
        _hand_to_service_user(data_dir)
        secret.write_text(secrets.token_urlsafe(24))
        secret.chmod(0o600)
        _hand_to_service_user(secret)  # initdb reads it as the postgres user
        _run(_as_service_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", PG_ROLE, f"--pwfile={secret}",
                               "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8"]), "initdb")
    if not secret.exists():
        raise UserError(f"{secret} is missing: the password of the cluster in {data_dir} is unknown")
    return Postgres(data_dir, port or free_port(), secret.read_text().strip(), bin_dir)


def with_psycopg2(uri: str) -> str:
    """``postgresql://`` names psycopg 3 in SQLAlchemy 2.1; the ``server`` extra installs psycopg2."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.drivername != "postgresql":
        return uri
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def ensure_database(uri: str) -> None:
    """Create the URI's database on its server when it is missing (connecting to ``postgres``)."""
    import psycopg2
    from psycopg2 import sql
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if not url.drivername.startswith("postgresql"):
        return
    try:
        conn = psycopg2.connect(host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                                password=url.password, dbname="postgres", connect_timeout=20)
    except psycopg2.OperationalError as exc:
        raise UserError(f"cannot connect to PostgreSQL at {url.host}:{url.port or 5432}: "
                        f"{str(exc).strip().splitlines()[0]}") from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    except psycopg2.Error as exc:
        raise UserError(f"cannot create database {url.database!r}: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


def client_uri(host: str, port: int) -> str:
    """The URI clients export: a wildcard bind is reached through this machine's name."""
    name = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    return f"http://{name}:{port}"


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            where = f" (log: {log})" if log else ""
            raise UserError(f"mlflow server exited with code {proc.returncode} while starting{where}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise UserError(f"mlflow server did not answer {url}/health within {timeout_s:.0f} s")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class TrackingServer:
    tracking_uri: str
    backend_store_uri: str
    artifacts_destination: str
    process: subprocess.Popen


@contextlib.contextmanager
def tracking_server(state_dir: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    backend_store_uri: str | None = None, artifacts_destination: str | None = None,
                    database: str = DEFAULT_DATABASE, workers: int = 2, log_file: Path | None = None,
                    ) -> Iterator[TrackingServer]:
    """PostgreSQL (unless ``backend_store_uri``) and ``mlflow server``, both stopped on exit."""
    state_dir = Path(state_dir)
    postgres = None if backend_store_uri else init_postgres(state_dir)
    artifacts = artifacts_destination or (state_dir / "artifacts").resolve().as_uri()
    if artifacts.startswith("file:"):
        Path(artifacts[len("file://"):]).mkdir(parents=True, exist_ok=True)
    try:
        if postgres is not None:
            postgres.start()
            backend_store_uri = postgres.uri(database)
        backend_store_uri = with_psycopg2(backend_store_uri)
        ensure_database(backend_store_uri)
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
        env.pop("MLFLOW_TRACKING_URI", None)
        # MLflow 3's job runner (GenAI trace roll-ups, scorers) starts seven huey worker processes that
        # keep two cores busy; training runs need none of it. A user's own setting wins.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        cmd = [*_mlflow_command(), "server", "--host", host, "--port", str(port), "--workers", str(workers),
               "--serve-artifacts", "--artifacts-destination", artifacts,
               # uvicorn kills a worker that takes over 5 s to answer its supervisor: importing
               # MLflow takes longer than that on a busy machine, and the workers died in a loop.
               "--uvicorn-opts", f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}"]
        out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(cmd, env=env, cwd=state_dir, stdout=out, stderr=subprocess.STDOUT if out else None,
                                    start_new_session=True)
            try:
                local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
                wait_healthy(local, proc, log=log_file)
                yield TrackingServer(client_uri(host, port), backend_store_uri, artifacts, proc)
            finally:
                _stop_group(proc)
        finally:
            if out:
                out.close()
    finally:
        if postgres is not None:
            postgres.stop()


def _redacted(uri: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(uri).render_as_string(hide_password=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 lets a team's machines connect)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument("--backend-store-uri", default="",
                        help="an existing PostgreSQL, postgresql://user:password@host:5432/db "
                             "(default: a private one in --state-dir)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help=f"the private PostgreSQL's data and the default artifact folder (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--artifacts-destination", default="",
                        help="where the server stores artifacts (default: STATE_DIR/artifacts; s3://… works too)")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help=f"database of the private PostgreSQL (default {DEFAULT_DATABASE})")
    parser.add_argument("--workers", type=int, default=2, help="MLflow server worker processes (default 2)")


def run(args: argparse.Namespace) -> int:
    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with tracking_server(Path(args.state_dir), host=args.host, port=args.port,
                             backend_store_uri=args.backend_store_uri.strip() or None,
                             artifacts_destination=args.artifacts_destination.strip() or None,
                             database=args.database, workers=args.workers) as server:
            print(f"tracking server ready: backend {_redacted(server.backend_store_uri)}, "
                  f"artifacts {server.artifacts_destination}")
            print(f"export MLFLOW_TRACKING_URI={server.tracking_uri}", flush=True)
            print("(Ctrl-C stops the server)", flush=True)
            try:
                return server.process.wait() and 1
            except KeyboardInterrupt:
                print("stopping the tracking server", file=sys.stderr)
                return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
