"""The plateau monitor: early stopping, scikit-learn's convergence rule and the "adaptive" schedule.

One rule, scikit-learn's: an epoch whose monitored value does not improve on the best so far by more
than ``tol`` counts as "no change"; more than ``patience`` such epochs in a row are a plateau. At a
plateau the learning-rate schedule decides (``Schedule.on_plateau``): "adaptive" divides η by 5 and
goes on (until η is too small), every other schedule stops training.

    mode "val_score"   early stopping: the validation score, higher is better; the best epoch's
                       parameters are kept (``best_params``) and restored at the end of the run
    mode "loss"        the training loss, lower is better (convergence rule, "adaptive" schedule)

A monitor belongs to one run: ``fit`` opens one, and a checkpoint saved during that fit carries it
(``to_json``, plus ``best_params`` as an array), so that loading the file and calling ``fit`` with
the same settings continues the run exactly (``continues``). ``partial_fit`` keeps one open across
calls (``incremental``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields

MODES = ("val_score", "loss")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _optional(check):
    return lambda v: v is None or check(v)


@dataclass
class PlateauMonitor:
    """scikit-learn's plateau rule on one value per epoch; see the module docstring."""

    # what the run asked for (two monitors with the same settings belong to the same run)
    mode: str
    patience: int
    tol: float
    incremental: bool = False  # kept open across partial_fit calls
    split: bool = False  # early stopping on a held-out part of the training data
    validation_fraction: float | None = None
    # where the run is
    open: bool = True
    best: float | None = None
    best_epoch: int | None = None
    count: int = 0  # epochs in a row without an improvement > tol
    split_seed: int | None = None  # the held-out part's seed, drawn once per run
    best_params: object = field(default=None, repr=False, compare=False)  # θ of the best epoch (val_score)

    SETTINGS = ("mode", "patience", "tol", "incremental", "split", "validation_fraction")

    def continues(self, other):
        """Whether this open monitor is the one ``other`` (a fresh monitor for a new call) asks for."""
        return self.open and all(getattr(self, k) == getattr(other, k) for k in self.SETTINGS)

    def watch(self, value, epoch, theta, schedule, lr):
        """Count epoch ``epoch``'s value; keep θ when it is the best so far (mode val_score). Returns
        a stop reason ("plateau", "lr_too_small") or None."""
        finite = math.isfinite(value)
        if self.mode == "val_score":  # higher is better; improvement must exceed tol
            worse = not finite or (self.best is not None and value < self.best + self.tol)
            better = finite and (self.best is None or value > self.best)
        else:
            worse = not finite or (self.best is not None and value > self.best - self.tol)
            better = finite and (self.best is None or value < self.best)
        self.count = self.count + 1 if worse else 0
        if better:
            self.best, self.best_epoch = value, epoch
            if self.best_params is not None:
                self.best_params[...] = theta
        if self.count > self.patience:
            if schedule.on_plateau(lr):
                return "lr_too_small" if schedule.name == "adaptive" else "plateau"
            self.count = 0
        return None

    # ------------------------------------------------------------------ checkpoints
    def to_json(self):
        """Every field but ``best_params`` (stored beside it as an array), JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best_params"}

    @classmethod
    def from_json(cls, d):
        """The inverse of ``to_json``; ValueError naming the field for anything missing or wrong."""
        expected = sorted(_CHECKS)
        if not isinstance(d, dict) or set(d) != set(_CHECKS):
            raise ValueError(f"the early-stopping state must be an object with the keys {expected}")
        for key, ok in _CHECKS.items():
            if not ok(d[key]):
                raise ValueError(f"the early-stopping state's {key!r} is wrong: {d[key]!r}")
        return cls(**{k: (float(v) if k in ("tol", "best", "validation_fraction") and v is not None else v)
                      for k, v in d.items()})


# Each field of to_json's object and what it may hold.
_CHECKS = {
    "mode": lambda v: v in MODES,
    "patience": lambda v: _is_int(v) and v >= 1,
    "tol": lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
    "incremental": lambda v: isinstance(v, bool),
    "split": lambda v: isinstance(v, bool),
    "validation_fraction": _optional(lambda v: _is_real(v) and 0 < v < 1),
    "open": lambda v: isinstance(v, bool),
    "best": _optional(lambda v: _is_real(v) and math.isfinite(v)),
    "best_epoch": _optional(lambda v: _is_int(v) and v >= 0),
    "count": lambda v: _is_int(v) and v >= 0,
    "split_seed": _optional(lambda v: _is_int(v) and v >= 0),
}
