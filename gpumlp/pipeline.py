"""A model with the preprocessing it was trained with: what ``gpumlp train`` saves, and what
``gpumlp.load`` gives back for such a file, shaped as scikit-learn's ``Pipeline``.

    p = gpumlp.load("model.npz")          # saved by gpumlp train
    p.predict(X_raw)                      # exactly what `gpumlp predict` writes for the same rows
    p.predict_proba(X_raw), p.score(X_raw, y_raw), p.classes_, p.n_features_in_, p.feature_names_in_
    p.named_steps["mlp"]                  # the bare MLP: it takes imputed, scaled features
    p.steps                               # [("imputer", ...), ("scaler", Scaler), ("mlp", MLP), ("labels", ...)]

The steps in the order data flow through them: the features' ``MeanImputer`` (only when the run
imputed missing values), their ``Scaler`` (``Scaler("none")`` when unscaled), the ``MLP``, then on the
way out either the ``LabelEncoder`` that names each output (classification) or the targets'
``Scaler`` whose inverse brings the outputs back into the targets' units (regression trained with
``--target-scaling standard``). ``predict`` applies all of them; the MLP alone never scales.

A Pipeline has no ``scaler_``: the bare model's old recipe, ``m.predict(m.scaler_.transform(X))``,
would scale twice here; ``pipeline.predict(X_raw)`` is the whole of it.

``load(path)`` returns a Pipeline for a file that carries preprocessing (every file ``gpumlp train``
saves, and every Pipeline saved with ``save``) and the plain ``MLP`` for one saved from a bare model,
as pickling returns what was pickled; ``load(path, model_only=True)`` always gives the MLP, which
carries all of it as ``preprocessing_`` (its ``scaler_`` and ``classes_`` read from there) and writes
all of it back when it is saved: a model trained on from Python and saved keeps predicting from raw data.
"""
from __future__ import annotations

import numpy as np

from . import io, metrics, onnx_export
from .backend import BackendUnavailable, resolve
from .data import LabelEncoder, MeanImputer, Scaler, scale_targets
from .mlp import MLP
from .state import (
    Preprocessing,
    carries_preprocessing,
    preprocessing,
    with_preprocessing,
)
from .validation import as_host

__all__ = ["Pipeline", "load", "to_onnx"]


class Pipeline:
    """``MLP`` plus its preprocessing; see the module docstring.

    Parameters
    ----------
    mlp : the trained ``gpumlp.MLP``.
    scaler : the features' fitted ``gpumlp.data.Scaler`` (None: no scaling).
    classes : the label of each output, sorted (classification; None: the labels are 0..q−1).
    imputer : a fitted ``gpumlp.data.MeanImputer`` for missing features (None: NaN is an error).
    target_scaler : a fitted ``Scaler`` of the regression targets the MLP was trained on (None: none).
    feature_names : the training file's names of the features, in the MLP's input order (or None).
    label_name : the training file's name of the label column (or None).
    """

    def __init__(self, mlp, *, scaler=None, classes=None, imputer=None, target_scaler=None, feature_names=None,
                 label_name=None):
        if not isinstance(mlp, MLP):
            raise TypeError(f"mlp must be a gpumlp.MLP, got {type(mlp).__name__}")
        d, q = mlp.sizes[0], mlp.sizes[-1]
        scaler = Scaler("none") if scaler is None else scaler
        _check_fitted(scaler, Scaler, "scaler", d, "scale")
        if imputer is not None:
            _check_fitted(imputer, MeanImputer, "imputer", d, "mean")
        classify = mlp.loss == "cross_entropy"
        if classes is not None:
            if not classify:
                raise ValueError(f"classes apply to cross_entropy models, this one uses {mlp.loss}")
            classes = np.asarray(classes)
            if classes.shape != (q,) or (q > 1 and not (classes[1:] > classes[:-1]).all()):
                raise ValueError(f"classes must be {q} sorted labels without repeats (one per output), got "
                                 f"{classes.tolist()}")
        if target_scaler is not None:
            if mlp.loss != "squared":  # predict inverts the scaling on o: only the squared loss's o are targets
                raise ValueError(f"target_scaler applies to models with the squared loss (their outputs are the "
                                 f"scaled targets), this one uses {mlp.loss}")
            _check_fitted(target_scaler, Scaler, "target_scaler", q, "scale")
        if feature_names is not None:
            feature_names = [str(n) for n in feature_names]
            if len(feature_names) != d:
                raise ValueError(f"feature_names must name the model's {d} inputs, got {len(feature_names)} names")
        self._mlp = mlp
        self._pre = Preprocessing(scaler, classes, imputer, target_scaler, feature_names,
                                  None if label_name is None else str(label_name))

    # ------------------------------------------------------------------ scikit-learn's view
    @property
    def steps(self):
        """(name, step) in the order data flow through them (a new list: the pipeline's own is fixed)."""
        pre, steps = self._pre, []
        if pre.imputer is not None:
            steps.append(("imputer", pre.imputer))
        steps += [("scaler", pre.scaler), ("mlp", self._mlp)]
        if self._classify:
            steps.append(("labels", LabelEncoder(self.classes_)))
        elif pre.target_scaler is not None:
            steps.append(("target_scaler", pre.target_scaler))
        return steps

    @property
    def named_steps(self):
        return dict(self.steps)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.named_steps[key]
        return self.steps[key][1]

    def __len__(self):
        return len(self.steps)

    @property
    def classes_(self):
        """The label of each output (classification only), as saved: numbers or text."""
        if not self._classify:
            raise AttributeError(f"a {self._mlp.loss} (regression) pipeline has no classes_")
        c = self._pre.classes
        return np.arange(self._mlp.sizes[-1]) if c is None else c

    @property
    def n_features_in_(self):
        return self._mlp.sizes[0]

    @property
    def feature_names_in_(self):
        """The training file's feature names (only when it had a header, as scikit-learn)."""
        if self._pre.feature_names is None:
            raise AttributeError("feature_names_in_: the model was trained on data without a header of names")
        return np.asarray(self._pre.feature_names, dtype=object)

    @property
    def label_name_(self):
        """The training file's name of the label column (None without a header)."""
        return self._pre.label_name

    @property
    def preprocessing(self):
        """The ``gpumlp.state.Preprocessing`` (what ``save`` writes beside the model)."""
        return self._pre

    @property
    def _classify(self):
        return self._mlp.loss == "cross_entropy"

    def _host(self, a, name):
        """``a`` on the host, where the preprocessing runs (``validation.as_host``): NumPy, CuPy, or any array with
        ``__dlpack__``; device memory for a model on NumPy is refused, as the MLP refuses it."""
        return as_host(a, name, self._mlp.array_backend)

    def __getattr__(self, name):  # only for names not found: say where the model's attributes are
        mlp = self.__dict__.get("_mlp")
        attribute = getattr(type(self), name, None)
        if isinstance(attribute, property):  # one of ours that raised AttributeError: let it say why
            return attribute.fget(self)
        if name == "scaler_":
            raise AttributeError("a Pipeline has no scaler_: pipeline.predict(X_raw) applies the saved scaling "
                                 "itself (scaling X first would scale it twice); the scaler is "
                                 "pipeline.named_steps['scaler'], the bare model pipeline.named_steps['mlp']")
        if mlp is not None and not name.startswith("__") and hasattr(mlp, name):
            raise AttributeError(f"'Pipeline' object has no attribute {name!r}; it is the model's: "
                                 f"pipeline.named_steps['mlp'].{name} (the model takes scaled features)")
        raise AttributeError(f"'Pipeline' object has no attribute {name!r}")

    # ------------------------------------------------------------------ inference on raw data
    def transform(self, X):
        """X as the MLP takes it: missing values imputed, scaled, in the MLP's dtype (host array)."""
        X = self._host(X, "X")  # another library's array through DLPack, without a copy: the scaling makes one
        if X.dtype.kind not in "biuf":
            raise TypeError(f"X must hold real numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        d = self.n_features_in_
        if X.shape[1] != d:
            names = "" if self._pre.feature_names is None else f" ({', '.join(self._pre.feature_names[:8])}" \
                + (", ..." if d > 8 else "") + ")"
            raise ValueError(f"X has {X.shape[1]} features, the pipeline expects {d}{names}")
        if self._pre.imputer is not None:
            X = self._pre.imputer.transform(X)
        elif X.dtype.kind == "f" and np.isnan(X).any():
            i, j = (int(k) + 1 for k in np.argwhere(np.isnan(X))[0])
            raise ValueError(f"X has a missing value (NaN) in row {i}, column {j}; this model was trained without "
                             f"imputing them (gpumlp train --missing impute)")
        return self._pre.scaler.transform(X, self._mlp.dtype)

    def decision_function(self, X):
        """The MLP's outputs o on the preprocessed X (logits for classification; for regression the
        outputs it was trained to give, standardised when the targets were)."""
        return self._mlp.decision_function(self.transform(X))

    def predict_proba(self, X):
        return self._mlp.predict_proba(self.transform(X))

    def predict(self, X):
        """Class labels as saved (numbers or text), or regression outputs in the targets' units
        (1-D for one output): what ``gpumlp predict`` writes."""
        x = self.transform(X)
        if self._classify:
            return LabelEncoder(self.classes_).inverse_transform(self._mlp.predict(x))
        if self._pre.target_scaler is None:
            return self._mlp.predict(x)
        o = self._pre.target_scaler.inverse_transform(self._mlp.decision_function(x))
        return o[:, 0] if o.shape[1] == 1 else o

    def score(self, X, y, sample_weight=None):
        """Accuracy of ``predict`` (classification: y holds the labels as saved) or R² in the targets'
        units (regression; uniform average over outputs), weighted as scikit-learn's metrics."""
        x = self.transform(X)
        if self._classify:
            codes = LabelEncoder(self.classes_).transform(self._host(y, "y"), "y")
            return self._mlp.score(x, codes, sample_weight)
        y = np.asarray(self._host(y, "y"), np.float64)
        pred = self.predict(X)
        w = None if sample_weight is None else np.asarray(as_host(sample_weight, "sample_weight"), np.float64)
        n = y.shape[0]
        return metrics.r2(np.asarray(pred, np.float64).reshape(n, -1), y.reshape(n, -1), w)

    def objective(self, X, y, sample_weight=None):
        """J = L + λ/2 Σ‖W‖² of the MLP on (X, y) given raw, y as saved (labels or targets in their
        units; the loss is taken where the MLP was trained: on standardised targets if they were)."""
        x = self.transform(X)
        return self._mlp.objective(x, self.encode_targets(y), sample_weight)

    def encode_targets(self, y):
        """y as the MLP is trained on it: output indices of the labels, or scaled regression targets."""
        y = self._host(y, "y")
        if self._classify:
            return LabelEncoder(self.classes_).transform(y, "y")
        y = np.asarray(y, np.float64)
        return y if self._pre.target_scaler is None else scale_targets(self._pre.target_scaler, y)

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """The MLP's ``ModelState`` with this pipeline's preprocessing (what ``save`` writes)."""
        return with_preprocessing(self._mlp.state_dict(), self._pre)

    @classmethod
    def from_state_dict(cls, model_state, backend="auto"):
        """A Pipeline from a checked ``ModelState`` (identities where it carries no preprocessing)."""
        return cls._of(MLP.from_state_dict(model_state, backend=backend), preprocessing(model_state))

    @classmethod
    def _of(cls, mlp, pre):
        return cls(mlp, scaler=pre.scaler, classes=pre.classes, imputer=pre.imputer, target_scaler=pre.target_scaler,
                   feature_names=pre.feature_names, label_name=pre.label_name)

    def save(self, path):
        """Write the model and its preprocessing to ``path`` (``gpumlp.io.save``); ``load`` gives a Pipeline."""
        io.save(self, path)

    def to_onnx(self, path=None, *, dtype=None, opset=None):
        """The whole pipeline as one ONNX ``ModelProto`` (``gpumlp.onnx_export``): raw features in, labels as
        saved (or regression outputs in the targets' units) and probabilities out; written to ``path`` if given."""
        return onnx_export.export(self._mlp, self._pre, path, dtype=dtype, opset=opset)

    def __reduce__(self):
        s = self.state_dict()
        return _unpickle, (s.meta, s.arrays, self._mlp.backend)

    def __repr__(self):
        return "Pipeline(steps=[" + ", ".join(f"({n!r}, {s!r})" for n, s in self.steps) + "])"


def _check_fitted(step, kind, name, n, attribute):
    if not isinstance(step, kind):
        raise TypeError(f"{name} must be a gpumlp.data.{kind.__name__}, got {type(step).__name__}")
    if getattr(step, "kind", None) == "none":
        return
    values = getattr(step, attribute)
    if values is None:
        raise ValueError(f"{name} is not fitted")
    if np.shape(values) != (n,):
        raise ValueError(f"{name} is fitted to {np.shape(values)[0]} columns, the model has {n}")


def _unpickle(meta, arrays, backend):
    from .state import ModelState

    return Pipeline.from_state_dict(ModelState(meta, arrays), backend=backend)


def load(path, backend="auto", *, model_only=False):
    """The model saved at ``path`` on ``backend``: a ``Pipeline`` when the file carries preprocessing
    (every file ``gpumlp train`` saves), else the ``MLP`` as saved; ``model_only=True``: always the
    MLP (with the ``preprocessing_`` and ``training_config_`` the file holds). FileNotFoundError
    for a missing file, ``io.ModelFileError`` (a ValueError) for anything wrong with it, checked
    before anything is built."""
    model_state = io.read(path)
    resolve(backend)  # a bad backend name or an unusable GPU is the caller's error, not the file's
    try:
        mlp = MLP.from_state_dict(model_state, backend=backend)
        if model_only or not carries_preprocessing(model_state):
            return mlp
        return Pipeline._of(mlp, preprocessing(model_state))
    except BackendUnavailable:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise io.ModelFileError(f"{path}: invalid model settings in meta: {exc}") from None


def to_onnx(obj, path=None, *, dtype=None, opset=None):
    """``obj.to_onnx(path, dtype=dtype, opset=opset)`` for a ``gpumlp.MLP`` or a ``Pipeline`` (what ``load``
    returns): the ``onnx.ModelProto``, written to ``path`` when given; dtype "float32" (default) or "float64"."""
    if not isinstance(obj, (MLP, Pipeline)):
        raise TypeError(f"to_onnx exports a gpumlp.MLP or a gpumlp.Pipeline, got {type(obj).__name__}")
    return obj.to_onnx(path, dtype=dtype, opset=opset)
