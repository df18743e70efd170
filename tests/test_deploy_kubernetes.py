"""The Kubernetes kit, rendered with MLflow's own code: the Job it would submit for a train run.

No cluster or registry is reached (none is available here): the job definition is built exactly as
``mlflow run --backend kubernetes`` builds it, then checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CHECKOUT = Path(__file__).resolve().parent.parent
KIT = CHECKOUT / "deploy" / "kubernetes"


def test_job_mlflow_would_submit_has_image_command_gpu_and_tracking_uri(monkeypatch, tmp_path):
    from mlflow.projects import _parse_kubernetes_config, _project_spec
    from mlflow.projects import kubernetes as kb
    from mlflow.projects.utils import get_entry_point_command, get_run_env_vars

    monkeypatch.chdir(CHECKOUT)  # backend_config names the template relative to the checkout
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://medfake-tracking.team:5000")
    project = _project_spec.load_project(str(KIT))
    assert project.docker_env["image"].endswith("medfake:gpu")
    config = _parse_kubernetes_config(json.loads((KIT / "backend_config.json").read_text()))
    command = get_entry_point_command(project, "train", {"model": "xception", "seed": "42"},
                                      storage_dir=str(tmp_path))
    image = f"{config['repository-uri']}:1a2b3c"
    job = kb._get_kubernetes_job_definition(project.name, image, "sha256:" + "0" * 64, kb._get_run_command(command),
                                            get_run_env_vars(run_id="r" * 32, experiment_id="7"),
                                            config["kube-job-template"])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image}@sha256:{'0' * 64}"
    assert container["command"][:3] == ["medfake", "train", "--model"] and "xception" in container["command"]
    assert container["command"][container["command"].index("--seed") + 1] == "42"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://medfake-tracking.team:5000"
    assert env["MLFLOW_RUN_ID"] == "r" * 32 and env["MLFLOW_EXPERIMENT_ID"] == "7"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["metadata"]["name"].startswith("medfake-")


def test_images_install_the_project_from_its_pyproject():
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (KIT / name).read_text()
        assert "COPY pyproject.toml" in text and "pip install '.[server]'" in text, name
    assert "tensorflow[and-cuda]" in (KIT / "Dockerfile.gpu").read_text()
    root_entry = yaml.safe_load((CHECKOUT / "MLproject").read_text())["entry_points"]["train"]["command"]
    kit_entry = yaml.safe_load((KIT / "MLproject").read_text())["entry_points"]["train"]["command"]
    assert kit_entry == root_entry  # the same step and parameters as `mlflow run . -e train`
