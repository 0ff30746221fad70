"""Data for training: the embedded digits, loaders for a user's files, a seeded split, feature scaling.

    X, y = load_digits()                                # (1797, 64) uint8 pixels 0..16, labels 0..9
    X, y = load("train-images-idx3-ubyte.gz")           # MNIST IDX; labels file found by its name
    X, y = load("data.csv", label_column="label")       # CSV, label column by name or index
    X, y = load("data.tsv", missing="drop")             # tab-separated; rows with missing values dropped
    table = load_table("data.csv")                      # X, y and the header's feature and label names
    X, y = load("data.npz")                             # NPZ with arrays X and y
    train, test = split_indices(y, 0.2, seed=0)         # the one hold-out rule (stratified, seeded)
    codes = LabelEncoder().fit(y).transform(y)          # class labels -> output indices
    scaler = Scaler("standard").fit(X[train])           # fitted on the training split only
    d = prepare("data.csv", missing="impute")           # a run's data: split, encoded, imputed, scaled

Every loader returns host NumPy arrays (X 2-D, y 1-D or None; y is text, dtype <U, when a CSV's
labels are words) and raises ValueError with the file's name and what is wrong (rows and columns
counted from 1) when a file is not what it claims to be. Only regular files are read: a FIFO or a
device is refused before a byte is read.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io as _io
import itertools
import json
import math
import numbers
import os
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

FORMATS = ("auto", "idx", "csv", "npz")
SCALINGS = ("standard", "max", "none")
EMBEDDED = ("digits",)

# IDX type codes (third byte of the magic number) -> big-endian dtype; see yann.lecun.com/exdb/mnist
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_INFLATE_RATIO = 1032  # deflate's limit: no gzip stream expands more, so a header asking more lies
_IDX_MARGIN = 4096         # bytes read past an IDX header's size, to say how much too long a file is
_CHUNK = 2**20
_MISSING = frozenset({"", "na", "nan", "n/a", "?"})  # a CSV field, stripped and lower-cased
_MISSING_SPELLINGS = sorted({"".join(letters) for token in _MISSING
                             for letters in itertools.product(*({c.lower(), c.upper()} for c in token))})
_MISSING_POLICIES = ("error", "drop", "keep")
_HEADER_SAMPLE = 100       # rows below the first that header detection compares it with


# ---------------------------------------------------------------------------------- embedded
def load_digits():
    """The UCI optical-recognition handwritten digits, as scikit-learn ships them (CC BY 4.0).

    Returns X (1797, 64) uint8 with 8×8 images flattened row by row, values 0..16, and y (1797,)
    int64 labels 0..9. Attribution: E. Alpaydin, C. Kaynak, UCI ML Repository (gpumlp/datasets/DIGITS.txt).
    """
    with resources.files("gpumlp").joinpath("datasets", "digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            return z["X"], z["y"].astype(np.int64)


# ---------------------------------------------------------------------------------- files
@dataclass
class Table:
    """What a loader read. X (n, d): float64 from a CSV, as stored from IDX and NPZ; y (n,) numbers,
    or text (dtype <U) from a CSV whose label column holds words; None without labels.
    ``feature_names`` and ``label_name``: a CSV header's names (None without a header row);
    ``n_dropped``: the rows left out for missing values (``missing="drop"``)."""
    X: np.ndarray
    y: np.ndarray | None
    feature_names: list | None = None
    label_name: str | None = None
    header: bool = False
    n_dropped: int = 0


def _open_regular(path, noun="data file", error=ValueError):
    """``path`` opened for binary reading, or ``error`` if it is anything but a regular file.

    Checked on the opened file (fstat), before a byte is read: a FIFO would block forever and a
    device such as /dev/zero never ends. O_NONBLOCK lets opening a FIFO return at once instead of
    waiting for a writer; it changes nothing for a regular file."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {noun}: {p}") from None
    except IsADirectoryError:
        raise error(f"{p} is a directory, not a {noun}") from None
    except OSError as exc:
        raise error(f"{p}: cannot be opened ({(exc.strerror or 'error').lower()})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{p} is {_file_kind(mode)}, not a {noun}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode):
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
             (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")]
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _sniff(path, n):
    """The first ``n`` bytes, gunzipped when the file starts with gzip's magic number."""
    with _open_regular(path) as f:
        head = f.read(n)
        if head[:2] != _GZIP_MAGIC:
            return head
        f.seek(0)
        try:
            with gzip.GzipFile(fileobj=f) as g:
                return g.read(n)
        except (OSError, EOFError, zlib.error):
            return b""


# ---------------------------------------------------------------------------------- IDX
def read_idx(path):
    """One IDX file (raw or gzipped) as a native-endian array of the shape its header gives.

    The magic number is two zero bytes, a type code (0x08 ubyte ... 0x0E double) and the number of
    dimensions; then each dimension as a big-endian int32; then the data, which must fill the file.
    Gzipped data are decompressed a chunk at a time, never beyond what the header implies.
    """
    with _open_regular(path) as f:
        compressed = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        if not compressed:
            return _parse_idx(f, path, data_bytes=lambda header: size - header)
        try:
            with gzip.GzipFile(fileobj=f) as g:
                return _parse_idx(g, path, most=_MAX_INFLATE_RATIO * size + _IDX_MARGIN)
        except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: corrupt gzip data (damaged or truncated)") from None


def _parse_idx(stream, path, data_bytes=None, most=None):
    """The IDX array from ``stream``. ``data_bytes(header)``: how many bytes follow the header (a
    raw file's size is known); else up to ``most`` bytes are read, the header's size plus a margin."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {magic.hex() or 'missing'}; expected "
                         f"00 00, a type code in {{08, 09, 0b, 0c, 0d, 0e}} and a dimension count >= 1)")
    ndim = magic[3]
    header = 4 + 4 * ndim
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated ({4 + len(raw_dims)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = np.dtype(_IDX_DTYPES[magic[2]])
    expected = math.prod(dims) * dtype.itemsize
    says = f"{path}: IDX header says shape {dims} ({expected} bytes of data), but the file holds"
    if data_bytes is not None:
        held = data_bytes(header)
        if held != expected:
            raise ValueError(f"{says} {held} bytes after the header")
        data = _read_up_to(stream, expected)
    else:
        if expected > most:
            raise ValueError(f"{says} gzip data that cannot expand to that much")
        data = _read_up_to(stream, expected + _IDX_MARGIN + 1)  # past the end: gzip checks its CRC there
        if len(data) > expected + _IDX_MARGIN:
            raise ValueError(f"{says} more than {expected + _IDX_MARGIN} bytes after the header")
        if len(data) != expected:
            raise ValueError(f"{says} {len(data)} bytes after the header")
    return np.frombuffer(data, dtype, count=math.prod(dims)).reshape(dims).astype(dtype.newbyteorder("="))


def _read_up_to(stream, n):
    """At most ``n`` bytes, a chunk at a time (a gzip stream's output is never asked for whole)."""
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(min(_CHUNK, n - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def _idx_labels_path(images):
    """MNIST's naming: train-images-idx3-ubyte[.gz] -> train-labels-idx1-ubyte[.gz], if it exists."""
    head, name = os.path.split(os.fspath(images))
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in name:
            candidate = os.path.join(head, name.replace(a, b))
            if os.path.exists(candidate):
                return candidate
    return None


def load_idx(images, labels=None, require_labels=True):
    """MNIST/Fashion-MNIST style IDX: images (n, ...) flattened to X (n, features), labels (n,)."""
    X = read_idx(images)
    if X.ndim < 2:
        raise ValueError(f"{images}: IDX images must have at least 2 dimensions (n, ...), got shape {X.shape}")
    X = X.reshape(X.shape[0], -1)
    if labels is None:
        labels = _idx_labels_path(images)
        if labels is None:
            if require_labels:
                raise ValueError(f"{images}: no labels file given and none found beside it "
                                 f"(pass the IDX labels file, e.g. --labels train-labels-idx1-ubyte.gz)")
            return X, None
    y = read_idx(labels)
    if y.ndim != 1:
        raise ValueError(f"{labels}: IDX labels must be 1-D, got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{labels} holds {y.shape[0]} labels but {images} holds {X.shape[0]} images")
    return X, y


# ---------------------------------------------------------------------------------- CSV
def csv_delimiter(path, delimiter=None):
    """The delimiter to read ``path`` with. None: a tab for .tsv (and .tsv.gz), else a comma;
    "tab" and the two characters backslash-t (as typed on a shell) mean a tab."""
    if delimiter is None:
        return "\t" if os.fspath(path).lower().endswith((".tsv", ".tsv.gz")) else ","
    if not isinstance(delimiter, str):
        raise TypeError(f"delimiter must be a string, got {type(delimiter).__name__}")
    if delimiter.lower() == "tab" or delimiter == "\\t":
        return "\t"
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"delimiter must be one character other than a quote or newline (or 'tab'), "
                         f"got {delimiter!r}")
    return delimiter


@contextlib.contextmanager
def _csv_text(path):
    """The CSV as text: gunzipped when it starts with gzip's magic number, a UTF-8 BOM dropped."""
    with _open_regular(path) as f:
        compressed = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        binary = gzip.GzipFile(fileobj=f) if compressed else f
        with _io.TextIOWrapper(binary, encoding="utf-8-sig", newline="") as text:
            try:
                yield text
            except UnicodeDecodeError:
                raise ValueError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
            except (OSError, EOFError, zlib.error):
                raise ValueError(f"{path}: corrupt gzip data (damaged or truncated)") from None
            except csv.Error as exc:
                raise ValueError(f"{path}: not a readable CSV file ({exc})") from None


def _records(text, delimiter):
    """(line number, fields) of each record that is not blank."""
    reader = csv.reader(text, delimiter=delimiter)
    for fields in reader:
        if fields and not (len(fields) == 1 and not fields[0].strip()):
            yield reader.line_num, fields


def _field_kind(field):
    """"missing", "number" or "text" for one CSV field."""
    s = field.strip()
    if s.lower() in _MISSING:
        return "missing"
    try:
        float(s)
        return "number"
    except ValueError:
        return "text"


def _looks_like_header(first, below):
    """Whether the first record names the columns: it counts them 0, 1, 2, ... (pandas' default
    names, as ``DataFrame.to_csv(index=False)`` writes them), or it differs in kind from the rows
    below it (text over a column of numbers). Two columns "0,1" are too likely to be data."""
    names = [s.strip() for s in first]
    if len(names) >= 3 and names == [str(i) for i in range(len(names))]:
        return True
    if not below:
        return any(_field_kind(s) == "text" for s in first)
    for j, field in enumerate(first):
        kinds = {_field_kind(row[j]) for row in below if j < len(row)}
        if _field_kind(field) == "text" and "number" in kinds and "text" not in kinds:
            return True
    return False


def _csv_head(path, delimiter, header, label_column):
    """(header names or None, the header's line number or 0, the number of columns) from the
    first records of the file (a label column named in the first row makes it a header)."""
    with _csv_text(path) as text:
        head = list(itertools.islice(_records(text, delimiter), _HEADER_SAMPLE + 1))
    if not head:
        return None, 0, 0
    first_line, first = head[0]
    if header is None:
        named = isinstance(label_column, str) and not _is_int(label_column) and \
            label_column.strip() in (s.strip() for s in first)
        header = named or _looks_like_header(first, [fields for _, fields in head[1:]])
    if not header:
        return None, 0, len(first)
    return [s.strip() for s in first], first_line, len(first)


def load_csv(path, label_column=-1, delimiter=None, require_labels=True, *, header=None, missing="error"):
    """A numeric CSV (header line optional, detected): one row per sample. Returns (X, y).

    ``label_column``: the column holding the target, as an index (negative counts from the end) or a
    header name; ``None`` when every column is a feature. X (n, columns − 1) float64; y (n,) float64,
    or text (dtype <U) when the label column holds words. See ``read_csv`` for the other options.
    """
    table = read_csv(path, label_column, delimiter, require_labels, header=header, missing=missing)
    return table.X, table.y


def read_csv(path, label_column=-1, delimiter=None, require_labels=True, *, header=None, missing="error"):
    """A CSV as a ``Table`` (X, y and the header's names).

    ``delimiter``: None is a tab for .tsv files and a comma otherwise ("tab" or "\\t" mean a tab).
    ``header``: None detects it (a first row of text over numbers, or one that counts the columns
    0, 1, 2, ...), True or False force it. A UTF-8 BOM is dropped. Quoted numbers ("1.5") parse.
    ``missing`` (empty fields, NA, NaN, N/A, ?): "error" names the first one's row and column (rows
    are the file's lines, header included, from 1); "drop" drops those rows; "keep" returns NaN in
    X for the caller to impute (a missing label is still an error: labels cannot be imputed).
    """
    if missing not in _MISSING_POLICIES:
        raise ValueError(f"missing must be one of {_MISSING_POLICIES}, got {missing!r}")
    if header not in (None, True, False):
        raise ValueError(f"header must be None (detect), True or False, got {header!r}")
    delimiter = csv_delimiter(path, delimiter)
    names, header_line, n_cols = _csv_head(path, delimiter, header, label_column)
    if label_column is None:
        if require_labels:
            raise ValueError("label_column is None but labels are required")
        col = None
    else:
        col = _label_index(path, label_column, names, n_cols)
    values = _numeric_csv(path, delimiter, header_line, n_cols) if n_cols else np.zeros((0, 0))
    if values is not None and values.shape[0] == 0:
        raise ValueError(f"{path}: no data rows")
    n_dropped = 0
    if values is None or (missing != "keep" and np.isnan(values).any()) or \
            (col is not None and np.isnan(values[:, col]).any()):
        X, y, n_dropped = _csv_by_fields(path, delimiter, header_line, n_cols, col, names, missing)
    else:
        X, y = (values, None) if col is None else (np.delete(values, col, axis=1), values[:, col])
    if col is not None and n_cols < 2:
        raise ValueError(f"{path}: has a single column; it needs features and a label column")
    features = None if names is None else [n for j, n in enumerate(names) if j != col]
    return Table(X, y, features, None if names is None or col is None else names[col], names is not None,
                 n_dropped)


def csv_columns(path, delimiter=None, header=None, label_column=None):
    """(the header's names or None, the number of columns) of a CSV as ``read_csv`` sees them, from
    its first rows only: what a caller needs to choose the label column before reading the file.
    ``label_column``, a name, counts as evidence of a header (as in ``read_csv``)."""
    if header not in (None, True, False):
        raise ValueError(f"header must be None (detect), True or False, got {header!r}")
    names, _, n_cols = _csv_head(path, csv_delimiter(path, delimiter), header, label_column)
    return names, n_cols


def _label_index(path, label_column, names, n_cols):
    """The label column's 0-based index from a header name or an index (text such as "-1" too)."""
    if isinstance(label_column, str) and not _is_int(label_column):
        if names is None:
            raise ValueError(f"label_column {label_column!r} is a name, but {path} has no header line")
        if label_column.strip() not in names:
            raise ValueError(f"label_column {label_column!r} is not a column of {path}; columns: {names}")
        if names.count(label_column.strip()) > 1:
            raise ValueError(f"label_column {label_column!r} names {names.count(label_column.strip())} columns "
                             f"of {path}; give its index instead")
        return names.index(label_column.strip())
    col = int(label_column)
    if n_cols and not -n_cols <= col < n_cols:
        raise ValueError(f"label_column {label_column} is out of range for {path}, which has {n_cols} columns")
    return col % n_cols if n_cols else 0


def _numeric_csv(path, delimiter, header_line, n_cols):
    """The table by NumPy's fast reader (n, n_cols) float64, or None when it cannot read it:
    then the slower reader below says exactly what is wrong, or reads the text labels."""
    with _csv_text(path) as text, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported by the caller
        try:
            values = np.loadtxt(text, delimiter=delimiter, quotechar='"', skiprows=header_line, ndmin=2,
                                dtype=np.float64, comments=None)
        except ValueError:
            return None
    return values if values.shape[0] == 0 or values.shape[1] == n_cols else None


def _csv_by_fields(path, delimiter, header_line, n_cols, col, names, missing):
    """(X, y, rows dropped) read field by field: the reader for files with text labels or missing
    values, and the one that names the row and column of whatever is wrong."""
    with _csv_text(path) as text:
        rows = [(line, fields) for line, fields in _records(text, delimiter) if line > header_line]
    against = "the header" if names is not None else "the first row"
    for line, fields in rows:
        if len(fields) != n_cols:
            raise ValueError(f"{path}: not a numeric CSV file: row {line} has {len(fields)} fields, "
                             f"{against} has {n_cols}")
    if not rows:
        raise ValueError(f"{path}: no data rows")
    lines = np.array([line for line, _ in rows], np.int64)
    cells = np.char.strip(np.array([fields for _, fields in rows], dtype=str))  # (n, n_cols)
    is_missing = _is_missing(cells)
    columns = [_parse_column(path, cells[:, j], is_missing[:, j], lines, j, names, j == col)
               for j in range(n_cols)]
    keep = _missing_rows(path, is_missing, lines, col, names, missing)
    features = [c for j, c in enumerate(columns) if j != col]
    X = np.column_stack(features) if features else np.zeros((len(rows), 0))
    return X[keep], None if col is None else columns[col][keep], int((~keep).sum())


def _is_missing(cells):
    """Which (stripped) cells are missing values, compared with every spelling of each token
    (nan, NaN, NAN, ...): much faster than lower-casing every cell."""
    is_missing = np.zeros(cells.shape, bool)
    for spelling in _MISSING_SPELLINGS:
        is_missing |= cells == spelling
    return is_missing


def _column_name(j, names):
    return f"column {j + 1}" + (f" ({names[j]!r})" if names is not None else "")


def _parse_column(path, cells, is_missing, lines, j, names, is_label):
    """Column j's stripped ``cells`` as float64 with NaN where missing, or as text for a label
    column of words. Text among features, or numbers and text mixed, is an error."""
    try:
        return np.where(is_missing, "nan", cells).astype(np.float64)
    except ValueError:  # some cell is text: find it (only such columns are read one cell at a time)
        pass
    is_number = np.array([_field_kind(s) == "number" for s in cells])
    is_text = ~is_number & ~is_missing
    if not is_text.any():  # NumPy refused a number that Python's float reads
        return np.array([float(s) if number else np.nan for s, number in zip(cells, is_number)])
    first = int(np.argmax(is_text))
    where = f"{_column_name(j, names)} holds text ({str(cells[first])!r} in row {lines[first]})"
    if not is_label:
        raise ValueError(f"{path}: not a numeric CSV file: {where}; feature columns must hold numbers")
    if is_number.any():
        number = int(np.argmax(is_number))
        raise ValueError(f"{path}: not a numeric CSV file: the label {where} and numbers "
                         f"({str(cells[number])!r} in row {lines[number]}); labels must be all numbers or all text")
    return cells.copy()


def _missing_rows(path, cells, lines, col, names, missing):
    """The rows to keep, as a mask, after applying the ``missing`` policy to the missing cells."""
    rows_missing = cells.any(axis=1)
    if not rows_missing.any():
        return ~rows_missing
    if missing == "drop":
        if rows_missing.all():
            raise ValueError(f"{path}: every row has a missing value; none is left after dropping them")
        return ~rows_missing
    if missing == "keep" and col is not None and cells[:, col].any():
        i = int(np.flatnonzero(cells[:, col])[0])
        raise ValueError(f"{path}: missing label in row {lines[i]}, {_column_name(col, names)}; labels "
                         f"cannot be imputed: drop those rows (missing='drop')")
    if missing == "keep":
        return np.ones(len(lines), bool)
    i, j = (int(k) for k in np.argwhere(cells)[0])  # the first in reading order
    raise ValueError(f"{path}: missing value in row {lines[i]}, {_column_name(j, names)} (empty, NA, NaN "
                     f"or ?); drop such rows (missing='drop') or impute them (missing='keep')")


def _is_int(s):
    try:
        int(s)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------- NPZ
def load_npz(path, require_labels=True):
    """An ``.npz`` archive with arrays ``X`` (n, features) and ``y`` (n,); never unpickles."""
    with _open_regular(path) as f:
        try:
            with np.load(f, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise ValueError(f"{path}: no array named 'X' (found {sorted(z.files)})")
                X = z["X"]
                y = z["y"] if "y" in z.files else None
        except ValueError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path}: cannot read arrays (Python objects or a damaged .npy header); "
                             f"X and y must be plain numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
            raise ValueError(f"{path}: not a readable .npz archive (damaged or not a zip file)") from None
    if y is None and require_labels:
        raise ValueError(f"{path}: no array named 'y' with the labels")
    _check_npz_arrays(path, X, y)
    return X, y


def _check_npz_arrays(path, X, y):
    if X.ndim != 2:
        raise ValueError(f"{path}: X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{path}: X holds {_dtype_words(X.dtype)}; features must be real numbers")
    if y is None:
        return
    if y.ndim != 1:
        raise ValueError(f"{path}: y must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: y has shape {y.shape} but X has {X.shape[0]} rows")
    if y.dtype.kind not in "biufU":
        raise ValueError(f"{path}: y holds {_dtype_words(y.dtype)}; labels must be numbers or text (str)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"{path}: y holds {y[i]} (sample {i + 1}); labels must be finite numbers")


def _dtype_words(dtype):
    words = {"c": "complex numbers", "U": "text", "S": "bytes", "M": "dates", "m": "time spans",
             "V": "structured records", "O": "Python objects"}
    return f"{words.get(dtype.kind, 'values')} (dtype {dtype})"


# ---------------------------------------------------------------------------------- any file
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


# ---------------------------------------------------------------------------------- split
def split_indices(y, fraction, seed=0, stratify=True):
    """Seeded (kept, held_out) indices, each sorted: ``ceil(fraction · n)`` examples held out.

    The one hold-out rule of gpumlp: the command line's test and validation splits and ``fit``'s
    early-stopping split. Stratified (for class labels), each class contributes in proportion to its
    count, the rounding settled by largest remainders so that the total is exact; the members of each
    class are taken in the order of one seeded permutation of all n examples.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction!r}")
    y = np.asarray(y)
    n = y.shape[0]
    n_out = math.ceil(fraction * n)
    if n_out < 1 or n - n_out < 1:
        raise ValueError(f"holding out a fraction {fraction} of {n} examples leaves {n - n_out} to keep and "
                         f"{n_out} to hold out; both must be at least 1")
    perm = np.random.default_rng(seed).permutation(n)
    if stratify:
        classes, idx = np.unique(y[perm], return_inverse=True)
        quota = np.bincount(idx) * n_out / n
        take = np.floor(quota).astype(int)
        take[np.argsort(-(quota - take), kind="stable")[:n_out - take.sum()]] += 1
        held_out = np.concatenate([perm[idx == c][:take[c]] for c in range(len(classes))])
    else:
        held_out = perm[:n_out]
    is_out = np.zeros(n, bool)
    is_out[held_out] = True
    return np.flatnonzero(~is_out), np.flatnonzero(is_out)


def split_indices_v1(y, test_size, seed=0, stratify=True):
    """The command line's split before gpumlp 0.2 (round(test_size · count) per class, each class drawn
    in turn from one generator), kept only so that model files trained with it evaluate and resume on
    the same test split. New runs use ``split_indices``."""
    y = np.asarray(y)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    if stratify:
        test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:int(round(test_size * np.sum(y == c)))]
                                       for c in np.unique(y)]))
    else:
        test = np.sort(rng.permutation(n)[:int(round(test_size * n))])
    mask = np.ones(n, bool)
    mask[test] = False
    train = np.flatnonzero(mask)
    if train.size == 0 or test.size == 0:
        raise ValueError(f"test_size={test_size} leaves an empty {'training' if train.size == 0 else 'test'} "
                         f"set with {n} samples")
    return train, test


# ---------------------------------------------------------------------------------- labels
class LabelEncoder:
    """Class labels ↔ output indices 0..q−1, the classes sorted (as ``np.unique`` and scikit-learn's
    ``unique_labels`` order them). The one label encoder of the command line and the estimators.

    ``fit(y)`` learns the classes (``whole_floats_as_int``: labels read from a CSV as 3.0 become 3);
    ``transform(y, what)`` maps labels to indices and refuses labels it does not know, naming them and
    ``what`` held them; ``inverse_transform(indices)`` maps back.
    """

    def __init__(self, classes=None):
        self.classes_ = None if classes is None else np.asarray(classes)

    def fit(self, y, whole_floats_as_int=False):
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {y.shape}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("labels contain NaN or infinity")
        if y.dtype.kind not in "biufUS":
            raise TypeError(f"labels must be numbers or strings, got dtype {y.dtype}")
        classes = np.unique(y)
        if whole_floats_as_int and classes.dtype.kind == "f" and np.all(classes == np.round(classes)) \
                and np.abs(classes).max() < 2**53:
            classes = classes.astype(np.int64)
        self.classes_ = classes
        return self

    def transform(self, y, what="the data"):
        classes = self.classes_
        y = np.asarray(y)
        kinds = {y.dtype.kind in "US", classes.dtype.kind in "US"}
        if kinds == {True, False} and {y.dtype.kind, classes.dtype.kind} & set("biuf") and y.size:
            kind = "text" if y.dtype.kind in "US" else "numbers"
            raise ValueError(f"{what} holds labels that are {kind} (e.g. {_short(y[:3].tolist())}), the model's "
                             f"classes are {'text' if kind == 'numbers' else 'numbers'}: {_short(classes.tolist())}")
        idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
        bad = classes[idx] != y
        if bad.any():
            unknown = sorted(set(np.asarray(y)[bad].tolist()))
            unknown = [int(v) if isinstance(v, float) and v.is_integer() else v for v in unknown]
            raise ValueError(f"{what} holds label(s) {_short(unknown)} not among the model's classes "
                             f"{_short(classes.tolist())}")
        return idx.astype(np.int64)

    def inverse_transform(self, indices):
        return self.classes_[np.asarray(indices)]

    def __repr__(self):
        return "LabelEncoder()" if self.classes_ is None else f"LabelEncoder(classes={_short(self.classes_.tolist())})"


def _short(values, n=12):
    values = list(values)
    return str(values if len(values) <= n else values[:n] + ["..."])


def class_sample_weights(class_weight, y, n_classes):
    """Per-example weights from ``class_weight`` for labels ``y`` in [0, n_classes), as scikit-learn:
    "balanced" gives n / (n_present_classes · count of the class); a dict {label: weight} gives those
    weights (missing labels weigh 1)."""
    from .validation import check_positive_number

    y = np.asarray(y)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced' or a dict, got {class_weight!r}")
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        present = counts > 0
        per_class = np.ones(n_classes)
        per_class[present] = y.shape[0] / (present.sum() * counts[present])
    elif isinstance(class_weight, dict):
        per_class = np.ones(n_classes)
        for label, weight in class_weight.items():
            if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < n_classes:
                raise ValueError(f"class_weight keys must be labels in [0, {n_classes}), got {label!r}")
            per_class[int(label)] = check_positive_number(weight, f"class_weight[{label}]", allow_zero=True)
    else:
        raise TypeError(f"class_weight must be 'balanced' or a dict, got {type(class_weight).__name__}")
    return per_class[y]


# ---------------------------------------------------------------------------------- a run's data
MISSING = ("error", "drop", "impute")     # what ``prepare`` does with a CSV's missing values
TARGET_SCALINGS = ("standard", "none")    # regression targets: standardised for training, or as they are


@dataclass
class Prepared:
    """The data of one run: split, labels encoded (output indices), features imputed and scaled,
    regression targets scaled; host arrays. ``digest`` and ``test_digest``: ``data_digest`` of the
    files as loaded (before the split); ``n_dropped``: rows left out for missing values."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    classes: np.ndarray | None  # the label of each output (classification), else None
    scaler: "Scaler"
    imputer: "MeanImputer | None" = None
    target_scaler: "Scaler | None" = None
    feature_names: list | None = None
    label_name: str | None = None
    digest: str | None = None
    test_digest: str | None = None
    n_dropped: int = 0
    n_test_dropped: int = 0


def prepare(data, *, format="auto", labels=None, label_column=-1, delimiter=None, header=None, missing="error",
            test_data=None, test_labels=None, test_size=0.2, validation_split=0.0, seed=0, classify=True,
            scaling="standard", target_scaling="none", dtype=np.float32, classes=None, scaler=None,
            imputer=None, target_scaler=None, split_rule=2):
    """Load ``data`` (``load``'s arguments), hold out a test split (or load ``test_data``) and a
    validation split of the training part, encode class labels, impute and scale the features and
    scale regression targets (each fitted on the training part only).

    ``missing``: "error" or "drop" (passed to the CSV reader), or "impute": missing features become
    their mean over the training part (``MeanImputer``). ``target_scaling``: "standard" fits a
    ``Scaler`` on the training targets (regression only; the model learns standardised targets).
    ``classes``, ``scaler``, ``imputer`` and ``target_scaler`` given (a resumed or evaluated run) are
    used instead of learned. ``split_rule``: 2 = ``split_indices`` (seed for the test split, seed + 1
    for the validation split); 1 = ``split_indices_v1``, for runs saved before it."""
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    if target_scaling not in TARGET_SCALINGS:
        raise ValueError(f"target_scaling must be one of {TARGET_SCALINGS}, got {target_scaling!r}")
    split = split_indices if split_rule >= 2 else split_indices_v1
    read = dict(format=format, label_column=label_column, delimiter=delimiter, header=header,
                missing="keep" if missing == "impute" else missing)
    table = load_table(data, labels=labels, **read)
    _check_targets(data, table.y, classify)
    X, y, test = table.X, table.y, None
    if test_data is not None:
        test = load_table(test_data, labels=test_labels, **read)
        _check_targets(test_data, test.y, classify)
        if test.X.shape[1:] != X.shape[1:]:
            raise ValueError(f"{test_data} has {test.X.shape[1]} features, {data} has {X.shape[1]}")
        Xte = test.X if table.feature_names is None or test.feature_names is None else \
            align_columns(test.X, test.feature_names, table.feature_names, test_data, f"those of {data}")
        Xtr, ytr, yte = X, y, test.y
    else:
        if X.shape[0] < 2:
            raise ValueError(f"{data} holds {X.shape[0]} sample; a train/test split needs at least 2")
        tr, te = split(y, test_size, seed, stratify=classify)
        Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    Xva = yva = None
    if validation_split:
        tr, va = split(ytr, validation_split, seed + 1, stratify=classify)
        Xtr, ytr, Xva, yva = Xtr[tr], ytr[tr], Xtr[va], ytr[va]
    if classify:
        classes = _fit_classes(classes, ytr, yte, yva)
        encoder = LabelEncoder(classes)
        ytr, yte, yva = (None if v is None else encoder.transform(v, f"the {what} data") for v, what in
                         ((ytr, "training"), (yte, "test"), (yva, "validation")))
    else:
        classes = None
        ytr, yte, yva = (None if v is None else v.astype(np.float64) for v in (ytr, yte, yva))
        if target_scaler is None and target_scaling != "none":
            target_scaler = Scaler(target_scaling).fit(ytr.reshape(ytr.shape[0], -1))
        if target_scaler is not None:
            ytr, yte, yva = (None if v is None else scale_targets(target_scaler, v) for v in (ytr, yte, yva))
    if missing == "impute":
        imputer = imputer if imputer is not None else MeanImputer().fit(Xtr, table.feature_names)
        Xtr, Xte, Xva = (None if v is None else imputer.transform(v) for v in (Xtr, Xte, Xva))
    if scaler is None:
        scaler = Scaler(scaling).fit(Xtr)
    Xva = None if Xva is None else scaler.transform(Xva, dtype)
    return Prepared(scaler.transform(Xtr, dtype), ytr, scaler.transform(Xte, dtype), yte, Xva, yva, classes, scaler,
                    imputer if missing == "impute" else None, target_scaler, table.feature_names, table.label_name,
                    data_digest(table), None if test is None else data_digest(test), table.n_dropped,
                    0 if test is None else test.n_dropped)


def _check_targets(path, y, classify):
    if not classify and y.dtype.kind in "US":
        raise ValueError(f"the labels of {path} are text (e.g. {_short(np.unique(y)[:3].tolist())}); "
                         f"regression (--loss squared) needs numbers")
    if classify and y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ValueError(f"the labels of {path} are not whole numbers, so they are not class labels; "
                         f"for regression use --loss squared")


def _fit_classes(classes, ytr, yte, yva):
    if classes is not None:
        return classes
    seen = [ytr, yte] + ([yva] if yva is not None else [])
    if len({v.dtype.kind in "US" for v in seen}) > 1:
        raise ValueError("the training and test files hold labels of different kinds (text in one, numbers "
                         "in the other)")
    return LabelEncoder().fit(np.concatenate(seen), whole_floats_as_int=True).classes_


def scale_targets(target_scaler, y):
    """Regression targets y (n,) or (n, q) through ``target_scaler`` (float64, y's shape)."""
    y = np.asarray(y, np.float64)
    return target_scaler.transform(y.reshape(y.shape[0], -1), np.float64).reshape(y.shape)


def align_columns(X, names, feature_names, path, what="the model's"):
    """X's columns in the order of ``feature_names`` (what the model was trained on), from a file
    whose header names its columns ``names``; a ValueError naming the columns that are missing or
    extra. Repeated names are accepted only in the same order (they cannot be matched by name)."""
    names, feature_names = list(names), list(feature_names)
    if names == feature_names:
        return X
    missing = [n for n in feature_names if n not in names]
    extra = [n for n in names if n not in feature_names]
    if missing or extra:
        parts = ([f"missing {_short(missing)}"] if missing else []) + ([f"not among them {_short(extra)}"]
                                                                      if extra else [])
        raise ValueError(f"{path}: its feature columns differ from {what} ({_short(feature_names)}): "
                         f"{'; '.join(parts)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: its header repeats column names, so its columns cannot be matched to "
                         f"{what} by name; give them in the training file's order")
    return X[:, [names.index(n) for n in feature_names]]


def data_digest(table):
    """A hex digest of a loaded ``Table``: X and y (dtype, shape, bytes) and the header's names. The
    same file read with the same options gives the same digest; any changed value, row or name changes it."""
    h = hashlib.blake2b(digest_size=16, person=b"gpumlp-data-v1")
    for a in (table.X, table.y):
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    h.update(json.dumps([table.feature_names, table.label_name]).encode())
    return h.hexdigest()


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
