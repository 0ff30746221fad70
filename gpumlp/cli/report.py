"""What the command line prints: human lines, the progress bar, the JSON result line, the plot and
the one-line error messages."""
from __future__ import annotations

import json
import math
import os
import shutil
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


def warn(command, text):
    """A warning on standard error, shown even with --quiet (it says something went otherwise than asked)."""
    print(f"gpumlp {command}: warning: {text}", file=sys.stderr, flush=True)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was done about it (the checkpoint written, how to continue)."""


def missing_extra(what, module, extra):
    """The error for an optional dependency that is not installed: what needs it and how to install it."""
    return RuntimeError(f'{what} needs {module}, which is not installed: pip install "gpumlp[{extra}]" '
                        f"(or pip install {module})")


def describe(exc, args):
    """The one-line message for an error that ends a command (a hint added for GPU out-of-memory).
    An operating-system error reads "file: what went wrong", without its errno, and a temporary file's
    name (a save's, beside the target) is never shown."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if is_gpu_out_of_memory(exc):
        bs = getattr(args, "batch_size", None)
        hint = f"a smaller --batch-size (now {bs})" if bs else "a smaller --batch-size"
        return (f"the GPU ran out of memory ({msg}). Try {hint}, less data, or --backend numpy.")
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename
        if isinstance(name, str) and os.path.basename(name).startswith(".") and name.endswith(".tmp"):
            name = os.path.dirname(name) or "."
        what = exc.strerror[:1].lower() + exc.strerror[1:]
        return f"{name}: {what}" if name else what
    if isinstance(exc, (ValueError, TypeError, OSError, FloatingPointError, RuntimeError)):
        return msg
    return f"{type(exc).__name__}: {msg}"


def _short_number(v):
    return "nan" if v is None or not math.isfinite(v) else f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"


class Progress:
    """Training progress: a tqdm bar on standard error that moves within each epoch (``step``, the
    trainer's ``on_step``), one line per epoch on standard output, or nothing (--quiet, --progress
    none). "auto" is the bar when standard error is a terminal. Per epoch: the training objective J
    (mean over the epoch's steps) and, with a validation split, the validation data loss L and score;
    never the test score, which is reported once, at the end."""

    WIDTH = 100  # at most; narrower terminals get their own width (readable down to 60 columns)

    def __init__(self, args, done, target, has_val, metric, n_train):
        mode = "none" if args.quiet else args.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.bar = None
        self.done, self.target, self.n_train, self.has_val = done, target, n_train, has_val
        self.metric = "acc" if metric == "accuracy" else "R²"
        if mode == "bar" and target > done:
            try:
                from tqdm import tqdm
            except ImportError:
                mode = "lines"
            else:
                width = min(shutil.get_terminal_size((80, 24)).columns, self.WIDTH)
                self.bar = tqdm(total=target - done, desc=f"epoch {done + 1}/{target}", file=sys.stderr, ncols=width,
                                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}", leave=True)
        self.mode = mode
        self.last = time.perf_counter()
        self.epoch_now = done

    def step(self, k, n_steps):
        """Within an epoch (host counters only): the bar moves by the fraction of the epoch's steps."""
        if self.bar is not None:
            self.bar.update(self.epoch_now - self.done + k / n_steps - self.bar.n)

    def epoch(self, record, val_L):
        now = time.perf_counter()
        rate = self.n_train / max(now - self.last, 1e-12)  # samples/s over the epoch and its evaluation
        self.last = now
        e = record["epoch"]
        self.epoch_now = e
        val = f"  val L {_short_number(val_L)}  val {self.metric} {record['val_score']:.4f}" if self.has_val else ""
        if self.mode == "lines":
            print(f"epoch {e:{len(str(self.target))}d}/{self.target}  train J {_short_number(record['loss'])}{val}  "
                  f"lr {record['lr']:.3g}  {rate:,.0f} samples/s", flush=True)
        elif self.bar is not None:
            short = f" val_{'acc' if self.metric == 'acc' else 'r2'} {record['val_score']:.4f}" if self.has_val else ""
            self.bar.set_description_str(f"epoch {e}/{self.target} J {_short_number(record['loss'])}{short}",
                                         refresh=False)
            self.bar.update(e - self.done - self.bar.n)

    def close(self, stopped=None):
        """End the bar: full at the epoch training stopped at (``stopped``: a few words why), so that
        an early stop leaves a finished bar, not one stuck part of the way."""
        if self.bar is None:
            return
        if stopped:
            self.bar.total = max(self.bar.n, 1e-9)
            self.bar.set_description_str(f"epoch {self.epoch_now}/{self.target} {stopped}", refresh=False)
        self.bar.refresh()
        self.bar.close()
        self.bar = None


def optimizer_words(s):
    """The optimizer and its settings in a few words, as given to the run."""
    if s["optimizer"] == "sgd":
        extra = f", momentum {s['momentum']:g}" + (" Nesterov" if s["nesterov"] else "") if s["momentum"] else ""
    else:
        extra = f", β = ({s['beta1']:g}, {s['beta2']:g})" + (", decoupled" if s.get("decoupled") else "")
    schedule = s["lr_schedule"]
    schedule = schedule if isinstance(schedule, str) else schedule.get("name", "")
    return f"{s['optimizer']} (lr {s['lr']:g}{extra}" + ("" if schedule in ("", "constant") else f", {schedule}") + ")"


def best_epoch(model):
    """(epoch, what it is best at) to mark on the curves: early stopping's best epoch, else the best
    validation score's, else the lowest training J's; None before any epoch."""
    if model.best_epoch_:
        return model.best_epoch_, "best epoch (monitored)"
    val = model.validation_curve_
    if val and any(math.isfinite(v) for v in val):
        offset = len(model.loss_curve_) - len(val)
        return offset + int(np.nanargmax(np.asarray(val, float))) + 1, "best validation score"
    curve = np.asarray(model.loss_curve_, float)
    if curve.size and np.isfinite(curve).any():
        return int(np.nanargmin(curve)) + 1, "lowest training J"
    return None


def curves_figure(model, s, metric, test_score=None):
    """The training curves as a matplotlib figure: training J and validation J per epoch (and the
    validation score), the best epoch marked, titled with the data, the net and the optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(model.loss_curve_) + 1)
    has_val = bool(model.validation_curve_)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 6, 4), squeeze=False)
    ax1 = axes[0, 0]
    ax1.plot(epochs, model.loss_curve_, label="training J (mean over the epoch's steps)")
    if model.validation_loss_curve_:
        ax1.plot(epochs[-len(model.validation_loss_curve_):], model.validation_loss_curve_, label="validation J")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("objective J = L + λ/2 Σ‖W‖²")
    ax1.set_yscale("log" if min(model.loss_curve_, default=1) > 0 else "linear")
    if has_val:
        ax2 = axes[0, 1]
        ax2.plot(epochs[-len(model.validation_curve_):], model.validation_curve_, label=f"validation {metric}")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(metric)
    best = best_epoch(model)
    for ax in axes[0]:
        if best is not None:
            ax.axvline(best[0], color="grey", linestyle="--", linewidth=1, label=f"{best[1]}: {best[0]}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    data = s["data"] if s["data"] in ("digits",) else os.path.basename(s["data"])
    act = model.activation if isinstance(model.activation, str) else ",".join(model.activation)
    title = f"{data}: net {'-'.join(map(str, model.sizes))} ({act}), {optimizer_words(s)}, {model.epochs_} epochs"
    if test_score is not None:
        title += f"\ntest {metric} {test_score:.4f} (once, after training)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot(model, s, metric, path, test_score=None):
    import matplotlib.pyplot as plt

    fig = curves_figure(model, s, metric, test_score)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
