"""GPU plumbing for the tests: items marked ``gpu`` run only where CuPy imports and a CUDA device
answers (``gpumlp.backend.cupy_status``); elsewhere they are skipped with the reason. The count of
scikit-learn's own MLP tests (tests/test_sklearn_upstream.py) that pass, printed at the end of a run.
And a run that does not depend on the shell it starts from: gpumlp's own settings are taken out of the
environment (the header says which), so the tests see gpumlp's defaults wherever they run and set a
variable themselves where they test it; where HOME cannot be written, CuPy gets a kernel cache of the
run's own."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Read by gpumlp when a model is made or a product runs; left in a developer's shell or a CI machine's
# environment they changed what the tests see: GPUMLP_BACKEND=cupy made every model without a backend
# fail on a CPU machine, GPUMLP_CBLAS=0 turned the OpenBLAS GEMM path off (its tests skipped or failed),
# GPUMLP_TF32 / CUPY_TF32 round float32 products on the GPU to 10 bits, GPUMLP_MPI_CUDA_AWARE forces
# the MPI engine's choice. Removed before anything is imported or collected; children inherit that.
SETTINGS = ("GPUMLP_BACKEND", "GPUMLP_CBLAS", "GPUMLP_TF32", "GPUMLP_MPI_CUDA_AWARE", "CUPY_TF32")
CLEARED = {name: os.environ.pop(name) for name in SETTINGS if name in os.environ}


def _writable_home_for_cupy():
    """CuPy makes its kernel cache (~/.cupy/kernel_cache) when it is imported, and its import fails
    where that cannot be made: a HOME that does not exist or is read-only (build users such as
    Debian's or Nix's have HOME=/nonexistent). Then the NVRTC tests and every child that imports CuPy
    failed for that reason alone; such a run gets a kernel cache of its own, removed at the end."""
    if "CUPY_CACHE_DIR" in os.environ:
        return None
    place = os.path.expanduser(os.path.join("~", ".cupy", "kernel_cache"))
    while not os.path.exists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)  # the nearest part that exists: CuPy would create the rest
    if os.path.isdir(place) and os.access(place, os.W_OK | os.X_OK):
        return None
    os.environ["CUPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpumlp-tests-cupy-cache-")
    return os.environ["CUPY_CACHE_DIR"]


CUPY_CACHE = _writable_home_for_cupy()


def pytest_report_header(config):
    lines = []
    if CLEARED:
        lines.append("gpumlp settings taken out of the environment for this run: " +
                     ", ".join(f"{k}={v}" for k, v in CLEARED.items()))
    if CUPY_CACHE:
        lines.append(f"HOME cannot hold CuPy's kernel cache: CUPY_CACHE_DIR={CUPY_CACHE} for this run")
    return lines


def pytest_unconfigure(config):
    if CUPY_CACHE:
        shutil.rmtree(CUPY_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    from gpumlp.backend import cupy_status

    ok, why = cupy_status()
    if not ok:
        skip = pytest.mark.skip(reason=f"needs CuPy and a CUDA device: {why}")
        for item in gpu_items:
            item.add_marker(skip)


UPSTREAM = "test_sklearn_upstream.py::"
UPSTREAM_META = "test_the_upstream_file_is_the_pinned_one"  # ours, not scikit-learn's


def pytest_terminal_summary(terminalreporter):
    """One line: how many of scikit-learn's test_mlp.py tests passed against gpumlp.sklearn."""
    counts = {}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        reports = [r for r in terminalreporter.stats.get(outcome, [])
                   if UPSTREAM in getattr(r, "nodeid", "") and UPSTREAM_META not in r.nodeid]
        if reports:
            counts[outcome] = len({r.nodeid for r in reports})
    if counts:
        others = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if outcome != "passed")
        terminalreporter.write_line(
            f"scikit-learn's sklearn/neural_network/tests/test_mlp.py on gpumlp.sklearn: {counts.get('passed', 0)} of "
            f"{sum(counts.values())} passed" + (f" ({others})" if others else ""))
