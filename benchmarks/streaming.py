"""Streamed against in-memory training (issue 16): samples/s and peak resident memory, each run in its own
process, the contenders alternated, medians.

    python benchmarks/streaming.py                        # the default table (about 10 minutes here)
    python benchmarks/streaming.py --rounds 5 --json benchmarks/results/streaming.json
    python benchmarks/streaming.py --huge 24GiB           # also one epoch on a file larger than memory

The setting: the command line's default net and batch (one hidden relu layer of 128, batch 32, momentum
SGD, float32), one BLAS thread (OPENBLAS_NUM_THREADS=1, the issue's goal), features N(0, 1) float32 with
10 classes from a fixed linear rule, written once as .npy (+ labels .npy) and Parquet (row groups of
65,536 rows) in a temporary directory, so that the files are in the page cache when timed.

    memory       np.load the features, Trainer.prepare(X, y), then epochs of Trainer.run_epoch
    npy          gpumlp.data.stream(X.npy, labels=y.npy, memory_budget=B): prepare (the counting pass), epochs
    parquet      the same from the Parquet file

Each child times ``--epochs`` epochs after one warm-up epoch and reports samples/s (rows per second of its
median epoch) and its peak resident memory (the OS's VmHWM, file-backed pages of memory maps included:
``peak_rss``). The sizes: ``--rows`` (speed) and, for the scaling rows of the table, files of 0.25x, 1x
and 4x the budget (streamed only: their peak memory should not grow with the file, their epoch time should
grow linearly). A "tiny" in-memory run of 1,000 rows gives the fixed overhead (interpreter, NumPy,
gpumlp, the model). Timings never go into unit tests (tests/test_streaming_bench_smoke.py runs this tiny).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

D, Q, HIDDEN, BATCH, LR = 64, 10, 128, 32, 0.02


# ----------------------------------------------------------------------------------- data
def write_data(directory, rows, d=D, parquet=True, block=65536):
    """X.npy (rows, d) float32, y.npy int64 and data.parquet in ``directory``, written a block at a time."""
    import numpy as np

    rng = np.random.default_rng(0)
    W = rng.normal(size=(d, Q))
    X = np.lib.format.open_memmap(os.path.join(directory, "X.npy"), "w+", np.float32, (rows, d))
    y = np.lib.format.open_memmap(os.path.join(directory, "y.npy"), "w+", np.int64, (rows,))
    writer = None
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq
    for a in range(0, rows, block):
        b = min(rows, a + block)
        xb = rng.standard_normal((b - a, d), dtype=np.float32)
        X[a:b], y[a:b] = xb, (xb @ W).argmax(axis=1)
        if parquet:
            table = pa.table({**{f"x{j}": xb[:, j] for j in range(d)}, "label": y[a:b]})
            writer = writer or pq.ParquetWriter(os.path.join(directory, "data.parquet"), table.schema)
            writer.write_table(table, row_group_size=block)
    X.flush()
    y.flush()
    del X, y
    if writer is not None:
        writer.close()


# ----------------------------------------------------------------------------------- child side
def peak_rss():
    """This process's peak resident memory in bytes: VmHWM, which exec resets (``ru_maxrss`` does not: it
    keeps the parent's peak across fork and exec, so a child of a large parent would report the parent's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(kind, directory, epochs, budget, d):
    import numpy as np

    import gpumlp
    from gpumlp.data import stream

    model = gpumlp.MLP([d, HIDDEN, Q], seed=0, momentum=0.9, weight_decay=1e-4)
    lr = LR * min(1.0, D / d)  # the same step per feature: 0.02 diverged (J = inf) on 1024 features
    trainer = gpumlp.Trainer(model, batch_size=BATCH, lr=lr)
    t0 = time.perf_counter()
    if kind in ("memory", "tiny"):
        if kind == "tiny":  # 1,000 rows copied from the memory map: the whole file is never resident
            X = np.load(os.path.join(directory, "X.npy"), mmap_mode="r")[:1000].copy()
            y = np.load(os.path.join(directory, "y.npy"), mmap_mode="r")[:1000].copy()
        else:
            X, y = np.load(os.path.join(directory, "X.npy")), np.load(os.path.join(directory, "y.npy"))
        data = trainer.prepare(X, y)
    else:
        path = os.path.join(directory, "X.npy" if kind == "npy" else "data.parquet")
        src = stream(path, labels=os.path.join(directory, "y.npy") if kind == "npy" else None, memory_budget=budget)
        data = trainer.prepare(src, None)
    prepare = time.perf_counter() - t0
    seconds = []
    for _ in range(epochs + 1):  # the first: warm-up (thread started, pages touched, buffers made)
        t = time.perf_counter()
        trainer.run_epoch(data, lr)
        seconds.append(time.perf_counter() - t)
    rows = int(data.n)
    peak = peak_rss()
    print(json.dumps({"kind": kind, "rows": rows, "prepare_s": prepare, "epoch_s": seconds[1:] or seconds,
                      "peak_bytes": peak, "samples_per_s": rows / statistics.median(seconds[1:] or seconds)}))
    return 0


# ----------------------------------------------------------------------------------- parent side
def run_child(kind, directory, epochs, budget, d=D, threads=1):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               GPUMLP_BACKEND="numpy")
    r = subprocess.run([sys.executable, __file__, "--child", kind, directory, str(epochs), str(budget), str(d)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def mib(n):
    return f"{n / 2**20:.0f} MiB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per child (after one warm-up)")
    p.add_argument("--rows", type=int, default=400_000, help="rows of the speed comparison's file")
    p.add_argument("--budget", default="64MiB", help="the streamed runs' memory budget")
    p.add_argument("--no-scaling", action="store_true", help="skip the 0.25x/1x/4x-budget files")
    p.add_argument("--huge", default=None, metavar="SIZE",
                   help="also train one streamed epoch on a .npy of SIZE (e.g. 24GiB: more than memory), 1024 features")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, directory, epochs, budget, d = args.child
        return child(kind, directory, int(epochs), int(budget), int(d))
    from gpumlp.data import parse_size

    budget = parse_size(args.budget)
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "budget": budget,
           "net": f"{D}-{HIDDEN}-{Q}", "batch": BATCH, "speed": [], "scaling": [], "huge": None}
    with tempfile.TemporaryDirectory() as tmp:
        speed = os.path.join(tmp, "speed")
        os.mkdir(speed)
        write_data(speed, args.rows)
        out["tiny"] = run_child("tiny", speed, 1, budget)
        kinds = ["memory", "npy", "parquet"]
        for r in range(args.rounds):
            for kind in kinds[r % 3:] + kinds[:r % 3]:  # rotated every round
                res = run_child(kind, speed, args.epochs, budget)
                res["round"] = r
                out["speed"].append(res)
                print(f"round {r + 1}: {kind:8s} {res['samples_per_s']:10.0f} samples/s  peak {mib(res['peak_bytes'])}",
                      flush=True)
        if not args.no_scaling:
            row_bytes = D * 4 + 8
            for factor in (0.25, 1, 4):
                directory = os.path.join(tmp, f"x{factor}")
                os.mkdir(directory)
                write_data(directory, int(factor * budget // row_bytes), parquet=False)
                res = run_child("npy", directory, 1, budget)
                res["file_bytes"] = int(factor * budget // row_bytes) * row_bytes
                res["factor"] = factor
                out["scaling"].append(res)
                print(f"file {factor}x budget: {res['rows']} rows, {res['epoch_s'][0]:.2f} s/epoch, "
                      f"peak {mib(res['peak_bytes'])}", flush=True)
                for f in os.listdir(directory):
                    os.unlink(os.path.join(directory, f))
        if args.huge:
            directory = os.path.join(tmp, "huge")
            os.mkdir(directory)
            d = 1024
            rows = parse_size(args.huge) // (d * 4 + 8)
            t0 = time.perf_counter()
            write_data(directory, rows, d=d, parquet=False, block=16384)
            written = time.perf_counter() - t0
            res = run_child("npy", directory, 0, budget, d=d)
            res.update(file_bytes=rows * (d * 4 + 8), write_s=written)
            out["huge"] = res
            print(f"huge: {mib(res['file_bytes'])} file, {res['rows']} rows, {res['epoch_s'][0]:.0f} s/epoch, "
                  f"peak {mib(res['peak_bytes'])}", flush=True)
    report(out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


def report(out):
    by = {}
    for res in out["speed"]:
        by.setdefault(res["kind"], []).append(res)
    print(f"\n{out['machine']}; net {out['net']}, batch {out['batch']}, one BLAS thread, budget {mib(out['budget'])}")
    print(f"fixed overhead (1,000 rows in memory): peak {mib(out['tiny']['peak_bytes'])}")
    if by:
        print(f"{'':10s}{'samples/s':>12s}{'x memory':>10s}{'paired':>8s}{'peak':>10s}{'prepare s':>11s}")
        base = statistics.median(r["samples_per_s"] for r in by["memory"])
    for kind, runs in by.items():
        rate = statistics.median(r["samples_per_s"] for r in runs)
        pairs = [r["samples_per_s"] / m["samples_per_s"] for r in runs for m in by["memory"] if m["round"] == r["round"]]
        print(f"{kind:10s}{rate:12.0f}{rate / base:10.2f}{statistics.median(pairs):8.2f}"
              f"{mib(max(r['peak_bytes'] for r in runs)):>10s}{statistics.median(r['prepare_s'] for r in runs):11.2f}")
    if out["huge"]:
        h = out["huge"]
        print(f"huge npy file ({mib(h['file_bytes'])}, {h['rows']} rows of 1024 features, written in {h['write_s']:.0f} s): "
              f"{h['epoch_s'][0]:.0f} s/epoch ({1e6 * h['epoch_s'][0] / h['rows']:.1f} us/row), prepare {h['prepare_s']:.0f} s, "
              f"peak {mib(h['peak_bytes'])}")
    for res in out["scaling"]:
        print(f"npy file {res['factor']}x budget ({mib(res['file_bytes'])}): {res['rows']} rows, "
              f"{res['epoch_s'][0]:.2f} s/epoch ({1e6 * res['epoch_s'][0] / res['rows']:.2f} us/row), "
              f"peak {mib(res['peak_bytes'])}")


if __name__ == "__main__":
    sys.exit(main())
