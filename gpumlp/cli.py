"""The ``gpumlp`` command: train, evaluate, predict, info, bench.

    gpumlp train                          the lecture's net on the embedded digits (>= 96 % test accuracy)
    gpumlp train --data mnist/train-images-idx3-ubyte.gz --test-data mnist/t10k-images-idx3-ubyte.gz
    gpumlp train --resume model.npz --epochs 80 --save model.npz     continue a saved run up to 80 epochs
    gpumlp evaluate model.npz [--data FILE]          test accuracy (the run's own test split by default)
    gpumlp predict model.npz --data FILE [--output predictions.csv]
    gpumlp info                           versions, the backend "auto" picks and why, the device

Exit status: 0 success, 2 usage errors (bad options), 1 anything else, with a one-line message on
standard error (the traceback too with --debug). With --json the last line of standard output is a
JSON object with the results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

from . import data as D
from .backend import cpu_name

# The defaults of `gpumlp train`: the lecture's one-hidden-layer net, tuned on the embedded digits
# (seeds 0..7 of the split: 96.7 % to 98.6 % test accuracy, about 0.3 s of training on 2 CPU cores).
DEFAULTS = {
    "data": "digits", "format": "auto", "labels": None, "label_column": "-1", "delimiter": ",",
    "test_data": None, "test_labels": None, "test_size": 0.2, "validation_split": 0.0,
    "hidden": [128], "activation": "relu", "loss": "cross_entropy", "weight_decay": 1e-4, "bias": False,
    "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": False, "beta1": 0.9, "beta2": 0.999,
    "eps": 1e-8, "decoupled": False, "lr_schedule": "constant", "epochs": 50, "batch_size": 32,
    "early_stopping": False, "n_iter_no_change": None, "tol": 1e-4, "scaling": "standard", "seed": 0,
    "dtype": "float32",
}
# Settings a resumed run keeps: the model's definition, and the seed and fractions that define the
# split (a different split would let test samples into training).
FIXED_ON_RESUME = ("hidden", "activation", "loss", "weight_decay", "bias", "optimizer", "momentum", "nesterov",
                   "beta1", "beta2", "eps", "decoupled", "lr_schedule", "dtype", "scaling", "seed", "test_size",
                   "validation_split")


class UsageError(Exception):
    """Bad combination of options: exit status 2."""


# ---------------------------------------------------------------------------------- argument types
def _positive(kind, allow_zero=False):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else '> 0'}, got {text!r}")
        return v
    parse.__name__ = kind.__name__
    return parse


def _fraction(text, allow_zero=False):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not (0 <= v < 1 if allow_zero else 0 < v < 1):
        raise argparse.ArgumentTypeError(f"must lie in {'[0, 1)' if allow_zero else '(0, 1)'}, got {text!r}")
    return v


def _fraction0(text):
    return _fraction(text, allow_zero=True)


def _hidden(text):
    """'128' or '256,128' (one or more widths)."""
    try:
        sizes = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden sizes must be integers, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes


def _schedule(text):
    """name[:key=value,...], e.g. 'step:step_size=10,gamma=0.5' or 'cosine' (T_max = --epochs)."""
    from .schedules import SCHEDULES

    name, _, rest = text.partition(":")
    if name not in SCHEDULES:
        raise argparse.ArgumentTypeError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    config = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"schedule settings are key=value, got {item!r}")
        try:
            config[key.strip()] = int(value)
        except ValueError:
            try:
                config[key.strip()] = float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"schedule setting {key} must be a number, got {value!r}") \
                    from None
    return {"name": name, "config": config}


# ---------------------------------------------------------------------------------- parser
def _add_common(p):
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default=None,
                   help="array backend (default: auto = CuPy when a CUDA device answers, else NumPy; "
                        "or $GPUMLP_BACKEND)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output, only the results")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _add_data(p, train):
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="'digits' (embedded, the default for train), an IDX file (raw or .gz), a CSV or an "
                        "NPZ (arrays X and y)")
    g.add_argument("--format", choices=D.FORMATS, default=None, help="file format (default: auto, from the "
                   "name or the first bytes)")
    g.add_argument("--labels", default=None, metavar="PATH",
                   help="IDX labels file (found automatically for MNIST's names)")
    g.add_argument("--label-column", default=None, metavar="COL",
                   help="CSV column holding the label: index (negative counts from the end) or header name "
                        + ("(default: -1, the last)" if train else "(default: the training run's, else -1, the last)"))
    g.add_argument("--delimiter", default=None,
                   help="CSV field delimiter (default " + ("','" if train else "the training run's, else ','") + ")")
    if train:
        g.add_argument("--test-data", default=None, metavar="PATH",
                       help="a separate test file (e.g. MNIST's t10k); otherwise a seeded stratified split")
        g.add_argument("--test-labels", default=None, metavar="PATH", help="IDX labels of --test-data")
        g.add_argument("--test-size", type=_fraction, default=None,
                       help="fraction held out for testing when there is no --test-data (default 0.2)")
        g.add_argument("--validation-split", type=_fraction0, default=None,
                       help="fraction of the training split held out for per-epoch validation and early "
                            "stopping (default 0; 0.1 with --early-stopping)")
        g.add_argument("--scaling", choices=D.SCALINGS, default=None,
                       help="feature scaling fitted on the training split and saved with the model: "
                            "standard (mean 0, std 1; default), max (divide by the largest value), none")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gpumlp", description="Multilayer perceptrons with hand-derived backpropagation, on CuPy or NumPy.",
        epilog="Run 'gpumlp train' to train the lecture's net on the embedded digits.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpumlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train and evaluate an MLP",
                       description="Train an MLP and report its test accuracy (or R² for --loss squared). "
                                   "Every option left out takes its default, or with --resume the saved run's.")
    _add_data(t, train=True)
    m = t.add_argument_group("model")
    m.add_argument("--hidden", type=_hidden, nargs="+", default=None, metavar="N",
                   help="hidden layer widths, e.g. --hidden 256 128 (default 128)")
    m.add_argument("--activation", default=None,
                   help="relu (default), leaky_relu, sigmoid, tanh, gelu, softplus, identity; or one per "
                        "hidden layer, comma-separated")
    m.add_argument("--loss", choices=("cross_entropy", "squared"), default=None,
                   help="cross_entropy (classification, default) or squared (regression on the target column)")
    m.add_argument("--weight-decay", type=_positive(float, allow_zero=True), default=None, metavar="LAMBDA",
                   help="λ in J = L + λ/2 Σ‖W‖² (default 1e-4)")
    m.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="add a bias to every layer (default: no, as the lecture's net)")
    m.add_argument("--dtype", choices=("float32", "float64"), default=None, help="default float32")
    o = t.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=("sgd", "adam"), default=None, help="default sgd")
    o.add_argument("--lr", type=_positive(float), default=None, help="learning rate η (default 0.02)")
    o.add_argument("--momentum", type=_fraction0, default=None, help="SGD momentum μ in [0, 1) (default 0.9)")
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    o.add_argument("--beta1", type=_fraction0, default=None, help="Adam β1 (default 0.9)")
    o.add_argument("--beta2", type=_fraction0, default=None, help="Adam β2 (default 0.999)")
    o.add_argument("--eps", type=_positive(float), default=None, help="Adam ε (default 1e-8)")
    o.add_argument("--decoupled", action=argparse.BooleanOptionalAction, default=None,
                   help="AdamW: decoupled weight decay")
    o.add_argument("--lr-schedule", type=_schedule, default=None, metavar="NAME[:K=V,...]",
                   help="constant (default), step:step_size=10,gamma=0.5, exponential:gamma=0.95, "
                        "cosine[:T_max=E,eta_min=0] (T_max defaults to --epochs), invscaling, adaptive")
    o.add_argument("--epochs", type=_positive(int), default=None,
                   help="epochs in all (default 50); with --resume, training continues up to this count")
    o.add_argument("--batch-size", type=_positive(int), default=None, help="default 32")
    o.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="stop when the validation accuracy stops improving and keep the best weights")
    o.add_argument("--n-iter-no-change", type=_positive(int), default=None,
                   help="patience in epochs for early stopping / the convergence rule (default 10)")
    o.add_argument("--tol", type=_positive(float, allow_zero=True), default=None,
                   help="smallest improvement that counts (default 1e-4)")
    o.add_argument("--seed", type=_positive(int, allow_zero=True), default=None,
                   help="seeds the split, the initial weights and the shuffling (default 0)")
    r = t.add_argument_group("output")
    r.add_argument("--save", default=None, metavar="MODEL", help="write the trained model here (.npz)")
    r.add_argument("--checkpoint-every", type=_positive(int), default=None, metavar="K",
                   help="also write --save every K epochs during training")
    r.add_argument("--resume", default=None, metavar="MODEL", help="continue training a saved model")
    r.add_argument("--plot", default=None, metavar="FILE.png",
                   help="write the loss and accuracy curves (needs matplotlib: pip install 'gpumlp[plot]')")
    r.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="auto: a progress bar on a terminal, one line per epoch otherwise")
    _add_common(t)

    e = sub.add_parser("evaluate", help="score a saved model on data",
                       description="Accuracy (or R²) and loss of a saved model. Without --data, on the test "
                                   "split of the run that trained it.")
    e.add_argument("model", metavar="MODEL")
    _add_data(e, train=False)
    _add_common(e)

    pr = sub.add_parser("predict", help="predict with a saved model",
                        description="Predicted labels (or values), one line per sample.")
    pr.add_argument("model", metavar="MODEL")
    _add_data(pr, train=False)
    pr.add_argument("--output", "-o", default=None, metavar="FILE",
                    help="write here instead of standard output (.npy for a NumPy array, else text)")
    pr.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    _add_common(pr)

    i = sub.add_parser("info", help="versions, backend and device")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    sub.add_parser("bench", help="throughput benchmarks (see 'gpumlp bench --help')", add_help=False)
    return parser


# ---------------------------------------------------------------------------------- entry point
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad options
    debug = getattr(args, "debug", False)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "info": cmd_info}[
            args.command](args)
    except UsageError as exc:
        if debug:
            raise
        parser.print_usage(sys.stderr)
        print(f"gpumlp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (gpumlp predict ... | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        hint = ""
        if getattr(args, "checkpoint_every", None) and os.path.exists(args.save):
            hint = f"; continue from the last checkpoint with: gpumlp train --resume {args.save} --save {args.save}"
        print(f"gpumlp {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback: every failure a user can cause lands here
        if debug:
            raise
        print(f"gpumlp {args.command}: error: {_describe(exc, args)}", file=sys.stderr)
        return 1


def _bench(argv):
    try:
        from . import bench
    except ModuleNotFoundError as exc:
        if exc.name != "gpumlp.bench":
            raise
        print("gpumlp bench: error: this installation has no benchmark module (gpumlp.bench)", file=sys.stderr)
        return 1
    return bench.main(argv)


def _is_gpu_oom(exc):
    """CuPy's OutOfMemoryError (or a CUDA allocation failure), recognised without importing CuPy."""
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("cupy") and (cls.__name__ == "OutOfMemoryError"
                                                 or "out of memory" in str(exc).lower()
                                                 or "ALLOC_FAILED" in str(exc)):
            return True
    return False


def _describe(exc, args):
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if _is_gpu_oom(exc):
        bs = getattr(args, "batch_size", None)
        hint = f"a smaller --batch-size (now {bs})" if bs else "a smaller --batch-size"
        return (f"the GPU ran out of memory ({msg}). Try {hint}, less data, or --backend numpy.")
    if isinstance(exc, (ValueError, TypeError, OSError, FloatingPointError, RuntimeError)):
        return msg
    return f"{type(exc).__name__}: {msg}"


# ---------------------------------------------------------------------------------- output helpers
class _Printer:
    """Human output to stdout (nothing with --quiet), then the JSON line last."""

    def __init__(self, args):
        self.quiet = args.quiet

    def say(self, *parts):
        if not self.quiet:
            print(*parts, flush=True)

    def result(self, text):
        print(text, flush=True)


def _json_line(obj):
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v
    return json.dumps({k: clean(v) for k, v in obj.items()})


def _data_settings(args, saved=None):
    """Data options from the command line, else from the saved run (evaluate), else the defaults."""
    saved = saved or {}
    out = {}
    for key in ("data", "format", "labels", "label_column", "delimiter"):
        v = getattr(args, key, None)
        out[key] = v if v is not None else saved.get(key, DEFAULTS[key])
    return out


def _csv_layout(saved):
    """The training run's CSV layout (label column, delimiter): the defaults for another file given
    to evaluate or predict, which has the training file's columns. Not its path, format or labels file."""
    return {k: v for k, v in (saved or {}).items() if k in ("label_column", "delimiter")}


def _label_column(text):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _load_xy(settings, require_labels=True, label_column=True):
    col = _label_column(settings["label_column"]) if label_column else None
    return D.load(settings["data"], format=settings["format"], labels=settings["labels"], label_column=col,
                  delimiter=settings["delimiter"], require_labels=require_labels)


def _abspath(path):
    return path if path is None or (path in D.EMBEDDED and not os.path.exists(path)) else os.path.abspath(path)


# ---------------------------------------------------------------------------------- train
def _train_settings(args, saved):
    """The run's settings: the command line, else the resumed run's, else DEFAULTS."""
    s = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key, None)
        if key == "hidden" and given is not None:
            given = [n for group in given for n in group]
        if given is not None and saved is not None and key in FIXED_ON_RESUME and given != saved.get(key, given):
            raise UsageError(f"--{key.replace('_', '-')} cannot be changed when resuming: the model was "
                             f"trained with {saved[key]!r}")
        s[key] = given if given is not None else (saved.get(key, default) if saved else default)
    if s["early_stopping"] and not s["validation_split"]:
        s["validation_split"] = 0.1
    if s["test_labels"] is not None and s["test_data"] is None:
        raise UsageError("--test-labels needs --test-data")
    if s["optimizer"] == "sgd" and s["nesterov"] and not s["momentum"]:
        raise UsageError("--nesterov needs --momentum > 0")
    for key in ("data", "labels", "test_data", "test_labels"):
        s[key] = _abspath(s[key])
    return s


def _build_model(s, d, q, backend):
    from .mlp import MLP
    from .schedules import make_schedule

    act = s["activation"]
    if "," in act:
        act = [a.strip() for a in act.split(",")]
    sched = s["lr_schedule"]
    if isinstance(sched, str):
        sched = {"name": sched, "config": {}}
    config = dict(sched["config"])
    if sched["name"] == "cosine":
        config.setdefault("T_max", s["epochs"])
    opt = {"momentum": s["momentum"], "nesterov": s["nesterov"]} if s["optimizer"] == "sgd" else \
        {"beta1": s["beta1"], "beta2": s["beta2"], "eps": s["eps"], "decoupled": s["decoupled"]}
    try:
        schedule = make_schedule(sched["name"], **config)
        return MLP((d, *s["hidden"], q), activation=act, loss=s["loss"], weight_decay=s["weight_decay"],
                   bias=s["bias"], dtype=s["dtype"], backend=backend, seed=s["seed"], optimizer=s["optimizer"],
                   lr_schedule=schedule, **opt)
    except (ValueError, TypeError) as exc:
        if "backend" in str(exc) and "cupy" in str(exc):
            raise
        raise UsageError(str(exc)) from None


def _prepare_data(s, model_classes, scaler, dtype):
    """Load, split, encode labels, scale. Returns a dict of host arrays and the fitted pieces."""
    X, y = _load_xy(s)
    classify = s["loss"] == "cross_entropy"
    if classify and y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError(f"the labels of {s['data']} are not whole numbers, so they are not class labels; "
                         f"for regression use --loss squared")
    if s["test_data"] is not None:
        Xte, yte = D.load(s["test_data"], format=s["format"], labels=s["test_labels"],
                          label_column=_label_column(s["label_column"]), delimiter=s["delimiter"])
        if Xte.shape[1:] != X.shape[1:]:
            raise ValueError(f"{s['test_data']} has {Xte.shape[1]} features, {s['data']} has {X.shape[1]}")
        Xtr, ytr = X, y
    else:
        if X.shape[0] < 2:
            raise ValueError(f"{s['data']} holds {X.shape[0]} sample; a train/test split needs at least 2")
        tr, te = D.split_indices(y, s["test_size"], s["seed"], stratify=classify)
        Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    Xva = yva = None
    if s["validation_split"]:
        tr, va = D.split_indices(ytr, s["validation_split"], s["seed"] + 1, stratify=classify)
        Xtr, ytr, Xva, yva = Xtr[tr], ytr[tr], Xtr[va], ytr[va]
    classes = model_classes
    if classify:
        if classes is None:
            classes, _ = D.encode_labels(np.concatenate([ytr, yte] + ([yva] if yva is not None else [])))
        ytr, yte, yva = (None if v is None else _encode(v, classes, what) for v, what in
                         ((ytr, "training"), (yte, "test"), (yva, "validation")))
    else:
        ytr, yte, yva = (None if v is None else v.astype(np.float64) for v in (ytr, yte, yva))
    if scaler is None:
        scaler = D.Scaler(s["scaling"]).fit(Xtr)
    Xtr, Xte = scaler.transform(Xtr, dtype), scaler.transform(Xte, dtype)
    Xva = None if Xva is None else scaler.transform(Xva, dtype)
    return {"Xtr": Xtr, "ytr": ytr, "Xte": Xte, "yte": yte, "Xva": Xva, "yva": yva,
            "classes": classes if classify else None, "scaler": scaler}


def _encode(y, classes, what):
    """Labels -> output indices via the model's classes; unseen labels are an error."""
    y = np.asarray(y)
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    bad = classes[idx] != y
    if bad.any():
        label = y[bad][0].item()
        label = int(label) if float(label).is_integer() else label
        raise ValueError(f"the {what} data holds label {label!r}, which the model does not know "
                         f"(its classes: {_short(classes)})")
    return idx.astype(np.int64)


def _short(a, n=12):
    a = list(np.asarray(a).tolist())
    return str(a if len(a) <= n else a[:n] + ["..."])


def _check_output_directory(option, path):
    """A file the run will write goes into an existing directory: checked before training, not after it."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path}: no such directory {directory}")


def _check_plot_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: pip install 'gpumlp[plot]' "
                           "(or pip install matplotlib)") from None


def cmd_train(args):
    from . import io

    printer = _Printer(args)
    if args.checkpoint_every and not args.save:
        raise UsageError("--checkpoint-every needs --save MODEL")
    if args.plot:
        _check_plot_available()  # before training, not after a long run
    for option, path in (("--save", args.save), ("--plot", args.plot)):
        _check_output_directory(option, path)
    t0 = time.perf_counter()
    model, s, d, backend = _setup_training(args)
    metric = "accuracy" if model.loss == "cross_entropy" else "R²"
    # Data on the device once; each epoch is evaluated on the validation split, else the test split.
    xtr, ytr = backend.asarray(d["Xtr"]), backend.asarray(d["ytr"])
    xte, yte = backend.asarray(d["Xte"]), backend.asarray(d["yte"])
    val = None if d["Xva"] is None else (backend.asarray(d["Xva"]), backend.asarray(d["yva"]))
    n_train, n_test = int(xtr.shape[0]), int(xte.shape[0])
    printer.say(f"gpumlp: {s['data']} ({n_train} train, {n_test} test"
                + (f", {val[0].shape[0]} validation" if val else "") + f" samples, {model.sizes[0]} features"
                + (f", {len(model.classes_)} classes" if model.classes_ is not None else "")
                + f"); net {model.sizes}, {model.backend} on {_device_name(backend)}")
    remaining = s["epochs"] - model.epochs_
    if remaining <= 0:
        printer.say(f"the model has trained {model.epochs_} epochs already (--epochs {s['epochs']}); "
                    f"nothing to train")
    history = model.training_config_["history"]
    eval_name = "val" if val else "test"
    progress = _Progress(args, remaining, s["epochs"], eval_name, metric, n_train)

    def on_epoch(m, record):
        score = record["val_score"] if val else m.score(xte, yte)
        history["test_score"].append(None if val else float(score))
        progress.epoch(record, score)
        if args.checkpoint_every and record["epoch"] % args.checkpoint_every == 0:
            io.save(m, args.save)
        return False

    before, start = model.epochs_, time.perf_counter()
    try:
        if remaining > 0:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is reported
                model.fit(xtr, ytr, epochs=remaining, batch_size=s["batch_size"], lr=s["lr"],
                          validation_data=val, early_stopping=s["early_stopping"],
                          n_iter_no_change=s["n_iter_no_change"], tol=s["tol"], callbacks=[on_epoch])
    finally:
        progress.close()
    backend.synchronize()
    seconds = time.perf_counter() - start
    trained = model.epochs_ - before
    if args.save:
        io.save(model, args.save)
    if args.plot:
        _plot(model, history, metric, eval_name, args.plot)

    test_score = model.score(xte, yte)
    train_loss = model.loss_curve_[-1] if model.loss_curve_ else math.nan
    sps = trained * n_train / seconds if trained and seconds > 0 else 0.0
    stop = model.stop_reason_ if trained else None
    summary = f"test {metric} {test_score:.4f} on {n_test} samples; train loss {train_loss:.4f}; {trained} epochs"
    if model.epochs_ != trained:
        summary += f" ({model.epochs_} in all)"
    summary += f" in {seconds:.2f} s, {sps:,.0f} samples/s on {model.backend}"
    if stop and stop != "epochs":
        best = f", best epoch {model.best_epoch_}" if model.best_epoch_ else ""
        summary += f"; stopped early ({stop}{best})"
    printer.result(summary)
    if args.save:
        printer.say(f"saved the model to {args.save}")
    if args.plot:
        printer.say(f"wrote the curves to {args.plot}")
    if args.json:
        key = "accuracy" if metric == "accuracy" else "r2"
        print(_json_line({
            f"test_{key}": test_score, "test_score": test_score, "metric": key, "train_loss": train_loss,
            "epochs": model.epochs_, "epochs_trained": trained, "stop_reason": stop, "backend": model.backend,
            "device": _device_name(backend), "seconds": seconds, "samples_per_second": sps,
            "total_seconds": time.perf_counter() - t0, "n_train": n_train, "n_test": n_test, "sizes": list(model.sizes), "model": args.save}), flush=True)
    return 0


def _setup_training(args):
    """(model, settings, data, backend): a new model, or the resumed one with its saved settings."""
    from . import io
    from .backend import resolve

    model = saved = None
    if args.resume:
        model = io.load(args.resume, backend=args.backend or "auto")
        saved = model.training_config_
        if saved is None:
            raise ValueError(f"{args.resume} holds no training settings (not saved by 'gpumlp train'); "
                             f"continue it from Python with MLP.fit")
    s = _train_settings(args, saved)
    backend = model._backend if model is not None else resolve(args.backend or "auto")
    d = _prepare_data(s, None if model is None else model.classes_, None if model is None else model.scaler_,
                      np.dtype(s["dtype"]))
    if model is None:
        q = len(d["classes"]) if d["classes"] is not None else (1 if d["ytr"].ndim == 1 else d["ytr"].shape[1])
        model = _build_model(s, d["Xtr"].shape[1], q, backend.name)
        model.scaler_, model.classes_ = d["scaler"], d["classes"]
    elif d["Xtr"].shape[1] != model.sizes[0]:
        raise ValueError(f"the data have {d['Xtr'].shape[1]} features, the resumed model expects {model.sizes[0]}")
    if saved is not None and getattr(model.lr_schedule, "name", None) == "cosine" and s["epochs"] > model.lr_schedule.T_max:
        print(f"gpumlp train: warning: the saved run's cosine schedule ends at epoch {model.lr_schedule.T_max}; "
              f"epochs after it train at its final rate eta_min = {model.lr_schedule.eta_min:g}", file=sys.stderr)
    # What the file records of this run: the settings (for --resume and evaluate) and the per-epoch
    # test scores (for --plot after a resume).
    model.training_config_ = dict(s, history=(saved or {}).get("history", {"test_score": []}))
    return model, s, d, backend


class _Progress:
    """Per-epoch progress: a tqdm bar on standard error, one line per epoch on standard output, or
    nothing (--quiet, --progress none). "auto" is the bar when standard error is a terminal."""

    def __init__(self, args, remaining, target, eval_name, metric, n_train):
        mode = "none" if args.quiet else args.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.bar = None
        if mode == "bar" and remaining > 0:
            try:
                from tqdm import tqdm
            except ImportError:
                mode = "lines"
            else:
                self.bar = tqdm(total=remaining, unit="epoch", desc="train", file=sys.stderr, dynamic_ncols=True)
        self.mode, self.target, self.n_train = mode, target, n_train
        self.label = f"{eval_name}_{'acc' if metric == 'accuracy' else 'r2'}"
        self.last = time.perf_counter()

    def epoch(self, record, score):
        now = time.perf_counter()
        rate = self.n_train / max(now - self.last, 1e-12)  # samples/s over the epoch and its evaluation
        self.last = now
        if self.mode == "lines":
            print(f"epoch {record['epoch']:{len(str(self.target))}d}/{self.target}  loss {record['loss']:.4f}  "
                  f"{self.label} {score:.4f}  lr {record['lr']:.3g}  {rate:,.0f} samples/s", flush=True)
        elif self.bar is not None:
            self.bar.set_postfix({"loss": f"{record['loss']:.4f}", self.label: f"{score:.4f}",
                                  "samples/s": f"{rate:,.0f}"}, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _plot(model, history, metric, eval_name, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(model.loss_curve_) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, model.loss_curve_, label="training J")
    if model.validation_loss_curve_:
        ax1.plot(epochs[-len(model.validation_loss_curve_):], model.validation_loss_curve_, label="validation J")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log" if min(model.loss_curve_, default=1) > 0 else "linear")
    ax1.legend()
    if eval_name == "val":
        scores = model.validation_curve_
    else:
        scores = [math.nan if v is None else v for v in history.get("test_score", [])]
    if scores:
        ax2.plot(epochs[-len(scores):], scores, label=f"{eval_name} {metric}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric)
    ax2.legend()
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(f"gpumlp: net {model.sizes}, {model.epochs_} epochs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------- evaluate / predict
def _load_model(args):
    from . import io

    return io.load(args.model, backend=args.backend or "auto")


def _features(model, X):
    dtype = model.dtype
    if model.scaler_ is not None:
        return model.scaler_.transform(X, dtype)
    return np.asarray(X).astype(dtype)


def cmd_evaluate(args):
    model = _load_model(args)
    saved = model.training_config_ or {}
    printer = _Printer(args)
    if args.data is None and saved:
        s = dict(DEFAULTS, **saved)
        if any(getattr(args, k) is not None for k in ("format", "labels", "label_column", "delimiter")):
            raise UsageError("data options need --data")
        d = _prepare_data(s, model.classes_, model.scaler_, model.dtype)
        X, y, source = d["Xte"], d["yte"], f"the test split of {s['data']}"
    else:
        settings = _data_settings(args, saved if args.data is None else _csv_layout(saved))
        if args.data is None:
            raise UsageError("this model holds no training settings; give --data")
        X, y = _load_xy(settings)
        if model.classes_ is not None:
            y = _encode(y, model.classes_, "evaluation")
        X, source = _features(model, X), settings["data"]
    score = model.score(X, y)
    fw_loss = model._objective(model._device_X(X), model._device_y(y, X.shape[0]))
    metric = "accuracy" if model.loss == "cross_entropy" else "R²"
    printer.result(f"{metric} {score:.4f}, loss {fw_loss:.4f} on {X.shape[0]} samples of {source}")
    if args.json:
        key = "accuracy" if metric == "accuracy" else "r2"
        print(_json_line({key: score, "score": score, "metric": key, "loss": fw_loss, "n_samples": int(X.shape[0]),
                          "backend": model.backend, "model": args.model}), flush=True)
    return 0


def cmd_predict(args):
    model = _load_model(args)
    if args.data is None:
        raise UsageError("predict needs --data FILE (or --data digits)")
    settings = _data_settings(args, _csv_layout(model.training_config_))
    X = _predict_features(settings, args.label_column, model.sizes[0])
    if args.proba:
        out = model.predict_proba(_features(model, X))
    else:
        out = model.predict(_features(model, X))
        if model.classes_ is not None:
            out = model.classes_[out]
    if args.output:
        if args.output.endswith(".npy"):
            from .io import _atomic_write

            _atomic_write(args.output, lambda f: np.save(f, out, allow_pickle=False))
        else:
            from .io import _atomic_write

            _atomic_write(args.output, lambda f: np.savetxt(f, out, fmt=_fmt(out), delimiter=","))
        if not args.quiet:
            print(f"wrote {X.shape[0]} predictions to {args.output}", file=sys.stderr)
    else:
        np.savetxt(sys.stdout, out, fmt=_fmt(out), delimiter=",")
    if args.json:
        print(_json_line({"n_samples": int(X.shape[0]), "output": args.output, "backend": model.backend}))
    return 0


def _predict_features(settings, label_column, d):
    """X for prediction: a CSV's label column is dropped when it has one (d + 1 columns), or when
    --label-column names it; other formats ignore their labels."""
    path, fmt = settings["data"], settings["format"]
    is_csv = fmt == "csv" or (fmt == "auto" and os.path.exists(path) and D.detect_format(path) == "csv")
    if not is_csv:
        return _load_xy(settings, require_labels=False)[0]
    if label_column is not None:
        return _load_xy(settings)[0]
    X, _ = _load_xy(settings, require_labels=False, label_column=False)
    if X.shape[1] == d + 1:  # the label column (by index or header name) goes, as in training
        return _load_xy(settings)[0]
    if X.shape[1] != d:
        raise ValueError(f"{path} has {X.shape[1]} columns; the model expects {d} features "
                         f"(or {d + 1} columns with a label column)")
    return X


def _fmt(a):
    a = np.asarray(a)
    return "%d" if a.dtype.kind in "biu" or (a.dtype.kind == "f" and np.all(a == np.round(a))
                                            and a.ndim == 1 and np.abs(a).max(initial=0) < 2**53) else "%.7g"


# ---------------------------------------------------------------------------------- info
def cmd_info(args):
    from . import __version__
    from .backend import ENV_VAR, resolve

    info = {"gpumlp": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "cupy": None, "cuda_runtime": None, "cuda_driver": None}
    try:
        import cupy

        info["cupy"] = cupy.__version__
        try:
            info["cuda_runtime"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
            driver = cupy.cuda.runtime.driverGetVersion()
            info["cuda_driver"] = _cuda_version(driver) if driver else "none"
        except Exception as exc:  # no driver
            info["cuda_driver"] = f"unavailable ({' '.join(str(exc).split())})"
    except Exception as exc:
        info["cupy"] = f"not importable ({type(exc).__name__})"
    try:
        b = resolve("auto")
        info["auto_backend"], info["reason"] = b.name, b.reason
    except (ValueError, RuntimeError) as exc:
        info["auto_backend"], info["reason"] = None, str(exc)
        b = None
    info["env"] = os.environ.get(ENV_VAR)
    if b is not None and b.is_gpu:
        cupy = b.xp
        dev = cupy.cuda.Device()
        info["device"] = b.device_name()
        free, total = cupy.cuda.runtime.memGetInfo()
        info["device_memory_gib"] = round(total / 2**30, 2)
        info["device_memory_free_gib"] = round(free / 2**30, 2)
        info["compute_capability"] = dev.compute_capability
    else:
        info["device"] = cpu_name()
        info["device_memory_gib"] = _host_memory_gib()
        info["cpu_count"] = os.cpu_count()
    if args.json:
        print(_json_line(info))
        return 0
    print(f"gpumlp {info['gpumlp']}  (Python {info['python']})")
    print(f"NumPy  {info['numpy']}")
    print(f"CuPy   {info['cupy'] or 'not installed'}")
    if info["cuda_runtime"] or info["cuda_driver"]:
        print(f"CUDA   runtime {info['cuda_runtime']}, driver {info['cuda_driver']}")
    src = f" (${ENV_VAR}={info['env']})" if info["env"] else ""
    reason = info["reason"].removeprefix("NumPy chosen: ")
    print(f"backend 'auto' picks {info['auto_backend']}{src}: {reason}")
    mem = f"{info['device_memory_gib']} GiB" if info["device_memory_gib"] else "memory unknown"
    extra = f", {info.get('cpu_count')} CPU cores" if info.get("cpu_count") else \
        f", {info.get('device_memory_free_gib')} GiB free, compute capability {info.get('compute_capability')}"
    print(f"device: {info['device']} ({mem}{extra})")
    return 0


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) and v > 0 else str(v)


def _device_name(backend):
    return backend.device_name()


def _host_memory_gib():
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
    except (ValueError, OSError, AttributeError):
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
