"""CSV and TSV files of numbers (quoted numbers too) with a label column of numbers or words: the
delimiter, header detection (a UTF-8 BOM dropped), missing values, and errors that name the row
(the file's line, the header being line 1) and the column."""
from __future__ import annotations

import contextlib
import csv
import gzip
import io as _io
import itertools
import os
import re
import warnings
import zlib

import numpy as np

from .base import _GZIP_MAGIC, Table, _open_regular
from .chunks import Chunk, Slice, Source, chunk_rows_for

_MISSING = frozenset({"", "na", "nan", "n/a", "?"})  # a CSV field, stripped and lower-cased
_MISSING_SPELLINGS = sorted({"".join(letters) for token in _MISSING
                             for letters in itertools.product(*({c.lower(), c.upper()} for c in token))})
_MISSING_POLICIES = ("error", "drop", "keep")
_HEADER_SAMPLE = 100       # rows below the first that header detection compares it with


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
            raise ValueError(f"{path}: not a numeric CSV file: line {line} has {len(fields)} fields, "
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
    where = f"{_column_name(j, names)} holds text ({str(cells[first])!r} on line {lines[first]})"
    if not is_label:
        raise ValueError(f"{path}: not a numeric CSV file: {where}; feature columns must hold numbers")
    if is_number.any():
        number = int(np.argmax(is_number))
        raise ValueError(f"{path}: not a numeric CSV file: the label {where} and numbers "
                         f"({str(cells[number])!r} on line {lines[number]}); labels must be all numbers or all text")
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
        raise ValueError(f"{path}: missing label on line {lines[i]}, {_column_name(col, names)}; labels "
                         f"cannot be imputed: drop those rows (missing='drop')")
    if missing == "keep":
        return np.ones(len(lines), bool)
    i, j = (int(k) for k in np.argwhere(cells)[0])  # the first in reading order
    raise ValueError(f"{path}: missing value on line {lines[i]}, {_column_name(j, names)} (empty, NA, NaN "
                     f"or ?); drop such rows (missing='drop') or impute them (missing='keep')")


def _is_int(s):
    try:
        int(s)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------- CSV, streamed
_MAX_LINE = 64 * 2**20  # bytes in one line at most: a file without line breaks is refused, not read whole
_BLOCK = 2**20  # bytes read at a time


class CsvSource(Source):
    """A CSV/TSV file streamed with ``read_csv``'s rules (the delimiter, header detection, a BOM dropped,
    quoted numbers, text labels, missing values; errors name the file's line and the column).

    A chunk is ``chunk_rows_for(columns)`` records; where each starts (its byte offset and line) is found
    by the first sequential read (``sequential``, the statistics pass), after which a chunk is read by
    seeking to it. A gzipped file cannot seek: its chunks are read in file order (``random_access``
    False). Each slice is parsed by NumPy's reader when it can (numbers only), else field by field."""

    format = "csv"

    def __init__(self, path, label_column=-1, delimiter=None, *, header=None, require_labels=True):
        if header not in (None, True, False):
            raise ValueError(f"header must be None (detect), True or False, got {header!r}")
        self.path = os.fspath(path)
        self.delimiter = csv_delimiter(self.path, delimiter)
        names, self.header_line, self.n_columns = _csv_head(self.path, self.delimiter, header, label_column)
        if not self.n_columns:
            raise ValueError(f"{self.path}: no data rows")
        if label_column is None:
            if require_labels:
                raise ValueError("label_column is None but labels are required")
            col = None
        else:
            col = _label_index(self.path, label_column, names, self.n_columns)
            if self.n_columns < 2:
                raise ValueError(f"{self.path}: has a single column; it needs features and a label column")
        self.names, self.label_column, self.has_labels = names, col, col is not None
        self.feature_names = None if names is None else [n for j, n in enumerate(names) if j != col]
        self.label_name = None if names is None or col is None else names[col]
        self.n_features = self.n_columns - (col is not None)
        with _open_regular(self.path) as f:
            self.random_access = f.read(2) != _GZIP_MAGIC
        self.chunk_records = chunk_rows_for(self.n_columns)
        # a line of fields each unquoted (no quote in it) or quoted whole ("" a quote inside): a quote
        # opens a field only at its start, and a field's closing quote is followed by the delimiter
        # or the line's end, so such a line is a record that ends outside quotes, as csv reads it
        field, q = '(?:"[^"]*(?:""[^"]*)*"|[^"{0}\\r\\n]*)'.format(re.escape(self.delimiter)), re.escape(self.delimiter)
        self._simple_record = re.compile(f"{field}(?:{q}{field})*(?:\\r\\n|\\r|\\n)?")
        self._chunks = None
        self._stream = None  # the _Stream kept between reads

    @property
    def chunks(self):
        if self._chunks is None:
            for _ in self.sequential(self.chunk_records, parse=False):
                pass
        return self._chunks

    def describe_column(self, j):
        return _column_name(self.file_column(j), self.names)

    def describe_label(self):
        return _column_name(self.label_column, self.names)

    # -- reading
    def _open_at(self, offset, line):
        """The stream at ``offset`` (a record's start, after physical line ``line``)."""
        if self._stream is not None and self._stream.offset == offset:
            return self._stream
        self.close()
        f = _open_regular(self.path)
        binary = gzip.GzipFile(fileobj=f) if not self.random_access else f
        try:
            binary.seek(offset)
        except (OSError, EOFError, zlib.error):
            f.close()
            raise ValueError(f"{self.path}: corrupt gzip data (damaged or truncated)") from None
        self._stream = _Stream(binary, f, offset, line)
        return self._stream

    def _fill(self, s):
        """The next block's whole lines into ``s.lines``. Lines end as ``read_csv`` (a text file opened
        with newline="") ends them: at \\n, \\r\\n or a lone \\r; the unfinished end of a block (a
        trailing \\r too: a \\n may follow) waits for the next, up to the bound on a line's length."""
        while True:
            try:
                data = s.binary.read(_BLOCK)
            except (OSError, EOFError, zlib.error):
                raise ValueError(f"{self.path}: corrupt gzip data (damaged or truncated)") from None
            if not data:
                lines, s.tail, s.eof = ([s.tail] if s.tail else []), b"", True
                s.quotes = any(b'"' in t for t in lines)
                break
            data = s.tail + data
            lines = data.splitlines(keepends=True)
            s.tail = b"" if lines[-1].endswith(b"\n") else lines.pop()
            if len(s.tail) > _MAX_LINE:
                raise ValueError(f"{self.path}: line {s.line + len(lines) + 1} is longer than "
                                 f"{_size_words(_MAX_LINE)}; not a CSV file of rows")
            if lines:
                s.quotes = b'"' in data
                break
        if lines and max(map(len, lines)) > _MAX_LINE:
            i = next(i for i, t in enumerate(lines) if len(t) > _MAX_LINE)
            raise ValueError(f"{self.path}: line {s.line + i + 1} is longer than {_size_words(_MAX_LINE)}; not a "
                             f"CSV file of rows")
        s.lines, s.at = lines, 0

    def _decoded(self, s, batch):
        first = s.line + 1
        try:
            if first == 1:
                return [batch[0].decode("utf-8-sig")] + [t.decode("utf-8") for t in batch[1:]]
            return [t.decode("utf-8") for t in batch]
        except UnicodeDecodeError:
            for i, t in enumerate(batch):
                try:
                    t.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"{self.path}: not UTF-8 text (line {first + i}); save the file as "
                                     f"UTF-8") from None
            raise

    def _records(self, s, n):
        """Up to ``n`` records from the stream: (their text lines, the line of each record's end, whether
        any spans lines). Blank lines are skipped; a record continues while a quoted field is open (csv's
        rules: a quote opens a field only at its start; \"\" inside one is a quote)."""
        texts, ends, multi = [], [], False
        parts, size, start, quoted = None, 0, 0, False
        d = self.delimiter
        while len(texts) < n:
            if s.at >= len(s.lines):
                if s.eof:
                    break
                self._fill(s)
                continue
            # as many lines as records wanted: each is a record, part of one, blank or the header
            batch = s.lines[s.at:s.at + n - len(texts)]
            first, skip = s.line + 1, max(0, self.header_line - s.line)
            decoded = self._decoded(s, batch)
            s.at += len(batch)
            s.line += len(batch)
            s.offset += sum(map(len, batch))
            simple = self._simple_record.fullmatch
            if parts is None:  # no quote in the block, or only fields quoted whole: a record per line not blank
                kept = [i for i in range(skip, len(decoded)) if d in decoded[i] or decoded[i].strip()]
                if not s.quotes or all(d in decoded[i] and simple(decoded[i]) for i in kept):
                    texts.extend([decoded[i] for i in kept])
                    ends.extend([first + i for i in kept])
                    continue
            for i in range(skip, len(decoded)):
                text, line = decoded[i], first + i
                if parts is None:
                    if '"' not in text:
                        if d in text or text.strip():
                            texts.append(text)
                            ends.append(line)
                        continue
                    if simple(text) and d in text:  # fields quoted whole, each closed: a record of one line
                        texts.append(text)
                        ends.append(line)
                        continue
                    parts, size, start = [text], len(text), line
                    quoted = _ends_quoted(text, False, d)
                else:
                    parts.append(text)
                    size += len(text)
                    multi = True
                    if size > _MAX_LINE:
                        raise ValueError(f"{self.path}: the record that starts on line {start} is longer than "
                                         f"{_size_words(_MAX_LINE)} (a quoted field that is never closed?)")
                    quoted = '"' not in text or _ends_quoted(text, True, d)
                if not quoted:
                    record = parts[0] if len(parts) == 1 else "".join(parts)
                    parts = None
                    if d not in record and _blank_record(record):
                        continue  # a blank field in quotes: skipped, as read_csv skips it
                    texts.append(record)
                    ends.append(line)
        if parts is not None:  # the file ends inside a quoted field: csv's reader takes the field as it is
            texts.append("".join(parts))
            ends.append(s.line)
            multi = True
        return texts, np.array(ends, np.int64), multi

    def sequential(self, slice_rows, chunks=None, parse=True):
        """(chunk, slice) of every chunk in file order (``chunks``: only those indices), finding the
        chunks on the first read."""
        if self._chunks is not None:
            for c in self._chunks:
                if chunks is None or c.index in chunks:
                    for piece in self.read(c, slice_rows, parse):
                        yield c, piece
            return
        found, stream = [], self._open_at(0, 0)
        while True:
            chunk = Chunk(len(found), 0, 0, 0, (stream.offset, stream.line))
            for piece in self._read_records(stream, chunk, self.chunk_records, slice_rows, parse):
                chunk.rows += len(piece)
                yield chunk, piece
            if not chunk.rows:
                break
            chunk.first_row = sum(c.rows for c in found)
            found.append(chunk)
        if not found:
            raise ValueError(f"{self.path}: no data rows")
        self._chunks = found

    def read(self, chunk, slice_rows, parse=True):
        stream = self._open_at(*chunk.locator)
        yield from self._read_records(stream, chunk, chunk.rows, slice_rows, parse)

    def _read_records(self, stream, chunk, n, slice_rows, parse):
        left = n
        while left > 0:
            texts, lines, multi = self._records(stream, min(left, max(int(slice_rows), 1)))
            if not texts:
                return
            left -= len(texts)
            yield self._parse(texts, lines, multi) if parse else _Count(len(texts))

    def _parse(self, texts, lines, multi):
        values = None if multi else _loadtxt(texts, self.delimiter, self.n_columns)
        col = self.label_column
        if values is None:
            return Slice(*self._by_fields(texts, lines), lines, self.path)
        if col is None:  # numbers only; a NaN read from the text "nan" is a missing value, as below
            return Slice(values, None, None, lines, self.path)
        y = values[:, col].copy()
        return Slice(np.delete(values, col, axis=1), y, np.isnan(y), lines, self.path)

    def _by_fields(self, texts, lines):
        """(X, labels, missing labels) read field by field: text labels, missing values, and what is wrong."""
        reader = csv.reader(texts, delimiter=self.delimiter)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise ValueError(f"{self.path}: not a readable CSV file ({exc}, line {lines[max(reader.line_num, 1) - 1]})") \
                from None
        against = "the header" if self.names is not None else "the first row"
        for line, fields in zip(lines, rows):
            if len(fields) != self.n_columns:
                raise ValueError(f"{self.path}: not a numeric CSV file: line {line} has {len(fields)} fields, "
                                 f"{against} has {self.n_columns}")
        cells = np.char.strip(np.array(rows, dtype=str).reshape(len(rows), self.n_columns))
        missing = _is_missing(cells)
        col = self.label_column
        columns = [_parse_column(self.path, cells[:, j], missing[:, j], lines, j, self.names, j == col)
                   for j in range(self.n_columns)]
        features = [c for j, c in enumerate(columns) if j != col]
        X = np.column_stack(features) if features else np.zeros((len(rows), 0))
        return (X, None, None) if col is None else (X, columns[col], missing[:, col])

    def close(self):
        if self._stream is not None:
            self._stream.binary.close()
            self._stream.file.close()
            self._stream = None


class _Stream:
    """An open CSV at a record's start: ``offset`` (bytes) and ``line`` (physical lines) of what has been
    handed out; ``lines[at:]``, the rest of the block read (``quotes``: whether it holds a quote), and
    ``tail``, its unfinished last line, come next."""

    def __init__(self, binary, file, offset, line):
        self.binary, self.file, self.offset, self.line = binary, file, offset, line
        self.lines, self.at, self.tail, self.eof, self.quotes = [], 0, b"", False, False


class _Count:
    """A slice that was only counted (the index pass)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def _loadtxt(texts, delimiter, n_columns):
    """NumPy's fast reader on single-line records of numbers, or None when it cannot read them all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            values = np.loadtxt(texts, delimiter=delimiter, quotechar='"', ndmin=2, dtype=np.float64, comments=None)
        except ValueError:
            return None
    return values if values.shape == (len(texts), n_columns) else None


def _ends_quoted(text, quoted, delimiter):
    """Whether a line (``text``, one physical line) ends inside a quoted field, by csv's rules
    (doublequote, not strict), given whether it starts inside one."""
    pos = 0
    while True:
        if quoted:
            q = text.find('"', pos)
            if q < 0:
                return True
            if text.startswith('"', q + 1):  # "" inside a quoted field: a quote
                pos = q + 2
                continue
            quoted = False  # the field's closing quote; what follows up to the delimiter is taken as it is
            d = text.find(delimiter, q + 1)
        elif text.startswith('"', pos):  # a field that starts with a quote
            quoted, pos = True, pos + 1
            continue
        else:
            d = text.find(delimiter, pos)
        if d < 0:
            return False
        pos = d + 1


def _blank_record(text):
    """Whether csv reads the record as no fields or one blank field (what ``_records`` above skips)."""
    fields = next(csv.reader([text]), [])
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _size_words(n):
    return f"{n >> 20} MiB" if n >= 2**20 else f"{n} bytes"
