"""The reading layer of streamed training (issue 16): the CSV, .npy and Parquet sources, the seeded window
split, merged moments, the prefetching reader and the shuffle buffer, sizes and the memory plan.

Every source is checked against what the in-memory readers give for the same file (``read_csv``,
``np.load``, the arrays a Parquet file was written from), read a slice at a time in several slice and
chunk sizes and with its chunks in a random order. Floating-point results are compared with NumPy's
computed here, with a tolerance per dtype, never with numbers recorded on one machine."""
from __future__ import annotations

import builtins
import csv
import gzip
import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ci import needed

from gpumlp.data import MeanImputer, Scaler, read_csv, stream
from gpumlp.data import csvfile
from gpumlp.data.chunks import MAX_CHUNK_ROWS, Chunk, Slice, Source, chunk_rows_for
from gpumlp.data.csvfile import CsvSource
from gpumlp.data.npy import NpySource
from gpumlp.data.preprocessing import SCALINGS, Moments, imputer_from_moments, scaler_from_moments
from gpumlp.data.reader import ShuffleBuffer, prefetch, shuffled_blocks
from gpumlp.data.split import StreamSplit, stratum_keys, window_held
from gpumlp.data.streaming import (MIN_BUDGET, SHARES, PairsSource, open_source, parse_size, plan_memory,
                                   sequential, stream_format)


@pytest.fixture
def pa():
    """pyarrow: skipped where it is absent, except in CI (where a missing test extra fails)."""
    return needed("pyarrow")


# ---------------------------------------------------------------------------------- helpers
def read_sequential(src, slice_rows, chunks=None):
    """(X, y, rows, chunk indices) of ``src.sequential``, each slice checked for its size."""
    parts = []
    for c, piece in sequential(src, slice_rows, chunks):
        assert 0 < len(piece) <= slice_rows
        parts.append((c.index, piece))
    return _joined(parts)


def read_chunks(src, slice_rows, order):
    """The rows of ``src`` read chunk by chunk in ``order``, put back in file order by ``first_row``."""
    by_chunk = {}
    for i in order:
        c = src.chunks[i]
        pieces = list(src.read(c, slice_rows))
        assert all(0 < len(p) <= slice_rows for p in pieces)
        assert sum(len(p) for p in pieces) == c.rows
        by_chunk[i] = pieces
    starts = [src.chunks[i].first_row for i in sorted(by_chunk)]
    assert starts == sorted(starts)
    return _joined([(i, p) for i in sorted(by_chunk) for p in by_chunk[i]])


def _joined(parts):
    X = np.concatenate([p.X for _, p in parts])
    ys = [p.y for _, p in parts]
    y = None if ys[0] is None else np.concatenate(ys)
    missing = None if parts[0][1].y_missing is None else np.concatenate([p.y_missing for _, p in parts])
    rows = np.concatenate([p.rows for _, p in parts])
    return X, y, missing, rows, [i for i, _ in parts]


def assert_labels_equal(got, want):
    if want is None:
        assert got is None
    elif want.dtype.kind == "U":
        assert got.dtype.kind == "U"
        assert got.tolist() == want.tolist()
    else:
        np.testing.assert_array_equal(got, want)


def record_lines(path, header):
    """The line (the header being 1) that ends each record, by Python's csv module on the text: the
    oracle for ``Slice.rows``, independent of the source's own line reader."""
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = io.StringIO(raw.decode("utf-8-sig"), newline="")
    delimiter = "\t" if ".tsv" in os.fspath(path) else ","
    reader = csv.reader(text, delimiter=delimiter)
    lines = [reader.line_num for fields in reader if fields and not (len(fields) == 1 and not fields[0].strip())]
    return np.array(lines[1:] if header else lines)


# ---------------------------------------------------------------------------------- chunks
def test_chunk_rows_for_bounds_the_values_of_a_chunk():
    assert chunk_rows_for(1) == MAX_CHUNK_ROWS
    assert chunk_rows_for(0) == MAX_CHUNK_ROWS
    assert chunk_rows_for(1024) == 1024
    assert chunk_rows_for(10**7) == 64
    for d in (3, 17, 785, 5000):
        assert chunk_rows_for(d) * d <= 2**20 or chunk_rows_for(d) == 64


def test_slice_take_and_the_names_of_columns():
    X = np.arange(12.0).reshape(4, 3)
    s = Slice(X, np.array(["a", "b", "c", "d"]), np.array([0, 1, 0, 0], bool), np.arange(2, 6), "f.csv")
    t = s.take(np.array([True, False, True, False]))
    assert len(t) == 2 and t.X.tolist() == [[0, 1, 2], [6, 7, 8]] and t.y.tolist() == ["a", "c"]
    assert t.rows.tolist() == [2, 4] and t.y_missing.tolist() == [False, False] and t.file == "f.csv"
    u = Slice(X, None, None, np.arange(1, 5), "f").take([3])
    assert u.y is None and u.y_missing is None and u.rows.tolist() == [4]

    src = Source()
    src.feature_names, src.label_column, src.label_name = ["a", "b", "d"], 2, "c"
    assert [src.file_column(j) for j in range(3)] == [0, 1, 3]
    assert src.describe_column(2) == "column 4 ('d')"
    assert src.describe_label() == "column 3 ('c')"
    src.label_column = None
    assert src.describe_label() == "the labels" and src.describe_column(2) == "column 3 ('d')"


# ---------------------------------------------------------------------------------- CSV
def _numbers(rng, n, d, integers=False):
    X = rng.integers(-50, 50, (n, d)).astype(float) if integers else np.round(rng.normal(size=(n, d)) * 100, 3)
    return X


def _write(path, text, encoding="utf-8", newline="\n"):
    data = text.replace("\n", newline).encode(encoding)
    if os.fspath(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _csv_text(X, y, names=None, label_at=-1, delimiter=",", quote_numbers=False, blank_every=0):
    cols = [list(map(repr, X[:, j].tolist())) for j in range(X.shape[1])]
    if quote_numbers:
        cols = [[f'"{v}"' for v in c] for c in cols]
    label = [str(v) for v in y]
    at = label_at % (X.shape[1] + 1)
    cols.insert(at, label)
    lines = [] if names is None else [delimiter.join(names)]
    for i, row in enumerate(zip(*cols)):
        lines.append(delimiter.join(row))
        if blank_every and i % blank_every == 0:
            lines.append("" if i % 2 else "   ")
    return "\n".join(lines) + "\n"


def _csv_cases(tmp_path):
    rng = np.random.default_rng(7)
    n, d = 53, 3
    X = _numbers(rng, n, d)
    y = rng.integers(0, 4, n)
    words = np.array(["cat", "dog", "emu"])[y % 3]
    cases = {}
    cases["header"] = (_write(tmp_path / "header.csv", _csv_text(X, y, ["a", "b", "c", "label"])), {})
    cases["no_header_label_first"] = (_write(tmp_path / "plain.csv", _csv_text(X, y, label_at=0)),
                                      {"label_column": 0})
    cases["bom_label_by_name"] = (_write(tmp_path / "bom.csv", _csv_text(X, y, ["a", "t", "b", "c"], label_at=1),
                                         encoding="utf-8-sig"), {"label_column": "t"})
    cases["quoted_numbers_text_labels"] = (
        _write(tmp_path / "quoted.csv", _csv_text(X, words, ["a", "b", "c", "kind"], quote_numbers=True)), {})
    cases["tsv"] = (_write(tmp_path / "data.tsv", _csv_text(X, y, ["a", "b", "c", "y"], delimiter="\t")), {})
    cases["gzip"] = (_write(tmp_path / "data.csv.gz", _csv_text(X, words, ["a", "b", "c", "y"])),
                     {"label_column": "-1"})
    cases["blank_lines_crlf"] = (_write(tmp_path / "blank.csv", "\n\n" + _csv_text(X, y, blank_every=4),
                                        newline="\r\n"), {"label_column": 2})
    cases["cr_only"] = (_write(tmp_path / "mac.csv", _csv_text(X, y, ["a", "b", "c", "y"]), newline="\r"), {})
    cases["no_labels"] = (_write(tmp_path / "nolabels.csv", _csv_text(X, y, ["a", "b", "c", "d"])),
                          {"label_column": None, "require_labels": False})
    # quoted labels spanning lines, holding delimiters, escaped quotes, a quote inside an unquoted field
    odd = ['"two\nlines"', '"a, b"', '"say ""hi"""', 'in"side', '"three\n\nlines"', "plain"]
    text = "f1,f2,f3,label\n" + "".join(
        ",".join(map(repr, X[i].tolist())) + f",{odd[i % len(odd)]}\n" for i in range(n))
    cases["multiline_quotes"] = (_write(tmp_path / "multi.csv", text), {})
    # missing values of every spelling in the features (read_csv's missing="keep")
    M = X.copy()
    M[rng.random(M.shape) < 0.15] = np.nan
    spell = ["", "NA", "nan", "N/A", "?", "NaN"]
    rows = ["x1,x2,x3,y"] + [",".join(spell[(i + j) % len(spell)] if np.isnan(v) else repr(v)
                                      for j, v in enumerate(M[i].tolist())) + f",{y[i]}" for i in range(n)]
    cases["missing"] = (_write(tmp_path / "missing.csv", "\n".join(rows) + "\n"), {})
    # blank quoted records are skipped as csv skips them
    text = "p,q,r\n" + "".join(",".join(map(repr, X[i, :2].tolist())) + f",{y[i]}\n" + ('""\n' if i % 9 == 0 else "")
                               for i in range(n))
    cases["blank_quoted_records"] = (_write(tmp_path / "blankq.csv", text), {})
    return cases


CSV_CASES = ["header", "no_header_label_first", "bom_label_by_name", "quoted_numbers_text_labels", "tsv", "gzip",
             "blank_lines_crlf", "cr_only", "no_labels", "multiline_quotes", "missing", "blank_quoted_records"]


@pytest.mark.parametrize("case", CSV_CASES)
def test_csv_source_reads_what_read_csv_reads(tmp_path, case):
    path, kw = _csv_cases(tmp_path)[case]
    table = read_csv(path, missing="keep", **kw)
    header = table.header
    lines = record_lines(path, header)
    assert lines.shape[0] == table.X.shape[0]
    rng = np.random.default_rng(0)
    for chunk_records in (1, 7, 64):
        src = CsvSource(path, **kw)
        src.chunk_records = chunk_records
        assert src.feature_names == table.feature_names and src.label_name == table.label_name
        assert src.n_features == table.X.shape[1] and src.has_labels == (table.y is not None)
        assert src.random_access == (not os.fspath(path).endswith(".gz"))
        for slice_rows in (1, 3, 1000):
            X, y, missing, rows, chunk_ids = read_sequential(src, slice_rows)
            np.testing.assert_array_equal(X, table.X)
            assert_labels_equal(y, table.y)
            np.testing.assert_array_equal(rows, lines)
            assert chunk_ids == sorted(chunk_ids)
            if y is not None and y.dtype.kind == "f":
                np.testing.assert_array_equal(missing, np.isnan(y))
        chunks = src.chunks
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert all(c.rows == min(chunk_records, table.X.shape[0] - c.first_row) for c in chunks)
        assert [c.first_row for c in chunks] == list(range(0, table.X.shape[0], chunk_records))
        assert src.n_rows == table.X.shape[0]
        for slice_rows in (2, 5, 100):
            X, y, _, rows, _ = read_chunks(src, slice_rows, rng.permutation(len(chunks)))
            np.testing.assert_array_equal(X, table.X)
            assert_labels_equal(y, table.y)
            np.testing.assert_array_equal(rows, lines)
        src.close()


@pytest.mark.parametrize("block", [1, 2, 5, 13])
def test_csv_lines_split_across_reads(tmp_path, monkeypatch, block):
    """Reads of a few bytes: a CRLF, a lone CR, a quoted field and a UTF-8 character cut between reads."""
    monkeypatch.setattr(csvfile, "_BLOCK", block)
    for case in ("blank_lines_crlf", "cr_only", "multiline_quotes", "bom_label_by_name", "gzip"):
        path, kw = _csv_cases(tmp_path)[case]
        table = read_csv(path, missing="keep", **kw)
        src = CsvSource(path, **kw)
        src.chunk_records = 4
        X, y, _, rows, _ = read_sequential(src, 3)
        np.testing.assert_array_equal(X, table.X)
        assert_labels_equal(y, table.y)
        np.testing.assert_array_equal(rows, record_lines(path, table.header))
        X, y, _, rows, _ = read_chunks(src, 2, np.random.default_rng(block).permutation(len(src.chunks)))
        np.testing.assert_array_equal(X, table.X)
        assert_labels_equal(y, table.y)
    p = _write(tmp_path / "utf.csv", "name,x,y\n" + "".join(f"{i},{i},é{'ü' * (i % 4)}\n" for i in range(40)))
    table = read_csv(p)
    _, y, _, _, _ = read_sequential(CsvSource(p), 7)
    assert y.tolist() == table.y.tolist()


def test_csv_quote_rules_are_csvs(tmp_path):
    """Whether a line ends inside a quoted field, decided as Python's csv module decides it, for random
    lines of quotes, delimiters and letters (the fast check of whole quoted fields too)."""
    p = _write(tmp_path / "q.csv", "a,b,c\n1,2,3\n")
    src = CsvSource(p)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        line = "".join(rng.choice(list('"",a '), size=int(rng.integers(0, 12)))) + "\n"
        for starts_quoted in (False, True):
            reader = csv.reader(([] if not starts_quoted else ['"']) + [line, "z\n"])
            next(reader)
            truth = reader.line_num > 1 + starts_quoted
            assert csvfile._ends_quoted(line, starts_quoted, ",") == truth, (line, starts_quoted)
        if src._simple_record.fullmatch(line):
            assert not csvfile._ends_quoted(line, False, ","), line


def test_csv_chunks_found_by_the_counting_pass_and_a_subset_of_chunks(tmp_path):
    path, _ = _csv_cases(tmp_path)["multiline_quotes"]
    table = read_csv(path)
    src = CsvSource(path)
    src.chunk_records = 5
    chunks = src.chunks  # found without parsing a field
    assert sum(c.rows for c in chunks) == table.X.shape[0] == src.n_rows
    X, y, _, _, ids = read_sequential(src, 2, chunks={1, 3})
    assert set(ids) == {1, 3}
    want = np.r_[chunks[1].first_row:chunks[1].first_row + chunks[1].rows,
                 chunks[3].first_row:chunks[3].first_row + chunks[3].rows]
    np.testing.assert_array_equal(X, table.X[want])
    assert y.tolist() == table.y[want].tolist()


def test_csv_missing_labels_are_flagged_not_raised(tmp_path):
    p = _write(tmp_path / "m.csv", "a,b,y\n1,2,cat\n3,4,\n5,6,NA\n7,8,dog\n")
    (c, s), = CsvSource(p).sequential(10)
    assert s.y_missing.tolist() == [False, True, True, False]
    q = _write(tmp_path / "n.csv", "a,b,y\n1,2,1\n3,4,\n5,6,0\n")
    (c, s), = CsvSource(q).sequential(10)
    assert s.y_missing.tolist() == [False, True, False] and np.isnan(s.y[1])


def _deep_file(tmp_path, name, bad_line, bad, header=True, n=4000):
    """A CSV of n data rows whose line ``bad_line`` (the header being line 1) is replaced by ``bad``."""
    rows = ["f1,f2,f3,y"] if header else []
    first = 2 if header else 1
    for i in range(n):
        rows.append(bad if first + i == bad_line else f"{i * 0.5},{i % 7},{-i},{i % 3}")
    p = tmp_path / name
    p.write_text("\n".join(rows) + "\n")
    return p


def _read_all(src, slice_rows=256):
    for _ in src.sequential(slice_rows):
        pass


@pytest.mark.parametrize("header", [True, False])
def test_csv_text_deep_in_the_file_names_file_line_and_column(tmp_path, header):
    p = _deep_file(tmp_path, "deep.csv", 3001, "1.0,2.0,abc,1", header=header)
    src = CsvSource(p)
    src.chunk_records = 700
    with pytest.raises(ValueError) as err:
        _read_all(src)
    msg = str(err.value)
    assert str(p) in msg and "3001" in msg and "column 3" in msg and "'abc'" in msg
    assert ("'f3'" in msg) == header
    # found again when the chunk is read on its own
    chunk = src.chunks[4]  # rows 2801..3500 of the data: line 3001 either way
    assert chunk.first_row < 3001 - header <= chunk.first_row + chunk.rows
    with pytest.raises(ValueError, match=r"deep\.csv: .*line 3001"):
        list(src.read(chunk, 50))


def test_csv_errors_deep_in_the_file(tmp_path, monkeypatch):
    p = _deep_file(tmp_path, "fields.csv", 2500, "1,2,3")
    with pytest.raises(ValueError, match=r"fields\.csv: .*line 2500 has 3 fields, the header has 4"):
        _read_all(CsvSource(p))

    p = _deep_file(tmp_path, "utf.csv", 3001, "1,2,3,4")
    raw = p.read_bytes().split(b"\n")
    raw[3000] = b"1,2,\xff\xfe,4"
    p.write_bytes(b"\n".join(raw))
    with pytest.raises(ValueError, match=r"utf\.csv: not UTF-8 text \(line 3001\)"):
        _read_all(CsvSource(p))

    p = _deep_file(tmp_path, "label.csv", 3001, "1,2,3,cat")
    with pytest.raises(ValueError, match=r"label\.csv: .*label column 4 \('y'\) holds text \('cat' on line 3001\)"):
        _read_all(CsvSource(p), 5000)

    p = _deep_file(tmp_path, "cut.csv.gz", 0, "")
    p.write_bytes(gzip.compress(p.read_bytes())[:-2000])
    src = CsvSource(p)
    assert not src.random_access
    with pytest.raises(ValueError, match=r"cut\.csv\.gz: corrupt gzip data"):
        _read_all(src)

    monkeypatch.setattr(csvfile, "_MAX_LINE", 200)
    p = _deep_file(tmp_path, "long.csv", 150, "1,2,3," + "9" * 300, n=300)
    with pytest.raises(ValueError, match=r"long\.csv: line 150 is longer than 200 bytes"):
        _read_all(CsvSource(p))
    p = _deep_file(tmp_path, "open.csv", 150, '1,2,3,"never closed', n=300)
    with pytest.raises(ValueError, match=r"open\.csv: the record that starts on line 150 is longer than 200 bytes"):
        _read_all(CsvSource(p))


def test_csv_a_field_beyond_csvs_limit_is_a_value_error_naming_the_line(tmp_path):
    rows = ["a,b,y"] + [f"{i},{i},x" for i in range(300)]
    rows[250] = "1,2," + "z" * (csv.field_size_limit() + 10)
    p = tmp_path / "huge.csv"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"huge\.csv: not a readable CSV file .*line 251"):
        _read_all(CsvSource(p), 100)


def test_csv_refusals_at_opening(tmp_path):
    p = _write(tmp_path / "one.csv", "1\n2\n")
    with pytest.raises(ValueError, match="single column"):
        CsvSource(p)
    with pytest.raises(ValueError, match="no data rows"):
        CsvSource(_write(tmp_path / "empty.csv", "\n\n"))
    with pytest.raises(ValueError, match="header must be"):
        CsvSource(p, header="yes")
    q = _write(tmp_path / "h.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a column"):
        CsvSource(q, label_column="zz")
    with pytest.raises(ValueError, match="labels are required"):
        CsvSource(q, label_column=None)
    with pytest.raises(FileNotFoundError):
        CsvSource(tmp_path / "absent.csv")


# ---------------------------------------------------------------------------------- .npy
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64, np.int32, np.uint8, np.int64])
@pytest.mark.parametrize("y_kind", ["int", "float", "text", None])
def test_npy_source_rows_equal_np_load(tmp_path, x_dtype, y_kind):
    rng = np.random.default_rng(3)
    n, d = 300, 9000  # chunk_rows_for(9000) = 116: three chunks
    X = (rng.normal(size=(n, d)) * 40).astype(x_dtype)
    np.save(tmp_path / "X.npy", X)
    labels = None
    if y_kind is not None:
        y = {"int": rng.integers(0, 5, n), "float": rng.normal(size=n),
             "text": np.array(["ant", "bee", "cow"])[rng.integers(0, 3, n)]}[y_kind]
        if y_kind == "float":
            y[::17] = np.nan
        np.save(tmp_path / "y.npy", y)
        labels = tmp_path / "y.npy"
    src = NpySource(tmp_path / "X.npy", labels)
    assert src.n_features == d and src.n_rows == n and src.has_labels == (labels is not None)
    assert len(src.chunks) == 3 and [c.rows for c in src.chunks] == [116, 116, 68]
    want_X = np.load(tmp_path / "X.npy").astype(np.float64)
    want_y = None if labels is None else np.load(labels)
    for slice_rows in (1000, 37):
        got_X, got_y, missing, rows, _ = read_chunks(src, slice_rows, [2, 0, 1])
        np.testing.assert_array_equal(got_X, want_X)
        assert got_X.dtype == np.float64
        np.testing.assert_array_equal(rows, np.arange(1, n + 1))
        if want_y is None:
            assert got_y is None
        elif y_kind == "text":
            assert got_y.tolist() == want_y.tolist() and not missing.any()
        else:
            np.testing.assert_array_equal(got_y, want_y.astype(np.float64))
            np.testing.assert_array_equal(missing, np.isnan(want_y.astype(float)))
    src.close()


def test_npy_refusals(tmp_path):
    def save(name, a, **kw):
        np.save(tmp_path / name, a, **kw)
        return tmp_path / name

    X = save("X.npy", np.zeros((10, 3)))
    cases = [
        (lambda: NpySource(save("one.npy", np.zeros(10))), r"one\.npy: the features must be 2-D"),
        (lambda: NpySource(save("three.npy", np.zeros((2, 3, 4)))), r"three\.npy: the features must be 2-D"),
        (lambda: NpySource(save("none.npy", np.zeros((5, 0)))), r"none\.npy: .*no feature columns"),
        (lambda: NpySource(save("f.npy", np.asfortranarray(np.zeros((10, 3))))), r"f\.npy: .*Fortran"),
        (lambda: NpySource(save("o.npy", np.array([[1, "a"]], object), allow_pickle=True)),
         r"o\.npy: holds Python objects"),
        (lambda: NpySource(save("c.npy", np.zeros((3, 2), complex))), r"c\.npy: holds complex numbers"),
        (lambda: NpySource(save("s.npy", np.zeros(3, [("a", "f8"), ("b", "i4")]))), r"s\.npy: holds structured"),
        (lambda: NpySource(X, save("y2.npy", np.zeros((10, 1)))), r"y2\.npy: the labels must be 1-D"),
        (lambda: NpySource(X, save("y9.npy", np.zeros(9))), r"y9\.npy holds 9 labels but .*X\.npy holds 10 rows"),
        (lambda: NpySource(X, save("yb.npy", np.array([b"a"] * 10))), r"yb\.npy: holds bytes"),
        (lambda: NpySource(X, save("yo.npy", np.array([{}] * 10, object), allow_pickle=True)),
         r"yo\.npy: holds Python objects"),
    ]
    for make, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            make()
    t = tmp_path / "cut.npy"
    t.write_bytes(X.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"cut\.npy: truncated \.npy file"):
        NpySource(t)
    g = tmp_path / "garbage.npy"
    g.write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match=r"garbage\.npy: not a readable \.npy file"):
        NpySource(g)
    h = tmp_path / "head.npy"
    h.write_bytes(X.read_bytes()[:30])
    with pytest.raises(ValueError, match=r"head\.npy: not a readable \.npy file"):
        NpySource(h)
    with pytest.raises(ValueError, match="is a directory"):
        NpySource(tmp_path)


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux) to read VmRSS")
def test_npy_reading_releases_the_mapped_pages(tmp_path):
    rows, d = 25_000, 2048  # 200 MiB of float32
    path = tmp_path / "big.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, d)})
        block = np.ones((1000, d), np.float32)
        for _ in range(rows // 1000):
            f.write(block.tobytes())
    del block
    src = NpySource(path)
    src.chunks = [Chunk(0, rows, 0, 0)]
    base = _rss_bytes()
    grown, total = 0, 0.0
    for piece in src.read(src.chunks[0], 500):  # 4 MiB read, 8 MiB as float64, per slice
        total += float(piece.X[-1, -1])
        del piece
        grown = max(grown, _rss_bytes() - base)
    assert total == rows // 500
    assert grown < 64 * 2**20, f"resident memory grew by {grown >> 20} MiB reading a 200 MiB file"
    src.close()


def _mapped_rss(path):
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps), or None without it."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    total, inside = 0, False
    for line in text.splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_npy_chunks_in_a_shuffled_order_leave_no_pages_mapped(tmp_path):
    """On a fault the kernel maps the cached pages around the one asked for (fault-around, 64 KiB):
    read in a shuffled chunk order, those landed in chunks already read and stayed resident, about one
    window per chunk (350 MiB for a 24 GiB file). The reader drops them with its own pages."""
    if _mapped_rss(Path("/dev/null")) is None:
        pytest.skip("needs /proc/self/smaps")
    rows, d = 400_000, 16  # 51 MB of float64, in the page cache once written
    path = tmp_path / "wide.npy"
    np.save(path, np.arange(rows * d, dtype=np.float64).reshape(rows, d))
    src = NpySource(path)
    src.chunks = [Chunk(i, min(500, rows - a), 0, a) for i, a in enumerate(range(0, rows, 500))]  # 64 KB each
    order = np.random.default_rng(0).permutation(len(src.chunks))
    seen = 0
    for i in order:
        for piece in src.read(src.chunks[i], 500):
            seen += len(piece)
    assert seen == rows
    left = _mapped_rss(path)
    src.close()
    assert left < 256 * 1024, f"{left >> 10} KiB of the 51 MB file still mapped after reading it"  # 2.1 MB before


# ---------------------------------------------------------------------------------- Parquet
def _table(pa, rng, n, with_nulls=True):
    a = rng.normal(size=n)
    b = rng.integers(-100, 100, n)
    c = rng.random(n) < 0.5
    y = rng.integers(0, 3, n)
    mask = rng.random(n) < 0.1 if with_nulls else np.zeros(n, bool)
    cols = {
        "a": pa.array(a, mask=mask),
        "b": pa.array(b, pa.int32(), mask=np.roll(mask, 1)),
        "c": pa.array(c, mask=np.roll(mask, 2)),
        "y": pa.array(y),
    }
    X = np.column_stack([np.where(mask, np.nan, a), np.where(np.roll(mask, 1), np.nan, b),
                         np.where(np.roll(mask, 2), np.nan, c)])
    return pa.table(cols), X, y.astype(float)


def test_parquet_number_columns_read_in_one_call_as_column_by_column(tmp_path, pa):
    """Integer and float feature columns go through RecordBatch.to_tensor (one call); booleans and
    dictionaries column by column. Both give the same float64 values, nulls NaN, 2**53 + 1 rounded alike."""
    import pyarrow.parquet as pq
    from gpumlp.data.parquet import ParquetSource

    rng = np.random.default_rng(9)
    n = 97
    mask = rng.random(n) < 0.2
    big = np.array([2**53 + 1, -(2**62), 7] * 33, np.int64)[:n]
    t = pa.table({"f32": pa.array(rng.normal(size=n).astype(np.float32), mask=mask),
                  "i64": pa.array(big, mask=np.roll(mask, 3)), "u8": pa.array(rng.integers(0, 255, n), pa.uint8()),
                  "f64": pa.array(rng.normal(size=n)), "y": pa.array(rng.integers(0, 2, n))})
    pq.write_table(t, tmp_path / "n.parquet", row_group_size=40)
    src = ParquetSource(tmp_path / "n.parquet")
    assert src._tensor
    fast = read_chunks(src, 17, range(len(src.chunks)))
    src._tensor = False
    slow = read_chunks(src, 17, range(len(src.chunks)))
    for a, b in zip(fast[:2], slow[:2]):
        np.testing.assert_array_equal(a, b)
    assert fast[0].dtype == np.float64 and np.isnan(fast[0][mask, 0]).all() and np.isnan(fast[0][np.roll(mask, 3), 1]).all()
    assert fast[0][0, 1] == float(2**53 + 1) or np.isnan(fast[0][0, 1])
    for other in (pa.array(rng.random(n) < 0.5), pa.array(rng.normal(size=n).astype(np.float16))):
        pq.write_table(t.set_column(2, "u8", other), tmp_path / "b.parquet")  # booleans, half floats
        src = ParquetSource(tmp_path / "b.parquet")
        assert not src._tensor
        X = read_chunks(src, 17, range(len(src.chunks)))[0]
        np.testing.assert_array_equal(X[:, 2], np.asarray(other.to_numpy(zero_copy_only=False), np.float64))


def test_parquet_file_and_directory_read_as_written(tmp_path, pa):
    import pyarrow.parquet as pq
    from gpumlp.data.parquet import ParquetSource

    rng = np.random.default_rng(5)
    t, X, y = _table(pa, rng, 250)
    pq.write_table(t, tmp_path / "one.parquet", row_group_size=60)
    src = ParquetSource(tmp_path / "one.parquet")
    assert [c.rows for c in src.chunks] == [60, 60, 60, 60, 10]
    assert src.feature_names == ["a", "b", "c"] and src.label_name == "y" and src.n_features == 3
    assert src.n_rows == 250 and src.describe_column(1) == "column 2 ('b')"
    for slice_rows in (1000, 60, 7):
        gx, gy, missing, rows, _ = read_chunks(src, slice_rows, rng.permutation(5))
        np.testing.assert_array_equal(gx, X)
        np.testing.assert_array_equal(gy, y)
        assert not missing.any()
        np.testing.assert_array_equal(rows, np.arange(1, 251))

    d = tmp_path / "parts"
    d.mkdir()
    Xs, ys = [], []
    for i, n in enumerate((100, 35, 80)):
        t, Xi, yi = _table(pa, rng, n)
        pq.write_table(t, d / f"part-{i}.parquet", row_group_size=30)
        Xs.append(Xi)
        ys.append(yi)
    (d / "_SUCCESS").write_bytes(b"")  # ignored, as a dataset ignores it
    src = ParquetSource(d)
    assert [os.path.basename(f) for f in src.files] == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert [(c.file, c.rows, c.first_row) for c in src.chunks][:5] == [(0, 30, 0), (0, 30, 30), (0, 30, 60),
                                                                        (0, 10, 90), (1, 30, 0)]
    gx, gy, _, rows, _ = read_sequential(src, 13)
    np.testing.assert_array_equal(gx, np.concatenate(Xs))
    np.testing.assert_array_equal(gy, np.concatenate(ys))
    np.testing.assert_array_equal(rows, np.concatenate([np.arange(1, n + 1) for n in (100, 35, 80)]))
    files = [p.file for c in src.chunks for p in src.read(c, 1000)]
    assert [os.path.basename(f) for f in files] == ["part-0.parquet"] * 4 + ["part-1.parquet"] * 2 + \
        ["part-2.parquet"] * 3
    src.close()


def test_parquet_labels_by_name_index_text_and_dictionary(tmp_path, pa):
    import pyarrow.parquet as pq
    from gpumlp.data.parquet import ParquetSource

    words = ["red", None, "blue", "red", "green", None]
    t = pa.table({"k": pa.array(words), "x1": pa.array([1.0, 2.0, None, 4.0, 5.0, 6.0]),
                  "d": pa.array(words).dictionary_encode(), "x2": pa.array([1, 2, 3, 4, 5, 6], pa.int8()),
                  "flag": pa.array([True, False, None, True, True, False])})
    path = tmp_path / "labels.parquet"
    pq.write_table(t.drop(["d"]), path)
    for label in ("k", 0, "0", -4):
        src = ParquetSource(path, label)
        assert src.label_name == "k" and src.feature_names == ["x1", "x2", "flag"]
        (_, s), = [(c, p) for c in src.chunks for p in src.read(c, 100)]
        assert s.y.tolist() == ["red", "", "blue", "red", "green", ""]
        assert s.y_missing.tolist() == [False, True, False, False, False, True]
        np.testing.assert_array_equal(s.X, [[1, 1, 1], [2, 2, 0], [np.nan, 3, np.nan], [4, 4, 1], [5, 5, 1],
                                            [6, 6, 0]])
    bpath = tmp_path / "bool.parquet"
    pq.write_table(t.select(["x1", "flag", "x2"]), bpath)
    src = ParquetSource(bpath, "flag")
    assert src.feature_names == ["x1", "x2"] and src.describe_label() == "column 2 ('flag')"
    (_, s), = [(c, p) for c in src.chunks for p in src.read(c, 100)]
    np.testing.assert_array_equal(s.y, [1, 0, np.nan, 1, 1, 0])
    assert s.y_missing.tolist() == [False, False, True, False, False, False]
    dpath = tmp_path / "dict.parquet"
    pq.write_table(t.select(["x1", "x2", "d"]), dpath)
    src = ParquetSource(dpath)
    (_, s), = [(c, p) for c in src.chunks for p in src.read(c, 100)]
    assert src.label_name == "d" and s.y.tolist() == ["red", "", "blue", "red", "green", ""]
    assert s.y_missing.tolist() == [False, True, False, False, False, True]
    src = ParquetSource(bpath, None, require_labels=False)
    assert not src.has_labels and src.n_features == 3 and src.label_name is None
    with pytest.raises(ValueError, match=r"column 1 \('k'\) holds string; feature columns must hold numbers"):
        ParquetSource(path, "x1")
    with pytest.raises(ValueError, match="labels are required"):
        ParquetSource(path, None)
    with pytest.raises(ValueError, match="not a column"):
        ParquetSource(path, "nope")
    with pytest.raises(ValueError, match="out of range"):
        ParquetSource(path, 9)


def test_parquet_refusals_name_the_file_and_column(tmp_path, pa):
    import pyarrow.parquet as pq
    from gpumlp.data.parquet import ParquetSource

    base = pa.table({"a": pa.array([1.0, 2.0]), "b": pa.array([1, 2], pa.int64()), "y": pa.array([0, 1])})
    for name, other, what in [
        ("type", base.set_column(1, "b", pa.array([1, 2], pa.int32())), r"column 'b' holds int32, not int64"),
        ("name", base.rename_columns(["a", "B", "y"]), r"column names \['a', 'B', 'y'\]"),
    ]:
        d = tmp_path / name
        d.mkdir()
        pq.write_table(base, d / "p0.parquet")
        pq.write_table(other, d / "p1.parquet")
        with pytest.raises(ValueError) as err:
            ParquetSource(d)
        assert str(d / "p1.parquet") in str(err.value) and str(d / "p0.parquet") in str(err.value)
        assert err.match(what)

    # whether a column may hold nulls is not a difference
    d = tmp_path / "nullable"
    d.mkdir()
    pq.write_table(base, d / "p0.parquet")
    strict = pa.schema([pa.field("a", pa.float64(), nullable=False), pa.field("b", pa.int64()),
                        pa.field("y", pa.int64())])
    pq.write_table(base.cast(strict), d / "p1.parquet")
    assert ParquetSource(d).n_rows == 4

    good = tmp_path / "good.parquet"
    pq.write_table(base, good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"cut\.parquet: not a readable Parquet file \(damaged or truncated"):
        ParquetSource(cut)
    d = tmp_path / "withcut"
    d.mkdir()
    (d / "p0.parquet").write_bytes(good.read_bytes())
    (d / "p1.parquet").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"p1\.parquet: not a readable Parquet file"):
        ParquetSource(d)

    text = tmp_path / "text.parquet"
    pq.write_table(pa.table({"a": [1.0], "s": ["x"], "y": [1]}), text)
    with pytest.raises(ValueError, match=r"text\.parquet: column 2 \('s'\) holds string; feature columns"):
        ParquetSource(text)
    nested = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"a": [1.0], "y": pa.array([[1, 2]])}), nested)
    with pytest.raises(ValueError, match=r"the label column 2 \('y'\) holds list"):
        ParquetSource(nested)
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(ValueError, match="no Parquet files"):
        ParquetSource(empty)


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    from gpumlp.data import parquet

    real = builtins.__import__

    def no_pyarrow(name, *args, **kw):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kw)

    for mod in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"gpumlp\[parquet\]"):
        parquet.ParquetSource(p)
    with pytest.raises(ImportError, match=r"gpumlp\[parquet\]"):
        open_source(p)


# ---------------------------------------------------------------------------------- the window split
FRACTIONS = (0.1, 0.2, 0.25, 0.5, 0.33)


@pytest.mark.parametrize("f", FRACTIONS)
def test_window_held_is_within_one_of_the_fraction_for_every_prefix(f):
    m = 3000
    for key in range(40):
        held = window_held(np.arange(m), f, key * 0x9E3779B97F4A7C15 % 2**64)
        counts = np.cumsum(held)
        # less than two off: window 0 (which starts below rank 0) and the current window are partly seen
        assert np.all(np.abs(counts - f * np.arange(1, m + 1)) < 2), f"key {key}"
    # decided from the rank alone: any part of the ranks gives the same answer
    full = window_held(np.arange(m), f, 12345)
    np.testing.assert_array_equal(window_held(np.arange(700, 900), f, 12345), full[700:900])
    assert window_held(np.zeros(0, np.int64), f, 1).shape == (0,)


@pytest.mark.parametrize("f", FRACTIONS)
def test_window_held_is_uniform_inside_windows_and_over_keys(f):
    m, keys = 400, 300
    held = np.array([window_held(np.arange(m), f, (k + 1) * 0xD1B54A32D192ED03 % 2**64) for k in range(keys)])
    # every rank is held out with the probability f (over the keys)
    share = held.mean(axis=0)
    assert abs(share.mean() - f) < 0.005
    # so the count of every prefix is f·m in expectation (over the keys)
    assert np.abs(held.cumsum(axis=1).mean(axis=0) - f * np.arange(1, m + 1)).max() < 0.2
    assert np.all(np.abs(share - f) < 5 * np.sqrt(f * (1 - f) / keys) + 0.01)
    # the position held out of each window of a fixed size is uniform over it: a chi-square bound
    if abs(1 / f - round(1 / f)) < 1e-9:
        w = int(round(1 / f))
        phases = np.concatenate([np.flatnonzero(row) % w for row in held])
        counts = np.bincount(phases, minlength=w)
        expected = counts.sum() / w
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 3 * w + 30, counts
    # not always the first (or last) member of a window
    first = held[:, 0].mean()
    assert 0 < first < 1


def _labels(rng, n, classes=3):
    return rng.choice(classes, n, p=np.r_[0.6, 0.3, 0.1][:classes] / np.r_[0.6, 0.3, 0.1][:classes].sum())


def _assign(split, chunks, slices=None, rng=None):
    """Parts of every chunk's rows, each chunk fed in one slice or in random slices (counters carried)."""
    out = []
    for ci, y in enumerate(chunks):
        keys, counters = stratum_keys(y), {}
        if slices is None:
            out.append(split.assign(ci, keys, counters))
            continue
        cuts = np.sort(rng.choice(np.arange(1, y.size), size=min(slices, y.size - 1), replace=False))
        out.append(np.concatenate([split.assign(ci, k, counters) for k in np.split(keys, cuts)]))
    return out


@pytest.mark.parametrize("test_size,validation", [(0.2, 0.25), (0.1, 0.0), (0.0, 0.33), (0.25, 0.1), (0.5, 0.5)])
def test_stream_split_sizes_strata_and_determinism(test_size, validation):
    rng = np.random.default_rng(11)
    chunks = [_labels(rng, int(rng.integers(50, 400))) for _ in range(150)]
    split = StreamSplit(test_size, validation, seed=3)
    parts = _assign(split, chunks)
    allp, ally = np.concatenate(parts), np.concatenate(chunks)
    n_test, n_val = (allp == split.TEST).sum(), (allp == split.VALIDATION).sum()
    n_fit = allp.size - n_test
    assert abs(n_test / allp.size - test_size) < 0.01
    assert abs(n_val / max(n_fit, 1) - validation) < 0.01
    # each chunk and stratum: within one row of the fraction, the validation of the training rows
    for p, y in zip(parts, chunks):
        for c in np.unique(y):
            pc = p[y == c]
            assert abs((pc == split.TEST).sum() - test_size * pc.size) < 2
            trained = (pc != split.TEST).sum()
            assert abs((pc == split.VALIDATION).sum() - validation * trained) < 2
    # stratified: each class's share of the test rows is its share of all rows
    for c in np.unique(ally):
        assert abs((allp[ally == c] == split.TEST).mean() - test_size) < 0.02
    # the test rows do not depend on the validation split; the validation rows are training rows
    test_only = np.concatenate(_assign(StreamSplit(test_size, 0.0, seed=3), chunks))
    np.testing.assert_array_equal(test_only == split.TEST, allp == split.TEST)
    # one slice or many: the same parts
    for p, q in zip(parts, _assign(split, chunks, slices=9, rng=rng)):
        np.testing.assert_array_equal(p, q)
    # deterministic for a seed, another for another seed
    for p, q in zip(parts, _assign(StreamSplit(test_size, validation, seed=3), chunks)):
        np.testing.assert_array_equal(p, q)
    other = np.concatenate(_assign(StreamSplit(test_size, validation, seed=4), chunks))
    assert (other != allp).mean() > 0.05


def test_stream_split_depends_on_the_chunk_and_refuses_bad_fractions():
    split = StreamSplit(0.2, 0.0, seed=0)
    keys = stratum_keys(np.zeros(1000))
    a, b = split.assign(0, keys, {}), split.assign(1, keys, {})
    assert (a != b).any() and abs((a == split.TEST).sum() - 200) < 2 and abs((b == split.TEST).sum() - 200) < 2
    assert not StreamSplit().assign(0, keys, {}).any()
    assert split.assign(0, np.zeros(0, np.uint64), {}).shape == (0,)
    for bad in (1.0, -0.1, True, "0.2", None):
        with pytest.raises(ValueError):
            StreamSplit(bad)
        with pytest.raises(ValueError):
            StreamSplit(0.1, bad)
    assert StreamSplit(0.1, 0.2, 5).to_json() == {"rule": "stream-windows-v1", "test_size": 0.1,
                                                   "validation_split": 0.2, "seed": 5}


def test_stratum_keys():
    k = stratum_keys(np.array([3, 3, 1]))
    assert k.dtype == np.uint64 and k[0] == k[1] != k[2]
    np.testing.assert_array_equal(stratum_keys(np.array([3.0, 3.0, 1.0])), k)
    np.testing.assert_array_equal(stratum_keys(np.array([0.0])), stratum_keys(np.array([-0.0])))
    t = stratum_keys(np.array(["cat", "dog", "cat"]))
    assert t[0] == t[2] != t[1]
    np.testing.assert_array_equal(stratum_keys(np.array(["cat", "dog"], object)), t[:2])
    np.testing.assert_array_equal(stratum_keys(np.array([3, 1], object)), k[1:])


# ---------------------------------------------------------------------------------- moments
def _moments_of(pieces, order=None):
    parts = [Moments(pieces[0].shape[1]).add(p) for p in pieces]
    order = range(len(parts)) if order is None else order
    total = Moments(pieces[0].shape[1])
    for i in order:
        total.merge(parts[i])
    return total


def _random_chunks(rng, X, k):
    cuts = np.sort(rng.choice(np.arange(1, X.shape[0]), size=k, replace=False))
    return np.split(X, cuts)


def test_moments_equal_numpy_over_any_chunking_and_order():
    rng = np.random.default_rng(21)
    X = rng.normal(3.0, 2.0, (2000, 6)) * np.array([1, 10, 1e-3, 1e6, 1, 1])
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 4] = 2.5  # constant
    X[:, 5] = np.nan  # no values
    want_mean = np.nanmean(X[:, :5], axis=0)
    want_std = np.nanstd(X[:, :5], axis=0)
    results = []
    for trial in range(6):
        pieces = _random_chunks(rng, X, int(rng.integers(1, 60)))
        if trial % 2:
            m = Moments(6)
            for p in pieces:
                m.add(p)
        else:
            m = _moments_of(pieces, rng.permutation(len(pieces)))
        assert m.rows == 2000
        np.testing.assert_array_equal(m.n, (~np.isnan(X)).sum(axis=0))
        np.testing.assert_allclose(m.means()[:5], want_mean, rtol=1e-12)
        np.testing.assert_allclose(m.stds()[:5], want_std, rtol=1e-10)
        assert m.means()[4] == 2.5 and m.stds()[4] == 0.0
        assert np.isnan(m.means()[5]) and np.isnan(m.stds()[5])
        np.testing.assert_array_equal(m.maxabs, np.abs(np.nan_to_num(X)).max(axis=0))
        results.append(m)
    # a tree of merges in another order
    pieces = _random_chunks(rng, X, 31)
    parts = [Moments(6).add(p) for p in pieces]
    while len(parts) > 1:
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    np.testing.assert_allclose(parts[0].means()[:5], want_mean, rtol=1e-12)
    np.testing.assert_allclose(parts[0].stds()[:5], want_std, rtol=1e-10)
    # an empty chunk changes nothing
    m = results[0]
    before = m.to_json()
    m.add(np.zeros((0, 6)))
    assert m.to_json() == before


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-300, 7.7e307, -2.0])
def test_moments_of_a_constant_column_are_exact(value):
    rng = np.random.default_rng(9)
    X = np.full((5000, 2), value)
    m = Moments(2)
    for p in _random_chunks(rng, X, 40):
        m.add(p)
    assert np.all(m.means() == value) and np.all(m.stds() == 0.0)
    assert np.all(scaler_from_moments("standard", m).scale == 1.0)


def test_moments_of_values_near_the_float_limit():
    rng = np.random.default_rng(8)
    X = rng.uniform(-1.7, 1.7, (3000, 3)) * 1e308
    X[:, 1] = X[:, 1] * 1e-300  # 1e8
    X[:1000, 2] = rng.normal(size=1000) * 1e-3  # small values first, then huge ones: rescaled on the way
    with np.errstate(over="raise", invalid="raise"):
        m = Moments(3)
        for p in _random_chunks(rng, X, 20):
            m.add(p)
        stds = m.stds()
    ref = Scaler("standard").fit(X)
    assert np.all(np.isfinite(m.means())) and np.all(np.isfinite(stds))
    np.testing.assert_allclose(m.means(), ref.offset, rtol=1e-10, atol=0)
    np.testing.assert_allclose(stds, ref.scale, rtol=1e-10)
    np.testing.assert_allclose(imputer_from_moments(m).mean, MeanImputer().fit(X).mean, rtol=1e-10)
    # the same by an exact reference: the values divided by a power of two
    s = 2.0**1020
    np.testing.assert_allclose(m.stds()[0], np.std(X[:, 0] / s) * s, rtol=1e-10)


def test_moments_json_round_trip():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 3))
    X[::7, 1] = np.nan
    m = Moments(3).add(X[:60])
    back = Moments.from_json(json.loads(json.dumps(m.to_json())))
    np.testing.assert_array_equal(back.means(), m.means())
    np.testing.assert_array_equal(back.stds(), m.stds())
    assert back.rows == m.rows and back.exponent.dtype == np.int64
    back.add(X[60:])
    m.add(X[60:])
    assert back.to_json() == m.to_json()


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32])
@pytest.mark.parametrize("kind", SCALINGS)
def test_scaler_from_moments_equals_scaler_fit(kind, dtype):
    rng = np.random.default_rng(2)
    X = (rng.normal(4.0, 3.0, (1500, 5)) * [1, 100, 0.01, 1, 7]).astype(dtype)
    X[:, 3] = 2  # constant: scale 1
    rtol = {np.float64: 1e-12, np.float32: 1e-6, np.int32: 1e-12}[dtype]
    m = Moments(5)
    for p in _random_chunks(rng, X.astype(np.float64), 17):
        m.add(p)
    got, want = scaler_from_moments(kind, m), Scaler(kind).fit(X)
    assert got.kind == want.kind == kind and got.fitted
    if kind == "none":
        assert got.scale is None
        return
    np.testing.assert_allclose(got.offset, want.offset, rtol=rtol, atol=0)
    np.testing.assert_allclose(got.scale, want.scale, rtol=rtol)
    if kind == "standard":
        assert got.scale[3] == want.scale[3] == 1.0
    Z = X[:50].astype(np.float64)
    np.testing.assert_allclose(got.transform(Z, np.float64), want.transform(Z, np.float64), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", SCALINGS)
def test_scaler_from_moments_after_imputation(kind):
    rng = np.random.default_rng(4)
    X = rng.normal(-2.0, 5.0, (800, 4))
    X[rng.random(X.shape) < 0.2] = np.nan
    imputer = MeanImputer().fit(X)
    m = Moments(4)
    for p in _random_chunks(rng, X, 9):
        m.add(p)
    np.testing.assert_allclose(imputer_from_moments(m).mean, imputer.mean, rtol=1e-12)
    got, want = scaler_from_moments(kind, m, imputed=True), Scaler(kind).fit(imputer.transform(X))
    if kind != "none":
        np.testing.assert_allclose(got.offset, want.offset, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got.scale, want.scale, rtol=1e-10)


def test_all_missing_feature_refused_by_the_imputer_as_in_memory():
    X = np.ones((10, 2))
    X[:, 1] = np.nan
    m = Moments(2).add(X)
    with pytest.raises(ValueError, match=r"feature 2 \('b'\) has no value"):
        imputer_from_moments(m, ["a", "b"])
    with pytest.raises(ValueError, match=r"feature 2 \('b'\) has no value"):
        MeanImputer().fit(X, ["a", "b"])
    got, want = scaler_from_moments("standard", m), Scaler("standard").fit(X)
    np.testing.assert_array_equal(got.scale, want.scale)
    np.testing.assert_array_equal(got.offset, want.offset)


# ---------------------------------------------------------------------------------- the reader
def _reader_threads():
    return [t for t in threading.enumerate() if t.name == "gpumlp-reader"]


def _wait_for_no_reader(seconds=5.0):
    end = time.monotonic() + seconds
    while _reader_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return not _reader_threads()


@pytest.mark.parametrize("depth", [1, 2, 7])
def test_prefetch_yields_every_item_in_order(depth):
    assert list(prefetch(lambda: iter(range(500)), depth)) == list(range(500))
    assert list(prefetch(lambda: iter([]), depth)) == []
    assert _wait_for_no_reader()


def test_prefetch_raises_the_producers_exception():
    def items():
        yield from range(5)
        raise KeyError("bad row 3001")

    got = []
    with pytest.raises(KeyError, match="bad row 3001"):
        for x in prefetch(items):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]

    def no_items():
        raise ValueError("cannot open")

    with pytest.raises(ValueError, match="cannot open"):
        list(prefetch(no_items))
    assert _wait_for_no_reader()


def test_leaving_early_stops_the_reader_thread():
    produced, closed = [], threading.Event()

    def endless():
        try:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1
        finally:
            closed.set()

    for x in prefetch(endless, 2):
        if x == 3:
            break
    assert _wait_for_no_reader(), "the reader thread is still running"
    assert closed.wait(5) and len(produced) < 20

    it = prefetch(lambda: iter(range(10**9)), 3)
    with pytest.raises(RuntimeError):
        for x in it:
            if x == 10:
                raise RuntimeError("training failed")
    del it
    assert _wait_for_no_reader()


def _pieces(rng, n, d=3, weighted=True):
    ids = np.arange(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=12, replace=False))
    out = []
    for part in np.split(ids, cuts):
        x = np.column_stack([part] + [part * 0.5] * (d - 1)).astype(np.float64)
        out.append((x, part.astype(np.int64), part * 2.0 if weighted else None))
    return out


def _blocks(pieces, capacity, block, batch, rng):
    def make(x, y, w):
        return ShuffleBuffer(max(capacity, block), 0, x.shape[1:], x.dtype, y.shape[1:], y.dtype, w is not None)

    return list(shuffled_blocks(pieces, capacity, block, batch, rng, make))


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("capacity,block,batch", [(200, 50, 8), (64, 64, 16), (1000, 100, 32), (10, 3, 4)])
def test_shuffled_blocks_hand_out_every_row_once(weighted, capacity, block, batch):
    n = 733
    pieces = _pieces(np.random.default_rng(0), n, weighted=weighted)
    blocks = _blocks(pieces, capacity, block, batch, np.random.default_rng(5))
    ids = np.concatenate([x[:, 0] for x, _, _ in blocks])
    assert sorted(ids.tolist()) == list(range(n))
    assert not np.array_equal(ids, np.arange(n))
    for x, y, w in blocks:
        np.testing.assert_array_equal(x[:, 0], y)
        np.testing.assert_array_equal(x[:, 1], y * 0.5)
        assert w is None if not weighted else np.array_equal(w, y * 2.0)
    size = max(batch, block // batch * batch)
    assert all(x.shape[0] == size for x, _, _ in blocks[:-1])
    assert 0 < blocks[-1][0].shape[0] <= size
    again = _blocks(pieces, capacity, block, batch, np.random.default_rng(5))
    np.testing.assert_array_equal(np.concatenate([x[:, 0] for x, _, _ in again]), ids)
    other = _blocks(pieces, capacity, block, batch, np.random.default_rng(6))
    assert not np.array_equal(np.concatenate([x[:, 0] for x, _, _ in other]), ids)
    in_order = _blocks(pieces, capacity, block, batch, None)
    np.testing.assert_array_equal(np.concatenate([x[:, 0] for x, _, _ in in_order]), np.arange(n))
    assert all(x.shape[0] == size for x, _, _ in in_order[:-1])
    assert _blocks([], capacity, block, batch, None) == []


def test_shuffled_blocks_mix_rows_across_the_buffer():
    n = 4000
    pieces = _pieces(np.random.default_rng(1), n, weighted=False)
    blocks = _blocks(pieces, 1000, 100, 10, np.random.default_rng(2))
    ids = np.concatenate([x[:, 0] for x, _, _ in blocks])
    first = blocks[0][0][:, 0]
    assert first.max() > 500  # drawn from the whole buffer, not its first rows
    # a row leaves about where it came in: no farther than a few buffers
    where = np.empty(n)
    where[ids.astype(int)] = np.arange(n)
    assert np.corrcoef(where, np.arange(n))[0, 1] > 0.5
    assert np.abs(where - np.arange(n)).mean() > 50


def test_shuffle_buffer_take_and_add():
    buf = ShuffleBuffer(20, 5, (2,), np.float32, (), np.int64, True)
    x = np.arange(30, dtype=np.float32).reshape(15, 2)
    buf.add(x, np.arange(15), np.arange(15) * 1.0, 0)
    buf.add(x[:5], np.arange(100, 105), np.arange(5) * 1.0, at=2)  # rows 2..4 of these
    assert buf.fill == 18
    held = buf.y[:buf.fill].tolist()
    assert held == list(range(15)) + [102, 103, 104]
    rng = np.random.default_rng(0)
    rows = rng.permutation(buf.fill)[:7]
    bx, by, bw = buf.take(rows)
    assert by.tolist() == [held[r] for r in rows]
    np.testing.assert_array_equal(bx[:, 0], np.where(by >= 100, (by - 100) * 2, by * 2))
    assert buf.fill == 11
    assert sorted(buf.y[:11].tolist() + by.tolist()) == sorted(held)
    np.testing.assert_array_equal(buf.x[:11, 0], np.where(buf.y[:11] >= 100, (buf.y[:11] - 100) * 2,
                                                          buf.y[:11] * 2))
    np.testing.assert_array_equal(buf.w[:11], np.where(buf.y[:11] >= 100, buf.y[:11] - 100, buf.y[:11]))
    by[:] = -1  # the block is a copy
    assert (buf.y[:11] >= 0).all()
    with pytest.raises(ValueError, match="do not fit"):
        buf.add(np.zeros((20, 2), np.float32), np.zeros(20, np.int64), np.zeros(20), 0)


# ---------------------------------------------------------------------------------- sizes, formats, plans
def test_parse_size():
    assert parse_size("256MiB") == 256 * 2**20
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5G") == 3 * 2**29
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size(" 64 mib ") == 64 * 2**20
    assert parse_size("1024") == 1024 and parse_size(".5k") == 512 and parse_size("3KB") == 3000
    assert parse_size("1TiB") == 2**40
    for bad in ("", "abc", "12XB", "-5MiB", "1e3MiB", "1..5G", "MiB", "5 M iB", None, "0x10M"):
        with pytest.raises(ValueError, match="a size reads like"):
            parse_size(bad)


def test_plan_memory():
    with pytest.raises(ValueError, match=r"at least 32 MiB"):
        plan_memory(MIN_BUDGET - 1, 10)
    small, mid, large = (plan_memory(b, 784, batch_size=64) for b in (32 * 2**20, 256 * 2**20, 2 * 2**30))
    assert small.capacity < mid.capacity < large.capacity
    assert small.slice_rows < mid.slice_rows < large.slice_rows
    for plan in (small, mid, large):
        assert plan.shuffle_bytes() <= SHARES["shuffle"] * plan.budget
        assert plan.block % 64 == 0 and 64 <= plan.block <= plan.capacity
        assert 1 <= plan.score_rows <= 8192 and plan.capacity >= 128
        assert "shuffle buffer" in plan.describe()
    fixed = plan_memory(256 * 2**20, 784, batch_size=64, shuffle_rows=5000)
    assert fixed.capacity == 5000
    with pytest.raises(ValueError, match=rf"at most {mid.capacity} rows"):
        plan_memory(256 * 2**20, 784, batch_size=64, shuffle_rows=mid.capacity + 1)
    with pytest.raises(ValueError, match=r"at least one batch \(64 rows\)"):
        plan_memory(256 * 2**20, 784, batch_size=64, shuffle_rows=10)
    with pytest.raises(ValueError, match=r"fewer than two batches of 128: give a larger budget or a smaller batch"):
        plan_memory(32 * 2**20, 20000, batch_size=128, fmt="npy")
    with pytest.raises(ValueError, match=r"more than the reader's share of the budget"):
        plan_memory(32 * 2**20, 10**6, fmt="csv")
    assert plan_memory(2**30, 10, max_slice_rows=100).slice_rows == 100
    assert plan_memory(2**30, 10, fmt="csv").slice_rows < plan_memory(2**30, 10, fmt="parquet").slice_rows


def test_plan_memory_takes_the_decoders_pages_off_the_budget_first():
    plain = plan_memory(64 * 2**20, 64)
    spent = plan_memory(64 * 2**20, 64, decode_bytes=24 * 2**20)
    assert spent.budget == plain.budget == 64 * 2**20 and spent.decode_bytes == 24 * 2**20
    assert spent.shuffle_bytes() <= SHARES["shuffle"] * 40 * 2**20 < plain.shuffle_bytes()
    assert spent.slice_rows < plain.slice_rows and "decoder's pages 24 MiB" in spent.describe()
    with pytest.raises(ValueError, match=r"too small for this file: row group 3 takes about 20 MiB.* at least 36 MiB"):
        plan_memory(32 * 2**20, 64, decode_bytes=20 * 2**20, decode_what="row group 3")


def test_parquet_decode_bytes_from_the_largest_row_group(tmp_path, pa):
    """Twice each column chunk's uncompressed size, at most 4 MiB a column, for the largest row group; a
    budget it leaves under 16 MiB is refused naming the row group and the file."""
    import pyarrow.parquet as pq
    from gpumlp.data.parquet import PAGE_BOUND, ParquetSource

    rng = np.random.default_rng(4)
    n, d = 70_000, 20
    X = rng.normal(size=(n, d))
    pq.write_table(pa.table({**{f"x{j}": X[:, j] for j in range(d)}, "y": rng.integers(0, 2, n)}),
                   tmp_path / "w.parquet", row_group_size=65536)
    src = ParquetSource(tmp_path / "w.parquet")
    meta = pq.ParquetFile(tmp_path / "w.parquet").metadata
    want = max(sum(min(2 * meta.row_group(g).column(c).total_uncompressed_size, PAGE_BOUND)
                   for c in range(d + 1)) for g in range(meta.num_row_groups))
    assert src.decode_bytes == want > 2 * d * 65536 * 8 * 0.9
    assert "row group 1 of" in src.decode_what and "65536 rows of 21 columns" in src.decode_what
    with pytest.raises(ValueError, match=r"too small for this file: the Parquet reader's pages for row group 1"):
        stream(tmp_path / "w.parquet", memory_budget="32MiB").plan()
    assert stream(tmp_path / "w.parquet", memory_budget="64MiB").plan().decode_bytes == want


def test_stream_format(tmp_path):
    for name, fmt in [("a.parquet", "parquet"), ("b.pq", "parquet"), ("x.npy", "npy"), ("d.csv", "csv"),
                      ("d.tsv", "csv"), ("d.csv.gz", "csv"), ("d.txt", "csv"), ("data", "csv")]:
        (tmp_path / name).write_bytes(b"1,2\n")
        assert stream_format(tmp_path / name) == fmt, name
    (tmp_path / "dir").mkdir()
    assert stream_format(tmp_path / "dir") == "parquet"
    assert stream_format(tmp_path / "d.csv", "npy") == "npy"
    idx = tmp_path / "train-images-idx3-ubyte"
    idx.write_bytes(b"\0\0\x08\x03" + b"\0" * 12)
    npz = tmp_path / "data.npz"
    np.savez(npz, X=np.zeros((2, 2)), y=np.zeros(2))
    for path, what in ((idx, "idx"), (npz, "npz")):
        with pytest.raises(ValueError) as err:
            stream_format(path)
        assert err.match(rf"{what} files cannot be streamed; streaming reads Parquet, \.npy .* and CSV/TSV")
        assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=r"idx files cannot be streamed; streaming reads Parquet"):
        stream_format(tmp_path / "d.csv", "idx")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        stream_format(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="embedded data set"):
        stream_format("digits")


def test_open_source(tmp_path):
    np.save(tmp_path / "X.npy", np.arange(600.0).reshape(300, 2))
    np.save(tmp_path / "y.npy", np.arange(300) % 2)
    src = open_source(tmp_path / "X.npy", labels=tmp_path / "y.npy", chunk_rows=100)
    assert isinstance(src, NpySource) and [c.rows for c in src.chunks] == [100, 100, 100]
    X, y, _, rows, _ = read_chunks(src, 33, [1, 2, 0])
    np.testing.assert_array_equal(X, np.arange(600.0).reshape(300, 2))
    np.testing.assert_array_equal(rows, np.arange(1, 301))
    with pytest.raises(ValueError, match="need their labels in a file of their own"):
        open_source(tmp_path / "X.npy")
    assert not open_source(tmp_path / "X.npy", require_labels=False).has_labels
    with pytest.raises(ValueError, match="header and delimiter apply to CSV files"):
        open_source(tmp_path / "X.npy", labels=tmp_path / "y.npy", header=True)
    csvp = _write(tmp_path / "d.csv", "a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(50)))
    with pytest.raises(ValueError, match="separate labels file is used with .npy features"):
        open_source(csvp, labels=tmp_path / "y.npy")
    src = open_source(csvp, label_column="a", chunk_rows=8)
    assert isinstance(src, CsvSource) and src.label_name == "a" and [c.rows for c in src.chunks][:2] == [8, 8]
    assert len(src.chunks) == 7
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        open_source(csvp, chunk_rows=0)


def test_pairs_source():
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(n, 3)), rng.integers(0, 2, n).astype(float)) for n in (5, 12, 1, 7)]
    pairs[1][1][3] = np.nan
    src = PairsSource(pairs)
    assert src.random_access and src.n_rows == 25 and src.n_features == 3 and src.has_labels
    assert [c.first_row for c in src.chunks] == [0, 5, 17, 18]
    X, y, missing, rows, _ = read_chunks(src, 4, [3, 1, 0, 2])
    np.testing.assert_array_equal(X, np.concatenate([p[0] for p in pairs]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in pairs]))
    np.testing.assert_array_equal(missing, np.isnan(y))
    np.testing.assert_array_equal(rows, np.arange(1, 26))

    class Reiterable:
        def __iter__(self):
            return iter((X[a:b].astype(np.float32), None) for a, b in ((0, 10), (10, 25)))

    once = PairsSource(Reiterable())
    assert not once.random_access and not once.has_labels and [c.rows for c in once.chunks] == [10, 15]
    gx, gy, _, grows, ids = read_sequential(once, 6)
    np.testing.assert_allclose(gx, X.astype(np.float32).astype(np.float64), rtol=0)
    assert gy is None and ids == [0, 0, 1, 1, 1] and grows.tolist() == list(range(1, 26))
    gx, *_ = read_sequential(once, 100, chunks={1})
    np.testing.assert_array_equal(gx, X[10:].astype(np.float32))
    (c, p), = [(c, p) for c in [once.chunks[1]] for p in once.read(c, 100)]
    np.testing.assert_array_equal(p.X, X[10:].astype(np.float32))

    text = PairsSource([(np.zeros((2, 1)), np.array(["a", "b"]))])
    (_, p), = list(text.sequential(10))
    assert p.y.tolist() == ["a", "b"] and not p.y_missing.any()

    for bad, err, pattern in [
        (3, TypeError, "re-iterable"), ("abc", TypeError, "re-iterable"), (np.zeros((2, 2)), TypeError, "re-iterable"),
        ([], ValueError, "is empty"), ([np.zeros((2, 2))], TypeError, "not an .X_chunk, y_chunk. pair"),
        ([(np.zeros(3), None)], ValueError, "2-D array of real numbers"),
        ([(np.array([["a"]]), None)], ValueError, "2-D array of real numbers"),
        ([(np.zeros((3, 2)), np.zeros(2))], ValueError, "y_chunk has 2 rows, X_chunk 3"),
        ([(np.zeros((3, 2)), None), (np.zeros((3, 4)), None)], ValueError, "chunk 2 has 4 features, chunk 1 has 2"),
        ([(np.zeros((3, 2)), np.zeros(3)), (np.zeros((3, 2)), None)], ValueError, "chunk 2 has no labels"),
        ([(np.zeros((3, 2)), None), (np.zeros((3, 2)), np.zeros(3))], ValueError, "chunk 2 has labels"),
    ]:
        with pytest.raises(err, match=pattern):
            PairsSource(bad)
