"""Epoch time on the CPU: gpumlp against PyTorch and the GEMM floor, each in its own process.

    python benchmarks/compare_cpu.py                        # S and M, 5 rounds, every implementation
    python benchmarks/compare_cpu.py --torch-python /path/to/venv-with-torch/bin/python --json out.json

The setting of issue 5: one hidden relu layer, cross-entropy, λ = 1e-4, no bias, float32, plain SGD
(η = 0.01), an epoch of n = 51200 random rows (200 steps at S, 25 at M), reshuffled every epoch.

    gpumlp          gpumlp.Trainer.run_epoch: the epoch loop that fit runs (fit's once-per-call
                    validation and host-to-device copy are not in it), NumPy backend
    gpumlp-fallback the same with GPUMLP_CBLAS=0: the folded update without NumPy's OpenBLAS cblas
    torch           torch.randperm, then per batch X[idx], zero_grad, CrossEntropyLoss, backward,
                    SGD(weight_decay=λ).step(); the loss summed on the device as gpumlp does
    floor-numpy     per batch, the step's five matrix products alone with np.matmul(out=)
    floor-torch     the same with torch.mm(out=)

Every case comes from ``gpumlp.bench.epoch_case`` (the single source of benchmark cases).

Why separate processes: NumPy's OpenBLAS threads and PyTorch's OpenMP threads both spin for a
while after each call, and on a two-core machine one pool spinning slows the other by whole factors.
Each child process warms up with one epoch, then times ``--epochs`` epochs; the parent alternates the
implementations (the order rotates every round) and reports medians over all timed epochs.

Shared machines: every timed epoch also records the CPU time that other processes used meanwhile
(from /proc/stat, minus this process's own), as a fraction of the machine. The table gives the
median of all epochs and, separately, of the "quiet" epochs (other load under --quiet, default 5%).
Timings never go into unit tests; this script is run by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPES = ("S", "M")  # gpumlp.bench.SHAPES: S is B=256, 784-256-10; M is B=2048, 784-1024-10
N_ROWS = 51200
IMPLS = ("gpumlp", "gpumlp-fallback", "torch", "floor-numpy", "floor-torch")
TORCH_IMPLS = ("torch", "floor-torch")


# ----------------------------------------------------------------------------------- child side
def _cpu_busy():
    """(busy jiffies of the whole machine, jiffies per second), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return sum(v) - v[3] - v[4], os.sysconf("SC_CLK_TCK")


def _own_cpu():
    t = os.times()
    return t.user + t.system


def _timed(epoch, epochs):
    """Seconds of each epoch and the other processes' share of the machine meanwhile."""
    ncpu = os.cpu_count() or 1
    out = []
    for _ in range(epochs):
        b0, c0, t0 = _cpu_busy(), _own_cpu(), time.perf_counter()
        epoch()
        wall, own = time.perf_counter() - t0, _own_cpu() - c0
        b1 = _cpu_busy()
        foreign = None
        if b0 is not None and b1 is not None:
            foreign = max(0.0, ((b1[0] - b0[0]) / b0[1] - own) / (ncpu * wall))
        out.append({"seconds": wall, "foreign_load": foreign})
    return out


def _make_epoch(impl, shape):
    """The epoch of one implementation, from gpumlp.bench (the single source of benchmark cases)."""
    from gpumlp import bench

    return bench.epoch_case("gpumlp" if impl == "gpumlp-fallback" else impl, bench.SHAPES[shape], N_ROWS)


def child(impl, shape, epochs):
    epoch, versions = _make_epoch(impl, shape)
    epoch()  # warm-up: thread pools started, buffers made, pages touched
    print(json.dumps({"impl": impl, "shape": shape, "epochs": _timed(epoch, epochs), "versions": versions}))
    return 0


# ----------------------------------------------------------------------------------- parent side
def _run_child(python, impl, shape, epochs, env):
    cmd = [python, os.path.abspath(__file__), "--child", impl, shape, str(epochs)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{impl} at {shape} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _median(xs):
    return statistics.median(xs) if xs else None


def summarise(results, quiet):
    """Per shape: median epoch time of each implementation (all epochs, and quiet ones) and ratios."""
    out = {}
    for shape in dict.fromkeys(r["shape"] for r in results):
        rows = {}
        for impl in dict.fromkeys(r["impl"] for r in results if r["shape"] == shape):
            eps = [e for r in results if r["shape"] == shape and r["impl"] == impl for e in r["epochs"]]
            q = [e["seconds"] for e in eps if e["foreign_load"] is not None and e["foreign_load"] < quiet]
            rows[impl] = {"median_s": _median([e["seconds"] for e in eps]), "quiet_median_s": _median(q),
                          "epochs": len(eps), "quiet_epochs": len(q), "min_s": min(e["seconds"] for e in eps)}
        for impl, row in rows.items():  # paired: this implementation ÷ the reference run in the same round
            for ref in ("torch", "floor-numpy", "floor-torch"):
                per_round = []
                for rnd in sorted({r.get("round") for r in results if r["shape"] == shape}):
                    a = [e["seconds"] for r in results if (r["shape"], r["impl"], r.get("round")) == (shape, impl, rnd)
                         for e in r["epochs"]]
                    b = [e["seconds"] for r in results if (r["shape"], r["impl"], r.get("round")) == (shape, ref, rnd)
                         for e in r["epochs"]]
                    if a and b and ref != impl:
                        per_round.append(statistics.median(a) / statistics.median(b))
                if per_round:
                    row[f"paired_vs_{ref}"] = statistics.median(per_round)
        for which in ("median_s", "quiet_median_s", "min_s"):
            for impl, row in rows.items():
                for ref in ("torch", "floor-numpy", "floor-torch"):
                    if ref in rows and ref != impl and row[which] and rows[ref][which]:
                        row[f"{which[:-2]}_vs_{ref}"] = row[which] / rows[ref][which]
        out[shape] = rows
    return out


def format_summary(summary):
    lines = []
    for shape, rows in summary.items():
        from gpumlp.bench import SHAPES as BENCH_SHAPES

        B, sizes = BENCH_SHAPES[shape].batch, BENCH_SHAPES[shape].sizes
        lines.append(f"\n{shape}: B={B}, {'-'.join(map(str, sizes))}, epoch of {N_ROWS} rows ({N_ROWS // B} steps)")
        head = f"  {'implementation':16s} {'median s':>9s} {'quiet s':>9s} {'min s':>8s} {'n/quiet':>8s}" \
               f" {'÷torch':>12s} {'÷floor-np':>12s} {'÷floor-pt':>12s}"
        lines.append(head)
        for impl, r in rows.items():
            def ratio(ref):
                a, p = r.get(f"median_vs_{ref}"), r.get(f"paired_vs_{ref}")
                return "" if a is None else f"{a:.2f}" + ("" if p is None else f" [{p:.2f}]")
            qs = "" if r["quiet_median_s"] is None else f"{r['quiet_median_s']:.4f}"
            lines.append(f"  {impl:16s} {r['median_s']:9.4f} {qs:>9s} {r['min_s']:8.4f} "
                         f"{r['epochs']:>3d}/{r['quiet_epochs']:<4d} {ratio('torch'):>12s} {ratio('floor-numpy'):>12s}"
                         f" {ratio('floor-torch'):>12s}")
    lines.append("\nratios: median epoch ÷ the reference's median epoch; in brackets the median over rounds of the "
                 "same ratio within one round (adjacent processes, paired)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=3, metavar=("IMPL", "SHAPE", "EPOCHS"), help=argparse.SUPPRESS)
    p.add_argument("--shapes", default="S,M")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--rounds", type=int, default=5, help="processes per implementation and shape (default 5)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per process, after one warm-up (default 3)")
    p.add_argument("--quiet", type=float, default=0.05, help="other load below which an epoch counts as quiet")
    p.add_argument("--torch-python", default=sys.executable,
                   help="interpreter for the PyTorch implementations (default: this one)")
    p.add_argument("--json", help="write every sample and the summary to this file")
    args = p.parse_args(argv)
    if args.child:
        impl, shape, epochs = args.child
        return child(impl, shape, int(epochs))
    shapes = [s for s in args.shapes.split(",") if s]
    impls = [i for i in args.impls.split(",") if i]
    for bad in [s for s in shapes if s not in SHAPES] + [i for i in impls if i not in IMPLS]:
        p.error(f"unknown shape or implementation {bad!r}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set and affects the BLAS under test", file=sys.stderr)
    results = []
    jobs = [(s, i) for s in shapes for i in impls]
    for r in range(args.rounds):
        k = r % len(jobs)
        for shape, impl in jobs[k:] + jobs[:k]:  # rotate: no implementation always runs first
            env = dict(os.environ)
            if impl == "gpumlp-fallback":
                env["GPUMLP_CBLAS"] = "0"
            python = args.torch_python if impl in TORCH_IMPLS else sys.executable
            res = _run_child(python, impl, shape, args.epochs, env)
            res["round"] = r
            results.append(res)
            med = statistics.median(e["seconds"] for e in res["epochs"])
            print(f"round {r + 1}/{args.rounds} {shape} {impl:16s} {med:.4f} s/epoch "
                  f"(other load {max((e['foreign_load'] or 0) for e in res['epochs']):.0%} max)",
                  file=sys.stderr, flush=True)
    summary = summarise(results, args.quiet)
    versions = {}
    for r in results:
        versions.update({k: v for k, v in r["versions"].items() if k != "folded_update"})
    paths = {r["impl"]: r["versions"]["folded_update"] for r in results if "folded_update" in r["versions"]}
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {_cpu_model()} · {os.cpu_count()} CPUs · "
              f"Python {platform.python_version()} · " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(header)
    print(f"{args.rounds} rounds × {args.epochs} epochs per implementation and shape, "
          f"each round in fresh processes, order rotated; folded update: "
          + ", ".join(f"{k} {v}" for k, v in paths.items()))
    print(format_summary(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "folded_update": paths, "rounds": args.rounds, "epochs": args.epochs, "quiet": args.quiet,
                       "summary": summary, "samples": results}, f, indent=1)
    return 0


def _cpu_model():
    from gpumlp.backend import cpu_name  # NumPy is imported but idle in this parent process

    return cpu_name()


if __name__ == "__main__":
    sys.exit(main())
