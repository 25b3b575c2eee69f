"""Shared benchmark helpers: timing, per-case child processes (so peak RSS is per case), JSON."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case_in_child(script: str, case: dict, timeout: int = 1800) -> dict:
    """Run ``script --case JSON`` in a fresh interpreter; it prints one JSON object last."""
    proc = subprocess.run([sys.executable, script, "--case", json.dumps(case)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False
