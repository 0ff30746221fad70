"""The command line's parser: its options, their types and defaults (``gpumlp <command> --help``)."""
from __future__ import annotations

import argparse
import math

from .. import data as D

# The defaults of `gpumlp train`: the lecture's one-hidden-layer net, tuned on the embedded digits
# (seeds 0..7 of the split: 96.7 % to 98.6 % test accuracy, about 0.3 s of training on 2 CPU cores).
DEFAULTS = {
    "data": "digits", "format": "auto", "labels": None, "label_column": "-1", "delimiter": None,
    "header": None, "missing": "error",
    "test_data": None, "test_labels": None, "test_size": 0.2, "validation_split": 0.0,
    "hidden": [128], "activation": "relu", "loss": "cross_entropy", "weight_decay": 1e-4, "bias": False,
    "optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": False, "beta1": 0.9, "beta2": 0.999,
    "eps": 1e-8, "decoupled": False, "lr_schedule": "constant", "epochs": 50, "batch_size": 32,
    "early_stopping": False, "n_iter_no_change": None, "tol": 1e-4, "scaling": "standard",
    "target_scaling": "standard", "seed": 0, "dtype": "float32",
    "stream": False, "memory_budget": None, "shuffle_buffer": None, "sharded": False,
}

# What a run saved before a setting existed did: the value its settings imply where they lack the key.
# (gpumlp 0.1 read "," unless told otherwise and saved it; it never scaled targets nor imputed.)
SAVED_BEFORE = {"header": None, "missing": "error", "target_scaling": "none"}

# Settings a resumed run keeps: the model's definition, and the seed and fractions that define the
# split (a different split would let test samples into training), and the preprocessing it was fitted with.
FIXED_ON_RESUME = ("hidden", "activation", "loss", "weight_decay", "bias", "optimizer", "momentum", "nesterov",
                   "beta1", "beta2", "eps", "decoupled", "lr_schedule", "dtype", "scaling", "seed", "test_size",
                   "validation_split", "missing", "target_scaling", "stream")

# The options that only one optimizer reads: given with another, they would be silently ignored.
OPTIMIZER_OPTIONS = {"sgd": ("momentum", "nesterov"), "adam": ("beta1", "beta2", "eps", "decoupled")}



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


def _delimiter(text):
    """One character, or "tab" / "\\t" (as typed on a shell) for a tab."""
    try:
        return D.csv_delimiter("data.csv", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _memory_budget(text):
    """'256MiB', '2GiB' (``gpumlp.data.parse_size``): at least 32 MiB."""
    try:
        n = D.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if n < 32 * 2**20:
        raise argparse.ArgumentTypeError(f"must be at least 32MiB (the reader, the shuffle buffer and the batches "
                                         f"share it), got {text!r}")
    return n


def _add_stream(p, train):
    """--stream and its memory options (train, evaluate, predict)."""
    g = p.add_argument_group("streaming (data larger than memory)")
    g.add_argument("--stream", action="store_true", default=None,
                   help="read --data a chunk at a time instead of loading it: a Parquet file or directory, an "
                        ".npy features file with --labels y.npy, or a CSV/TSV file" + (
                            " (one statistics pass, then each epoch's chunks in a seeded order through a "
                            "shuffle buffer)" if train else ""))
    g.add_argument("--memory-budget", type=_memory_budget, default=None, metavar="SIZE",
                   help="memory for the reader, the shuffle buffer and the batches, e.g. 256MiB, 2GiB "
                        "(default 512MiB, at least 32MiB)")
    if train:
        g.add_argument("--shuffle-buffer", type=_positive(int), default=None, metavar="ROWS",
                       help="rows shuffled together (default: what the memory budget allows)")
        g.add_argument("--sharded", action="store_true", default=None,
                       help="with --stream --distributed: each rank reads and trains on its own chunks, never "
                            "the whole file")


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
    from ..schedules import SCHEDULES

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


def _add_data(p, train, missing=D.MISSING):
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
    g.add_argument("--delimiter", type=_delimiter, default=None,
                   help="CSV field delimiter: one character, or 'tab' (default " + ("" if train else "the training "
                        "run's, else ") + "a tab for .tsv files and ',' for others)")
    g.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="the CSV's first line names the columns (--header) or is data (--no-header); default: "
                        "detected (a line of names over numbers, or one that counts the columns 0, 1, 2, ...)")
    g.add_argument("--missing", choices=missing, default=None,
                   help="CSV fields that are empty, NA, NaN, N/A or ?: " + (
                       "error (default: the first one's row and column), drop (the rows holding them), impute "
                       "(each feature's mean over the training split, saved with the model)" if train else
                       "error, " + ("drop (the rows), " if "drop" in missing else "") + "impute (with the training "
                       "means; a model trained with --missing impute does so by default)"))
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
        g.add_argument("--target-scaling", choices=D.TARGET_SCALINGS, default=None,
                       help="--loss squared: standardise the targets for training (fitted on the training "
                            "split, saved with the model, undone at predict; default standard) or none")


def _add_model(p):
    """The model's options (train, and a new net for graph and check-gradients)."""
    m = p.add_argument_group("model")
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gpumlp", description="Multilayer perceptrons with hand-derived backpropagation, on CuPy or NumPy.",
        epilog="Run 'gpumlp train' to train the lecture's net on the embedded digits.")
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"gpumlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_info(sub)
    _add_graph(sub)
    _add_check_gradients(sub)
    _add_export(sub)
    sub.add_parser("bench", help="throughput benchmarks (see 'gpumlp bench --help')", add_help=False)
    return parser


def _add_train(sub):
    t = sub.add_parser("train", help="train and evaluate an MLP",
                       description="Train an MLP and report its test accuracy (or R² for --loss squared). "
                                   "Every option left out takes its default, or with --resume the saved run's.")
    _add_data(t, train=True)
    _add_model(t)
    _add_optimisation(t)
    _add_output(t)
    _add_stream(t, train=True)
    t.add_argument("--distributed", choices=("mpi", "nccl", "auto"), default=None,
                   help="data-parallel training over the ranks of an MPI job (mpiexec -n 4 gpumlp train "
                        "--distributed mpi ...): mpi, nccl (one GPU per rank) or auto; --batch-size is the "
                        "global batch, rank 0 alone prints and writes --json, --save and --plot, and Ctrl-C "
                        "ends the whole job (resume from the last --checkpoint-every file)")
    _add_common(t)


def _add_optimisation(t):
    o = t.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=("sgd", "adam", "lbfgs"), default=None,
                   help="default sgd; lbfgs: full-batch L-BFGS (needs SciPy), --epochs its most iterations, "
                        "--tol its gradient tolerance")
    o.add_argument("--lr", type=_positive(float), default=None, help="learning rate η (default 0.02)")
    o.add_argument("--momentum", type=_fraction0, default=None,
                   help="SGD momentum μ in [0, 1) (default 0.9; sgd only)")
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (sgd only)")
    o.add_argument("--beta1", type=_fraction0, default=None, help="Adam β1 (default 0.9; adam only)")
    o.add_argument("--beta2", type=_fraction0, default=None, help="Adam β2 (default 0.999; adam only)")
    o.add_argument("--eps", type=_positive(float), default=None, help="Adam ε (default 1e-8; adam only)")
    o.add_argument("--decoupled", action=argparse.BooleanOptionalAction, default=None,
                   help="AdamW: decoupled weight decay (adam only)")
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


def _add_output(t):
    r = t.add_argument_group("output")
    r.add_argument("--save", default=None, metavar="MODEL",
                   help="write the trained model here (.npz); Ctrl-C writes the last finished epoch's checkpoint")
    r.add_argument("--checkpoint-every", type=_positive(int), default=None, metavar="K",
                   help="also write --save every K epochs during training")
    r.add_argument("--resume", default=None, metavar="MODEL", help="continue training a saved model")
    r.add_argument("--plot", default=None, metavar="FILE.png",
                   help='write the loss and validation curves (needs matplotlib: pip install "gpumlp[plot]")')
    r.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="auto: a progress bar on a terminal, one line per epoch otherwise (train J: the "
                        "objective L + λ/2‖W‖² averaged over the epoch's steps; val L, val acc: the "
                        "validation data loss and score)")


def _add_evaluate(sub):
    e = sub.add_parser("evaluate", help="score a saved model on data",
                       description="Accuracy (or R²) and loss of a saved model. Without --data, on the test "
                                   "split of the run that trained it.")
    e.add_argument("model", metavar="MODEL")
    _add_data(e, train=False)
    _add_stream(e, train=False)
    _add_common(e)


def _add_predict(sub):
    pr = sub.add_parser("predict", help="predict with a saved model",
                        description="Predicted labels (or values), one line per sample.")
    pr.add_argument("model", metavar="MODEL")
    _add_data(pr, train=False, missing=("error", "impute"))
    pr.add_argument("--output", "-o", default=None, metavar="FILE",
                    help="write here instead of standard output (.npy for a NumPy array, .parquet for a Parquet "
                         "file, else text)")
    pr.add_argument("--proba", action="store_true", help="class probabilities instead of labels")
    _add_stream(pr, train=False)
    _add_common(pr)


def _add_info(sub):
    i = sub.add_parser("info", help="versions, backend and device")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _add_graph(sub):
    g = sub.add_parser("graph", help="draw the lecture's computational graph of a model, with its gradients",
                       description="The computational graph of forward propagation as the lecture draws it "
                                   "(variables as boxes, operators as circles), every tensor's shape, and the "
                                   "backward pass's gradients beside it with what computes them. Of a saved MODEL, "
                                   "or of the net the model options describe (default: gpumlp train's net on the "
                                   "digits, 64-128-10).")
    g.add_argument("model", nargs="?", default=None, metavar="MODEL", help="a saved model (.npz)")
    _add_model(g)
    n = g.add_argument_group("a new net")
    n.add_argument("--inputs", type=_positive(int), default=None, metavar="D", help="input features (default 64)")
    n.add_argument("--outputs", type=_positive(int), default=None, metavar="Q",
                   help="outputs: classes, or regression targets (default 10)")
    r = g.add_argument_group("output")
    r.add_argument("--batch-size", type=_positive(int), default=None, metavar="B",
                   help="the batch size of the shapes (default: the symbol B)")
    r.add_argument("--output", "-o", default=None, metavar="FILE",
                   help="write here: .dot or .gv (Graphviz DOT), .svg, .png (needs matplotlib: pip install "
                        '"gpumlp[plot]"); default: standard output')
    r.add_argument("--format", choices=("dot", "svg", "png"), default=None,
                   help="the output format (default: from --output's suffix, else dot)")
    g.add_argument("--quiet", "-q", action="store_true", help="no message on standard error")
    g.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _add_export(sub):
    x = sub.add_parser("export", help="write a saved model as one ONNX file (onnxruntime, Triton, a browser)",
                       description="Write a saved model as an ONNX graph (gpumlp.to_onnx): for a file that gpumlp train "
                                   "saved, the whole pipeline (imputation, scaling, the MLP, the label names or the "
                                   "targets' units), with outputs label and probabilities (classifiers) or predictions "
                                   '(regressors). Needs onnx: pip install "gpumlp[onnx]".')
    x.add_argument("model", metavar="MODEL", help="a saved model (.npz)")
    x.add_argument("--output", "-o", default=None, metavar="FILE.onnx",
                   help="where to write it (default: MODEL with the suffix .onnx)")
    x.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="the graph's input and arithmetic (default float32, whatever the model's own dtype)")
    x.add_argument("--opset", type=_positive(int), default=None, metavar="N",
                   help="the ONNX opset (default 20, which onnxruntime loads since 1.17; 13 at least)")
    x.add_argument("--quiet", "-q", action="store_true", help="no message on standard error")
    x.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _add_check_gradients(sub):
    c = sub.add_parser("check-gradients", help="check every gradient of backpropagation against finite differences",
                       description="Compare every gradient of the backward pass (∂J/∂o, ∂J/∂h, ∂J/∂z, ∂J/∂W, ∂J/∂b "
                                   "per layer) and of the training step with central finite differences of J, in "
                                   "float64 (gpumlp.check_gradients), on a few rows of data: of a saved MODEL on its "
                                   "training split (or on --data), or of a new net built from the same options as "
                                   "'gpumlp train' on its data. Exit status 1 when a gradient disagrees.")
    c.add_argument("model", nargs="?", default=None, metavar="MODEL", help="a saved model (.npz)")
    _add_data(c, train=True)
    _add_model(c)
    k = c.add_argument_group("the check")
    k.add_argument("--rows", type=_positive(int), default=16, metavar="N",
                   help="rows of the data to check on, a seeded sample (default 16); every entry costs two "
                        "forward passes over them")
    k.add_argument("--max-entries", type=_positive(int), default=1000, metavar="N",
                   help="entries compared per tensor at most, a seeded sample of larger ones (default 1000)")
    k.add_argument("--threshold", type=_positive(float), default=1e-6,
                   help="the largest relative error ‖fd − g‖/‖g‖ that passes (default 1e-6)")
    k.add_argument("--fd-eps", type=_positive(float), default=1e-6, metavar="EPS",
                   help="the step ε of the central differences (default 1e-6)")
    k.add_argument("--seed", type=_positive(int, allow_zero=True), default=None,
                   help="seeds a new net's weights and data split, and the rows and entries checked (default 0)")
    _add_common(c)
