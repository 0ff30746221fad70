"""Any data file by its format: detected from the name or the first bytes, read by its module."""
from __future__ import annotations

import os

from .base import _ZIP_MAGIC, EMBEDDED, Table, _sniff
from .csvfile import read_csv
from .digits import load_digits
from .idx import _IDX_DTYPES, load_idx
from .npz import load_npz

FORMATS = ("auto", "idx", "csv", "npz")


def detect_format(path):
    """'idx' | 'csv' | 'npz' from the file's name, or else from its first bytes."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if "idx" in name or name.endswith((".ubyte", ".idx")):
        return "idx"
    head = _sniff(path, 4)
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES:
        return "idx"
    return "csv"


def load(path, format="auto", labels=None, label_column=-1, delimiter=None, require_labels=True, *,
         header=None, missing="error"):
    """X, y from "digits" (the embedded set) or a file in ``format`` ("auto" guesses it).

    ``labels``: the IDX labels file (MNIST's name is found without it); ``label_column``,
    ``delimiter``, ``header`` and ``missing``: for CSV (see ``read_csv``). With
    ``require_labels=False`` y may be None (for prediction). ``load_table`` returns the header's names too.
    """
    table = load_table(path, format, labels, label_column, delimiter, require_labels, header=header,
                       missing=missing)
    return table.X, table.y


def load_table(path, format="auto", labels=None, label_column=-1, delimiter=None, require_labels=True, *,
               header=None, missing="error"):
    """As ``load``, as a ``Table``: X, y, and a CSV header's feature and label names."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if isinstance(path, str) and path in EMBEDDED and not os.path.exists(path):
        _refuse_csv_options(path, "embedded", header, missing)
        return Table(*load_digits())
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory; give a data file")
    fmt = detect_format(path) if format == "auto" else format
    if labels is not None and fmt != "idx":
        raise ValueError(f"a separate labels file is only used with IDX data, not {fmt}")
    if fmt != "csv":
        _refuse_csv_options(path, fmt, header, missing)
    if fmt == "idx":
        return Table(*load_idx(path, labels, require_labels))
    if fmt == "csv":
        return read_csv(path, label_column, delimiter, require_labels, header=header, missing=missing)
    return Table(*load_npz(path, require_labels))


def _refuse_csv_options(path, fmt, header, missing):
    if header is not None or missing != "error":
        raise ValueError(f"header and missing apply to CSV files; {path} is {fmt} data")
