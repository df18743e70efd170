"""Talking to an MLflow scoring server (``mlflow models serve``) that holds a detector.

The server takes HU slices as the detector's one tensor input, JSON ``{"inputs": [...]}`` of
shape (n, S, S, 1) float32 posted to ``/invocations``, and answers
``{"predictions": [[p], …]}`` (Keras flavour) or ``{"predictions": [p, …]}`` (pyfunc baseline),
p = probability that the slice is fake. These helpers build that request, call the server with
a timeout, and turn a server that is down or answers garbage into one-line ``UserError``s.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medfake.core.errors import UserError
from medfake.io.series import DICOMSeries
from medfake.io.transforms import resize

INVOCATIONS = "/invocations"
PING = "/ping"
CONTENT_TYPE = "application/json"
DEFAULT_TIMEOUT_S = 120.0


def _parsed(endpoint: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(str(endpoint).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"endpoint {endpoint!r} is not an http(s) URL such as http://127.0.0.1:5001")
    return parts


def base_url(endpoint: str) -> str:
    """The server root of ``endpoint`` (``…/invocations`` or ``…/ping`` removed, no trailing /)."""
    parts = _parsed(endpoint)
    path = parts.path.rstrip("/")
    for suffix in (INVOCATIONS, PING):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def invocations_url(endpoint: str) -> str:
    """Where to POST: ``http://host:port/invocations`` for a root or an invocations URL."""
    return base_url(endpoint) + INVOCATIONS


def payload(hu_batch: np.ndarray) -> bytes:
    """The request body for HU slices (n, S, S, 1) or (n, S, S): ``{"inputs": nested lists}``."""
    batch = np.asarray(hu_batch, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.ndim != 4 or batch.shape[-1] != 1 or batch.shape[0] == 0:
        raise UserError(f"slices for the server must be (n, size, size, 1) HU with n ≥ 1, got shape {batch.shape}")
    if not np.all(np.isfinite(batch)):
        raise UserError("slices for the server contain NaN or infinite HU values")
    return json.dumps({"inputs": batch.tolist()}, separators=(",", ":")).encode()


def payload_from_dicom(files: str | Path | Sequence[str | Path], size: int) -> bytes:
    """A request body from DICOM files (one series), resampled to the model's ``size``² input.

    Used for the README's ``curl`` example: it is exactly what ``medfake scan --endpoint`` posts.
    """

    source = [files] if isinstance(files, (str, Path)) else list(files)
    series = DICOMSeries.open(source if len(source) > 1 else source[0])
    return payload(resize(series.read_hu(), int(size)))


def parse_predictions(body: bytes | str, expected: int, where: str = "the endpoint") -> np.ndarray:
    """Probabilities (expected,) float32 from a scoring-server answer; UserError when it is not that."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    snippet = " ".join(text[:80].split())
    try:
        answer = json.loads(text)
    except ValueError:
        raise UserError(f"{where} answered something that is not JSON: {snippet!r}") from None
    values = answer.get("predictions") if isinstance(answer, dict) else answer
    if isinstance(values, dict) and len(values) == 1:  # a named single output: {"probability": [...]}
        values = next(iter(values.values()))
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        scores = np.asarray([], dtype=np.float64)
    if values is None or scores.dtype == object or scores.size != expected or scores.ndim > 2 or (
        scores.ndim == 2 and scores.shape[1] != 1
    ):
        raise UserError(f"{where} did not answer {expected} probabilities (got {snippet!r})")
    scores = scores.reshape(-1)
    if not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise UserError(f"{where} answered values outside [0, 1]; is it serving a medfake detector? (got {snippet!r})")
    return scores.astype(np.float32)


def _error_message(body: bytes) -> str:
    """The first line of an MLflow error answer (``{"error_code": …, "message": …}``) or the body."""
    text = body.decode("utf-8", errors="replace")
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        message = text
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return (lines[0] if lines else "no message")[:240]


def post(endpoint: str, body: bytes, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
    """POST a JSON body to the server's /invocations; one-line UserError when it fails."""
    url = invocations_url(endpoint)
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": CONTENT_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        detail = _error_message(exc.read() or b"")
        raise UserError(f"endpoint {url} refused the request (HTTP {exc.code}): {detail}") from None
    except urllib.error.URLError as exc:
        raise UserError(f"endpoint {url} is not reachable: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise UserError(f"endpoint {url} did not answer within {timeout:g} s ({type(exc).__name__})") from None


def score(endpoint: str, hu_batch: np.ndarray, timeout: float = DEFAULT_TIMEOUT_S) -> np.ndarray:
    """Probabilities of fake (n,) for HU slices (n, S, S, 1) from a running scoring server."""
    batch = np.asarray(hu_batch, dtype=np.float32)
    answer = post(endpoint, payload(batch), timeout)
    return parse_predictions(answer, len(batch), where=f"endpoint {invocations_url(endpoint)}")


def is_ready(endpoint: str, timeout: float = 2.0) -> bool:
    """True when the server's /ping answers 200."""
    try:
        with urllib.request.urlopen(base_url(endpoint) + PING, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until_ready(endpoint: str, timeout_s: float = 90.0, poll_s: float = 0.5, alive=None) -> None:
    """Poll /ping until it answers (the server loads the model first); UserError after ``timeout_s``.

    ``alive`` (optional callable) says whether the server process is still running, so a server
    that died is reported at once instead of after the timeout.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_ready(endpoint):
            return
        if alive is not None and not alive():
            raise UserError(f"the scoring server for {base_url(endpoint)} exited before answering /ping")
        time.sleep(poll_s)
    raise UserError(f"endpoint {base_url(endpoint)} did not answer /ping within {math.ceil(timeout_s)} s")
