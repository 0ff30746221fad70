"""A model as data: ``ModelState``, what ``MLP.state_dict()`` returns and ``gpumlp.io`` writes.

    meta     a JSON-serialisable dict: the architecture and settings (sizes, activation, loss, λ,
             bias, dtype, seed), the optimizer's hyper-parameters and step count, the learning-rate
             schedule and its state, the progress (epochs, samples seen, curves, history, stop
             reason), the plateau monitor, the RNG state, "preprocessing" (scaling kind, whether
             classes are stored) and "training" (the command line's settings, or null)
    arrays   name -> host NumPy array: ``theta`` (all weights, then all biases), ``optimizer.<name>``
             (SGD velocity; Adam m and v), ``best_theta`` (early stopping's best epoch),
             ``scaling.offset`` / ``scaling.scale`` and ``classes`` (the label of each output)

``capture(model)`` and ``restore(model, state)`` translate between the two through the model's
public attributes only; ``constructor_arguments(state)`` are what ``MLP(...)`` is built with.
Non-finite history values are stored as None (JSON has no NaN literal in strict readers).

What a ``gpumlp.Pipeline`` does around the model is a ``Preprocessing``; ``with_preprocessing(state,
pre)`` puts one into a state and ``preprocessing(state)`` takes it out. Its entries in meta
["preprocessing"] (format 2; a file of format 1 has only the first two, and reads as their defaults):

    scaling         null | "standard" | "max"   with arrays scaling.offset, scaling.scale (d,)
    classes         true | false                with the array classes (q,): numbers or text
    impute          true | false                with impute.mean (d,): missing features' values
    target_scaling  null | "standard"           with target.offset, target.scale (q,): regression targets
    feature_names   null | d strings            the training file's header, in the model's input order
    label_name      null | a string             the header's name of the label column
    pipeline        true | false                saved as a Pipeline (``gpumlp.load`` returns one)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import schedules
from .data import MeanImputer, Scaler
from .monitor import PlateauMonitor

# Per-epoch records kept in ``history_`` (gpumlp.trainer appends to them).
HISTORY_KEYS = ("epoch", "lr", "loss", "score", "val_loss", "val_score")


@dataclass
class ModelState:
    """``meta`` (JSON-serialisable dict) and ``arrays`` (name -> host NumPy array); see the module docstring."""

    meta: dict
    arrays: dict


@dataclass
class Preprocessing:
    """What a pipeline does around the model: the features' ``imputer`` (or None) and ``scaler``
    (``Scaler("none")`` for none), the label of each output (``classes``, or None), the regression
    targets' ``target_scaler`` (or None), and the training file's header names (or None)."""

    scaler: Scaler
    classes: np.ndarray | None = None
    imputer: MeanImputer | None = None
    target_scaler: Scaler | None = None
    feature_names: list | None = None
    label_name: str | None = None


def capture(model):
    """The ``ModelState`` of ``model`` (host copies of its device arrays)."""
    o, host = model.optimizer, model.array_backend.to_host
    meta = {
        "sizes": list(model.sizes), "activation": model.activation, "loss": model.loss,
        "weight_decay": model.weight_decay, "bias": model.bias, "dtype": model.dtype.name, "seed": model.seed,
        "optimizer": {"name": o.name, "t": o.t, **o.hyperparameters()},
        "epochs": model.epochs_, "loss_curve": list(model.loss_curve_),
        "validation_curve": list(model.validation_curve_),
        "validation_loss_curve": list(model.validation_loss_curve_),
        "rng_state": model.rng.bit_generator.state,
        "lr_schedule": schedules.to_json(model.lr_schedule), "samples_seen": model.samples_seen_,
        "history": {k: [v if math.isfinite(v) else None for v in vs] for k, vs in model.history_.items()},
        "stop_reason": model.stop_reason_,
        "monitor": None if model.monitor_ is None else model.monitor_.to_json(),
        "preprocessing": {"scaling": None, "classes": False},
        "training": model.training_config_,
    }
    arrays = {"theta": np.array(host(model.theta))}
    if model.monitor_ is not None and model.monitor_.best_params is not None:
        arrays["best_theta"] = np.array(host(model.monitor_.best_params))
    for k, v in o.state_arrays().items():
        arrays[f"optimizer.{k}"] = np.array(host(v))
    state = ModelState(meta, arrays)
    # All of the preprocessing the model was loaded or built with goes back into the file (a bare
    # model saved again must not lose its imputer or its targets' scaling: it would predict wrongly).
    return state if model.preprocessing_ is None else with_preprocessing(state, model.preprocessing_, pipeline=False)


def constructor_arguments(state):
    """The ``MLP(...)`` keyword arguments of the model ``state`` describes (all but the backend)."""
    meta = state.meta
    opt = {k: v for k, v in meta["optimizer"].items() if k not in ("name", "t")}
    schedule = schedules.from_json(meta["lr_schedule"]) if meta.get("lr_schedule") else None
    return dict(sizes=meta["sizes"], activation=meta["activation"], loss=meta["loss"],
                weight_decay=meta["weight_decay"], bias=meta["bias"], dtype=meta["dtype"], seed=meta["seed"],
                optimizer=meta["optimizer"]["name"], lr_schedule=schedule, **opt)


def restore(model, state):
    """Put ``state`` into ``model`` (the same sizes, bias and dtype; ValueError otherwise)."""
    meta, arrays = state.meta, state.arrays
    ours = {"sizes": list(model.sizes), "bias": model.bias, "dtype": model.dtype.name}
    for key, value in ours.items():
        if meta[key] != value:
            raise ValueError(f"the state is of a model with {key}={meta[key]!r}, this one has {value!r}")
    b, dtype = model.array_backend, model.dtype
    model.theta[...] = b.asarray(arrays["theta"].astype(dtype, copy=False))
    # copied into the optimizer's own arrays (load_state): they keep their addresses, the state is not aliased
    opt = {k[len("optimizer."):]: v.astype(dtype, copy=False) for k, v in arrays.items() if k.startswith("optimizer.")}
    model.optimizer.load_state(meta["optimizer"]["t"], opt, b.xp)
    model.epochs_ = meta["epochs"]
    model.loss_curve_ = list(meta["loss_curve"])
    model.validation_curve_ = list(meta["validation_curve"])
    model.validation_loss_curve_ = list(meta["validation_loss_curve"])
    model.rng.bit_generator.state = meta["rng_state"]
    # Keys added after format version 1 (files without them load as models that never trained with them).
    model.samples_seen_ = int(meta.get("samples_seen", 0))
    history = meta.get("history") or {}
    model.history_ = {k: [math.nan if v is None else v for v in history.get(k, [])] for k in HISTORY_KEYS}
    model.stop_reason_ = meta.get("stop_reason")
    model.monitor_ = None if meta.get("monitor") is None else PlateauMonitor.from_json(meta["monitor"])
    if model.monitor_ is not None and "best_theta" in arrays:
        # a copy (the monitor writes into it): the state stays as it was, to build another model from it
        model.monitor_.best_params = b.asarray(arrays["best_theta"].astype(dtype, copy=True))
    pre = meta.get("preprocessing") or {}
    model.preprocessing_ = preprocessing(state) if any(pre.get(k) for k in _PREPROCESSING_KEYS) else None
    model.training_config_ = meta.get("training")


# ---------------------------------------------------------------------------------- preprocessing
_PREPROCESSING_ARRAYS = ("scaling.offset", "scaling.scale", "classes", "impute.mean", "target.offset",
                         "target.scale")


# The entries of meta["preprocessing"] that say a state carries some (``pipeline`` only marks how it was saved).
_PREPROCESSING_KEYS = ("scaling", "classes", "impute", "target_scaling", "feature_names", "label_name")


def with_preprocessing(model_state, pre, pipeline=True):
    """A copy of ``model_state`` whose preprocessing is ``pre`` (a ``Preprocessing``): every entry of
    the state's own replaced, and marked as saved by a pipeline (``pipeline``) or a bare model."""
    meta = dict(model_state.meta)
    arrays = {k: v for k, v in model_state.arrays.items() if k not in _PREPROCESSING_ARRAYS}
    entry = {"scaling": None, "classes": pre.classes is not None, "impute": pre.imputer is not None,
             "target_scaling": None, "feature_names": None if pre.feature_names is None else list(pre.feature_names),
             "label_name": pre.label_name, "pipeline": bool(pipeline)}
    if pre.scaler.kind != "none":
        entry["scaling"] = pre.scaler.kind
        arrays["scaling.offset"] = np.asarray(pre.scaler.offset, np.float64)
        arrays["scaling.scale"] = np.asarray(pre.scaler.scale, np.float64)
    if pre.classes is not None:
        arrays["classes"] = np.asarray(pre.classes)
    if pre.imputer is not None:
        arrays["impute.mean"] = np.asarray(pre.imputer.mean, np.float64)
    if pre.target_scaler is not None and pre.target_scaler.kind != "none":
        entry["target_scaling"] = pre.target_scaler.kind
        arrays["target.offset"] = np.asarray(pre.target_scaler.offset, np.float64)
        arrays["target.scale"] = np.asarray(pre.target_scaler.scale, np.float64)
    meta["preprocessing"] = entry
    return ModelState(meta, arrays)


def preprocessing(model_state):
    """The ``Preprocessing`` a (checked) state carries; identities where it carries none."""
    pre, arrays = model_state.meta.get("preprocessing") or {}, model_state.arrays
    scaler = Scaler("none")
    if pre.get("scaling") is not None:
        scaler = Scaler(pre["scaling"], arrays["scaling.offset"], arrays["scaling.scale"])
    target = None
    if pre.get("target_scaling") is not None:
        target = Scaler(pre["target_scaling"], arrays["target.offset"], arrays["target.scale"])
    names = pre.get("feature_names")
    return Preprocessing(scaler, arrays.get("classes") if pre.get("classes") else None,
                         MeanImputer(arrays["impute.mean"]) if pre.get("impute") else None, target,
                         None if names is None else list(names), pre.get("label_name"))


def carries_preprocessing(model_state):
    """Whether the state is more than a bare model: saved by a pipeline, or carrying scaling, classes,
    imputation, target scaling, header names or the command line's settings (files of format 1 that
    ``gpumlp train`` saved carry those)."""
    meta = model_state.meta
    pre = meta.get("preprocessing") or {}
    return bool(pre.get("pipeline") or pre.get("scaling") or pre.get("classes") or pre.get("impute")
                or pre.get("target_scaling") or pre.get("feature_names") is not None
                or meta.get("training") is not None)
