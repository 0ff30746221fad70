"""MNIST / Fashion-MNIST IDX files, raw or gzipped: the header checked against the data's size."""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from .base import _CHUNK, _GZIP_MAGIC, _open_regular

# IDX type codes (third byte of the magic number) -> big-endian dtype; see yann.lecun.com/exdb/mnist
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_INFLATE_RATIO = 1032  # deflate's limit: no gzip stream expands more, so a header asking more lies
_IDX_MARGIN = 4096         # bytes read past an IDX header's size, to say how much too long a file is


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
