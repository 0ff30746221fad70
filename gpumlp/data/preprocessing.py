"""Fitted on the training split only and saved with the model: the mean imputer and the feature
scaler (also used for regression targets)."""
from __future__ import annotations

import numpy as np

SCALINGS = ("standard", "max", "none")


class MeanImputer:
    """A missing value (NaN) ↦ the mean of its feature over the training split (scikit-learn's
    ``SimpleImputer(strategy="mean")``), fitted on the training split only and saved with the model."""

    def __init__(self, mean=None):
        self.mean = None if mean is None else np.asarray(mean, np.float64)

    def fit(self, X, feature_names=None):
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
        empty = np.flatnonzero(np.isnan(X).all(axis=0))
        if empty.size:
            j = int(empty[0])
            name = f" ({feature_names[j]!r})" if feature_names is not None else ""
            raise ValueError(f"feature {j + 1}{name} has no value in the training split to impute from "
                             f"(every one is missing)")
        # the mean of values near the float limit would overflow: divide by a power of two first (exact)
        exponent = np.frexp(np.nanmax(np.abs(X), axis=0))[1]
        self.mean = np.ldexp(np.nanmean(np.ldexp(X, -exponent), axis=0), exponent)
        return self

    def transform(self, X):
        """A float64 copy of X with its NaN replaced by the fitted means."""
        if self.mean is None:
            raise ValueError("the imputer is not fitted; call fit(X_train) first")
        out = np.array(X, np.float64)
        if out.ndim != 2 or out.shape[1] != self.mean.shape[0]:
            raise ValueError(f"X must have shape (n, {self.mean.shape[0]}) for this imputer, got {out.shape}")
        np.copyto(out, self.mean, where=np.isnan(out))
        return out

    def __repr__(self):
        return "MeanImputer()"


# ---------------------------------------------------------------------------------- scaling
def _mean_and_std(X):
    """Per-column mean and standard deviation (d,) float64 that cannot overflow.

    float64 columns are first divided by a power of two near their largest |x| (exact: only the
    exponent changes), so the sums and squares stay near 1 even for values near 1e308, and the
    results are multiplied back: for ordinary data they are the same to the last bit as without.
    Other dtypes (integers, float32) are summed in float64, which they cannot overflow."""
    if X.dtype.kind != "f" or X.dtype.itemsize < 8:
        return X.mean(axis=0, dtype=np.float64), X.std(axis=0, dtype=np.float64)
    # a NaN or inf column gets exponent 0 (frexp's answer for them) and NaN or inf statistics, as before
    exponent = np.frexp(np.abs(X).max(axis=0) if X.size else np.zeros(X.shape[1]))[1]
    scaled = np.ldexp(X.astype(np.float64, copy=False), -exponent)
    return np.ldexp(scaled.mean(axis=0), exponent), np.ldexp(scaled.std(axis=0), exponent)


class Scaler:
    """x ↦ (x − offset) / scale, per feature, fitted on the training split only.

    "standard": offset = mean, scale = standard deviation (1 where a feature is constant);
    "max": offset = 0, scale = the largest |x| in the training split (one number for every
    feature, as dividing MNIST by 255); "none": the identity.
    """

    def __init__(self, kind="standard", offset=None, scale=None):
        if kind is None:
            kind = "none"
        if kind not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {kind!r}")
        self.kind = kind
        self.offset = None if offset is None else np.asarray(offset, np.float64)
        self.scale = None if scale is None else np.asarray(scale, np.float64)

    @property
    def fitted(self):
        return self.kind == "none" or self.scale is not None

    def fit(self, X):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
        d = X.shape[1]
        if self.kind == "standard":
            self.offset, std = _mean_and_std(X)
            self.scale = np.where(std > 0, std, 1.0)
        elif self.kind == "max":
            # largest |x| from the extremes: np.abs would wrap a signed integer minimum (int8 −128 -> −128)
            m = max(abs(float(X.max())), abs(float(X.min()))) if X.size else 0.0
            self.offset, self.scale = np.zeros(d), np.full(d, m if m > 0 else 1.0)
        return self

    def transform(self, X, dtype=np.float32):
        """A new array of ``dtype``; X is never modified.

        (x − offset) / scale is computed on x, offset and scale divided by one power of two per
        feature, near the larger of |offset| and scale: that division is exact, so the result is
        the same to the last bit, and x − offset cannot overflow for values near the float limit."""
        X = np.asarray(X)
        if self.kind == "none":
            return X.astype(dtype)
        exponent = self._exponent(X)
        out = X.astype(np.float64)
        np.ldexp(out, -exponent, out=out)
        out -= np.ldexp(self.offset, -exponent)
        out /= np.ldexp(self.scale, -exponent)
        return out.astype(dtype, copy=False)

    def _exponent(self, X):
        """Checks that the scaler is fitted and X fits it; the per-feature power of two of transform."""
        if self.scale is None:
            raise ValueError("the scaler is not fitted; call fit(X_train) first")
        if X.ndim != 2 or X.shape[1] != self.scale.shape[0]:
            raise ValueError(f"X must have shape (n, {self.scale.shape[0]}) for this scaler, got {X.shape}")
        return np.frexp(np.maximum(np.abs(self.offset), self.scale))[1]

    def inverse_transform(self, X, dtype=np.float64):
        """x·scale + offset (float64 by default): ``transform`` undone, e.g. a regression model's
        standardised outputs back in the targets' units. Computed on scale and offset divided by a
        power of two, as ``transform``, so that no intermediate overflows."""
        X = np.asarray(X)
        if self.kind == "none":
            return X.astype(dtype)
        exponent = self._exponent(X)
        out = X.astype(np.float64)
        out *= np.ldexp(self.scale, -exponent)
        out += np.ldexp(self.offset, -exponent)
        with np.errstate(over="ignore"):  # a value beyond the float range is inf, as in any float product
            np.ldexp(out, exponent, out=out)
        return out.astype(dtype, copy=False)

    def __repr__(self):
        return f"Scaler({self.kind!r})"


def scale_targets(target_scaler, y):
    """Regression targets y (n,) or (n, q) through ``target_scaler`` (float64, y's shape)."""
    y = np.asarray(y, np.float64)
    return target_scaler.transform(y.reshape(y.shape[0], -1), np.float64).reshape(y.shape)


# ---------------------------------------------------------------------------------- streamed statistics
class Moments:
    """Per-feature count, mean and M2 = Σ(x − mean)² of rows seen a chunk at a time (missing values, NaN,
    skipped), and the largest |x|: what ``Scaler`` and ``MeanImputer`` fit on, without the whole array.

    Each chunk's own mean (with the corrected two-pass update) and M2 are computed over the chunk and merged into the running
    ones by Chan, Golub and LeVeque's pairwise update (δ = mean_b − mean_a; M2 = M2_a + M2_b +
    δ²·n_a·n_b/n): no sum of squares that cancels. As ``Scaler.fit`` does for float64 data, every value is
    taken divided by a power of two per feature (2^e, e the exponent of the largest |x| seen so far; exact),
    so that neither the sums nor the squares overflow for values near 1e308; when a larger value comes,
    the running mean and M2 are rescaled (by powers of two: exact). ``merge`` combines the moments of
    other rows (another rank's) the same way."""

    def __init__(self, d):
        self.n = np.zeros(d)            # values seen per feature (float: counts beyond 2**53 stay approximate)
        self.rows = 0                   # rows seen, missing values or not
        self.mean = np.zeros(d)         # in units of 2**exponent
        self.m2 = np.zeros(d)           # in units of 4**exponent
        self.exponent = np.zeros(d, np.int64)
        self.maxabs = np.zeros(d)

    def add(self, X):
        """Take the rows of X (rows, d), float64 with NaN for missing values."""
        X = np.asarray(X, np.float64)
        if X.shape[0] == 0:
            return self
        other = Moments(X.shape[1])
        present = ~np.isnan(X)
        other.n = present.sum(axis=0).astype(np.float64)
        other.rows = X.shape[0]
        with np.errstate(invalid="ignore"):
            other.maxabs = np.where(other.n > 0, np.nanmax(np.where(present, np.abs(X), 0), axis=0), 0.0)
        other.exponent = np.frexp(np.where(np.isfinite(other.maxabs), other.maxabs, 0))[1].astype(np.int64)
        scaled = np.ldexp(X, -other.exponent)
        count = np.maximum(other.n, 1)
        other.mean = np.where(present, scaled, 0).sum(axis=0) / count
        other.mean += np.where(present, scaled - other.mean, 0).sum(axis=0) / count  # the sum's rounding, corrected
        other.m2 = np.where(present, (scaled - other.mean) ** 2, 0).sum(axis=0)
        return self.merge(other)

    def merge(self, other):
        """Add the moments of other rows (``Moments`` of the same features). Returns self."""
        e = np.maximum(np.where(self.n > 0, self.exponent, other.exponent), np.where(other.n > 0, other.exponent,
                                                                                  self.exponent))
        a_mean, a_m2 = np.ldexp(self.mean, self.exponent - e), np.ldexp(self.m2, 2 * (self.exponent - e))
        b_mean, b_m2 = np.ldexp(other.mean, other.exponent - e), np.ldexp(other.m2, 2 * (other.exponent - e))
        n = self.n + other.n
        total = np.maximum(n, 1)
        delta = b_mean - a_mean
        self.mean = a_mean + delta * (other.n / total)
        self.m2 = a_m2 + b_m2 + delta * delta * (self.n * other.n / total)
        self.n, self.exponent, self.rows = n, e, self.rows + other.rows
        self.maxabs = np.maximum(self.maxabs, other.maxabs)
        return self

    def means(self):
        """The mean of each feature's values (NaN where a feature has none)."""
        with np.errstate(invalid="ignore"):
            return np.where(self.n > 0, np.ldexp(self.mean, self.exponent), np.nan)

    def stds(self, over=None):
        """The standard deviation of each feature (NumPy's default, ddof 0) over its values, or over
        ``over`` rows: the rows with imputed values counted at the mean, which adds nothing to M2."""
        count = self.n if over is None else np.full(self.n.shape, float(over))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, np.ldexp(np.sqrt(self.m2 / count), self.exponent), np.nan)

    def to_json(self):
        return {k: getattr(self, k).tolist() for k in ("n", "mean", "m2", "exponent", "maxabs")} | {"rows": self.rows}

    @classmethod
    def from_json(cls, obj):
        m = cls(len(obj["n"]))
        for k in ("n", "mean", "m2", "maxabs"):
            setattr(m, k, np.asarray(obj[k], np.float64))
        m.exponent, m.rows = np.asarray(obj["exponent"], np.int64), int(obj["rows"])
        return m


def scaler_from_moments(kind, moments, imputed=False):
    """The ``Scaler`` that ``Scaler(kind).fit`` gives on the rows of ``moments`` (after imputation when
    ``imputed``: missing values at their feature's mean, so the mean is kept and the count is every row)."""
    scaler = Scaler(kind)
    if kind == "standard":
        std = moments.stds(over=moments.rows if imputed else None)
        scaler.offset, scaler.scale = moments.means(), np.where(std > 0, std, 1.0)
    elif kind == "max":
        m = float(moments.maxabs.max(initial=0.0))
        d = moments.n.shape[0]
        scaler.offset, scaler.scale = np.zeros(d), np.full(d, m if m > 0 else 1.0)
    return scaler


def imputer_from_moments(moments, feature_names=None):
    """The ``MeanImputer`` that ``MeanImputer().fit`` gives on the rows of ``moments``."""
    empty = np.flatnonzero(moments.n == 0)
    if empty.size:
        j = int(empty[0])
        name = f" ({feature_names[j]!r})" if feature_names is not None else ""
        raise ValueError(f"feature {j + 1}{name} has no value in the training split to impute from "
                         f"(every one is missing)")
    return MeanImputer(moments.means())
