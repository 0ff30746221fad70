"""Throughput of gpumlp against PyTorch and against the GEMM floor: ``gpumlp bench``.

What is measured, per shape (batch B, sizes d-h-q; one hidden relu layer, cross-entropy, λ = 1e-4,
no bias, float32, plain SGD):

    gpumlp (<backend>)   one full training step: forward, loss, backward, update (the step fit runs)
    torch (<device>)     the same net and loss with torch.optim.SGD(weight_decay=λ): zero_grad,
                         forward, backward, step (eager, default thread count)
    floor (<library>)    the five matrix products of the step alone, same library and dtype, into
                         preallocated outputs: Z = X W1ᵀ, O = H W2ᵀ, dW2 = dOᵀH, dH = dO W2, dW1 = dZᵀX.
                         No step can be faster than this without faster GEMMs.

and for inference the forward pass alone (two products for the floor). Each timed call runs a fixed
number of steps and then synchronises the device, so GPU time is counted in full; every case is
warmed up first (kernel compilation, cuBLAS handles, BLAS thread start-up stay out), the cases of a
shape are timed in alternation (round-robin, so a slow patch of a shared machine hits them all), and
the median call is reported. The data are random normal, never zeros.

The table gives samples/s, the speed-up over PyTorch on the same device (> 1: gpumlp is faster) and
the time relative to the GEMM floor of the same library (1.00 would be the floor itself).

This module is the single source of the benchmark cases: ``benchmarks/`` (pytest-benchmark) builds
its steps with ``make_case``, and ``benchmarks/compare_cpu.py`` its whole epochs with ``epoch_case``,
from the same model, net and GEMM-floor builders. It uses gpumlp's public API only.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .backend import cpu_name, resolve

LR = 0.01
WEIGHT_DECAY = 1e-4
DTYPE = "float32"


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    sizes: tuple  # (d, h, q)
    steps_per_call: int  # steps in one timed call (then one synchronisation)
    devices: tuple = ("cpu", "gpu")
    note: str = ""


SHAPES = {
    "S": Shape("S", 256, (784, 256, 10), 10, note="launch- and overhead-bound"),
    "M": Shape("M", 2048, (784, 1024, 10), 2),
    "L": Shape("L", 16384, (1024, 4096, 1024), 1, devices=("gpu",), note="GEMM-bound"),
    "L-cpu": Shape("L-cpu", 512, (1024, 4096, 1024), 1, devices=("cpu",), note="L reduced to B=512 for a CPU"),
}
SMOKE_SHAPES = {"tiny": Shape("tiny", 32, (16, 32, 4), 2)}


# ------------------------------------------------------------------------------ what is available
def gpu_backend_available() -> bool:
    from .backend import cupy_status

    return cupy_status()[0]


def torch_module():
    """torch, or None when it is not importable (the PyTorch columns are then left out)."""
    try:
        import torch
    except Exception:
        return None
    return torch


def torch_cuda_available(torch) -> bool:
    try:
        return bool(torch is not None and torch.cuda.is_available())
    except Exception:
        return False


def environment() -> dict:
    """Machine and versions, recorded beside every figure."""
    info = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    from ._version import __version__
    info["gpumlp"] = __version__
    info["numpy_folded_gemm"] = folded_update_path()
    info.update(environment_blas())
    # TF32 changes float32 GEMMs at the 1e-3 level and their speed several-fold: each library's own
    # switch is recorded (gpumlp: GPUMLP_TF32; CuPy's matmul, used by the cupy floor: CUPY_TF32).
    info["tf32"] = {"GPUMLP_TF32": os.environ.get("GPUMLP_TF32", "0"), "CUPY_TF32": os.environ.get("CUPY_TF32", "0")}
    torch = torch_module()
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["tf32"]["torch_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    if gpu_backend_available():
        gpu = resolve("cupy")
        runtime = gpu.xp.cuda.runtime
        info["cupy"] = gpu.xp.__version__
        info["cuda_runtime"] = runtime.runtimeGetVersion()
        info["cuda_driver"] = runtime.driverGetVersion()
        info["gpu"] = gpu.device_name()
    return info




# ------------------------------------------------------------------------------ the cases
@dataclass
class Case:
    """One thing to time: ``call()`` runs ``steps`` steps (or forward passes) and synchronises."""

    shape: Shape
    task: str  # "train" | "infer"
    impl: str  # "gpumlp", "torch", "floor"
    device: str  # "cpu" | "gpu"
    library: str  # "numpy", "cupy", "torch"
    call: object = field(repr=False)
    steps: int = 1

    @property
    def label(self):
        return f"{self.impl} ({self.library}{'' if self.library != 'torch' else ', ' + self.device})"

    @property
    def samples_per_call(self):
        return self.shape.batch * self.steps


def _data(shape, seed=0):
    """Random batch (X, y) on the host: X ~ N(0, 1) float32, y uniform labels."""
    rng = np.random.default_rng(seed)
    d, _, q = shape.sizes
    return rng.standard_normal((shape.batch, d), dtype=np.float32), rng.integers(0, q, shape.batch)


def _gpumlp_model(shape, backend):
    from .mlp import MLP

    return MLP(shape.sizes, activation="relu", loss="cross_entropy", weight_decay=WEIGHT_DECAY, bias=False,
               dtype=DTYPE, backend=backend, seed=0)


def gpumlp_train(shape, backend):
    """The step ``fit`` runs (``Step.train``: plain SGD, fused), on a batch already on the device."""
    m = _gpumlp_model(shape, backend)
    x, yy, _ = m.to_device(*_data(shape))
    step, sync = m.training_step(shape.batch), m.array_backend.synchronize

    def call():
        for _ in range(shape.steps_per_call):
            step.train(x, yy, None, m.optimizer, LR)
        sync()
    return call


def gpumlp_infer(shape, backend):
    m = _gpumlp_model(shape, backend)
    x = m.to_device(_data(shape)[0])[0]
    sync = m.array_backend.synchronize

    def call():
        for _ in range(shape.steps_per_call):
            m.outputs(x)
        sync()
    return call


def _torch_net(torch, shape, device):
    d, h, q = shape.sizes
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d, h, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(h, q, bias=False)).to(device)
    X, y = _data(shape)
    return net, torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)


def _torch_sync(torch, device):
    return (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)


def torch_train(shape, device, torch):
    net, x, y = _torch_net(torch, shape, device)
    opt = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = _torch_sync(torch, device)

    def call():
        for _ in range(shape.steps_per_call):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
        sync()
    return call


def torch_infer(shape, device, torch):
    net, x, _ = _torch_net(torch, shape, device)
    sync = _torch_sync(torch, device)

    def call():
        with torch.inference_mode():
            for _ in range(shape.steps_per_call):
                net(x)
        sync()
    return call


def _floor_products(shape, library, task="train", torch=None, device="cpu"):
    """The step's matrix products alone on one batch xb (train: five; infer: two), into preallocated
    outputs, and the device synchronisation: (products(xb), sync, the library's array of a host array)."""
    d, h, q = shape.sizes
    B = shape.batch
    rng = np.random.default_rng(1)
    host = {"W1": rng.standard_normal((h, d), dtype=np.float32) * 0.05,
            "W2": rng.standard_normal((q, h), dtype=np.float32) * 0.05}
    if library == "torch":
        t = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
        to_lib = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        empty = lambda *s: torch.empty(s, dtype=torch.float32, device=device)  # noqa: E731

        def mm(a, b, out):
            torch.mm(a, b, out=out)
        sync = _torch_sync(torch, device)
    else:
        xp = resolve(library).xp  # numpy, or cupy (the caller checked that it runs here)
        t = {k: xp.asarray(v) for k, v in host.items()}
        to_lib = xp.asarray
        empty = lambda *s: xp.empty(s, np.float32)  # noqa: E731

        def mm(a, b, out):
            xp.matmul(a, b, out=out)
        sync = (lambda: None) if library == "numpy" else (lambda: xp.cuda.get_current_stream().synchronize())
    W1, W2 = t["W1"], t["W2"]
    Z, O, dW2, dH, dW1 = empty(B, h), empty(B, q), empty(q, h), empty(B, h), empty(h, d)

    def products(x):
        mm(x, W1.T, Z)       # Z = X W1ᵀ
        mm(Z, W2.T, O)       # O = H W2ᵀ      (H stands in for φ(Z): same shape, same cost)
        if task == "train":
            mm(O.T, Z, dW2)  # dW2 = dOᵀ H
            mm(O, W2, dH)    # dH = dO W2
            mm(dH.T, x, dW1)  # dW1 = dZᵀ X
    return products, sync, to_lib


def floor(shape, library, task="train", torch=None, device="cpu"):
    """The step's matrix products alone (train: five; infer: two), into preallocated outputs."""
    products, sync, to_lib = _floor_products(shape, library, task, torch, device)
    x = to_lib(_data(shape)[0])
    products(x)
    sync()

    def call():
        for _ in range(shape.steps_per_call):
            products(x)
        sync()
    return call


# ------------------------------------------------------------------------------ whole epochs (CPU)
EPOCH_IMPLS = ("gpumlp", "torch", "floor-numpy", "floor-torch")


def epoch_case(impl, shape, n_rows=51200):
    """One training epoch on the CPU over ``n_rows`` random rows in batches of ``shape.batch``, for
    ``benchmarks/compare_cpu.py``: returns (epoch(), versions of what ran).

        gpumlp        ``Trainer.run_epoch``: the loop ``fit`` runs, reshuffled every epoch (NumPy backend;
                      GPUMLP_CBLAS=0 in the environment selects the folded update's pure-NumPy fallback)
        torch         torch.randperm, then per batch X[idx], zero_grad, CrossEntropyLoss, backward,
                      SGD(weight_decay=λ).step(); the loss summed on the device, as gpumlp does
        floor-numpy   per contiguous batch, the step's five matrix products alone (np.matmul(out=))
        floor-torch   the same with torch.mm(out=)
    """
    rng = np.random.default_rng(0)
    d, h, q = shape.sizes
    B = shape.batch
    X = rng.standard_normal((n_rows, d), dtype=np.float32)
    y = rng.integers(0, q, n_rows)
    versions = {"numpy": np.__version__}
    if impl == "gpumlp":
        from .trainer import Trainer

        m = _gpumlp_model(shape, "numpy")
        trainer = Trainer(m, batch_size=B, lr=LR, shuffle=True)
        data = trainer.prepare(X, y)
        versions.update(environment_blas())
        versions["folded_update"] = folded_update_path()
        return (lambda: trainer.run_epoch(data, LR)), versions
    torch = None
    if impl in ("torch", "floor-torch"):
        torch = torch_module()
        versions.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    if impl in ("floor-numpy", "floor-torch"):
        products, _, to_lib = _floor_products(shape, "numpy" if impl == "floor-numpy" else "torch", "train", torch)
        Xl = to_lib(X)

        def epoch():
            for i in range(0, n_rows, B):
                products(Xl[i:i + B])
        return epoch, versions
    if impl != "torch":
        raise ValueError(f"unknown epoch implementation {impl!r}; choose from {EPOCH_IMPLS}")
    net, _, _ = _torch_net(torch, shape, "cpu")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch():
        perm = torch.randperm(n_rows)
        total = torch.zeros((), dtype=torch.float64)
        for i in range(0, n_rows, B):
            idx = perm[i:i + B]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        return float(total) / n_rows
    return epoch, versions


def folded_update_path():
    """How the NumPy backend folds plain SGD into the weight-gradient GEMM here: OpenBLAS's alpha/beta
    cblas call, or the pure-NumPy fallback (GPUMLP_CBLAS=0, or no usable OpenBLAS)."""
    from .mlp import MLP

    return "openblas-cblas" if MLP((1, 1), backend="numpy").ops.gemm is not None else "matmul-fallback"


def environment_blas():
    """The BLAS libraries threadpoolctl sees ({} without threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return {}
    return {"blas": [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                     for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]}


# (implementation, library, device) of every case a shape can have, in table order
VARIANTS = (("gpumlp", "numpy", "cpu"), ("torch", "torch", "cpu"), ("floor", "torch", "cpu"), ("floor", "numpy", "cpu"),
            ("gpumlp", "cupy", "gpu"), ("torch", "torch", "gpu"), ("floor", "torch", "gpu"), ("floor", "cupy", "gpu"))


class Unavailable(Exception):
    """This case cannot run here (no PyTorch, no GPU, or a GPU-only shape on the CPU); says why."""


def make_case(shape, task, impl, library, device, with_torch=True):
    """One case, or ``Unavailable`` with the reason."""
    if device not in shape.devices:
        raise Unavailable(f"shape {shape.name} is timed on {' and '.join(shape.devices)} only")
    torch = None
    if library == "torch":
        torch = torch_module() if with_torch else None
        if torch is None:
            raise Unavailable("PyTorch is not importable" if with_torch else "PyTorch left out")
        if device == "gpu" and not torch_cuda_available(torch):
            raise Unavailable("PyTorch has no CUDA device")
    if library == "cupy" and not gpu_backend_available():
        raise Unavailable("CuPy has no usable CUDA device")
    tdev = "cuda" if device == "gpu" else "cpu"
    if impl == "gpumlp":
        call = (gpumlp_train if task == "train" else gpumlp_infer)(shape, library)
    elif impl == "torch":
        call = (torch_train if task == "train" else torch_infer)(shape, tdev, torch)
    else:
        call = floor(shape, library, task, torch, tdev)
    return Case(shape, task, impl, device, library, call, shape.steps_per_call)


def make_cases(shapes, task="train", devices=("cpu", "gpu"), with_torch=True):
    """Every case available here for these shapes: gpumlp per backend, PyTorch per device, the floors."""
    cases = []
    for shape in shapes:
        for impl, library, device in VARIANTS:
            if device in devices:
                try:
                    cases.append(make_case(shape, task, impl, library, device, with_torch))
                except Unavailable:
                    pass
    return cases


# ------------------------------------------------------------------------------ timing and the table
# Cases that share a thread pool. Each pool is timed in its own process: NumPy's OpenBLAS workers and
# PyTorch's OpenMP workers spin for a while after every call, and in one process on a small machine a
# pool still spinning slows the other by whole factors (seen here: PyTorch 1.5x slower at M).
POOLS = {
    "numpy": (("gpumlp", "numpy", "cpu"), ("floor", "numpy", "cpu")),
    "torch-cpu": (("torch", "torch", "cpu"), ("floor", "torch", "cpu")),
    "gpu": tuple(v for v in VARIANTS if v[2] == "gpu"),
}


def time_cases(cases, rounds=7, warmup=2):
    """Median seconds per step of each case: all warmed up, then timed round-robin (a slow patch of
    a shared machine then hits them all alike)."""
    for c in cases:
        for _ in range(warmup):
            c.call()
    samples = {id(c): [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            t0 = time.perf_counter()
            c.call()
            samples[id(c)].append((time.perf_counter() - t0) / c.steps)
    return {k: statistics.median(v) for k, v in samples.items()}


def measure_pool(pool, shapes, tasks, with_torch=True, rounds=7, warmup=2):
    """Records (dicts) of every case of one pool that can run here, shape by shape."""
    records = []
    for task in tasks:
        for shape in shapes:
            cases = []
            for variant in POOLS[pool]:
                try:
                    cases.append(make_case(shape, task, *variant, with_torch=with_torch))
                except Unavailable:
                    pass
            times = time_cases(cases, rounds, warmup)
            records += [{"shape": c.shape.name, "task": task, "impl": c.impl, "library": c.library,
                         "device": c.device, "batch": c.shape.batch, "sizes": list(c.shape.sizes),
                         "seconds_per_step": times[id(c)]} for c in cases]
    return records


def _measure_in_subprocess(pool, argv):
    r = subprocess.run([sys.executable, "-m", "gpumlp.bench", "--pool", pool, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"timing the {pool} cases failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table_rows(records):
    """One row per record, with its ratios to PyTorch and to the floor of the same device/library."""
    def find(r, impl, library):
        for o in records:
            if (o["shape"], o["task"], o["device"], o["impl"], o["library"]) == (r["shape"], r["task"], r["device"],
                                                                                   impl, library):
                return o["seconds_per_step"]
        return None

    rows = []
    for r in records:
        t = r["seconds_per_step"]
        torch_t = find(r, "torch", "torch")
        floor_lib = {"gpumlp": "numpy" if r["device"] == "cpu" else "cupy"}.get(r["impl"], r["library"])
        floor_t = find(r, "floor", floor_lib)
        label = f"{r['impl']} ({r['library']}{', ' + r['device'] if r['library'] == 'torch' else ''})"
        rows.append({
            "shape": r["shape"], "task": r["task"], "implementation": label, "device": r["device"],
            "batch": r["batch"], "sizes": "-".join(map(str, r["sizes"])),
            "ms_per_step": t * 1e3, "samples_per_s": r["batch"] / t,
            "speedup_vs_torch": None if torch_t is None or r["impl"] == "floor" else torch_t / t,
            "time_vs_floor": None if floor_t is None or r["impl"] == "floor" else t / floor_t,
        })
    return rows


def format_table(rows):
    head = ["shape", "task", "implementation", "dev", "batch", "sizes", "ms/step", "samples/s", "vs torch",
            "vs floor"]
    body = []
    for r in rows:
        body.append([r["shape"], r["task"], r["implementation"], r["device"], str(r["batch"]), r["sizes"],
                     f"{r['ms_per_step']:.3f}", f"{r['samples_per_s']:,.0f}",
                     "" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x",
                     "" if r["time_vs_floor"] is None else f"{r['time_vs_floor']:.2f}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out.append("vs torch: PyTorch's time / this time on the same device (>1 = faster than PyTorch). "
               "vs floor: this time / the GEMM floor's time, same library (1.00 = only the matrix products).")
    return "\n".join(out)


# ------------------------------------------------------------------------------ data-parallel steps
# ``gpumlp bench --ranks 1,2``: the data-parallel step (gpumlp.data_parallel) with N ranks against one
# process, and the share of the step that the gradient's all-reduce takes. Each N runs as its own MPI
# job (mpiexec -n N python -m gpumlp.bench --parallel-worker ...), its ranks sharing the machine's cores
# (OPENBLAS_NUM_THREADS = cores // N, or --threads), so that N ranks get no more CPU than one process.
PARALLEL_SHAPES = ("S", "M")


def parallel_case(shape, comm, backend="numpy"):
    """(step(), allreduce(), gradient bytes) of one rank: ``step()`` runs ``shape.steps_per_call``
    data-parallel steps as ``DataParallelTrainer`` runs them (this rank's shard of the global batch
    of ``shape.batch`` rows: gradients, share, all-reduce, update), ``allreduce()`` the gradient's
    all-reduce alone as often. Both synchronise the device."""
    from .data_parallel import parallel_step, split_sizes

    m = _gpumlp_model(shape, backend)
    rows = int(split_sizes(shape.batch, comm.size)[comm.rank])
    X, y = _data(shape)
    x, yy, _ = m.to_device(X[:rows], y[:rows])
    step, sync, share = m.training_step(rows), m.array_backend.synchronize, rows / shape.batch

    def call():
        for _ in range(shape.steps_per_call):
            parallel_step(step, comm, (x, yy, None), share, m.optimizer, LR)
        sync()

    def reduce():
        for _ in range(shape.steps_per_call):
            comm.allreduce(m.grad)
        sync()
    return call, reduce, int(m.grad.nbytes)


def _two_phase(shape, backend="numpy"):
    """One process, the whole batch, gradients() then apply(): the data-parallel arithmetic on one rank."""
    m = _gpumlp_model(shape, backend)
    x, yy, _ = m.to_device(*_data(shape))
    step, sync = m.training_step(shape.batch), m.array_backend.synchronize

    def call():
        for _ in range(shape.steps_per_call):
            step.gradients(x, yy)
            step.apply(m.optimizer, LR)
        sync()
    return call


def measure_parallel(comm, shapes, rounds=7, warmup=2, backend="numpy"):
    """Records of this job (the same on every rank): per shape, the median over rounds of the slowest
    rank's seconds per step and per all-reduce; with one rank also the fused and two-phase steps."""
    records = []
    for shape in shapes:
        call, reduce, nbytes = parallel_case(shape, comm, backend)
        cases = {"step": call, "allreduce": reduce}
        if comm.size == 1:
            cases.update(fused=gpumlp_train(shape, backend), two_phase=_two_phase(shape, backend))
        for f in cases.values():
            for _ in range(warmup):
                f()
        samples = {k: [] for k in cases}
        for _ in range(rounds):
            for k, f in cases.items():  # round-robin; every rank starts each call together
                comm.barrier()
                t0 = time.perf_counter()
                f()
                mine = (time.perf_counter() - t0) / shape.steps_per_call
                samples[k].append(max(comm.exchange(mine)))
        rec = {"shape": shape.name, "batch": shape.batch, "sizes": list(shape.sizes), "ranks": comm.size,
               "engine": comm.engine, "gradient_bytes": nbytes, "threads_per_rank": _blas_threads(),
               "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        rec.update({f"{k}_s": statistics.median(v) for k, v in samples.items()})
        records.append(rec)
    return records


def _blas_threads():
    v = environment_blas().get("blas") or [{}]
    return v[0].get("num_threads")


# On paper (not measured): the ring all-reduce of NCCL moves 2(N−1)/N of the gradient per rank,
# t = 2(N−1)/N · bytes / busbw + latency. Bus bandwidths are what NCCL's tests typically reach on
# such links (about 80 % of the nominal per-direction bandwidth); the latencies are typical small-
# message all-reduce times. The GPU step's compute is 6·B·(d·h + h·q) FLOPs at an assumed sustained
# FP32 rate, plus a fixed per-step launch overhead: assumptions, stated, not measurements.
LINKS = {
    "NVLink 4 (H100 SXM, 450 GB/s per direction)": {"busbw": 370e9, "latency": 15e-6},
    "InfiniBand NDR (400 Gb/s per GPU)": {"busbw": 45e9, "latency": 25e-6},
}
GPU_FLOPS, GPU_STEP_OVERHEAD = 40e12, 30e-6


def paper_scaling(shape, ranks, link):
    """Expected step times (seconds) on ``ranks`` GPUs over ``link``: the global batch split (strong
    scaling) and every rank a full batch (weak scaling), with the all-reduce's time, all on paper."""
    d, h, q = shape.sizes
    params = d * h + h * q
    nbytes = params * np.dtype(DTYPE).itemsize
    L = LINKS[link]
    allreduce = 0.0 if ranks == 1 else 2 * (ranks - 1) / ranks * nbytes / L["busbw"] + L["latency"]
    compute = 6 * shape.batch * params / GPU_FLOPS
    one = compute + GPU_STEP_OVERHEAD
    strong = compute / ranks + GPU_STEP_OVERHEAD + allreduce
    weak = one + allreduce
    return {"shape": shape.name, "ranks": ranks, "link": link, "gradient_bytes": nbytes, "allreduce_s": allreduce,
            "one_gpu_step_s": one, "strong_step_s": strong, "strong_speedup": one / strong,
            "weak_efficiency": one / weak}


def _parallel_main(args, shapes, rounds, warmup):
    """The parent: one MPI job per rank count, then the table (measured, then on paper)."""
    from .distributed import mpiexec

    try:
        counts = sorted({int(v) for v in args.ranks.split(",")} | {1})
    except ValueError:
        print(f"gpumlp bench: --ranks takes rank counts like 1,2,4, got {args.ranks!r}", file=sys.stderr)
        return 2
    exe = mpiexec()
    if exe is None:
        print("gpumlp bench: --ranks needs mpiexec (pip install 'gpumlp[mpi]' mpich)", file=sys.stderr)
        return 1
    cores = os.cpu_count() or 1
    records = []
    for n in counts:
        threads = str(args.threads or max(1, cores // n))
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        argv = [exe, "-n", str(n), sys.executable, "-m", "gpumlp.bench", "--parallel-worker", "--rounds", str(rounds)]
        argv += ["--smoke"] if args.smoke else ["--shapes", ",".join(s.name for s in shapes)]
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode != 0:
            print(f"gpumlp bench: the {n}-rank job failed:\n{r.stderr[-3000:]}", file=sys.stderr)
            return 1
        records += json.loads(r.stdout.strip().splitlines()[-1])
    rows = parallel_rows(records)
    paper = [paper_scaling(s, n, link) for s in shapes for link in LINKS for n in (2, 8)]
    if args.json:
        print(json.dumps({"environment": environment(), "measured": rows, "paper": paper}))
        return 0
    print(format_parallel(rows, paper))
    return 0


def parallel_rows(records):
    """Each job's record with its ratios to one process of the same shape."""
    ones = {r["shape"]: r for r in records if r["ranks"] == 1}
    rows = []
    for r in records:
        one = ones.get(r["shape"], {})
        rows.append({**r, "allreduce_share": r["allreduce_s"] / r["step_s"] if r["ranks"] > 1 else 0.0,
                     "speedup_vs_fused": one["fused_s"] / r["step_s"] if "fused_s" in one else None,
                     "speedup_vs_two_phase": one["two_phase_s"] / r["step_s"] if "two_phase_s" in one else None})
    return rows


def format_parallel(rows, paper):
    out = ["measured here (the slowest rank, median of rounds; load: the machine's 1-minute load average):",
           "shape  batch  ranks  threads/rank  ms/step  all-reduce ms  all-reduce share  vs 1 process (fused)"
           "  vs 1 process (two-phase)  gradient MB  load"]
    for r in rows:
        vs = lambda v: "" if v is None else f"{v:.2f}x"  # noqa: E731
        out.append(f"{r['shape']:5s}  {r['batch']:5d}  {r['ranks']:5d}  {str(r['threads_per_rank']):>12s}  "
                   f"{r['step_s'] * 1e3:7.3f}  {r['allreduce_s'] * 1e3:13.3f}  {r['allreduce_share']:16.1%}  "
                   f"{vs(r['speedup_vs_fused']):>20s}  {vs(r['speedup_vs_two_phase']):>24s}  "
                   f"{r['gradient_bytes'] / 1e6:11.2f}  {r.get('load_average') or float('nan'):4.1f}")
    out.append("on paper (GPUs; gpumlp.bench.LINKS, GPU_FLOPS, GPU_STEP_OVERHEAD state the assumptions):")
    out.append("shape  ranks  link                                          all-reduce us  step us (1 GPU)"
               "  step us (strong)  speed-up (strong)  efficiency (weak)")
    for p in paper:
        out.append(f"{p['shape']:5s}  {p['ranks']:5d}  {p['link']:44s}  {p['allreduce_s'] * 1e6:13.1f}  "
                   f"{p['one_gpu_step_s'] * 1e6:15.1f}  {p['strong_step_s'] * 1e6:16.1f}  "
                   f"{p['strong_speedup']:17.2f}  {p['weak_efficiency']:17.1%}")
    return "\n".join(out)


def _parallel_worker(args, shapes, rounds, warmup):
    from . import distributed

    comm = distributed.init("mpi")
    records = measure_parallel(comm, shapes, rounds, warmup)
    if comm.rank == 0:
        print(json.dumps(records), flush=True)
    return 0


def _parser():
    p = argparse.ArgumentParser(prog="gpumlp bench", description=(
        "Training (and inference) throughput of gpumlp against PyTorch and the GEMM floor."))
    p.add_argument("--shapes", default=None,
                   help="comma-separated shapes among " + ", ".join(SHAPES) + " (default: all that fit the devices)")
    p.add_argument("--device", choices=("all", "cpu", "gpu"), default="all",
                   help="which devices to time (default: every one available)")
    p.add_argument("--task", choices=("train", "infer", "both"), default="train")
    p.add_argument("--rounds", type=int, default=7, help="timed calls per case (median reported; default 7)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it imports")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 2 rounds: checks that everything runs")
    p.add_argument("--json", action="store_true", help="print one JSON object (environment and rows) instead")
    p.add_argument("--ranks", default=None, metavar="N,N,...",
                   help="time the data-parallel step on these numbers of MPI ranks (and 1) at S and M "
                        "(or --shapes), with the all-reduce's share; needs mpiexec")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="with --ranks: BLAS threads per rank (default: CPU cores // ranks, so that every job "
                        "uses the same cores)")
    p.add_argument("--pool", choices=tuple(POOLS), help=argparse.SUPPRESS)  # child process: one thread pool
    p.add_argument("--parallel-worker", action="store_true", help=argparse.SUPPRESS)  # one rank of --ranks
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1:
        print("gpumlp bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    devices = ("cpu", "gpu") if args.device == "all" else (args.device,)
    if args.smoke:
        shapes, rounds, warmup = list(SMOKE_SHAPES.values()), 2, 1
    else:
        names = list(SHAPES) if args.shapes is None else [s.strip() for s in args.shapes.split(",") if s.strip()]
        unknown = [s for s in names if s not in SHAPES]
        if unknown:
            print(f"gpumlp bench: unknown shape(s) {', '.join(unknown)}; choose among {', '.join(SHAPES)}",
                  file=sys.stderr)
            return 2
        shapes, rounds, warmup = [SHAPES[s] for s in names], args.rounds, 2
    if "gpu" in devices and args.device == "gpu" and not gpu_backend_available():
        print("gpumlp bench: --device gpu, but CuPy has no usable CUDA device", file=sys.stderr)
        return 1
    if args.ranks or args.parallel_worker:
        if args.shapes is None and not args.smoke:
            shapes = [SHAPES[s] for s in PARALLEL_SHAPES]
        return (_parallel_worker if args.parallel_worker else _parallel_main)(args, shapes, rounds, warmup)
    tasks = ("train", "infer") if args.task == "both" else (args.task,)
    if args.pool:  # child: time one pool, print its records
        print(json.dumps(measure_pool(args.pool, shapes, tasks, not args.no_torch, rounds, warmup)))
        return 0
    pools = (["numpy", "torch-cpu"] if "cpu" in devices else []) + (["gpu"] if "gpu" in devices else [])
    if args.no_torch or importlib.util.find_spec("torch") is None:
        pools = [p for p in pools if p != "torch-cpu"]
    if "gpu" in pools and not gpu_backend_available() and not (not args.no_torch and torch_cuda_available(torch_module())):
        pools.remove("gpu")
    child_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    records = []
    try:
        for pool in pools:
            records += _measure_in_subprocess(pool, child_argv)
    except RuntimeError as exc:
        print(f"gpumlp bench: {exc}", file=sys.stderr)
        return 1
    order = {v: i for i, v in enumerate(VARIANTS)}
    shape_order = {s.name: i for i, s in enumerate(shapes)}
    records.sort(key=lambda r: (tasks.index(r["task"]), shape_order[r["shape"]],
                                order[(r["impl"], r["library"], r["device"])]))
    rows = table_rows(records)
    env = environment()
    if args.json:
        print(json.dumps({"environment": env, "rows": rows}))
    else:
        print(f"gpumlp {env['gpumlp']} · numpy {env['numpy']} · torch {env.get('torch', 'absent')} · "
              f"cupy {env.get('cupy', 'absent')} · {env['cpu']} ({env['cpu_count']} CPUs)"
              + (f" · {env['gpu']}" if "gpu" in env else ""))
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
