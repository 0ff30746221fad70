"""What the command line prints: human lines, the progress bar, the JSON result line, the plot and
the one-line error messages."""
from __future__ import annotations

import json
import math
import sys
import time

import numpy as np

from ..backend import is_gpu_out_of_memory


class Printer:
    """Human output to stdout (nothing with --quiet), then the JSON line last."""

    def __init__(self, args):
        self.quiet = args.quiet

    def say(self, *parts):
        if not self.quiet:
            print(*parts, flush=True)

    def result(self, text):
        print(text, flush=True)


def json_line(obj):
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v
    return json.dumps({k: clean(v) for k, v in obj.items()})


def describe(exc, args):
    """The one-line message for an error that ends a command (a hint added for GPU out-of-memory)."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if is_gpu_out_of_memory(exc):
        bs = getattr(args, "batch_size", None)
        hint = f"a smaller --batch-size (now {bs})" if bs else "a smaller --batch-size"
        return (f"the GPU ran out of memory ({msg}). Try {hint}, less data, or --backend numpy.")
    if isinstance(exc, (ValueError, TypeError, OSError, FloatingPointError, RuntimeError)):
        return msg
    return f"{type(exc).__name__}: {msg}"


class Progress:
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


def plot(model, history, metric, eval_name, path):
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

