"""L-BFGS on scikit-learn's small data sets: gpumlp.sklearn against sklearn.neural_network, each fit in
its own process, the two alternated, medians.

    python benchmarks/compare_lbfgs.py                               # 7 rounds × 3 fits, every data set
    python benchmarks/compare_lbfgs.py --rounds 9 --json benchmarks/results/lbfgs.json
    OPENBLAS_NUM_THREADS=1 python benchmarks/compare_lbfgs.py        # one BLAS thread for both

The setting: scikit-learn's defaults for solver="lbfgs" (hidden_layer_sizes=(100,), relu, alpha=1e-4,
max_iter=200, max_fun=15000, tol=1e-4), float64, X standardised on the training split, a stratified
75/25 split of each data set (seeded), the same random_state for both libraries (so the same initial
weights: gpumlp.sklearn draws them as scikit-learn does). gpumlp on the NumPy backend.

    iris, wine, breast_cancer, digits   MLPClassifier: test accuracy, training loss (loss_), n_iter_
    diabetes                            MLPRegressor (y standardised on the training split): test R²

Small generated problems, where a fit is a few milliseconds and BLAS threads matter most (issue 17: two
OpenBLAS pools spinning on two cores made gpumlp's fit 10x scikit-learn's on the first of them):

    multilabel     make_multilabel_classification(600, n_features=20, n_classes=5, random_state=5),
                   X standardised, train_test_split(test_size=0.3, random_state=0), hidden (64,):
                   subset accuracy (one logistic unit per label)
    moons          make_moons(300, noise=0.25, random_state=0), hidden (16,): a binary problem
    blobs_3x10     make_classification(400, 10, n_informative=6, n_classes=3, random_state=0), hidden (32, 16)
    regression_8   make_regression(500, 8, noise=5, random_state=0), hidden (32,): MLPRegressor, test R²

(the generated sets: X standardised on all rows, an unstratified 70/30 split with random_state=0,
regression_8's y standardised on its training split).

Each child process imports one library, fits once to warm up (imports, BLAS threads, first-touch
pages), then times ``--fits`` fits from scratch; the parent alternates the libraries (which one goes
first rotates every round) and reports, per data set, the median fit time of each over all timed fits,
the median over rounds of the paired ratio (gpumlp ÷ scikit-learn in the same round), and the quality
figures (identical in every fit of a round: the fits are deterministic). As compare_cpu.py, every timed
fit records the CPU time that other processes used meanwhile, as a fraction of the machine.
Timings never go into unit tests; this script is run by hand (tests/test_bench_smoke.py runs it tiny).
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

DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes", "multilabel", "moons", "blobs_3x10",
            "regression_8")
LIBS = ("gpumlp", "sklearn")
HIDDEN = {"multilabel": (64,), "moons": (16,), "blobs_3x10": (32, 16), "regression_8": (32,)}  # else (100,)
REGRESSION = ("diabetes", "regression_8")


def _generated(name):
    from sklearn import datasets

    if name == "multilabel":
        return datasets.make_multilabel_classification(600, n_features=20, n_classes=5, random_state=5)
    if name == "moons":
        return datasets.make_moons(300, noise=0.25, random_state=0)
    if name == "blobs_3x10":
        return datasets.make_classification(400, 10, n_informative=6, n_classes=3, random_state=0)
    return datasets.make_regression(500, 8, noise=5, random_state=0)


def _load(name, seed):
    """(X_train, X_test, y_train, y_test, is_classifier), X (and the regressions' y) standardised (module docstring)."""
    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    classify = name not in REGRESSION
    if name in HIDDEN:
        X, y = _generated(name)
        X = StandardScaler().fit_transform(X)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                              stratify=y if classify else None)
        scaler = StandardScaler().fit(Xtr)
        Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)
    if not classify:
        mu, sd = ytr.mean(), ytr.std()
        ytr, yte = (ytr - mu) / sd, (yte - mu) / sd
    return np.ascontiguousarray(Xtr), np.ascontiguousarray(Xte), ytr, yte, classify


def _estimator(lib, name, classify, seed, max_iter):
    if lib == "gpumlp":
        from gpumlp.sklearn import MLPClassifier, MLPRegressor

        extra = {"backend": "numpy"}
    else:
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        extra = {}
    cls = MLPClassifier if classify else MLPRegressor
    return cls(hidden_layer_sizes=HIDDEN.get(name, (100,)), solver="lbfgs", random_state=seed, max_iter=max_iter,
               **extra)


def child(lib, name, seed, fits, max_iter):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare_cpu import _timed  # seconds and other processes' load, per call

    Xtr, Xte, ytr, yte, classify = _load(name, seed)
    fitted = []

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, through n_iter_ == max_iter
            fitted.append(_estimator(lib, name, classify, seed, max_iter).fit(Xtr, ytr))

    fit()  # warm-up
    samples = _timed(fit, fits)
    est = fitted[-1]
    import numpy as np
    import sklearn

    versions = {"numpy": np.__version__, "scikit-learn": sklearn.__version__}
    if lib == "gpumlp":
        import gpumlp

        versions["gpumlp"] = gpumlp.__version__
    import scipy

    versions["scipy"] = scipy.__version__
    print(json.dumps({"lib": lib, "dataset": name, "fits": samples, "n_iter": int(est.n_iter_),
                      "loss": float(est.loss_), "train_score": float(est.score(Xtr, ytr)),
                      "test_score": float(est.score(Xte, yte)), "versions": versions}))
    return 0


# ----------------------------------------------------------------------------------- parent side
def _run_child(lib, name, seed, fits, max_iter):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, name, str(seed), str(fits), str(max_iter)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{lib} on {name} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summarise(results, quiet=0.05):
    """Per data set and library: median fit time (all fits, quiet ones), quality; the paired ratio."""
    out = {}
    for name in dict.fromkeys(r["dataset"] for r in results):
        rows = {}
        for lib in LIBS:
            runs = [r for r in results if (r["dataset"], r["lib"]) == (name, lib)]
            if not runs:
                continue
            fits = [f for r in runs for f in r["fits"]]
            q = [f["seconds"] for f in fits if f["foreign_load"] is not None and f["foreign_load"] < quiet]
            last = runs[-1]
            rows[lib] = {"median_s": statistics.median(f["seconds"] for f in fits),
                         "quiet_median_s": statistics.median(q) if q else None, "fits": len(fits),
                         "quiet_fits": len(q), "n_iter": last["n_iter"], "loss": last["loss"],
                         "train_score": last["train_score"], "test_score": last["test_score"]}
        if len(rows) == 2:
            per_round = []
            for rnd in sorted({r["round"] for r in results if r["dataset"] == name}):
                med = {lib: statistics.median(f["seconds"] for r in results
                                              if (r["dataset"], r["lib"], r["round"]) == (name, lib, rnd)
                                              for f in r["fits"]) for lib in LIBS}
                per_round.append(med["gpumlp"] / med["sklearn"])
            rows["gpumlp"]["paired_vs_sklearn"] = statistics.median(per_round)
            rows["gpumlp"]["median_vs_sklearn"] = rows["gpumlp"]["median_s"] / rows["sklearn"]["median_s"]
        out[name] = rows
    return out


def format_summary(summary):
    lines = [f"  {'data set':14s} {'library':8s} {'median s':>9s} {'quiet s':>9s} {'÷sklearn':>14s} {'n_iter':>6s}"
             f" {'loss_':>10s} {'train':>7s} {'test':>7s}"]
    for name, rows in summary.items():
        for lib, r in rows.items():
            ratio = "" if "median_vs_sklearn" not in r else \
                f"{r['median_vs_sklearn']:.2f} [{r['paired_vs_sklearn']:.2f}]"
            qs = "" if r["quiet_median_s"] is None else f"{r['quiet_median_s']:.4f}"
            lines.append(f"  {name:14s} {lib:8s} {r['median_s']:9.4f} {qs:>9s} {ratio:>14s} {r['n_iter']:6d}"
                         f" {r['loss']:10.3e} {r['train_score']:7.4f} {r['test_score']:7.4f}")
    lines.append("\nscores: accuracy (classifiers; subset accuracy for multilabel), R² (diabetes, regression_8); ÷sklearn: gpumlp's median fit ÷ scikit-learn's, "
                 "in brackets the median over rounds of the same ratio within one round (paired)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=5, metavar=("LIB", "DATASET", "SEED", "FITS", "MAX_ITER"), help=argparse.SUPPRESS)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--rounds", type=int, default=7, help="processes per library and data set (default 7)")
    p.add_argument("--fits", type=int, default=3, help="timed fits per process, after one warm-up (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random_state of both estimators and the split's seed")
    p.add_argument("--max-iter", type=int, default=200, help="scikit-learn's default: 200")
    p.add_argument("--quiet", type=float, default=0.05, help="other load below which a fit counts as quiet")
    p.add_argument("--json", help="write every sample and the summary to this file")
    args = p.parse_args(argv)
    if args.child:
        lib, name, seed, fits, max_iter = args.child
        return child(lib, name, int(seed), int(fits), int(max_iter))
    names = [n for n in args.datasets.split(",") if n]
    for bad in [n for n in names if n not in DATASETS]:
        p.error(f"unknown data set {bad!r}; choose from {', '.join(DATASETS)}")
    results = []
    for rnd in range(args.rounds):
        for name in names:
            for lib in (LIBS if rnd % 2 == 0 else LIBS[::-1]):  # alternate which library goes first
                res = _run_child(lib, name, args.seed, args.fits, args.max_iter)
                res["round"] = rnd
                results.append(res)
                print(f"round {rnd + 1}/{args.rounds} {name:14s} {lib:8s} "
                      f"{statistics.median(f['seconds'] for f in res['fits']):.4f} s/fit, n_iter {res['n_iter']}",
                      file=sys.stderr, flush=True)
    summary = summarise(results, args.quiet)
    versions = {}
    for r in results:
        versions.update(r["versions"])
    threads = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}
    from gpumlp.backend import cpu_name

    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {cpu_name()} · {os.cpu_count()} CPUs · "
              f"Python {platform.python_version()} · " + ", ".join(f"{k} {v}" for k, v in versions.items())
              + (" · " + ", ".join(f"{k}={v}" for k, v in threads.items()) if threads else ""))
    print(header)
    print(f"{args.rounds} rounds × {args.fits} fits per library and data set (after one warm-up fit), each round "
          f"in fresh processes, the order alternated; solver='lbfgs', scikit-learn's defaults, random_state={args.seed}")
    print(format_summary(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rounds": args.rounds, "fits": args.fits, "seed": args.seed,
                       "max_iter": args.max_iter, "summary": summary, "samples": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
