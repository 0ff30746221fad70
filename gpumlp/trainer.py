"""The trainer: epochs of minibatch steps, with divergence detection, the plateau monitor, callbacks
and history. ``MLP.fit`` and ``MLP.partial_fit`` build one and run it; it is public for those who
want the loop itself:

    trainer = gpumlp.Trainer(model, batch_size=64, lr=0.01, callbacks=[cb])
    trainer.fit(X, y, epochs=20, early_stopping=True)       # what model.fit(...) does
    data = trainer.prepare(X, y)                            # validated, on the device, once
    J = trainer.run_epoch(data, lr=0.01)                    # one pass: the loop's body

An epoch: the learning rate from the model's schedule; a seeded host permutation of the rows (the
model's ``rng``, identical on every backend); the batches from a source that fits where the data live
(``gpumlp.batches``); for each, ``Step.train`` (the seam: gradients, then the update; the data-parallel
trainer, ``gpumlp.data_parallel``, all-reduces ``model.grad`` between the two); each step's J into a
preallocated vector, read back once at the end of the epoch. Then the record of the epoch (loss,
validation loss and score, lr) goes into ``history_``, the plateau monitor (``gpumlp.monitor``) and the
callbacks (``_epoch_samples``, ``_evaluate``, ``_callbacks``: the hooks a data-parallel trainer makes global).

A checkpoint saved during fit (from a callback) holds the early-stopping state (best score and
weights, epochs without improvement, the validation split's seed): loading it and calling fit with the
same settings and the remaining epochs continues that run exactly.

Divergence: the state at the start of each epoch (θ and the optimizer's state) is kept; a non-finite
J (on the CPU noticed at once, on the GPU at the end of the epoch) or non-finite weights after the
last update restore it and raise ``DivergenceError``, naming the epoch and step. With
``on_divergence="record"`` and early stopping (which keeps the best weights anyway) the epoch is
recorded instead, its loss and validation score NaN, and training goes on from the restored state,
as scikit-learn's MLP does (the estimators of ``gpumlp.sklearn`` ask for it); the plateau monitor
counts it as an epoch without improvement.

``DivergenceError`` is a FloatingPointError and a ValueError (what scikit-learn raises for it).
Full-batch L-BFGS is ``gpumlp.lbfgs.LBFGSTrainer``; it shares ``prepare`` and ``end_epoch`` with this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import schedules
from .backend import is_device_array, is_sparse
from .batches import batch_source
from .data import class_sample_weights, split_indices
from .data.split import StreamSplit
from .data.statistics import materialise, training_view
from .data.streaming import View, as_stream
from .monitor import PlateauMonitor
from .state import HISTORY_KEYS
from .validation import check_positive_number, check_sample_weight, check_X, rescaled_weights


class DivergenceError(FloatingPointError, ValueError):
    """Training produced a non-finite objective; the model keeps its last finite weights. A ValueError
    too, as scikit-learn's "Solver produced non-finite parameter weights"."""


@dataclass
class TrainingData:
    """Validated training data on the model's backend (x may stay on the host to be streamed)."""

    x: object
    y: object
    w: object = None
    source: object = field(default=None, repr=False)

    @property
    def n(self):
        return self.x.shape[0]


class _EpochStart:
    """θ and the optimizer's state as an epoch began (device copies: no wait for the GPU), written back
    into the model's own arrays by ``restore`` (their addresses do not change: ``gpumlp.step``)."""

    def __init__(self, model):
        self.theta, self.optimizer = model.theta.copy(), model.optimizer.snapshot()

    def restore(self, model):
        model.theta[...] = self.theta
        model.optimizer.restore(self.optimizer)


class Trainer:
    """Minibatch training of ``model`` (a ``gpumlp.MLP``) from its current state.

    batch_size, lr : the minibatch size and the base learning rate (the model's ``lr_schedule``
        turns it into each epoch's rate).
    shuffle : reshuffle the rows every epoch (from ``model.rng``).
    callbacks : callables ``cb(model, record)`` called after every epoch with that epoch's
        ``history_`` entry as a dict; returning True stops training.
    train_score : also record the training score every epoch (a forward pass over the data).
    verbose : print one line per epoch.
    on_step : a callable ``on_step(k, n_steps)`` called within each epoch after step k (1-based) of
        its n_steps, every ``step_interval`` steps (default: about 100 times an epoch), for progress
        bars. It gets host counters only and nothing is read from the device for it, so the loop
        never waits for the GPU: there it counts steps as they are issued, which may still be running.
    on_divergence : "raise" (``DivergenceError``) or "record": with early stopping, record the epoch
        with a NaN loss and validation score and go on (module docstring).
    """

    def __init__(self, model, *, batch_size=64, lr=0.01, shuffle=True, callbacks=None, train_score=False,
                 verbose=False, on_step=None, step_interval=None, on_divergence="raise"):
        if on_divergence not in ("raise", "record"):
            raise ValueError(f"on_divergence must be 'raise' or 'record', got {on_divergence!r}")
        self.on_divergence = on_divergence
        self.model = model
        self.batch_size = check_positive_number(batch_size, "batch_size", integer=True)
        self.lr = check_positive_number(lr, "lr")
        self.shuffle = bool(shuffle)
        self.callbacks = _check_callbacks(callbacks)
        self.train_score, self.verbose = bool(train_score), bool(verbose)
        if on_step is not None and not callable(on_step):
            raise TypeError(f"on_step must be a callable on_step(k, n_steps), got {on_step!r}")
        self.on_step = on_step
        self.step_interval = None if step_interval is None else \
            check_positive_number(step_interval, "step_interval", integer=True)

    # ------------------------------------------------------------------ entry points
    def fit(self, X, y, epochs=10, *, sample_weight=None, class_weight=None, validation_data=None,
            early_stopping=False, validation_fraction=0.1, n_iter_no_change=None, tol=1e-4):
        """``epochs`` epochs over (X, y) (see ``MLP.fit`` for every argument). Returns the model.
        Another thread training the same model meanwhile gets a RuntimeError (``MLP.exclusive``)."""
        _check_minibatch(self.model)
        with self.model.exclusive("fit"):
            return self._fit(X, y, epochs, sample_weight, class_weight, validation_data, early_stopping,
                             validation_fraction, n_iter_no_change, tol)

    def _fit(self, X, y, epochs, sample_weight, class_weight, validation_data, early_stopping,
             validation_fraction, n_iter_no_change, tol):
        epochs = check_positive_number(epochs, "epochs", integer=True)
        early_stopping = bool(early_stopping)
        if n_iter_no_change is not None:
            n_iter_no_change = check_positive_number(n_iter_no_change, "n_iter_no_change", integer=True)
        tol = check_positive_number(tol, "tol", allow_zero=True)
        data = self.prepare(X, y, sample_weight, class_weight)
        val = self._validation(validation_data)
        split = early_stopping and val is None
        if split:
            validation_fraction = check_positive_number(validation_fraction, "validation_fraction")
            if validation_fraction >= 1:
                raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
            _validation_size(data.n, validation_fraction)  # raises before anything changes
        monitor = None
        if early_stopping or n_iter_no_change is not None or isinstance(self.model.lr_schedule, schedules.Adaptive):
            monitor = PlateauMonitor(mode="val_score" if early_stopping else "loss",
                                     patience=10 if n_iter_no_change is None else n_iter_no_change, tol=tol,
                                     split=split, validation_fraction=validation_fraction if split else None)
        m = self.model
        before = m.monitor_, m.rng.bit_generator.state
        self._open_monitor(monitor)
        if split:
            try:  # a streamed split may still be refused (its rows over the budget): then nothing changed
                data, val = self._hold_out(data, validation_fraction, m.monitor_.split_seed)
            except BaseException:
                m.monitor_, m.rng.bit_generator.state = before
                raise
        return self.run(data, epochs, val)

    def partial_fit(self, X, y, *, sample_weight=None, class_weight=None, n_iter_no_change=10, tol=1e-4):
        """One epoch over (X, y), continuing the plateau monitor of earlier calls ("adaptive" schedule)."""
        _check_minibatch(self.model)
        with self.model.exclusive("partial_fit"):
            return self._partial_fit(X, y, sample_weight, class_weight, n_iter_no_change, tol)

    def _partial_fit(self, X, y, sample_weight, class_weight, n_iter_no_change, tol):
        n_iter_no_change = check_positive_number(n_iter_no_change, "n_iter_no_change", integer=True)
        tol = check_positive_number(tol, "tol", allow_zero=True)
        data = self.prepare(X, y, sample_weight, class_weight)
        monitor = None
        if isinstance(self.model.lr_schedule, schedules.Adaptive):
            monitor = PlateauMonitor(mode="loss", patience=n_iter_no_change, tol=tol, incremental=True)
        self._open_monitor(monitor)
        return self.run(data, 1, None)

    # ------------------------------------------------------------------ data
    def prepare(self, X, y, sample_weight=None, class_weight=None):
        """Validated ``TrainingData``: X, y and the combined per-example weights on the model's backend.

        On the GPU, host data too large for the device (``_stream.fits_on_device``) stay on the host
        as one contiguous array of the model's dtype, and their batches are streamed. A streamed source
        (``gpumlp.data.stream``) is counted and checked in one pass (``_stream_data``)."""
        m = self.model
        source = as_stream(X)  # a StreamSource or View, or a re-iterable of (X_chunk, y_chunk) pairs
        if source is not None:
            return self._stream_data(source, y, sample_weight, class_weight)
        if y is None:
            raise TypeError("y is required: the targets of X (y=None is for a streamed source, gpumlp.data.stream)")
        x = self._training_X(X)
        n = x.shape[0]
        yy, _ = m.targets_to_device(y, n)
        w = check_sample_weight(sample_weight, n)
        if class_weight is not None:
            if m.loss != "cross_entropy":
                raise ValueError("class_weight needs loss='cross_entropy'")
            cw = class_sample_weights(class_weight, np.asarray(m.array_backend.to_host(yy)), m.sizes[-1])
            w = cw if w is None else w * cw
            if not w.sum() > 0:
                raise ValueError("sample_weight times class_weight must have a positive sum")
        return self._data(x, yy, self._device_weights(w))

    def _stream_data(self, X, y, sample_weight, class_weight, chunks=None):
        """``TrainingData`` of a streamed source: a ``View`` of its rows in the model's dtype (labels from the
        source; weights are not streamed)."""
        m = self.model
        for name, value in (("y", y), ("sample_weight", sample_weight), ("class_weight", class_weight)):
            if value is not None:
                raise ValueError(f"{name} with a streamed source: its labels come from the source (y=None), and "
                                 f"per-example or class weights are not streamed; train from arrays to weight rows")
        view = training_view(X, m.loss, m.sizes[-1], m.dtype, self.batch_size, m.sizes[1:-1], chunks=chunks,
                             n_inputs=m.sizes[0])
        return self._data(view, None, None)

    def _device_weights(self, w):
        """The combined per-example weights (host, or None) as the step uses them: rescaled by a power
        of two (``validation.rescaled_weights``), in the model's dtype, on its backend."""
        m = self.model
        return None if w is None else m.array_backend.asarray(rescaled_weights(w), dtype=m.dtype)

    def _data(self, x, y, w):
        return TrainingData(x, y, w, batch_source(self.model.array_backend, x, y, w))

    def _training_X(self, X):
        m = self.model
        backend = m.array_backend
        if not backend.is_gpu or is_device_array(X) or is_sparse(X):  # sparse data go to the device whole
            return m.to_device(X)[0]
        from ._stream import fits_on_device

        X = check_X(X, "X", m.sizes[0], m.dtype)
        if fits_on_device(backend.xp, X.shape[0] * X.shape[1] * m.dtype.itemsize):
            return backend.asarray(X, dtype=m.dtype)
        return np.ascontiguousarray(X, dtype=m.dtype)

    def _validation(self, validation_data):
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise TypeError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, w_val)")
        w = validation_data[2] if len(validation_data) == 3 else None
        return self.model.to_device(*validation_data[:2], w, names=("validation_data[0]", "validation_data[1]",
                                                                   "validation_data[2]"))

    def _hold_out(self, data, fraction, seed):
        """(training data, validation triple): the early-stopping split (``data.split_indices``)."""
        m = self.model
        stratify = m.loss == "cross_entropy"
        if isinstance(data.x, View):  # a seeded streamed split (data.split.StreamSplit), the held-out rows in memory
            view = replace(data.x, part="train", split=StreamSplit(0.0, fraction, seed), stratify=stratify)
            x_val, y_val = materialise(view.with_part("validation"), view.plan.validation_bytes,
                                       "the early-stopping validation split")
            view.n_rows = data.n - x_val.shape[0]
            if x_val.shape[0] < 2 or view.n_rows < 1:
                raise ValueError(f"validation_fraction={fraction} of {data.n} examples holds out {x_val.shape[0]}")
            return self._data(view, None, None), (x_val, y_val, None)
        labels = np.asarray(m.array_backend.to_host(data.y)) if stratify else np.arange(data.n)
        kept, held = split_indices(labels, fraction, seed, stratify=stratify)

        def pick(a, rows):  # x may be on the host (streamed training data), y and w are on the device
            if a is None or isinstance(a, np.ndarray):
                return None if a is None else np.take(a, rows, axis=0)
            rows = m.array_backend.asarray(rows)
            return a[rows] if is_sparse(a) else m.array_backend.xp.take(a, rows, axis=0)

        train = self._data(pick(data.x, kept), pick(data.y, kept), pick(data.w, kept))
        return train, (pick(data.x, held), pick(data.y, held), pick(data.w, held))

    def _open_monitor(self, monitor):
        """Start the plateau monitor for this run, or continue the one a mid-fit checkpoint left open."""
        m = self.model
        if monitor is not None and m.monitor_ is not None and m.monitor_.continues(monitor):
            return  # resume the interrupted run (fit) or the incremental one (partial_fit)
        if monitor is not None:
            if monitor.split:
                monitor.split_seed = int(m.rng.integers(2**63))
            if monitor.mode == "val_score":
                monitor.best_params = m.theta.copy()
        m.monitor_ = monitor

    # ------------------------------------------------------------------ the loop
    def run(self, data, epochs, val=None):
        """The epoch loop over prepared ``data``, with the validation triple ``val`` (or None)."""
        with self.model.exclusive("training"):
            return self._run(data, epochs, val)

    def _run(self, data, epochs, val):
        m = self.model
        _check_minibatch(m)
        m.stop_reason_ = "epochs"
        finished = False
        try:
            for _ in range(epochs):
                lr_epoch = m.lr_schedule.lr(self.lr, m.epochs_, m.samples_seen_)
                try:
                    J, diverged = self.run_epoch(data, lr_epoch), False
                except DivergenceError:
                    # Early stopping keeps the best weights, so a diverged epoch (its weights restored)
                    # may be recorded with a NaN validation score while training goes on, as scikit-learn's.
                    if self.on_divergence == "raise" or m.monitor_ is None or m.monitor_.mode != "val_score":
                        raise
                    J, diverged = math.nan, True
                stop = self.end_epoch(data, J, lr_epoch, val, diverged)
                if stop:
                    m.stop_reason_ = stop
                    break
            finished = True
        finally:
            mon = m.monitor_
            if mon is not None and not mon.incremental:
                mon.open = False
                if finished and mon.best_params is not None and mon.best is not None:
                    m.theta[...] = mon.best_params  # early stopping: back to the best epoch
        return m

    def end_epoch(self, data, J, lr, val=None, diverged=False):
        """Record an epoch over ``data`` that ended with objective J at rate ``lr``: ``loss_curve_``,
        ``history_``, the validation curves, the plateau monitor, the printout and the callbacks.
        A ``diverged`` epoch has no score (NaN). Returns the reason to stop, or None."""
        m = self.model
        m.loss_curve_.append(J)
        m.epochs_ += 1
        m.samples_seen_ += self._epoch_samples(data)
        record = {"epoch": m.epochs_, "lr": lr, "loss": J, "score": math.nan,
                  "val_loss": math.nan, "val_score": math.nan}
        if not diverged:
            self._evaluate(record, data, val)
        if val is not None:
            m.validation_loss_curve_.append(record["val_loss"])
            m.validation_curve_.append(record["val_score"])
        for k in HISTORY_KEYS:
            m.history_[k].append(record[k])
        stop = None
        if m.monitor_ is not None:
            watched = record["val_score" if m.monitor_.mode == "val_score" else "loss"]
            stop = m.monitor_.watch(watched, m.epochs_, m.theta, m.lr_schedule, self.lr)
        if self.verbose:
            print(f"epoch {m.epochs_}: " + (f"lr = {lr:.4g}, " if math.isfinite(lr) else "") + f"J = {J:.6g}"
                  + (f", validation score = {record['val_score']:.4f}" if val is not None else "")
                  + (f"; stopping ({stop})" if stop else ""))
        if self._callbacks(record):
            stop = stop or "callback"
        return stop

    # The hooks of an epoch's end (gpumlp.data_parallel makes each of them global over the ranks).
    def _epoch_samples(self, data):
        """The examples one epoch trains on (``samples_seen_`` grows by it)."""
        return data.n

    def _evaluate(self, record, data, val):
        """The epoch's measurements into ``record``: the training score, the validation loss and score."""
        m = self.model
        if self.train_score:
            record["score"] = m.score(data.x, data.y, data.w)
        if val is not None:
            record["val_loss"] = m.objective(*val)
            record["val_score"] = m.score(*val)

    def _callbacks(self, record):
        """Call every callback with the epoch's record; whether one of them asked to stop."""
        stop = False
        for cb in self.callbacks:  # every callback sees every epoch, even after one asks to stop
            if cb(self.model, dict(record)):
                stop = True
        return stop

    def run_epoch(self, data, lr):
        """One pass over ``data`` (``prepare``'s result) at rate ``lr``; the mean J over the epoch's
        steps, weighted by batch size (each J taken before its step's update)."""
        with self.model.exclusive("training"):
            return self._run_epoch(data, lr)

    def _run_epoch(self, data, lr):
        m = self.model
        _check_minibatch(m)
        backend, xp, n, B = m.array_backend, m.array_backend.xp, data.n, self.batch_size
        streamed = isinstance(data.x, View)  # its epoch order is a seed: the stream has no row index
        order = (int(m.rng.integers(2**63)) if streamed else m.rng.permutation(n)) if self.shuffle else None
        batches = data.source.epoch(order, B)
        step = m.training_step(min(B, n))
        start = _EpochStart(m)
        n_steps = -(-n // B)
        Js = xp.empty(n_steps + 1, m.dtype)  # each step's J, then whether θ ended finite
        on_step, every = self.on_step, self.step_interval or max(1, n_steps // 100)
        k = -1
        try:
            for k, (x, y, w) in enumerate(batches):
                if k >= n_steps:
                    _changed(data.x, n)
                Js[k] = step.train(x, y, w, m.optimizer, lr)
                if not backend.is_gpu and not math.isfinite(Js[k]):
                    self._diverged(start, k, f"the objective J became {float(Js[k])}")
                if on_step is not None and (k + 1) % every == 0:
                    on_step(k + 1, n_steps)  # host integers only: no read-back, no wait
        finally:  # a streamed epoch left early (an error, a divergence) stops its reader thread now,
            getattr(batches, "close", lambda: None)()  # not when the traceback's frames are freed
        if k + 1 != n_steps:
            _changed(data.x, n)
        # J is taken before each update, so an update that overflows shows in no J of this epoch
        # (it would only in the next one, whose snapshot would then hold the non-finite weights).
        Js[-1] = xp.isfinite(m.theta).all()
        Js = backend.to_host(Js).astype(np.float64)  # the epoch's one read-back
        theta_finite, Js = Js[-1] == 1, Js[:-1]
        bad = np.flatnonzero(~np.isfinite(Js))
        if bad.size:
            self._diverged(start, int(bad[0]), f"the objective J became {float(Js[bad[0]])}")
        if not theta_finite:
            self._diverged(start, n_steps - 1, "the weights became NaN or infinite in the update")
        sizes = np.minimum(B, n - np.arange(0, n, B))
        return float(Js @ sizes) / n

    def _diverged(self, start, step, what):
        m = self.model
        start.restore(m)
        raise DivergenceError(
            f"training diverged: {what} in epoch {m.epochs_ + 1}, step {step + 1}. The weights were restored "
            f"to those at the start of that epoch. Try a smaller learning rate.")


def _changed(x, n):
    path = getattr(getattr(x, "source", None), "path", "the data")
    raise ValueError(f"{path}: the epoch's batches do not hold the {n} rows counted before training: the file "
                     f"changed while it was being read")


def _check_minibatch(model):
    if model.optimizer.name == "lbfgs":
        raise ValueError("optimizer='lbfgs' minimises J over the whole training set at once: train it with "
                         "MLP.fit (gpumlp.lbfgs); partial_fit, step and gpumlp.Trainer need a minibatch "
                         "optimizer ('sgd' or 'adam')")


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"callbacks must be callables cb(model, record), got {cb!r}")
    return callbacks


def _validation_size(n, fraction):
    n_val = math.ceil(fraction * n)
    if n_val < 2 or n - n_val < 1:
        raise ValueError(f"validation_fraction={fraction} of {n} examples leaves {n_val} for validation "
                         f"and {n - n_val} for training; use more data or another validation_fraction")
    return n_val
