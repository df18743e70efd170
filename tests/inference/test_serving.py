"""Request/response helpers for the MLflow scoring server, and the real server round trip."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import phantom_volume, write_series

from medfake.inference import serving
from medfake.core.errors import UserError

SIZE = 16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- helpers, no server --------------------------------------------------------------------------
def test_urls():
    assert serving.invocations_url("http://127.0.0.1:5001") == "http://127.0.0.1:5001/invocations"
    assert serving.invocations_url("http://h:1/invocations/") == "http://h:1/invocations"
    assert serving.base_url("https://h/api/ping") == "https://h/api"
    for bad in ("127.0.0.1:5001", "ftp://h/x", "http://"):
        with pytest.raises(UserError, match="not an http"):
            serving.invocations_url(bad)


def test_payload_is_the_tensor_as_nested_lists():
    batch = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) - 1000
    body = json.loads(serving.payload(batch))
    assert list(body) == ["inputs"]
    assert np.array(body["inputs"]).shape == (2, 3, 3, 1)
    assert np.array_equal(np.array(body["inputs"])[..., 0], batch)
    with pytest.raises(UserError, match="shape"):
        serving.payload(np.zeros((2, 3, 3, 3)))
    with pytest.raises(UserError, match="NaN"):
        serving.payload(np.full((1, 2, 2, 1), np.nan))


@pytest.mark.parametrize("answer, expected", [
    ({"predictions": [[0.25], [0.75]]}, [0.25, 0.75]),       # Keras flavour
    ({"predictions": [0.25, 0.75]}, [0.25, 0.75]),           # pyfunc baseline
    ({"predictions": {"probability": [[0.1], [0.2]]}}, [0.1, 0.2]),
    ([0.5, 0.5], [0.5, 0.5]),
])
def test_parse_predictions(answer, expected):
    assert serving.parse_predictions(json.dumps(answer).encode(), 2) == pytest.approx(expected)


@pytest.mark.parametrize("body, message", [
    (b"<html>oops</html>", "not JSON"),
    (b'{"predictions": [0.1]}', "did not answer 2 probabilities"),
    (b'{"result": "ok"}', "did not answer 2 probabilities"),
    (b'{"predictions": [[0.1, 0.9], [0.2, 0.8]]}', "did not answer 2 probabilities"),
    (b'{"predictions": ["a", "b"]}', "did not answer 2 probabilities"),
    (b'{"predictions": [3.0, 0.2]}', "outside \\[0, 1\\]"),
])
def test_garbage_answers_are_one_line_errors(body, message):
    with pytest.raises(UserError, match=message) as info:
        serving.parse_predictions(body, 2)
    assert "\n" not in str(info.value)


def test_endpoint_down():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match="not reachable"):
        serving.score(url, np.zeros((1, 4, 4, 1)), timeout=5)
    assert not serving.is_ready(url)
    with pytest.raises(UserError, match="did not answer /ping within 1 s"):
        serving.wait_until_ready(url, timeout_s=1.0, poll_s=0.2)


class _Garbage(http.server.BaseHTTPRequestHandler):
    """A loopback server that answers every POST with HTML, or HTTP 500 with an MLflow-style error."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/fail"):
            body = json.dumps({"error_code": "BAD_REQUEST", "message": "shape mismatch\nTraceback …"}).encode()
            self.send_response(500)
        else:
            body = b"<html>not a model server</html>"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_answering_garbage_or_errors():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(UserError, match="not JSON"):
            serving.score(url, np.zeros((1, 4, 4, 1)), timeout=5)
        with pytest.raises(UserError, match=r"refused the request \(HTTP 500\): shape mismatch$"):
            serving.score(url + "/fail", np.zeros((1, 4, 4, 1)), timeout=5)
    finally:
        server.shutdown()
        server.server_close()


# -- the real MLflow scoring server ----------------------------------------------------------------------
def tiny_model():
    import keras

    keras.utils.set_random_seed(1)
    hu = keras.Input((SIZE, SIZE, 1), name="hu")
    x = keras.layers.Rescaling(1 / 500.0)(hu)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(hu, keras.layers.Dense(1, activation="sigmoid", name="probability")(x))


def register_champion(model) -> str:
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    mlflow.set_experiment("medfake-serving-test")
    example = np.full((1, SIZE, SIZE, 1), -1000.0, np.float32)
    with mlflow.start_run() as run:
        mlflow.keras.log_model(model, name="model", signature=infer_signature(example, model.predict(example, verbose=0)),
                               pip_requirements=["keras"])
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "medfake-detector")
    MlflowClient().set_registered_model_alias("medfake-detector", "champion", version.version)
    return "models:/medfake-detector@champion"


@pytest.mark.slow
def test_real_scoring_server_round_trip(tracking_store, tmp_path, capsys):
    """`mlflow models serve` on a loopback port answers HU slices like local scoring does."""
    from medfake.inference import scan as sc
    from medfake.inference.loading import load_scorer
    from medfake.cli import main

    model = tiny_model()
    uri = register_champion(model)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(mlflow_exe), "models", "serve", "-m", uri, "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1",
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
        # the server execs `uvicorn` from PATH: the venv's bin must be on it, as in an activated venv
        # TMPDIR: the server's copy of the model goes with the test's folder when it is killed
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_store, "TMPDIR": str(tmp_path),
             "PATH": os.pathsep.join([str(mlflow_exe.parent), os.environ.get("PATH", "")])},
    )
    try:
        serving.wait_until_ready(url, timeout_s=90, alive=lambda: server.poll() is None)
        rng = np.random.default_rng(0)
        batch = rng.normal(-500, 300, size=(3, SIZE, SIZE, 1)).astype(np.float32)
        remote = serving.score(url, batch, timeout=30)
        local = model.predict(batch, verbose=0).reshape(-1)
        assert remote.shape == (3,)
        np.testing.assert_allclose(remote, local, atol=1e-5)
        # slices of the wrong size: the server refuses, one line
        with pytest.raises(UserError, match="refused the request"):
            serving.score(url, np.zeros((1, SIZE + 1, SIZE + 1, 1)), timeout=30)
        # a whole series through `medfake scan --endpoint`: same scores as scanning with the model locally
        folder = tmp_path / "series"
        write_series(folder, phantom_volume(n=6, size=32, seed=2))
        out = tmp_path / "endpoint.json"
        assert main(["scan", str(folder), "--endpoint", url, "--json", str(out), "--quiet"]) == 0
        assert "resampled" in capsys.readouterr().err  # 32² slices, the champion's signature says 16²
        via_server = json.loads(out.read_text())["series"][0]
        locally = sc.scan(folder, load_scorer(uri, runtime="keras"))["series"][0]
        assert [r["slice"] for r in via_server["scores"]] == [r["slice"] for r in locally["scores"]]
        np.testing.assert_allclose([r["score"] for r in via_server["scores"]],
                                   [r["score"] for r in locally["scores"]], atol=1e-5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
