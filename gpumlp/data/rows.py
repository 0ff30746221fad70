"""What happens to a slice's rows as they are read (``gpumlp.data.chunks.Slice``): the missing-value
policy (``apply_missing``) and each row's part of the streamed split (``split_parts``). The statistics
pass and every later read apply the same two rules, so they see the same rows in the same parts."""
from __future__ import annotations

import numpy as np

from .split import stratum_keys


def _where(source, piece, i):
    return f"{piece.file}: " + (f"line {piece.rows[i]}" if source.format == "csv" else f"row {piece.rows[i]}")


def apply_missing(source, piece, missing, count=None):
    """The slice's rows after the ``missing`` policy: "error" raises at the first missing value,
    "drop" drops the rows that have one, "keep"/"impute" keeps NaN features for the imputer (a missing
    label is an error). An infinite value is an error under every policy. ``count``: a one-item list
    that the number of dropped rows is added to."""
    X = piece.X
    finite = np.isfinite(X)
    bad_rows = ~finite.all(axis=1)
    label_missing = piece.y_missing if piece.y_missing is not None else np.zeros(len(piece), bool)
    if not bad_rows.any() and not label_missing.any():
        return piece
    inf = np.isinf(X)
    if inf.any():
        i, j = (int(k) for k in np.argwhere(inf)[0])
        raise ValueError(f"{_where(source, piece, i)}, {source.describe_column(j)}: the value is infinite "
                         f"({X[i, j]}); features must be finite numbers")
    if missing == "drop":
        keep = ~(bad_rows | label_missing)
        if count is not None:
            count[0] += int((~keep).sum())
        return piece.take(keep)
    if label_missing.any():
        i = int(np.flatnonzero(label_missing)[0])
        raise ValueError(f"{_where(source, piece, i)}, {source.describe_label()}: missing label; labels cannot "
                         f"be imputed: drop those rows (missing='drop', --missing drop)")
    if missing in ("keep", "impute"):
        return piece
    i, j = (int(k) for k in np.argwhere(~finite)[0])
    raise ValueError(f"{_where(source, piece, i)}, {source.describe_column(j)}: missing value (empty, NA, NaN "
                     f"or ?); drop such rows (missing='drop', --missing drop) or impute them (missing='impute', --missing impute)")


def split_parts(split, chunk, piece, counters, stratify):
    """Each row's part under ``split`` (``StreamSplit.TRAIN``, ``VALIDATION``, ``TEST``)."""
    keys = stratum_keys(piece.y) if stratify and piece.y is not None else np.zeros(len(piece), np.uint64)
    return split.assign(chunk.index, keys, counters)
