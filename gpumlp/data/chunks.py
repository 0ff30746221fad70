"""What every streamed file format gives the reader: its chunks (units fixed by the file: a Parquet row
group, a block of rows of an .npy or CSV file) and their rows, a slice at a time.

    source.chunks                     [Chunk], in file order (a CSV's are found by reading it once)
    source.read(chunk, slice_rows)    the chunk's rows as ``Slice``s of at most ``slice_rows`` rows
    source.n_rows, .n_features, .feature_names, .label_name

A ``Slice`` holds float64 features with NaN where a value is missing, the labels as read (numbers as
float64 with NaN where missing, or text), and for each row the number an error message names: the
file's line for a CSV (the header being line 1, as the in-memory reader counts), the row counted from
1 for Parquet and .npy. Nothing here is kept beyond the slice being read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows per chunk of an .npy or CSV file: about 2**20 values, whatever the memory budget, so that the
# chunks (the streamed split's and the digest's units) are the same for every budget and every rank.
CHUNK_VALUES = 2**20
MAX_CHUNK_ROWS = 65536


def chunk_rows_for(n_columns):
    """The rows of a chunk of a file with ``n_columns`` columns (at least 64)."""
    return int(min(MAX_CHUNK_ROWS, max(64, CHUNK_VALUES // max(n_columns, 1))))


@dataclass
class Chunk:
    index: int           # position in the file's (or directory's) chunks, in file order
    rows: int            # its rows
    file: int = 0        # which file of a Parquet directory
    first_row: int = 0   # its first row's index (0-based) in that file
    locator: object = None  # the format's own: a row group, or a CSV chunk's (byte offset, line before it)


@dataclass
class Slice:
    X: np.ndarray                 # (r, d) float64, NaN where missing; C or F order (Parquet: F)
    y: np.ndarray | None          # (r,) float64 (NaN where missing) or text; None without labels
    y_missing: np.ndarray | None  # (r,) bool
    rows: np.ndarray              # (r,) int64: the line (CSV) or the 1-based row (Parquet, .npy) of each row
    file: str                     # the file it comes from

    def __len__(self):
        return self.X.shape[0]

    def take(self, keep):
        """The rows where ``keep`` (a bool mask or indices)."""
        return Slice(self.X[keep], None if self.y is None else self.y[keep],
                     None if self.y_missing is None else self.y_missing[keep], self.rows[keep], self.file)


class Source:
    """A streamed file (or directory) of one format; see the module docstring. Subclasses set
    ``path``, ``format``, ``n_features``, ``feature_names``, ``label_name``, ``has_labels`` and
    implement ``chunks`` and ``read``."""

    path = ""
    format = ""
    feature_names = None
    label_name = None
    has_labels = False
    random_access = True   # chunks can be read in any order at no extra cost (not a gzipped CSV)

    @property
    def n_rows(self):
        return int(sum(c.rows for c in self.chunks))

    def describe_column(self, j):
        """Feature j (0-based) as an error message names it: its 1-based column in the file and its name."""
        col = self.file_column(j)
        return f"column {col + 1}" + (f" ({self.feature_names[j]!r})" if self.feature_names is not None else "")

    def describe_label(self):
        if self.label_column is None:
            return "the labels"
        return f"column {self.label_column + 1}" + (f" ({self.label_name!r})" if self.label_name is not None else "")

    label_column = None  # the label column's 0-based index in the file (None: a separate labels file)

    def file_column(self, j):
        """The file's 0-based column of feature j (the label column skipped)."""
        return j + (1 if self.label_column is not None and j >= self.label_column else 0)

    def signature(self):
        """What identifies the file's layout in the digest: format, names, shape."""
        return [self.format, self.feature_names, self.label_name, self.n_features]

    def close(self):
        """Release what the source holds open (a cached file, a memory map)."""
