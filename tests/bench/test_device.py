"""One-process device benchmark: the study's protocol arithmetic, the batch search, and the CLI report."""

from __future__ import annotations

import pytest

from medfake import cli
from medfake.bench.device import LatencyResult, TrainResult, largest_batch, out_of_memory, projection
from medfake.bench.protocol_cost import STUDY_IMAGES, Protocol, StepCosts, run_seconds, study_seconds


def test_protocol_is_the_studys():
    protocol = Protocol.from_config("paper")
    assert protocol == Protocol()
    assert STUDY_IMAGES == 2486  # 1,243 fakes and as many LIDC slices
    assert protocol.split() == (1740, 373, 373)  # the study's 373 test slices
    assert (protocol.phase1_epochs, protocol.phase2_epochs) == (80, 20)
    assert protocol.runs(13) == 25 and protocol.runs(2) == 2 + 2 * 2


def test_run_seconds_counts_every_pass():
    protocol = Protocol()
    # feature pass 2,113 + phase 2 20 × 373 validation + test 373 inference images at 1 s; 20 × 1,740 training images at 10 s
    assert run_seconds(StepCosts(1.0, 10.0), protocol) == pytest.approx(2113 + 20 * (17400 + 373) + 373)
    head = run_seconds(StepCosts(0.0, 0.0, head_s=1.0), protocol)
    assert head == pytest.approx(80 * 2113)  # phase 1 trains on train + validation features every epoch
    naive = run_seconds(StepCosts(1.0, 0.0, head_s=1.0), protocol) - run_seconds(StepCosts(1.0, 0.0), protocol)
    assert naive == pytest.approx(80 * 2113)


def test_study_seconds_repeats_the_six_slowest_twice():
    costs = {f"m{i}": StepCosts(0.0, float(i)) for i in range(1, 14)}
    seconds, repeated = study_seconds(costs)
    assert repeated == ["m13", "m12", "m11", "m10", "m9", "m8"]
    per_unit = 20 * 1740  # one second per training image
    assert seconds == pytest.approx(per_unit * (sum(range(1, 14)) + 2 * sum(range(8, 14))))


def test_out_of_memory_is_recognised():
    assert out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB"))
    assert out_of_memory(type("ResourceExhaustedError", (Exception,), {})("OOM when allocating tensor"))
    assert not out_of_memory(ValueError("shapes (8, 3) and (4,) do not match"))


def test_largest_batch_doubles_until_memory_runs_out():
    tried = []

    def rate_at(batch):
        tried.append(batch)
        if batch >= 64:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return batch * 10.0

    assert largest_batch(rate_at, 8, 256) == (32, 320.0, "out of memory at batch 64")
    assert tried == [8, 16, 32, 64]
    assert largest_batch(lambda b: float(b), 8, 20) == (16, 16.0, "--max-batch 20")
    with pytest.raises(ValueError):
        largest_batch(lambda b: (_ for _ in ()).throw(ValueError("bug")) if b > 8 else 1.0, 8, 64)


def test_projection_estimates_untrained_backbones_from_the_measured_ratio():
    latency = [LatencyResult(name, 1.0, 0, 0, 0, ms, 0, ms, 1e-6) for name, ms in (("A", 80.0), ("B", 160.0))]
    training = [TrainResult("A", "float32", 8, 20.0, 0, 32, 40.0, "cap")]
    costs, estimated = projection(latency, training, 8, False, Protocol())
    assert estimated == {"B"}
    assert costs["A"] == StepCosts(0.01, 0.05, 1e-6)
    assert costs["B"].train_s == pytest.approx(0.02 * 5)  # A trains at 5× its inference cost per image
    costs, _ = projection(latency, training, 8, True, Protocol())
    assert costs["A"].train_s == pytest.approx(1 / 40)


def test_bench_device_writes_every_row_from_one_process(tmp_path, capsys):
    code = cli.main(["bench", "device", "--models", "MobileNetV3Large,VGG19", "--train-models", "MobileNetV3Large",
                     "--size", "32", "--batch", "2", "--steps", "2", "--warmup", "1", "--train-steps", "1",
                     "--max-batch", "4", "--out", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "device-cpu.md").read_text()
    assert "| MobileNetV3Large | 3.62 |" in text and "| VGG19 |" in text
    assert "Overhead ≤ 20 s: 2 of 2 backbones" in text
    assert "| MobileNetV3Large | float32 |" in text and "| 4 |" in text and "--max-batch 4" in text
    assert "projected (6 runs)" in text and "1,740/373/373" in text
    assert "| 2 |" in text and "| VGG19 |" in text.split("## The study's protocol")[1]  # VGG19's training estimated


def test_bench_device_refuses_bad_options(capsys):
    assert cli.main(["bench", "device", "--models", "Xception", "--size", "32", "--train-models", "none"]) == 2
    assert "--size 32 is below the minimum input size of Xception (min 71)" in capsys.readouterr().err
    assert cli.main(["bench", "device", "--models", "NoSuchNet"]) == 2


def test_module_runs_without_the_cli_dependencies(capsys):
    """A GPU machine may hold only keras, numpy and JAX: `python -m medfake.bench.device` imports nothing else."""
    import subprocess
    import sys

    probe = ("import sys, medfake.bench.device as d; "
             "print(sorted(m for m in ('mlflow', 'yaml', 'pydicom', 'pandas', 'sklearn', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    from medfake.bench import device

    assert device.main(["--models", "Xception", "--size", "32", "--train-models", "none"]) == 2
    assert "below the minimum input size of Xception" in capsys.readouterr().err
