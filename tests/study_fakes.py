"""Fake select/screen runs in a throwaway MLflow store, shared by the study tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfake.models import published as study
from medfake.cli import main
from medfake.core.config import load_config

EXPERIMENT = "select-test"
CHECKOUT = Path(__file__).resolve().parent.parent


def base_config(experiment=EXPERIMENT):
    return load_config("quickstart", [f"experiment={experiment}"])


def study_metrics(model: str, split: str = "test") -> dict[str, float]:
    """The study's Table 1 row as MLflow metrics of one split."""
    return {f"{split}_{name}": value for name, value in study.TABLE1[model].items()}


def full_metrics(model: str, rng: np.random.Generator | None = None) -> dict[str, float]:
    """Study test metrics plus val metrics, CIs, confusion counts and efficiency numbers."""
    metrics = study_metrics(model, "test") | study_metrics(model, "val")
    for name in ("accuracy", "f1", "auc"):
        metrics[f"test_{name}_ci_low"] = metrics[f"test_{name}"] - 0.01
        metrics[f"test_{name}_ci_high"] = min(1.0, metrics[f"test_{name}"] + 0.01)
    metrics |= {"test_tp": 9, "test_fp": 1, "test_tn": 8, "test_fn": 2, "params_m": study.TABLE3[model]["params_m"],
                "latency_ms_mean": 10.0 + len(model), "latency_ms_std": 1.5, "phase1_seconds": 3.0, "phase2_seconds": 4.0}
    return metrics


def fake_predictions(seed: int, n: int = 40, flip: float = 0.1) -> pd.DataFrame:
    """A test-set predictions table in the train step's layout."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    scores = np.clip(labels * 0.6 + rng.uniform(0, 0.4, n), 0, 1)
    flipped = rng.uniform(size=n) < flip
    scores[flipped] = 1 - scores[flipped]
    return pd.DataFrame({"scan_id": [f"s{i // 4:03d}" for i in range(n)], "source": "ctgan", "slice": np.arange(n),
                         "label": labels, "label_type": np.where(labels == 1, "FM", "TB"),
                         "score": np.round(scores, 6), "predicted": (scores >= 0.5).astype(int)})


def fake_run(model: str, seed: int = 42, metrics: dict | None = None, stage: str = "screen", data_digest: str = "d" * 16,
             cfg=None, predictions: pd.DataFrame | None = None, experiment: str = EXPERIMENT, parent: str = "",
             status: str = "FINISHED") -> str:
    """Log a run the way the train step does (config params + digest tag + config.yaml), without training.

    Client calls only, so it also works while a select run is the active run (as a launched run would).
    """
    import time

    import mlflow
    from mlflow.entities import Metric, Param

    from medfake.core import tracking

    cfg = (cfg or base_config(experiment)).replace(**{"model.backbone": model, "seed": seed})
    tracking.setup(experiment)
    client = mlflow.MlflowClient()
    tags = {"medfake.stage": stage, "medfake.data_digest": data_digest, "medfake.model": model,
            "medfake.config_digest": cfg.digest(), "medfake.device": "cpu: test (2 cores)"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(client.get_experiment_by_name(experiment).experiment_id,
                               run_name=f"{model}-s{seed}", tags=tags).info.run_id
    params = {k: "null" if v is None else str(v) for k, v in cfg.flat().items()}
    params |= {"model": model, "data_digest": data_digest, "precision_used": "float32"}
    now = int(time.time() * 1000)
    values = metrics if metrics is not None else full_metrics(model)
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    client.log_text(run_id, cfg.to_yaml(), "config.yaml")
    if predictions is not None:
        client.log_text(run_id, predictions.to_csv(index=False), "predictions/test.csv")
    client.set_terminated(run_id, status)
    return run_id


class FakeSubmitted:
    def __init__(self, run_id: str):
        self.run_id = run_id

    def get_status(self):
        import mlflow

        return mlflow.get_run(self.run_id).info.status

    def wait(self):
        return self.get_status() == "FINISHED"

    def cancel(self):
        pass


class FakeLauncher:
    """Stands in for ``launcher.launch_train`` (or a ``Launcher``'s ``launch``): logs the run the
    train entry point would log, from the job's parameters."""

    def __init__(self, fail_models=(), interrupt_after: int | None = None, metrics=None):
        self.jobs = []
        self.fail_models = set(fail_models)
        self.interrupt_after = interrupt_after
        self.metrics = metrics or (lambda job: full_metrics(job.model if job.model in study.TABLE1 else "VGG19"))

    def __call__(self, job, experiment=None, project=".", backend="local", backend_config=None):
        if self.interrupt_after is not None and len(self.jobs) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.jobs.append(job)
        params = job.parameters()
        cfg = load_config(params["config"], [item for item in params["set"].split() if item])
        cfg = cfg.replace(seed=int(params["seed"]))
        status = "FAILED" if job.model in self.fail_models else "FINISHED"
        run_id = fake_run(job.model, int(params["seed"]), self.metrics(job), stage=params["stage"], data_digest=params["data"],
                          cfg=cfg, experiment=cfg.experiment, parent=params["parent"], status=status,
                          predictions=fake_predictions(int(params["seed"])))
        return FakeSubmitted(run_id)


def log_study_screen(models=tuple(study.TABLE1), data_digest="d" * 16, experiment=EXPERIMENT) -> dict[str, str]:
    return {model: fake_run(model, data_digest=data_digest, experiment=experiment,
                            predictions=fake_predictions(len(model))) for model in models}


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- H and the ranking ------------------------------------------------------------------------------
