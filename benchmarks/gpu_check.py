"""The one-command GPU check: the GPU tests, then the GPU benchmarks, into one JSON file.

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out benchmarks/results

runs, with the ``python3`` that runs this script (it must already have cupy, numpy, pytest and
pytest-benchmark; nothing is installed):

    python3 -m pytest -m gpu tests                          the tests marked gpu (tests/test_gpu.py, ...)
    python3 -m pytest benchmarks --benchmark-json=...       the benchmarks

and writes ``<out>/gpu_check_<UTC time>_<device>.json`` with the device name CUDA reports, the driver,
CUDA, CuPy and NumPy versions, the date, the git commit, the test counts (``tests_passed``,
``tests_failed``, ``tests_skipped``), a summary of every benchmark and pytest-benchmark's full JSON.
Each stage has a time limit (``--tests-timeout``, ``--bench-timeout``), and both are cut to what is
left of ``--total-timeout`` (default 330 s, under 6 minutes with start-up and the JSON), so the whole
check ends in time even if the environment probe or a stage is slow or hangs; a stage that ran out
of time is marked so, and the test counts are then taken from pytest's progress output.
Exit status 0 only when a device was found, no test failed and both stages completed.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cuda_version(v):
    """CUDA's integer version (e.g. 12080) as "12.8"; None for 0 (no driver)."""
    return f"{v // 1000}.{(v % 1000) // 10}" if v else None


def environment():
    """What the run ran on: device, driver, CUDA and library versions (no GPU work)."""
    env = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except Exception as exc:  # pragma: no cover - numpy is a dependency
        env["numpy"] = f"unavailable: {exc}"
    try:
        import cupy

        env["cupy"] = cupy.__version__
        rt = cupy.cuda.runtime
        env["cuda"] = _cuda_version(rt.runtimeGetVersion())  # the CUDA runtime CuPy runs on
        env["driver_cuda"] = _cuda_version(rt.driverGetVersion())  # the newest CUDA the driver supports
        props = rt.getDeviceProperties(0)
        name = props["name"]
        env["device"] = name.decode() if isinstance(name, bytes) else str(name)
        env["device_count"] = rt.getDeviceCount()
        env["compute_capability"] = f"{props['major']}.{props['minor']}"
        env["device_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
        try:
            from cupy_backends.cuda.libs import nvrtc

            env["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
        except Exception:
            pass
    except Exception as exc:
        env.setdefault("cupy", f"unavailable: {exc}")
        env["device"] = None
        env["device_error"] = f"{type(exc).__name__}: {exc}"
        env.setdefault("cuda", None)  # every key the result promises is present, None when unknown
    env["driver"] = _nvidia_smi_driver() or env.get("driver_cuda")
    try:
        import torch

        env["torch"] = torch.__version__
    except Exception:
        pass
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["git_dirty"] = bool(dirty)
    except Exception:
        env["git_commit"] = None
    return env


def _nvidia_smi_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0].strip() if out else None
    except Exception:
        return None


# A line of pytest -q progress: one character per test, then the percentage (missing on the last,
# unfinished line of a stopped run).
_PROGRESS = re.compile(r"^([.FEsxX]+)(\s*\[\s*\d+%\])?\s*$")


def run_stage(cmd, timeout, tail_lines=60, progress=None):
    """Run ``cmd`` from the repository root, echoing its output live; stop it after ``timeout`` s.
    Returns (exit code or None when it timed out, seconds, last lines of output). With a Counter as
    ``progress``, the characters of pytest's -q progress lines are counted into it as they come."""
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    tail = collections.deque(maxlen=tail_lines)

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
            m = _PROGRESS.match(line) if progress is not None else None
            if m:
                progress.update(m.group(1))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the stage and anything it started
        proc.wait()
        rc = None
        tail.append(f"[gpu_check] stopped after {timeout} s")
    reader.join(timeout=5)
    sys.stdout.flush()
    return rc, round(time.monotonic() - t0, 1), list(tail)


def junit_counts(path):
    """(passed, failed, skipped, errors) from pytest's JUnit XML; None when it is missing or cut short."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = failures = errors = skipped = 0
    for s in suites:
        tests += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return tests - failures - errors - skipped, failures, skipped, errors


def benchmark_summary(data):
    """One line per benchmark: the figures a reader compares."""
    rows = []
    for b in data.get("benchmarks", []):
        st = b.get("stats", {})
        rows.append({
            "name": b.get("name"), "group": b.get("group"), "params": b.get("params"),
            "median_s": st.get("median"), "mean_s": st.get("mean"), "min_s": st.get("min"),
            "stddev_s": st.get("stddev"), "rounds": st.get("rounds"), "extra_info": b.get("extra_info"),
        })
    return rows


def _slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text or "no-device").strip("-")[:40]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the JSON result (created if needed)")
    p.add_argument("--tests-timeout", type=int, default=150, help="seconds for the GPU tests (default 150)")
    p.add_argument("--bench-timeout", type=int, default=180, help="seconds for the benchmarks (default 180)")
    p.add_argument("--total-timeout", type=int, default=330,
                   help="seconds for the whole check; each stage is cut to what is left (default 330)")
    p.add_argument("--skip-benchmarks", action="store_true", help="run the GPU tests only")
    args = p.parse_args(argv)

    started = dt.datetime.now(dt.timezone.utc)
    deadline = time.monotonic() + args.total_timeout - 5  # 5 s to write the result

    def budget(stage_timeout):
        return max(1, min(stage_timeout, int(deadline - time.monotonic())))
    result = {"date": started.isoformat(timespec="seconds"), **environment()}
    print(f"[gpu_check] device: {result.get('device')}, driver {result.get('driver')}, CUDA {result.get('cuda')}, "
          f"CuPy {result.get('cupy')}", flush=True)
    py = sys.executable  # the python3 that runs this script, with its packages

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        junit = Path(tmp) / "tests.xml"
        progress = collections.Counter()
        rc, secs, tail = run_stage([py, "-m", "pytest", "-m", "gpu", "tests", "-q", "-rfEs", "-p", "no:cacheprovider",
                                    f"--junitxml={junit}"], budget(args.tests_timeout), progress=progress)
        counts = junit_counts(junit)
        if counts is None and progress:  # stopped before pytest wrote its report: what ran so far
            counts = (progress["."] + progress["X"], progress["F"], progress["s"] + progress["x"], progress["E"])
            result["tests_counts_from"] = "progress output (pytest was stopped before its report)"
        passed, failed, skipped, errors = counts if counts is not None else (None,) * 4
        result.update(tests_passed=passed, tests_failed=None if failed is None else failed + errors,
                      tests_skipped=skipped, tests_exit_code=rc, tests_seconds=secs,
                      tests_timed_out=rc is None, tests_output_tail=tail[-25:])

        if args.skip_benchmarks:
            result.update(benchmarks=[], benchmarks_exit_code=None, benchmarks_note="skipped (--skip-benchmarks)")
        else:
            bench_json = Path(tmp) / "benchmarks.json"
            rc_b, secs_b, tail_b = run_stage([py, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
                                              f"--benchmark-json={bench_json}"], budget(args.bench_timeout))
            try:
                data = json.loads(bench_json.read_text()) if bench_json.exists() else {}
            except (OSError, ValueError):  # cut short while writing
                data = {}
            result.update(benchmarks=benchmark_summary(data), benchmarks_exit_code=rc_b, benchmarks_seconds=secs_b,
                          benchmarks_timed_out=rc_b is None, benchmarks_output_tail=tail_b[-25:],
                          benchmark_json=data or None)
            if rc_b == 5:
                result["benchmarks_note"] = "pytest collected no benchmarks"

    result["total_seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check_{started:%Y%m%dT%H%M%SZ}_{_slug(result.get('device'))}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    ok = (result.get("device") is not None and result["tests_failed"] == 0 and result["tests_exit_code"] == 0
          and (args.skip_benchmarks or result["benchmarks_exit_code"] == 0))
    print(f"[gpu_check] {'OK' if ok else 'NOT OK'}: {result['tests_passed']} passed, {result['tests_failed']} failed, "
          f"{result['tests_skipped']} skipped; {len(result['benchmarks'])} benchmarks; "
          f"{result['total_seconds']} s -> {path}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
