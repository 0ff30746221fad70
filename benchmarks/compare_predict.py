"""Inference on the CPU: gpumlp's predict against onnxruntime on the exported file, scikit-learn's
MLPClassifier holding the same weights and PyTorch (gpumlp.to_torch), each in its own process, alternated.

    python benchmarks/compare_predict.py                                  # 5 rounds, both shapes, every library
    python benchmarks/compare_predict.py --rounds 9 --json benchmarks/results/predict.json

The setting of issue 15: one hidden relu layer with biases, float32, softmax outputs, at 64-128-10 (the
lecture's net on the digits) and 784-256-10 (MNIST), weights from ``gpumlp.MLP(sizes, bias=True, seed=0)``
with small random biases, saved once by the parent (``.npz``) and exported once (``gpumlp.to_onnx``,
the default opset); X is N(0, 1) float32, the same rows in every process. Two measures per library:

    latency     one row: the median seconds of one predict call (samples of --calls calls each)
    throughput  --batch rows (65,536) in one predict call: rows per second of the median sample

and "predict" is, for each, what gives the labels from a float32 array:

    gpumlp       MLP.predict(X), NumPy backend (checks X, forward in chunks of 8192 rows, argmax)
    onnxruntime  InferenceSession(file).run(["label"], {"X": X}), the CPU provider, default options
    sklearn      MLPClassifier.predict(X): coefs_ and intercepts_ set to the same float32 weights
    torch        gpumlp.to_torch(model) under torch.inference_mode(): seq(torch.from_numpy(X)).argmax(1)

Each library keeps its default thread count (two here). Why separate processes, and the order rotated
every round: as in compare_cpu.py, OpenBLAS's, onnxruntime's and PyTorch's thread pools spin after each
call, and on two cores one spinning pool slows another by whole factors. Every sample records the CPU
time that other processes used meanwhile (``compare_cpu._timed``); the table gives the median of all
samples and of the quiet ones (other load under --quiet), and the paired ratios: per round, gpumlp's
median ÷ the other library's in the same round, the median over rounds. After timing, each child also
counts how many of its labels at the large batch equal gpumlp's (the same weights: all of them, or all
but a rare float32 near-tie). Timings never go into unit tests (tests/test_onnx_bench_smoke.py runs this
script tiny).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

LIBS = ("gpumlp", "onnxruntime", "sklearn", "torch")
SHAPES = ("64-128-10", "784-256-10")
GOALS = "throughput at the large batch >= 0.9x onnxruntime's; latency at one row <= scikit-learn's"


# ----------------------------------------------------------------------------------- child side
def _rows(n, d, seed):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def _predictor(lib, model_path, onnx_path):
    """predict(X) -> labels for one library, and its versions."""
    import gpumlp

    m = gpumlp.load(model_path, backend="numpy")
    if lib == "gpumlp":
        return m.predict, {"gpumlp": gpumlp.__version__}
    if lib == "onnxruntime":
        import onnxruntime as ort

        s = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        return (lambda X: s.run(["label"], {"X": X})[0]), {"onnxruntime": ort.__version__}
    if lib == "sklearn":
        return _sklearn(m)
    import torch

    seq = gpumlp.to_torch(m)

    def predict(X):
        with torch.inference_mode():
            return seq(torch.from_numpy(X)).argmax(dim=1).numpy()

    return predict, {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _sklearn(m):
    """An MLPClassifier of the same architecture holding m's weights (fitted once on a few float32 rows of
    every class, so that its attributes exist in float32, then given the weights in its (in, out) layout)."""
    import warnings

    import numpy as np
    import sklearn
    from sklearn.neural_network import MLPClassifier

    d, q = m.sizes[0], m.sizes[-1]
    clf = MLPClassifier(hidden_layer_sizes=m.sizes[1:-1], activation="relu", max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(_rows(2 * q, d, 1), np.arange(2 * q) % q)
    clf.coefs_ = [np.ascontiguousarray(W.T) for W in m.get_weights()]
    clf.intercepts_ = [b.copy() for b in m.get_biases()]
    assert all(c.dtype == np.float32 for c in clf.coefs_ + clf.intercepts_)
    return clf.predict, {"scikit-learn": sklearn.__version__}


def child(lib, shape, model_path, onnx_path, batch, calls, samples):
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare_cpu import _timed  # seconds and other processes' load, per call

    d = int(shape.split("-")[0])
    predict, versions = _predictor(lib, model_path, onnx_path)
    one, big = _rows(1, d, 2), _rows(batch, d, 3)
    for _ in range(max(1, calls // 4)):  # warm-up: thread pools started, pages touched, caches filled
        predict(one)
    predict(big)

    def ones():
        for _ in range(calls):
            predict(one)

    latency = [{"seconds": s["seconds"] / calls, "foreign_load": s["foreign_load"]} for s in _timed(ones, samples)]
    throughput = _timed(lambda: predict(big), samples)
    labels = np.asarray(predict(big))
    import gpumlp  # only now: its OpenBLAS threads stay out of the other libraries' timing

    same = int((labels == gpumlp.load(model_path, backend="numpy").predict(big)).sum())
    versions["numpy"] = np.__version__
    print(json.dumps({"lib": lib, "shape": shape, "batch": batch, "latency": latency, "throughput": throughput,
                      "labels_equal_gpumlp": same, "versions": versions}))
    return 0


# ----------------------------------------------------------------------------------- parent side
def make_files(shape, directory, seed=0):
    """The model (.npz) and its ONNX export for ``shape``: gpumlp's initial weights, biases ~ U(-0.1, 0.1)."""
    import numpy as np

    import gpumlp

    sizes = tuple(int(s) for s in shape.split("-"))
    m = gpumlp.MLP(sizes, activation="relu", bias=True, dtype="float32", backend="numpy", seed=seed)
    rng = np.random.default_rng(seed + 1)
    m.set_layers(biases={l: rng.uniform(-0.1, 0.1, n) for l, n in enumerate(sizes[1:])})
    model_path, onnx_path = os.path.join(directory, f"{shape}.npz"), os.path.join(directory, f"{shape}.onnx")
    m.save(model_path)
    gpumlp.to_onnx(m, onnx_path)
    return model_path, onnx_path


def _run_child(lib, shape, files, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, shape, *files, str(args.batch), str(args.calls),
           str(args.samples)]
    env = dict(os.environ)
    if lib == "gpumlp" and args.gpumlp_path:  # another version of gpumlp for its own process (before a change)
        env["PYTHONPATH"] = os.pathsep.join([args.gpumlp_path] + [x for x in [env.get("PYTHONPATH")] if x])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{lib} at {shape} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _median(xs):
    return statistics.median(xs) if xs else None


def summarise(results, quiet=0.05):
    """Per shape and measure: each library's median (all samples, quiet ones) and gpumlp's paired ratios."""
    out = {}
    for shape in dict.fromkeys(r["shape"] for r in results):
        out[shape] = {}
        for measure in ("latency", "throughput"):
            rows = {}
            for lib in LIBS:
                samples = [s for r in results if (r["shape"], r["lib"]) == (shape, lib) for s in r[measure]]
                if not samples:
                    continue
                q = [s["seconds"] for s in samples if s["foreign_load"] is not None and s["foreign_load"] < quiet]
                loads = [s["foreign_load"] for s in samples if s["foreign_load"] is not None]
                rows[lib] = {"median_s": _median([s["seconds"] for s in samples]), "quiet_median_s": _median(q),
                             "samples": len(samples), "quiet_samples": len(q),
                             "median_other_load": _median(loads), "max_other_load": max(loads) if loads else None}
                batch = 1 if measure == "latency" else results[0]["batch"]
                rows[lib]["rows_per_s"] = batch / rows[lib]["median_s"]
            for ref in rows:
                if ref == "gpumlp" or "gpumlp" not in rows:
                    continue
                per_round = []
                for rnd in sorted({r["round"] for r in results if r["shape"] == shape}):
                    med = {lib: _median([s["seconds"] for r in results if (r["shape"], r["lib"], r["round"]) ==
                                         (shape, lib, rnd) for s in r[measure]]) for lib in ("gpumlp", ref)}
                    if med["gpumlp"] and med[ref]:
                        per_round.append(med["gpumlp"] / med[ref])
                rows["gpumlp"][f"time_vs_{ref}"] = rows["gpumlp"]["median_s"] / rows[ref]["median_s"]
                rows["gpumlp"][f"paired_time_vs_{ref}"] = _median(per_round)
            out[shape][measure] = rows
    return out


def goals(summary):
    """Issue 15's goals per shape, from the paired ratios: (throughput ÷ onnxruntime's, latency ÷ scikit-learn's)."""
    out = {}
    for shape, m in summary.items():
        t = m["throughput"].get("gpumlp", {}).get("paired_time_vs_onnxruntime")
        l = m["latency"].get("gpumlp", {}).get("paired_time_vs_sklearn")
        out[shape] = {"throughput_vs_onnxruntime": None if t is None else 1 / t,
                      "throughput_goal_met": None if t is None else 1 / t >= 0.9,
                      "latency_vs_sklearn": l, "latency_goal_met": None if l is None else l <= 1.0}
    return out


def format_summary(summary, batch):
    lines = []
    for shape, measures in summary.items():
        lines.append(f"\n{shape}, float32, relu, biases")
        lines.append(f"  {'library':12s} {'1 row: median µs':>16s} {'quiet µs':>9s} {'gpumlp ÷':>13s}"
                     f"   {f'{batch} rows: rows/s':>19s} {'quiet s':>8s} {'gpumlp ÷':>13s} {'other load':>11s}")
        lat, thr = measures["latency"], measures["throughput"]
        for lib in lat:
            def ratio(rows, ref=lib):
                g = rows.get("gpumlp", {})
                a, p = g.get(f"time_vs_{ref}"), g.get(f"paired_time_vs_{ref}")
                return "" if a is None else f"{a:.2f} [{p:.2f}]"
            ql = "" if lat[lib]["quiet_median_s"] is None else f"{lat[lib]['quiet_median_s'] * 1e6:.1f}"
            qt = "" if thr[lib]["quiet_median_s"] is None else f"{thr[lib]['quiet_median_s']:.4f}"
            load = thr[lib]["median_other_load"]
            lines.append(f"  {lib:12s} {lat[lib]['median_s'] * 1e6:16.1f} {ql:>9s} {ratio(lat):>13s}   "
                         f"{thr[lib]['rows_per_s']:19,.0f} {qt:>8s} {ratio(thr):>13s} "
                         f"{'' if load is None else f'{load:.1%}':>11s}")
    lines.append("\ngpumlp ÷: gpumlp's median time ÷ that library's (below 1: gpumlp is faster), in brackets the median"
                 " over rounds of the same ratio within one round (paired); other load: the median share of the"
                 " machine that other processes used during the large-batch samples")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    p.add_argument("--shapes", default=",".join(SHAPES), help="d-h-q sizes, comma-separated (default: the issue's)")
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--rounds", type=int, default=5, help="processes per library and shape (default 5)")
    p.add_argument("--batch", type=int, default=65536, help="rows of the throughput batch (default 65536)")
    p.add_argument("--calls", type=int, default=500, help="one-row predict calls per latency sample (default 500)")
    p.add_argument("--samples", type=int, default=7, help="timed samples per measure and process (default 7)")
    p.add_argument("--quiet", type=float, default=0.05, help="other load below which a sample counts as quiet")
    p.add_argument("--gpumlp-path", help="gpumlp's process imports gpumlp from this source tree (e.g. a checkout "
                   "of the commit before a change; the files are made and exported by this one)")
    p.add_argument("--json", help="write every sample and the summary to this file")
    args = p.parse_args(argv)
    if args.child:
        lib, shape, model_path, onnx_path, batch, calls, samples = args.child
        return child(lib, shape, model_path, onnx_path, int(batch), int(calls), int(samples))
    shapes, libs = [s for s in args.shapes.split(",") if s], [l for l in args.libs.split(",") if l]
    for bad in [l for l in libs if l not in LIBS]:
        p.error(f"unknown library {bad!r}; choose from {', '.join(LIBS)}")
    for bad in [s for s in shapes if len(s.split("-")) != 3 or not all(x.isdigit() for x in s.split("-"))]:
        p.error(f"a shape is d-h-q, got {bad!r}")
    results = []
    with tempfile.TemporaryDirectory() as directory:
        files = {shape: make_files(shape, directory) for shape in shapes}
        jobs = [(s, lib) for s in shapes for lib in libs]
        for rnd in range(args.rounds):
            k = rnd % len(jobs)
            for shape, lib in jobs[k:] + jobs[:k]:  # rotated: no library always runs first
                res = _run_child(lib, shape, files[shape], args)
                res["round"] = rnd
                results.append(res)
                print(f"round {rnd + 1}/{args.rounds} {shape:10s} {lib:12s} "
                      f"1 row {statistics.median(s['seconds'] for s in res['latency']) * 1e6:8.1f} µs, "
                      f"{args.batch} rows {statistics.median(s['seconds'] for s in res['throughput']):.4f} s "
                      f"(other load {max((s['foreign_load'] or 0) for s in res['throughput']):.0%} max), "
                      f"{res['labels_equal_gpumlp']}/{args.batch} labels as gpumlp's", file=sys.stderr, flush=True)
    summary = summarise(results, args.quiet)
    versions = {}
    for r in results:
        versions.update(r["versions"])
    from gpumlp.backend import cpu_name

    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {cpu_name()} · {os.cpu_count()} CPUs · "
              f"Python {platform.python_version()} · " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if args.gpumlp_path:
        header += f" · gpumlp's process from {args.gpumlp_path}"
    print(header)
    print(f"{args.rounds} rounds per library and shape, each in a fresh process, the order rotated; {args.samples} "
          f"samples per measure and process (latency: {args.calls} calls each), after a warm-up")
    print(format_summary(summary, args.batch))
    met = goals(summary)
    print(f"\ngoals ({GOALS}):")
    for shape, g in met.items():
        t, l = g["throughput_vs_onnxruntime"], g["latency_vs_sklearn"]
        print(f"  {shape}: throughput {'n/a' if t is None else f'{t:.2f}x onnxruntime'}"
              f" ({'met' if g['throughput_goal_met'] else 'missed' if t is not None else '-'}), "
              f"latency {'n/a' if l is None else f'{l:.2f}x scikit-learn'}"
              f" ({'met' if g['latency_goal_met'] else 'missed' if l is not None else '-'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rounds": args.rounds, "batch": args.batch, "calls": args.calls,
                       "samples": args.samples, "quiet": args.quiet, "summary": summary, "goals": met,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
