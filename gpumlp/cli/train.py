"""``gpumlp train``: build or resume a model, prepare the data, train, report, save.

The run is a ``gpumlp.Pipeline``: the MLP and the preprocessing fitted on the training split
(imputer, scaler, the labels, the targets' scaling, the header's names), saved together so that
``gpumlp predict`` and ``gpumlp.load(path).predict(X)`` read raw data as this run did. The model file
also records the run's settings and a digest of the data it was trained on."""
from __future__ import annotations

import math
import os
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import numpy as np

from .. import functions, io, streamed
from ..backend import resolve
from ..data_parallel import make_trainer
from ..lbfgs import LBFGSTrainer
from ..mlp import MLP
from ..pipeline import Pipeline
from ..schedules import make_schedule
from .evaluate import load_pipeline
from .parser import UsageError
from .report import Interrupted, Printer, Progress, describe, json_line, missing_extra, plot, warn
from . import streamed as stream_cli
from .settings import check_digests, describe_test_set, prepare, train_settings


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
        {"beta1": s["beta1"], "beta2": s["beta2"], "eps": s["eps"], "decoupled": s["decoupled"]} \
        if s["optimizer"] == "adam" else {}
    try:
        schedule = make_schedule(sched["name"], **config)
        return MLP((d, *s["hidden"], q), activation=act, loss=s["loss"], weight_decay=s["weight_decay"],
                   bias=s["bias"], dtype=s["dtype"], backend=backend, seed=s["seed"], optimizer=s["optimizer"],
                   lr_schedule=schedule, **opt)
    except (ValueError, TypeError) as exc:  # the settings' values; the backend is resolved already
        raise UsageError(str(exc)) from None


def check_output_file(option, path):
    """A file the run will write can be written: checked before training, not after it. A directory,
    a missing directory or one this process cannot create files in is a usage error."""
    if path is None:
        return
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise UsageError(f"{option} {path} is a directory; give a file name, e.g. {os.path.join(path, 'model.npz')}")
    if os.path.lexists(full) and not os.path.isfile(full):
        raise UsageError(f"{option} {path} exists and is not a regular file")
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path}: no such directory {directory}")
    probe = os.path.join(directory, f".{os.path.basename(full)}.{os.getpid()}.probe.tmp")
    try:  # writing a file is the only honest test (permissions, read-only mounts, ACLs, root)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write files in {directory} "
                         f"({(exc.strerror or 'error').lower()})") from None


def check_plot_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise missing_extra("--plot", "matplotlib", "plot") from None


def save(pipeline_or_state, path):
    """Write the run's model file; an operating-system failure names the target, never the temporary."""
    try:
        if isinstance(pipeline_or_state, Pipeline):
            io.save(pipeline_or_state, path)
        else:
            io.write(path, pipeline_or_state)
    except OSError as exc:
        raise OSError(f"cannot write the model to {path}: {(exc.strerror or str(exc)).lower()}") from None


def cmd_train(args):
    if not args.distributed:
        return train(args)
    from .. import distributed

    comm = distributed.init(args.distributed)
    phase = {"at": "setup"}  # "fit" once training starts, "done" once it has finished
    try:
        if comm.rank == 0:
            return train(args, comm, phase)
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
            train(args, comm, phase)  # the other ranks train in silence: rank 0 prints and writes the files
        return 0
    except BaseException as exc:
        if isinstance(exc, Exception) and phase["at"] == "setup" and not distributed.is_collective(exc):
            try:  # the other ranks learn of it at their next collective (at the latest fit's first one)
                comm.exchange(error=exc)
            except Exception as agreed:  # noqa: BLE001 - exc itself, now raised on every rank
                exc = agreed
        if not distributed.is_collective(exc) and comm.size > 1 and phase["at"] != "done":
            # This rank alone stops (an error, Ctrl-C): the others may wait for it in a collective.
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {describe(exc, args)}"
            comm.abort(message=f"gpumlp train: rank {comm.rank} of {comm.size}: {what}; ending the job")
        if comm.rank == 0 or not distributed.is_collective(exc):
            raise exc
        return 1  # every rank raised it, and rank 0 reports it


def train(args, comm=None, phase=None):
    """The run; with ``comm`` (--distributed) data-parallel over its ranks, where rank 0 alone saves
    and reports; ``phase["at"]`` says how far it went ("setup", "fit", "done")."""
    phase = {} if phase is None else phase
    check_run_options(args)
    t0 = time.perf_counter()
    run = set_up(args, comm)
    announce(run)
    seconds, trained = fit(run, phase)
    scores = final_scores(run) if run.sharded else None  # every rank: the scores sum over the ranks' chunks
    phase["at"] = "done"
    if not run.root:
        return 0
    if args.save:
        save(run.pipeline, args.save)
    scores = scores or final_scores(run)
    if args.plot:
        plot(run.model, run.s, run.metric, args.plot, scores["test_score"])
    report(run, scores, seconds, trained, t0)
    return 0


@dataclass
class Run:
    """A run once set up: the Pipeline (its MLP), the settings, the prepared data and its device arrays.
    Data go to the device once; each epoch is evaluated on the validation split (if any), never on the test split."""

    args: object
    pipeline: Pipeline
    s: dict
    d: object  # a gpumlp.data.Prepared, or with --stream a StreamPrepared (train and test are its Views)
    train: tuple  # (x, y) on the model's device
    test: tuple
    val: tuple | None
    comm: object = None

    @property
    def model(self):
        return self.pipeline.named_steps["mlp"]

    @property
    def root(self):  # the rank that prints and writes the files
        return self.comm is None or self.comm.rank == 0

    @property
    def metric(self):
        return "accuracy" if self.model.loss == "cross_entropy" else "R²"

    @property
    def streamed(self):
        return bool(self.s["stream"])

    @property
    def sharded(self):  # each rank holds its own chunks: the counts and scores are sums over the ranks
        return self.streamed and self.comm is not None

    @property
    def n_train(self):
        return self.d.n_train if self.streamed else int(self.train[0].shape[0])

    @property
    def n_test(self):
        return self.d.n_test if self.streamed else int(self.test[0].shape[0])

    @property
    def n_validation(self):
        return 0 if self.val is None else self.d.n_validation if self.streamed else int(self.val[0].shape[0])

    @property
    def n_dropped(self):
        return self.d.n_dropped + getattr(self.d, "n_test_dropped", 0)

    @property
    def test_set(self):
        return describe_test_set(self.s, self.n_test)


def check_run_options(args):
    """What can be refused before any data is read: options that need another, a missing extra, and
    files the run would fail to write after a long run."""
    if args.checkpoint_every and not args.save:
        raise UsageError("--checkpoint-every needs --save MODEL")
    if args.plot:
        check_plot_available()  # before training, not after a long run
    for option, path in (("--save", args.save), ("--plot", args.plot)):
        check_output_file(option, path)


def set_up(args, comm):
    """The run's Run: its pipeline, settings and data (``setup_training``), the data on the model's device."""
    pipeline, s, d = setup_training(args, comm)
    backend = pipeline.named_steps["mlp"].array_backend
    if s["stream"]:  # the views stay on the host, read a chunk at a time; the validation rows are in memory
        val = None if d.X_val is None else (backend.asarray(d.X_val), backend.asarray(d.y_val))
        return Run(args, pipeline, s, d, (d.train, None), (d.test, None), val, comm)
    train_xy = backend.asarray(d.X_train), backend.asarray(d.y_train)
    test_xy = backend.asarray(d.X_test), backend.asarray(d.y_test)
    val = None if d.X_val is None else (backend.asarray(d.X_val), backend.asarray(d.y_val))
    return Run(args, pipeline, s, d, train_xy, test_xy, val, comm)


def announce(run):
    """The lines before training: the data and the net, the test set, and a warning when nothing is left to train."""
    printer, model, s = Printer(run.args), run.model, run.s
    printer.say(describe_run(s, run.d, model, run.n_validation, run.n_train, run.n_test, run.n_dropped))
    printer.say(f"test set: {run.test_set}, scored once, after training")
    if s["epochs"] <= model.epochs_:
        warn("train", f"--epochs {s['epochs']} counts the epochs in all, and the model has trained "
                      f"{model.epochs_} already: nothing to train (--epochs {model.epochs_ + 10} trains 10 more)")


def fit(run, phase):
    """Train up to --epochs in all, with progress and checkpoints; Ctrl-C writes the last finished epoch's
    state (``interrupted``). Returns (seconds of training, epochs trained)."""
    args, s, model = run.args, run.s, run.model
    remaining = s["epochs"] - model.epochs_
    progress = Progress(args, model.epochs_, s["epochs"], run.val is not None, run.metric, run.n_train)
    checkpoint = {"state": run.pipeline.state_dict() if args.save else None, "epoch": model.epochs_}
    before, start = model.epochs_, time.perf_counter()
    stopped = None
    try:
        if remaining > 0:
            trainer = make_run_trainer(run, epoch_callback(run, progress, checkpoint), progress)
            phase["at"] = "fit"
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is reported
                trainer.fit(*run.train, remaining, validation_data=run.val, early_stopping=s["early_stopping"],
                            n_iter_no_change=s["n_iter_no_change"], tol=s["tol"])
            if model.stop_reason_ not in (None, "epochs"):
                best = f", best {model.best_epoch_}" if model.best_epoch_ else ""
                stopped = f"stopped early ({model.stop_reason_}{best})"
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(interrupted(args, checkpoint)) from None
    finally:
        progress.close(stopped)
    model.array_backend.synchronize()
    return time.perf_counter() - start, model.epochs_ - before


def make_run_trainer(run, on_epoch, progress):
    """L-BFGS (full batch, one process: each iteration an epoch, no steps within it) or the minibatch
    trainer of ``gpumlp.data_parallel.make_trainer`` (over --distributed's ranks)."""
    if run.s["optimizer"] == "lbfgs":
        return LBFGSTrainer(run.model, callbacks=[on_epoch])
    return make_trainer(run.model, run.comm, sharded=run.sharded, batch_size=run.s["batch_size"], lr=run.s["lr"], callbacks=[on_epoch],
                        on_step=progress.step if progress.bar is not None and run.root else None)


def epoch_callback(run, progress, checkpoint):
    """The trainer's callback after each epoch (rank 0 only): progress, the state Ctrl-C would write,
    and --checkpoint-every's file. It never stops training."""
    args = run.args

    def on_epoch(m, record):
        if not run.root:
            return False
        val_L = record["val_loss"] - functions.regulariser(m.weights, m.weight_decay) if run.val else None
        progress.epoch(record, val_L)
        if args.save:  # what Ctrl-C writes: the state after the last finished epoch (resumes exactly)
            checkpoint["state"], checkpoint["epoch"] = run.pipeline.state_dict(), m.epochs_
        if args.checkpoint_every and record["epoch"] % args.checkpoint_every == 0:
            save(run.pipeline, args.save)
        return False
    return on_epoch


def final_scores(run):
    """The test set's score and L, and the training split's L and J, of the final weights (once, after training)."""
    model = run.model
    if run.streamed:  # a pass over each view (the training rows too), summed over the ranks when sharded
        comm = run.comm if run.sharded else None
        test_score = streamed.score(model, run.test[0], comm=comm)
        test_J, train_J = (streamed.objective(model, v[0], comm=comm) for v in (run.test, run.train))
    else:
        test_score = model.score(*run.test)
        test_J, train_J = model.objective(*run.test), model.objective(*run.train)
    s_reg = functions.regulariser(model.weights, model.weight_decay)
    return {"test_score": test_score, "test_L": test_J - s_reg, "train_L": train_J - s_reg, "train_J": train_J}


def report(run, scores, seconds, trained, t0):
    """The result line (shown with --quiet too), what was written, and with --json the JSON line last."""
    printer = Printer(run.args)
    printer.result(summary(run, scores, seconds, trained))
    if run.args.save:
        printer.say(f"saved the model to {run.args.save}")
    if run.args.plot:
        printer.say(f"wrote the curves to {run.args.plot}")
    if run.args.json:
        print(json_line(result_json(run, scores, seconds, trained, t0)), flush=True)


def samples_per_second(run, seconds, trained):
    return trained * run.n_train / seconds if trained and seconds > 0 else 0.0


def summary(run, scores, seconds, trained):
    model, d, comm = run.model, run.d, run.comm
    units = "" if d.target_scaler is None else " (L on standardised targets)"
    text = (f"test {run.metric} {scores['test_score']:.4f}, test L {scores['test_L']:.4f} on {run.n_test} samples; "
            f"train L {scores['train_L']:.4f}, J {scores['train_J']:.4f}{units}; {trained} epochs")
    if model.epochs_ != trained:
        text += f" ({model.epochs_} in all)"
    text += f" in {seconds:.2f} s, {samples_per_second(run, seconds, trained):,.0f} samples/s on {model.backend}"
    if comm is not None:
        text += f", {comm.size} ranks ({comm.engine})"
    stop = model.stop_reason_ if trained else None
    if stop and stop != "epochs":
        best = f", best epoch {model.best_epoch_}" if model.best_epoch_ else ""
        text += f"; stopped early ({stop}{best})"
    return text


def result_json(run, scores, seconds, trained, t0):
    """--json's object (README, "The command line"): the scores, the run's counts, where and how fast."""
    model, comm = run.model, run.comm
    key = "accuracy" if run.metric == "accuracy" else "r2"
    test_score = scores["test_score"]
    return {
        f"test_{key}": test_score, "test_score": test_score, "metric": key, "test_L": scores["test_L"],
        "train_L": scores["train_L"], "train_J": scores["train_J"],
        "train_loss": model.loss_curve_[-1] if model.loss_curve_ else math.nan, "epochs": model.epochs_,
        "epochs_trained": trained, "stop_reason": model.stop_reason_ if trained else None,
        "best_epoch": model.best_epoch_, "backend": model.backend, "device": model.array_backend.device_name(),
        "seconds": seconds, "samples_per_second": samples_per_second(run, seconds, trained),
        "total_seconds": time.perf_counter() - t0, "n_train": run.n_train, "n_test": run.n_test,
        "n_validation": run.n_validation, "n_dropped": run.n_dropped, "test_set": run.test_set, "sizes": list(model.sizes),
        "model": run.args.save, "ranks": 1 if comm is None else comm.size,
        "distributed": None if comm is None else comm.engine}


def describe_run(s, d, model, n_validation, n_train, n_test, dropped):
    parts = [f"{n_train} train", f"{n_test} test"] + ([f"{n_validation} validation"] if n_validation else [])
    text = f"gpumlp: {s['data']} ({', '.join(parts)} samples, {model.sizes[0]} features"
    if d.classes is not None:
        text += f", {len(d.classes)} classes"
    if s["stream"]:
        text += f"; streamed, {d.train.plan.describe()}"
    if dropped:
        text += f"; {dropped} rows with missing values dropped"
    if d.imputer is not None:
        text += "; missing values imputed with the training means"
    if d.target_scaler is not None:
        text += "; targets standardised"
    return text + f"); net {model.sizes}, {model.backend} on {model.array_backend.device_name()}"


def interrupted(args, checkpoint):
    """Ctrl-C: write the last finished epoch's state to --save (it resumes exactly), and say so."""
    if not args.save:
        return "interrupted; nothing was saved (with --save MODEL, Ctrl-C writes a checkpoint to continue from)"
    save(checkpoint["state"], args.save)
    return (f"interrupted; saved the state after epoch {checkpoint['epoch']} to {args.save}; continue with: "
            f"gpumlp train --resume {args.save} --save {args.save}")


def setup_training(args, comm=None):
    """(pipeline, settings, prepared data): a new model, or the resumed one with its saved settings."""
    pipeline = saved = None
    if args.resume:
        pipeline = load_pipeline(args.resume, args.backend)
        saved = pipeline.named_steps["mlp"].training_config_
        if saved is None:
            raise ValueError(f"{args.resume} holds no training settings (not saved by 'gpumlp train'); "
                             f"continue it from Python with MLP.fit")
    s = train_settings(args, saved)
    for key in stream_cli.STREAM_ONLY:  # this run's memory and ranks, not the resumed run's
        s[key] = getattr(args, key, None) if key != "sharded" else bool(args.sharded)
    minibatch_only = [f"--{k.replace('_', '-')}" for k in ("lr", "batch_size", "lr_schedule", "early_stopping",
                                                            "n_iter_no_change", "distributed") if getattr(args, k, None)]
    if s["optimizer"] == "lbfgs" and minibatch_only and not s["stream"]:
        raise UsageError(f"{', '.join(minibatch_only)} {'applies' if len(minibatch_only) == 1 else 'apply'} to "
                         f"--optimizer sgd and adam; lbfgs trains on the full batch in one process and stops by "
                         f"--epochs (its iterations) and --tol")
    stream_cli.check_train_options(args, s, args.distributed)
    if pipeline is None:
        pipeline, d = new_pipeline(args, s, comm)
    else:
        d = resumed_data(pipeline, saved, s, comm)
    # What the file records of this run: the settings (for --resume and evaluate) and the digests of the
    # data it was trained on (a resume or evaluate on other data is refused: its split would differ).
    model = pipeline.named_steps["mlp"]
    model.training_config_ = dict(s, **stream_cli.record(s, d)) if s["stream"] else \
        dict(s, data_digest=d.digest, test_data_digest=d.test_digest)
    return pipeline, s, d


def new_pipeline(args, s, comm):
    """A new model and the data it trains on: the Pipeline of the MLP and the preprocessing fitted on them."""
    backend = resolve(args.backend or "auto")
    d = stream_cli.prepare_run(s, comm) if s["stream"] else prepare(s)
    if s["stream"]:
        d_in, q = d.train.n_features, len(d.classes) if d.classes is not None else 1
    else:
        d_in = d.X_train.shape[1]
        q = len(d.classes) if d.classes is not None else (1 if d.y_train.ndim == 1 else d.y_train.shape[1])
    model = build_model(s, d_in, q, backend.name)
    pipeline = Pipeline(model, scaler=d.scaler, classes=d.classes, imputer=d.imputer,
                        target_scaler=d.target_scaler, feature_names=d.feature_names, label_name=d.label_name)
    return pipeline, d


def resumed_data(pipeline, saved, s, comm):
    """The resumed run's data, read with its saved preprocessing and checked to be the data it trained on."""
    model = pipeline.named_steps["mlp"]
    if s["stream"]:
        d = stream_cli.prepare_run(s, comm, pipeline.preprocessing)
        n_features, note = d.train.n_features, None
        stream_cli.check_resumed(saved, d, s)
    else:
        d = prepare(s, pipeline.preprocessing)
        n_features, note = d.X_train.shape[1], None
    if n_features != model.sizes[0]:
        raise ValueError(f"the data have {n_features} features, the resumed model expects {model.sizes[0]}")
    if not s["stream"]:
        note = check_digests(saved, s, d, "--resume")
    if note:
        warn("train", note)
    schedule = model.lr_schedule
    if schedule.name == "cosine" and s["epochs"] > schedule.T_max:
        warn("train", f"the saved run's cosine schedule ends at epoch {schedule.T_max}; epochs after it "
                      f"train at its final rate eta_min = {schedule.eta_min:g}")
    return d
