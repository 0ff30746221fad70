"""What every reader of a data file shares: the ``Table`` a loader returns, opening only regular files,
the first bytes of a file (gunzipped), and the short forms error messages use."""
from __future__ import annotations

import gzip
import os
import stat
import zlib
from dataclasses import dataclass

import numpy as np

EMBEDDED = ("digits",)
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 2**20


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


def _short(values, n=12):
    values = list(values)
    return str(values if len(values) <= n else values[:n] + ["..."])


def _dtype_words(dtype):
    words = {"c": "complex numbers", "U": "text", "S": "bytes", "M": "dates", "m": "time spans",
             "V": "structured records", "O": "Python objects"}
    return f"{words.get(dtype.kind, 'values')} (dtype {dtype})"
