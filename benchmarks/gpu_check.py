"""The one-command GPU check: the GPU tests, then the GPU benchmarks, into one JSON file.

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out benchmarks/results

runs, with the ``python3`` that runs this script (nothing is installed; gpumlp itself comes from the
checkout, through PYTHONPATH):

    python3 -m pytest -m gpu tests                          the tests marked gpu (tests/test_gpu.py, ...)
    python3 -m pytest benchmarks --benchmark-json=...       the benchmarks

What it needs (``REQUIRED``; checked first, and a missing one is NOT OK before anything runs): numpy,
CuPy (with a CUDA device, and the CUDA libraries it loads: cuBLAS and NVRTC, as gpumlp's backend probe
finds them), pytest, and pytest-benchmark for the benchmarks. Everything else is optional
(``OPTIONAL``): without it, the tests that need it skip with the reason (``tests_skip_reasons``) and the
result says which were absent (``optional_packages``): torch (the PyTorch benchmark columns), tqdm,
scipy, scikit-learn, mpi4py with an MPI library (and NCCL's wheel for the nccl engine), matplotlib.

It writes ``<out>/gpu_check_<UTC time>_<device>.json`` with the device name CUDA reports, the driver,
CUDA, CuPy and NumPy versions, whether gpumlp's "cupy" backend can run and why (``gpumlp_backend``),
the date, the git commit, the test counts (``tests_passed``, ``tests_failed``, ``tests_skipped``) and
the skip reasons, a summary of every benchmark and pytest-benchmark's full JSON.
Each stage has a time limit (``--tests-timeout``, ``--bench-timeout``), and both are cut to what is
left of ``--total-timeout`` (default 330 s, under 6 minutes with start-up and the JSON), so the whole
check ends in time even if the environment probe or a stage is slow or hangs; a stage that ran out
of time is marked so, and the test counts are then taken from pytest's progress output.
Exit status 0 only when the required packages are there, a device was found, gpumlp's "cupy" backend
can run on it, at least one test passed, none failed and both stages completed.
"""
from __future__ import annotations

import argparse
import ast
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

# module -> what needs it. All that this check runs (the GPU tests, the benchmarks) runs with these.
REQUIRED = {"numpy": "gpumlp", "cupy": "the GPU path", "pytest": "the tests and the benchmarks",
            "pytest_benchmark": "the benchmarks (pytest-benchmark)"}
# module -> what skips (with its reason) where it is absent
OPTIONAL = {
    "torch": "the PyTorch benchmark columns and cross-checks",
    "tqdm": "the progress bar of gpumlp train (it prints lines instead)",
    "scipy": "sparse X and L-BFGS on the GPU",
    "sklearn": "the scikit-learn estimators on the GPU",
    "mpi4py": "the distributed engines on the GPU (with an MPI library; NCCL's wheel for nccl)",
    "matplotlib": "plots (no GPU test)",
}
_DISTRIBUTIONS = {"pytest_benchmark": "pytest-benchmark", "sklearn": "scikit-learn"}


def packages(skip_benchmarks=False):
    """(missing, present): the required modules that are missing, as "module (what needs it)", and
    {module: version, or None where absent} for the required and optional ones."""
    import importlib.metadata
    import importlib.util

    present, missing = {}, []
    for name, why in {**REQUIRED, **OPTIONAL}.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        version = None
        if found:
            try:
                version = importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
            except importlib.metadata.PackageNotFoundError:  # cupy: the wheel is cupy-cuda12x/13x
                version = next((d.version for d in importlib.metadata.distributions()
                                if (d.metadata["Name"] or "").lower().startswith(f"{name}-")), "installed")
        present[name] = version
        if not found and name in REQUIRED and not (skip_benchmarks and name == "pytest_benchmark"):
            missing.append(f"{name} ({why})")
    return missing, present


def gpumlp_backend():
    """Whether gpumlp's "cupy" backend can run here and why (the probe of "auto": the driver, a
    device, CuPy, cuBLAS, NVRTC)."""
    try:
        from gpumlp.backend import cupy_status

        usable, reason = cupy_status()
    except Exception as exc:  # noqa: BLE001 - gpumlp not importable from this checkout
        usable, reason = False, f"gpumlp is not importable: {type(exc).__name__}: {exc}"
    return {"usable": bool(usable), "reason": reason}


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


def junit_skip_reasons(path):
    """[{"reason", "count"}] of the skipped tests in pytest's JUnit XML, most frequent first."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    reasons = collections.Counter(_skip_reason(s) for s in root.iter("skipped"))
    return [{"reason": r, "count": n} for r, n in reasons.most_common()]


def _skip_reason(element):
    """A <skipped> element's reason. A module skipped at collection (pytest.importorskip) has the
    message "collection skipped" and the repr of (path, line, "Skipped: reason") as its text."""
    message, text = element.get("message", ""), (element.text or "").strip()
    if message != "collection skipped" or not text:
        return message
    try:
        path, line, reason = ast.literal_eval(text)
        where = Path(path).resolve().relative_to(ROOT) if Path(path).resolve().is_relative_to(ROOT) else Path(path)
        return f"{where}:{line}: {str(reason).removeprefix('Skipped: ')}"
    except (ValueError, SyntaxError, TypeError):
        return text


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
    missing, present = packages(args.skip_benchmarks)
    result = {"date": started.isoformat(timespec="seconds"), "missing_packages": missing,
              "optional_packages": {k: present[k] for k in OPTIONAL}}
    out_dir = Path(args.out)
    if missing:  # nothing would run as it should: say what to install instead of failing stage by stage
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"gpu_check_{started:%Y%m%dT%H%M%SZ}_missing-packages.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[gpu_check] NOT OK: {sys.executable} lacks {', '.join(missing)}; nothing was run -> {path}", flush=True)
        return 1
    result.update(environment())
    result["gpumlp_backend"] = gpumlp_backend()
    absent = [k for k in OPTIONAL if present[k] is None]
    print(f"[gpu_check] device: {result.get('device')}, driver {result.get('driver')}, CUDA {result.get('cuda')}, "
          f"CuPy {result.get('cupy')}; gpumlp backend: {result['gpumlp_backend']['reason']}"
          + (f"; absent (their tests skip): {', '.join(absent)}" if absent else ""), flush=True)
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
                      tests_skipped=skipped, tests_skip_reasons=junit_skip_reasons(junit), tests_exit_code=rc,
                      tests_seconds=secs, tests_timed_out=rc is None, tests_output_tail=tail[-25:])

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
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check_{started:%Y%m%dT%H%M%SZ}_{_slug(result.get('device'))}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    ok = checked_ok(result, args.skip_benchmarks)
    print(f"[gpu_check] {'OK' if ok else 'NOT OK'}: {result['tests_passed']} passed, {result['tests_failed']} failed, "
          f"{result['tests_skipped']} skipped; {len(result['benchmarks'])} benchmarks; "
          f"{result['total_seconds']} s -> {path}", flush=True)
    return 0 if ok else 1


def checked_ok(result, skip_benchmarks=False):
    """The verdict: a device, gpumlp's "cupy" backend usable on it (else every GPU test skips, and
    an all-skipped run is no check), tests that ran and passed, and both stages complete."""
    return bool(result.get("device") is not None and result.get("gpumlp_backend", {}).get("usable")
                and (result.get("tests_passed") or 0) > 0 and result.get("tests_failed") == 0
                and result.get("tests_exit_code") == 0
                and (skip_benchmarks or result.get("benchmarks_exit_code") == 0))


if __name__ == "__main__":
    sys.exit(main())
