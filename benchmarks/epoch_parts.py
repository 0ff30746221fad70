"""Where a CPU epoch's time goes beyond its five GEMMs: a diagnostic in one process (not the issue's
method for speed claims, which is compare_cpu.py's separate processes; this one sees small differences
that the machine's drift between processes hides).

    python benchmarks/epoch_parts.py                 # S and M, 15 repeats
    OPENBLAS_CORETYPE=Haswell python benchmarks/epoch_parts.py

The same epoch of compare_cpu.py (n = 51200 random rows, one hidden relu layer, cross-entropy, plain SGD,
λ = 1e-4, float32), five ways, alternated in one process (each repeat runs them all, the order rotated),
medians over the repeats, each as a ratio to the first:

    floor            the five matrix products alone per contiguous batch (np.matmul(out=))
    floor+gather     the same, each batch first gathered from the shuffled rows into a buffer
    steps            gpumlp's Step.train per contiguous batch: its GEMMs and everything between them
    epoch            gpumlp.Trainer.run_epoch without shuffling
    epoch+shuffle    run_epoch as fit runs it (reshuffled every epoch): what compare_cpu.py times
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import gpumlp
from gpumlp import bench
from gpumlp.backend import cpu_name


def cases(shape, n_rows):
    d, h, q = shape.sizes
    B = shape.batch
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_rows, d), dtype=np.float32)
    y = rng.integers(0, q, n_rows)
    W1 = rng.standard_normal((h, d), dtype=np.float32) * 0.05
    W2 = rng.standard_normal((q, h), dtype=np.float32) * 0.05
    Z, O, dW2, dH, dW1 = (np.empty(s, np.float32) for s in ((B, h), (B, q), (q, h), (B, h), (h, d)))
    buf = np.empty((B, d), np.float32)

    def products(x):  # compare_cpu.py's floor: Z = X W1ᵀ, O = H W2ᵀ, dW2 = dOᵀH, dH = dO W2, dW1 = dZᵀX
        np.matmul(x, W1.T, out=Z)
        np.matmul(Z, W2.T, out=O)
        np.matmul(O.T, Z, out=dW2)
        np.matmul(O, W2, out=dH)
        np.matmul(dH.T, x, out=dW1)

    def floor():
        for i in range(0, n_rows, B):
            products(X[i:i + B])

    def floor_gather():
        order = rng.permutation(n_rows)
        for i in range(0, n_rows, B):
            products(np.take(X, order[i:i + B], axis=0, out=buf, mode="clip"))

    def model():
        return gpumlp.MLP(shape.sizes, activation="relu", loss="cross_entropy", weight_decay=bench.WEIGHT_DECAY,
                          bias=False, dtype="float32", backend="numpy", seed=0)

    m = model()
    step = m.training_step(B)
    Xd, yd, _ = m.to_device(X, y)

    def steps():
        for i in range(0, n_rows, B):
            step.train(Xd[i:i + B], yd[i:i + B], None, m.optimizer, bench.LR)

    out = {"floor": floor, "floor+gather": floor_gather, "steps": steps}
    for name, shuffle in (("epoch", False), ("epoch+shuffle", True)):
        trainer = gpumlp.Trainer(model(), batch_size=B, lr=bench.LR, shuffle=shuffle)
        data = trainer.prepare(X, y)
        out[name] = (lambda t, dd: lambda: t.run_epoch(dd, bench.LR))(trainer, data)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="S,M")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rows", type=int, default=51200)
    args = p.parse_args(argv)
    print(cpu_name(), "·", bench.environment_blas())
    for name in args.shapes.split(","):
        shape = bench.SHAPES[name]
        fs = cases(shape, args.rows)
        for f in fs.values():
            f()  # warm up: buffers, threads, pages
        times = {k: [] for k in fs}
        keys = list(fs)
        for r in range(args.repeats):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                t = time.perf_counter()
                fs[k]()
                times[k].append(time.perf_counter() - t)
        base = statistics.median(times["floor"])
        steps = -(-args.rows // shape.batch)
        print(f"\n{name}: B={shape.batch}, {'-'.join(map(str, shape.sizes))}, {steps} steps; median of {args.repeats}")
        for k, v in times.items():
            med = statistics.median(v)
            print(f"  {k:14s} {med:8.4f} s  {med / base:5.3f}x floor  {(med - base) / steps * 1e6:+8.1f} µs/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
