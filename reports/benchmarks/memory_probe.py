"""Peak resident memory of one backbone, stage by stage, as `medfake bench latency` goes through them.

    python reports/benchmarks/memory_probe.py EfficientNetB4 [--size 512] [--batch 8] [--limit-gb 12]

Prints VmRSS and VmHWM (/proc/self/status) after each stage; a watchdog thread ends the process
(exit 3) naming the stage it was in as soon as VmRSS passes --limit-gb, so that a backbone that
needs more than the machine has is located without the kernel's OOM killer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

STAGE = ["start"]


def _status_gb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def _watchdog(limit_gb: float) -> None:
    while True:
        rss = _status_gb("VmRSS")
        if rss > limit_gb:
            print(f"LIMIT: VmRSS {rss:.1f} GB > {limit_gb} GB during stage '{STAGE[0]}'", flush=True)
            os._exit(3)
        time.sleep(0.1)


def stage(name: str) -> None:
    STAGE[0] = name
    print(f"{time.strftime('%H:%M:%S')} begin {name}", flush=True)


def done() -> None:
    print(f"{time.strftime('%H:%M:%S')}   end {STAGE[0]}: VmRSS {_status_gb('VmRSS'):.2f} GB, "
          f"peak VmHWM {_status_gb('VmHWM'):.2f} GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--limit-gb", type=float, default=12.0)
    parser.add_argument("--no-calibrate", action="store_true", help="skip the random detector's calibration")
    args = parser.parse_args()
    threading.Thread(target=_watchdog, args=(args.limit_gb,), daemon=True).start()

    stage("imports")
    from medfake.bench.latency import calibrate_random_detector, random_ct_batch
    from medfake.models.detector import build_detector
    from medfake.models.registry import get_backbone
    from medfake.models.runtime import export_detector, load_runtime
    done()
    backbone = get_backbone(args.model)
    stage("build the detector (Keras, random weights)")
    model = build_detector(backbone, args.size, weights=None, window=(-600.0, 1500.0))
    done()
    batch = random_ct_batch(args.batch, args.size, seed=0)
    if not args.no_calibrate:
        stage("calibrate (a training-mode pass for BatchNorm statistics, then Keras predictions)")
        calibrate_random_detector(model, batch, random_ct_batch(args.batch, args.size, seed=1))
        done()
    stage("Keras float32 predict_on_batch x3")
    for _ in range(3):
        model.predict_on_batch(batch)
    done()
    root = tempfile.mkdtemp(prefix="medfake-probe-")
    for fmt in ("onnx", "openvino"):
        stage(f"export {fmt}")
        try:
            exported = export_detector(model, root, formats=(fmt,))
        except Exception as exc:  # noqa: BLE001 - the probe reports and goes on
            print(f"  export {fmt} failed: {str(exc).splitlines()[0][:200]}")
            done()
            continue
        done()
        for precision in ("float32", "bfloat16") if fmt == "openvino" else ("float32",):
            stage(f"load {fmt} {precision}")
            runtime = load_runtime(exported[fmt], fmt, precision)
            done()
            stage(f"{fmt} {precision} predict x3")
            for _ in range(3):
                runtime.predict(batch)
            done()
            del runtime
    print("finished")


if __name__ == "__main__":
    main()
