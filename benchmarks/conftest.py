"""pytest-benchmark suite: training and inference throughput of gpumlp against PyTorch and the GEMM
floor, one benchmark group per task and shape (see README.md here; the cases come from gpumlp.bench).

    python -m pytest benchmarks                              # every case this machine can run
    python -m pytest benchmarks --benchmark-json=out.json    # plus every sample, with extra_info
    GPUMLP_BENCH_SMOKE=1 python -m pytest benchmarks --benchmark-disable   # tiny shapes, runs each once

CuPy cases run when CuPy has a CUDA device, PyTorch cases when torch imports (its CUDA cases when
torch.cuda.is_available()); the others are skipped with the reason.
"""
import os
import time

import pytest

from gpumlp import bench

SMOKE = os.environ.get("GPUMLP_BENCH_SMOKE", "0").strip() not in ("", "0")

# Timed calls per case, by shape: about half a second or less of timing each on a 2-core CPU, and
# much less on a GPU (every call synchronises the device).
ROUNDS = {"S": 30, "M": 10, "L": 20, "L-cpu": 5, "tiny": 3}
WARMUP = 3


def shapes(names):
    return list(bench.SMOKE_SHAPES) if SMOKE else names


def shape_of(name):
    return bench.SMOKE_SHAPES[name] if SMOKE else bench.SHAPES[name]


@pytest.fixture(scope="session")
def environment():
    return bench.environment()


@pytest.fixture
def run_case(benchmark, environment):
    """Build the case (skipping when it cannot run here), time it, and record what was timed."""
    def run(task, shape_name, impl, library, device):
        shape = shape_of(shape_name)
        try:
            case = bench.make_case(shape, task, impl, library, device)
        except bench.Unavailable as why:
            pytest.skip(str(why))
        benchmark.group = f"{task}-{shape.name}"
        benchmark.extra_info.update({
            "task": task, "shape": shape.name, "batch": shape.batch, "sizes": list(shape.sizes),
            "dtype": bench.DTYPE, "implementation": impl, "library": library, "device": device,
            "steps_per_call": case.steps, "samples_per_call": case.samples_per_call,
            "environment": environment,
        })
        if device == "cpu":
            time.sleep(0.2)  # let the thread pool of the previous case (OpenBLAS or OpenMP) stop spinning
        benchmark.pedantic(case.call, rounds=ROUNDS[shape.name], iterations=1, warmup_rounds=WARMUP)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            benchmark.extra_info["samples_per_s_median"] = case.samples_per_call / stats.stats.median
    return run
