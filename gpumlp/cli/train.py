"""``gpumlp train``: build or resume a model, prepare the data, train, report, save."""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from .. import io
from ..backend import resolve
from ..mlp import MLP
from ..pipeline import load
from ..schedules import make_schedule
from .parser import UsageError
from .report import Printer, Progress, json_line, plot
from .settings import prepare, train_settings


def build_model(s, d, q, backend):
    """A new MLP from the run's settings (d inputs, q outputs) on ``backend`` (a resolved name)."""
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
    except (ValueError, TypeError) as exc:  # the settings' values; the backend is resolved already
        raise UsageError(str(exc)) from None


def check_output_directory(option, path):
    """A file the run will write goes into an existing directory: checked before training, not after it."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path}: no such directory {directory}")


def check_plot_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: pip install 'gpumlp[plot]' "
                           "(or pip install matplotlib)") from None


def cmd_train(args):
    printer = Printer(args)
    if args.checkpoint_every and not args.save:
        raise UsageError("--checkpoint-every needs --save MODEL")
    if args.plot:
        check_plot_available()  # before training, not after a long run
    for option, path in (("--save", args.save), ("--plot", args.plot)):
        check_output_directory(option, path)
    t0 = time.perf_counter()
    model, s, d = setup_training(args)
    backend = model.array_backend
    metric = "accuracy" if model.loss == "cross_entropy" else "R²"
    # Data on the device once; each epoch is evaluated on the validation split, else the test split.
    xtr, ytr = backend.asarray(d.X_train), backend.asarray(d.y_train)
    xte, yte = backend.asarray(d.X_test), backend.asarray(d.y_test)
    val = None if d.X_val is None else (backend.asarray(d.X_val), backend.asarray(d.y_val))
    n_train, n_test = int(xtr.shape[0]), int(xte.shape[0])
    printer.say(f"gpumlp: {s['data']} ({n_train} train, {n_test} test"
                + (f", {val[0].shape[0]} validation" if val else "") + f" samples, {model.sizes[0]} features"
                + (f", {len(model.classes_)} classes" if model.classes_ is not None else "")
                + f"); net {model.sizes}, {model.backend} on {backend.device_name()}")
    remaining = s["epochs"] - model.epochs_
    if remaining <= 0:
        printer.say(f"the model has trained {model.epochs_} epochs already (--epochs {s['epochs']}); "
                    f"nothing to train")
    history = model.training_config_["history"]
    eval_name = "val" if val else "test"
    progress = Progress(args, remaining, s["epochs"], eval_name, metric, n_train)

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
        plot(model, history, metric, eval_name, args.plot)

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
        print(json_line({
            f"test_{key}": test_score, "test_score": test_score, "metric": key, "train_loss": train_loss,
            "epochs": model.epochs_, "epochs_trained": trained, "stop_reason": stop, "backend": model.backend,
            "device": backend.device_name(), "seconds": seconds, "samples_per_second": sps,
            "total_seconds": time.perf_counter() - t0, "n_train": n_train, "n_test": n_test,
            "sizes": list(model.sizes), "model": args.save}), flush=True)
    return 0


def setup_training(args):
    """(model, settings, prepared data): a new model, or the resumed one with its saved settings."""
    model = saved = None
    if args.resume:
        model = load(args.resume, backend=args.backend or "auto", model_only=True)
        saved = model.training_config_
        if saved is None:
            raise ValueError(f"{args.resume} holds no training settings (not saved by 'gpumlp train'); "
                             f"continue it from Python with MLP.fit")
    s = train_settings(args, saved)
    backend = model.array_backend if model is not None else resolve(args.backend or "auto")
    d = prepare(s, None if model is None else model.classes_, None if model is None else model.scaler_)
    if model is None:
        q = len(d.classes) if d.classes is not None else (1 if d.y_train.ndim == 1 else d.y_train.shape[1])
        model = build_model(s, d.X_train.shape[1], q, backend.name)
        model.scaler_, model.classes_ = d.scaler, d.classes
    elif d.X_train.shape[1] != model.sizes[0]:
        raise ValueError(f"the data have {d.X_train.shape[1]} features, the resumed model expects {model.sizes[0]}")
    schedule = model.lr_schedule
    if saved is not None and schedule.name == "cosine" and s["epochs"] > schedule.T_max:
        print(f"gpumlp train: warning: the saved run's cosine schedule ends at epoch {schedule.T_max}; "
              f"epochs after it train at its final rate eta_min = {schedule.eta_min:g}", file=sys.stderr)
    # What the file records of this run: the settings (for --resume and evaluate) and the per-epoch
    # test scores (for --plot after a resume).
    model.training_config_ = dict(s, history=(saved or {}).get("history", {"test_score": []}))
    return model, s, d
