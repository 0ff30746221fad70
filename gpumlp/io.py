"""Model files: a NumPy ``.npz`` archive, never pickle (loading executes no code).

This module knows the file format and nothing of the model class: it writes and reads a
``gpumlp.state.ModelState`` (``MLP.state_dict()``; ``MLP.from_state_dict`` builds a model from one,
and ``gpumlp.load(path)`` (``gpumlp.pipeline``) is the two together, wrapped in a ``gpumlp.Pipeline``
when the file carries preprocessing). A model file holds

    meta                  uint8 bytes of a UTF-8 JSON object: format_version, gpumlp_version, the
                          model's settings (sizes, activation, loss, λ, bias, dtype, seed, optimizer
                          hyper-parameters and step count, epochs, curves, RNG state, schedule,
                          history, plateau monitor), and "preprocessing" (scaling kind, whether
                          classes are stored; from format 2 also imputation, target scaling, the
                          header's names and whether a Pipeline saved it: see ``gpumlp.state``) and
                          "training" (the command-line settings, or null)
    theta                 all weights then all biases, flat, in the model's dtype
    optimizer.<name>      optimizer state (SGD velocity; Adam m and v), flat like theta
    scaling.offset        (d,) float64, with scaling.scale: x ↦ (x − offset) / scale
    scaling.scale
    classes               (q,) the label of each output unit (numbers, or text from format 2)
    impute.mean           (d,) float64: the value of a missing feature (format 2)
    target.offset         (q,) float64, with target.scale: regression targets t ↦ (t − offset) / scale,
    target.scale          which the model was trained on (format 2)

Format 2 (gpumlp 0.2) added the entries marked so; files of format 1 load as before, with none of them.

``save``/``write`` write to a temporary file beside the target, flush it to disk and rename it over
the target (``os.replace``), so a crash leaves either the old file or the new one, never half of one.
A target that exists keeps its permission bits; the temporaries of a save that was killed are
removed by the next save to the same place (``atomic_write``).
``read`` checks everything before anything is built and raises ``ModelFileError`` (a ValueError)
naming the file, the entry and what is wrong.

A model file may come from anyone, so reading one is bounded before anything is read (``_read``):
only a regular file (not a FIFO or a device), at most 16 members, each a known .npy name once,
stored or deflated (never expanding more than 100-fold), meta at most 16 MiB of JSON nested at
most 64 deep with no number longer than 39 digits, at most 2**31 parameters, and every array's
.npy header checked against the shape and dtype the meta implies before its data are read.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import stat
import time
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from .data import _open_regular
from .monitor import PlateauMonitor
from .state import ModelState

FORMAT_VERSION = 2
_SCALINGS = ("standard", "max")
_TARGET_SCALINGS = ("standard",)
_MAX_NAME = 1024  # characters of one header name


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not an archive, or an entry missing or wrong."""


# ---------------------------------------------------------------------------------- save
def save(model, path, *, scaler=None, classes=None, training=None):
    """Write ``model`` (anything with a ``state_dict()``: a ``gpumlp.MLP`` or a ``gpumlp.Pipeline``)
    to ``path`` (exactly that name; no suffix is added), atomically.

    ``scaler`` (a ``gpumlp.data.Scaler``), ``classes`` (label of each output) and ``training``
    (a JSON-serialisable dict) replace the model's own ``scaler_``, ``classes_`` and
    ``training_config_`` in the file when given.
    """
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"model must be a gpumlp.MLP or gpumlp.Pipeline, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    state = model.state_dict()
    meta, arrays = dict(state.meta), dict(state.arrays)
    pre = dict(meta["preprocessing"])
    if scaler is not None:
        arrays.pop("scaling.offset", None), arrays.pop("scaling.scale", None)
        pre["scaling"] = None
        if scaler.kind != "none":
            if scaler.scale is None:
                raise ValueError("scaler is not fitted; fit it on the training data before saving")
            pre["scaling"] = scaler.kind
            arrays["scaling.offset"] = np.asarray(scaler.offset, np.float64)
            arrays["scaling.scale"] = np.asarray(scaler.scale, np.float64)
    if pre["scaling"] is not None:
        _check_scaling(arrays, meta["sizes"][0], f"scaler for {path}")
    if classes is not None:
        arrays["classes"] = np.asarray(classes)
        pre["classes"] = True
    if "classes" in arrays:
        _check_classes(arrays["classes"], meta["sizes"][-1], meta["loss"], "classes")
    _check_preprocessing_meta(pre, meta["sizes"], meta["loss"], path)
    _check_new_preprocessing(pre, arrays, meta["sizes"], f"preprocessing for {path}")
    meta["preprocessing"] = pre
    if training is not None:
        meta["training"] = training
    write(path, ModelState(meta, arrays))


def write(path, state):
    """Write a ``ModelState`` to ``path`` atomically, with the format and gpumlp versions in meta."""
    meta = dict(state.meta, format_version=FORMAT_VERSION, gpumlp_version=_version())
    blob = json.dumps(meta, allow_nan=True).encode()  # curves may hold a diverged NaN
    atomic_write(path, lambda f: np.savez(f, meta=np.frombuffer(blob, np.uint8), **state.arrays))


def atomic_write(path, write):
    """Run write(file) on a temporary file beside ``path``, fsync it, rename it over ``path``.

    An existing target keeps its permission bits (rwx for user, group and others; the file is new, so
    its owner is the writer): the temporary is made private (0o600) while the data go in and gets the
    target's bits just before the rename, so a private model is never readable by others on the way.
    A new target gets 0o666 & ~umask, as ``open()`` would. Temporaries that a killed save left beside
    the same target are removed first (``remove_stale_temporaries``)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    remove_stale_temporaries(directory, name)
    mode = _permission_bits(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # 0o666 & ~umask for a new file, as open() would; private until the target's bits are copied
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if mode is not None:
                os.chmod(f.fileno() if os.chmod in os.supports_fd else tmp, mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _permission_bits(path):
    """The rwx bits of an existing regular file at ``path`` (set-id and sticky bits are not carried
    over to the new file), else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else None


# A temporary of atomic_write: ".<target name>.<pid>.<8 hex digits>.tmp", beside the target.
_TEMPORARY = r"\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}\.tmp"
STALE_AFTER = 3600.0  # seconds: a temporary this old is left over even if its pid lives (reused pids)


def remove_stale_temporaries(directory, name, now=None):
    """Delete the temporaries that saves to ``directory/name`` left behind when they were killed
    (SIGKILL, a power cut: no ``except`` ran). Only ours: a regular file (not a link) named exactly as
    ``atomic_write`` names them for this target, owned by this user, whose process is gone (on POSIX)
    or which was last written more than ``STALE_AFTER`` seconds ago. A save in progress (its process
    alive, its file fresh) is never touched. Best effort: a file that cannot be removed stays. Returns
    the paths removed."""
    pattern = re.compile(re.escape(f".{name}") + _TEMPORARY)
    prefix = f".{name}."
    now = time.time() if now is None else now
    removed = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
            continue
        if now - st.st_mtime <= STALE_AFTER and _process_alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
    return removed


def _process_alive(pid):
    """Whether process ``pid`` exists (True when it cannot be told: then only age removes a file)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # PermissionError: alive, another user's
    return True


def _version():
    from ._version import __version__

    return __version__


# ---------------------------------------------------------------------------------- read
def read(path):
    """The checked ``ModelState`` of the model file at ``path``.

    Raises FileNotFoundError for a missing file and ModelFileError (a ValueError) for anything else
    wrong with it: every entry that building the model reads is checked here, before anything is built.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    meta, arrays = _read(path)  # bounded, meta checked (_read_meta), each header against what meta implies
    _check_arrays(meta, arrays, path)  # the values: finite, in the model's dtype's range, consistent
    return ModelState(meta, arrays)


# What a model file may ask of the process that reads it. gpumlp writes at most eight members
# (meta, theta, best_theta, two optimizer slots, two scaling arrays, classes), each an .npy array.
_MAX_MEMBERS = 16
_MAX_DIRECTORY_BYTES = 64 * 1024  # the zip's list of members: 16 entries take about 1 KiB
_MAX_META_BYTES = 16 * 2**20      # settings and curves take about 150 bytes an epoch: 100 000 epochs fit
_MAX_META_DEPTH = 64              # gpumlp's meta nests 3 deep; json.loads recurses once per level
_MAX_NUMBER_DIGITS = 39           # the RNG state's 128-bit integers have 39 digits; longer cannot be ours
_MAX_LAYERS = 1024
_MAX_PARAMS = 2**31               # 8 GiB of float32 weights: far beyond any MLP trained with gpumlp
_MAX_NPY_HEADER = 4096            # gpumlp's .npy headers are 128 bytes
# gpumlp stores members uncompressed; np.savez_compressed shrinks trained float weights by well
# under 2x, so a deflated member that claims to expand more than this is a bomb, not weights.
_MAX_DEFLATE_RATIO = 100
_DEFLATE_SLACK = 2**20            # small members (classes, scaling) may compress better
_CHUNK = 2**20
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class _Entry:
    """What the metadata implies for one array: its shape and dtype kinds, and how to say so."""
    shape: tuple
    kinds: str
    shape_says: str
    kind_says: str


def _read(path):
    """(meta dict, {name: array}) from the archive, or ModelFileError saying why not.

    Everything is bounded before it is read: the file must be a regular file, the archive's members
    few, known and not bombs, the metadata small and shallow, and each array's .npy header must
    give the shape and dtype that the metadata implies before any of its data is read.
    """
    p = os.fspath(path)
    with _open_regular(p, "model file", ModelFileError) as f:
        archive_size = os.fstat(f.fileno()).st_size
        _check_directory(f, p)
        with _open_archive(f, p) as zf:
            members = _members(zf, p, archive_size)
            meta = _read_meta(zf, members.pop("meta", None), p)
            expected = _expected_entries(meta, members, p)
            arrays = {name: _read_member(zf, info, expected[name], name, p) for name, info in members.items()}
    return meta, arrays


def _open_archive(f, path):
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ModelFileError(f"{path}: not a gpumlp model file (not an .npz archive, or a damaged one)") from None


def _check_directory(f, path):
    """Refuse an archive that lists too many members before zipfile builds an object for each.

    Uses zipfile's own reader of the end-of-archive record (a private helper; without it zipfile's
    parse still costs no more than the file's size)."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return
    try:
        record = end_record(f)
    except (OSError, EOFError, zipfile.BadZipFile):
        record = None
    if record is None:
        raise ModelFileError(f"{path}: not a gpumlp model file (not an .npz archive)")
    entries = record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)]
    directory_bytes = record[getattr(zipfile, "_ECD_SIZE", 5)]
    if entries > _MAX_MEMBERS or directory_bytes > _MAX_DIRECTORY_BYTES:
        raise ModelFileError(f"{path}: the archive lists {entries} members in {directory_bytes} bytes; "
                             f"a gpumlp model file has at most {_MAX_MEMBERS}")


def _members(zf, path, archive_size):
    """{array name: ZipInfo}: every member an uncompressed or deflated, unencrypted .npy file, once,
    and no member claiming more bytes than it can hold."""
    infos = zf.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise ModelFileError(f"{path}: the archive has {len(infos)} members; a gpumlp model file has at most "
                             f"{_MAX_MEMBERS}")
    names = [info.filename for info in infos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelFileError(f"{path}: the archive holds {duplicates} more than once; a model file holds each "
                             f"entry once")
    unknown = sorted(n for n in names if not n.endswith(".npy") or "/" in n or n == ".npy")
    if unknown:
        raise ModelFileError(f"{path}: unexpected entries {unknown}; a model file holds only .npy arrays")
    for info in infos:
        _check_member_size(info, path, archive_size)
    return {info.filename[:-len(".npy")]: info for info in infos}


def _check_member_size(info, path, archive_size):
    name = info.filename[:-len(".npy")]
    if info.flag_bits & 0x1:
        raise ModelFileError(f"{path}: entry {name!r} is encrypted; gpumlp model files never are")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelFileError(f"{path}: entry {name!r} uses zip compression method {info.compress_type}; "
                             f"gpumlp reads stored or deflated members only")
    if info.compress_size > archive_size:
        raise ModelFileError(f"{path}: entry {name!r} claims {info.compress_size} bytes in a file of "
                             f"{archive_size}; the archive is damaged")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (stored and info.file_size != info.compress_size) or \
            info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + _DEFLATE_SLACK:
        raise ModelFileError(f"{path}: entry {name!r} claims to expand from {info.compress_size} to "
                             f"{info.file_size} bytes; refused as a zip bomb")


class _PastEnd(Exception):
    """A read that asked for more bytes than the member's size allows."""


class _BoundedReader:
    """A zip member read through ``read`` only, never past ``limit`` bytes: a request beyond it is
    refused before anything is read, so a lying .npy header cannot make us read or allocate more."""

    def __init__(self, stream, limit):
        self.stream, self.limit, self.position = stream, limit, 0

    def read(self, n):
        if n < 0 or self.position + n > self.limit:
            raise _PastEnd
        data = self.stream.read(n)
        self.position += len(data)
        return data


def _read_meta(zf, info, path):
    """The meta entry's JSON object, its size, nesting and numbers bounded before it is parsed."""
    if info is None:
        raise ModelFileError(f"{path}: no 'meta' entry; not a gpumlp model file")
    if info.file_size > _MAX_META_BYTES + _MAX_NPY_HEADER:
        raise ModelFileError(f"{path}: 'meta' holds {info.file_size} bytes; model settings take at most "
                             f"{_MAX_META_BYTES}")
    say = "must be 1-D uint8 JSON bytes"
    entry = _Entry(None, "u", say, say)
    raw = _read_member(zf, info, entry, "meta", path).tobytes()
    if _nesting_depth(raw) > _MAX_META_DEPTH:
        raise ModelFileError(f"{path}: 'meta' nests more than {_MAX_META_DEPTH} levels deep; not gpumlp settings")
    if _has_long_number(raw, _MAX_NUMBER_DIGITS):
        raise ModelFileError(f"{path}: 'meta' holds a number of more than {_MAX_NUMBER_DIGITS} digits; "
                             f"not gpumlp settings")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{path}: 'meta' is not valid UTF-8 JSON ({_json_problem(exc)})") from None
    except RecursionError:  # not reached after the depth check; kept so that none can escape
        raise ModelFileError(f"{path}: 'meta' nests too deeply; not gpumlp settings") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    _check_bounds(meta, path)
    try:
        _check_meta(meta, path)
    except (OverflowError, RecursionError, MemoryError):  # a backstop: the bounds above should prevent it
        raise ModelFileError(f"{path}: 'meta' holds values out of range for gpumlp settings") from None
    return meta


def _json_problem(exc):
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "bad UTF-8" if isinstance(exc, UnicodeDecodeError) else "bad value"


def _outside_strings(raw):
    """The JSON text with every string literal's contents masked out, as uint8 chunks.

    Escaped backslashes and then escaped quotes go first, so the quotes left delimit strings; a
    running count of them says what is inside one (UTF-8 never hides a quote inside a character)."""
    raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    quotes_before = 0
    for start in range(0, len(raw), _CHUNK):
        chunk = np.frombuffer(raw, np.uint8, count=min(_CHUNK, len(raw) - start), offset=start)
        is_quote = chunk == ord('"')
        inside = ((np.cumsum(is_quote, dtype=np.int64) + quotes_before) & 1).astype(bool) | is_quote
        quotes_before += int(is_quote.sum())
        yield np.where(inside, ord(" "), chunk).astype(np.uint8)


def _nesting_depth(raw):
    """How deep arrays and objects nest in JSON text, counted without parsing it."""
    depth = deepest = 0
    for chunk in _outside_strings(raw):
        step = (chunk == ord("[")).astype(np.int64) + (chunk == ord("{")) - (chunk == ord("]")) - (chunk == ord("}"))
        levels = depth + np.cumsum(step)
        if levels.size:
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _has_long_number(raw, digits):
    """Whether some run of more than ``digits`` digits stands outside JSON strings."""
    too_long = re.compile(b"[0-9]{%d}" % (digits + 1))
    tail = b""
    for chunk in _outside_strings(raw):
        text = tail + chunk.tobytes()  # a run may cross the chunks' boundary
        if too_long.search(text):
            return True
        tail = text[-digits:]
    return False


def _check_bounds(meta, path):
    """Sizes and counters small enough that building and training the model cannot overflow."""
    sizes = meta.get("sizes")
    if isinstance(sizes, list) and all(_is_int(n) for n in sizes):
        if len(sizes) > _MAX_LAYERS:
            raise ModelFileError(f"{path}: meta['sizes'] lists {len(sizes)} layer sizes; gpumlp loads at most "
                                 f"{_MAX_LAYERS}")
        if len(sizes) >= 2 and isinstance(meta.get("bias"), bool) and all(n >= 1 for n in sizes):
            n = _n_params(meta)
            if n > _MAX_PARAMS:
                raise ModelFileError(f"{path}: meta['sizes'] {_short(sizes)} implies {n} parameters, more than "
                                     f"the {_MAX_PARAMS} gpumlp loads")
    counters = [("epochs", meta.get("epochs")), ("samples_seen", meta.get("samples_seen"))]
    for name in ("optimizer", "monitor"):
        if isinstance(meta.get(name), dict):
            counters += [(f"{name}.{k}", v) for k, v in meta[name].items()]
    for key, value in counters:
        if _is_int(value) and abs(value) > _INT64_MAX:
            raise ModelFileError(f"{path}: meta[{key!r}] is {_short(value)}, beyond a 64-bit integer")


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _expected_entries(meta, members, path):
    """{name: _Entry} for every member, from the (checked) metadata; unknown members are refused
    here, before any array is read."""
    n = _n_params(meta)
    d, q = meta["sizes"][0], meta["sizes"][-1]
    flat = _Entry((n,), "f", f"must have shape ({n},) for sizes and bias as in meta", "must hold floats")
    per_feature = f"must be ({d},) floats (one per input feature)"
    known = {"theta": flat, "best_theta": flat,
             "scaling.offset": _Entry((d,), "f", per_feature, per_feature),
             "scaling.scale": _Entry((d,), "f", per_feature, per_feature),
             "classes": _Entry((q,), "biufU", f"must be ({q},) labels, one per output",
                               f"must be ({q},) numbers or text, one per output"),
             "impute.mean": _Entry((d,), "f", per_feature, per_feature)}
    per_output = f"must be ({q},) floats (one per output)"
    known.update({k: _Entry((q,), "f", per_output, per_output) for k in ("target.offset", "target.scale")})
    name, slots = _optimizer_slots(meta, path)
    for k in sorted(members):
        if k.startswith("optimizer.") and k[len("optimizer."):] not in slots:
            raise ModelFileError(f"{path}: unexpected entry {k!r} for the {name} optimizer "
                                 f"(it keeps {sorted(slots) or 'no arrays'})")
    known.update({f"optimizer.{k}": flat for k in slots})
    extra = sorted(set(members) - set(known))
    if extra:
        raise ModelFileError(f"{path}: unexpected entries {extra}")
    return known


def _optimizer_slots(meta, path):
    """(optimizer name, names of the arrays it keeps) from meta['optimizer']."""
    from .optim import make_optimizer

    opt = dict(meta["optimizer"])
    name = opt.pop("name")
    opt.pop("t")
    try:
        return name, set(make_optimizer(name, **opt).state_names)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{path}: meta['optimizer'] has invalid settings: {exc}") from None


def _read_member(zf, info, entry, name, path):
    """One .npy member as an array, its header checked against ``entry`` before its data is read."""
    try:
        with zf.open(info) as stream:
            reader = _BoundedReader(stream, info.file_size)
            shape, dtype = _npy_header(reader, name, path)
            _check_header(shape, dtype, entry, name, path)
            nbytes = math.prod(shape) * dtype.itemsize
            if reader.position + nbytes != info.file_size:
                raise ModelFileError(f"{path}: entry {name!r} holds {info.file_size - reader.position} bytes of "
                                     f"data, its header implies {nbytes}")
            data = _read_exactly(reader, nbytes, name, path)
    except _PastEnd:
        raise ModelFileError(f"{path}: entry {name!r} is shorter than its .npy header says") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        raise ModelFileError(f"{path}: entry {name!r} is damaged (its data fail the archive's checksum "
                             f"or are truncated)") from None
    return np.frombuffer(data, dtype).reshape(shape)


def _npy_header(reader, name, path):
    """(shape, dtype) from an .npy header, read with NumPy's own header functions."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        version = npy.read_magic(reader)
        if version not in readers:
            raise ModelFileError(f"{path}: entry {name!r} is in .npy format version {version[0]}.{version[1]}; "
                                 f"gpumlp reads 1.0 and 2.0")
        shape, _, dtype = readers[version](reader, max_header_size=_MAX_NPY_HEADER)
    except (ValueError, TypeError, SyntaxError, OverflowError, RecursionError, MemoryError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path}: entry {name!r} is not a valid .npy array (bad header)") from None
    return shape, dtype


def _check_header(shape, dtype, entry, name, path):
    if dtype.hasobject:
        raise ModelFileError(f"{path}: entry {name!r} cannot be read without pickle (it holds Python objects); "
                             f"gpumlp model files never contain pickled objects")
    if entry.shape is None:  # meta: any length within its byte bound, checked by the caller
        if dtype != np.uint8 or len(shape) != 1:
            raise ModelFileError(f"{path}: {name!r} {entry.kind_says}, got {dtype} shape {shape}")
        return
    if dtype.kind not in entry.kinds or dtype.itemsize == 0 or dtype.fields is not None:
        raise ModelFileError(f"{path}: {name!r} {entry.kind_says}, got dtype {dtype}")
    if shape != entry.shape:
        raise ModelFileError(f"{path}: {name!r} {entry.shape_says}, got {dtype} {shape}")


def _read_exactly(reader, nbytes, name, path):
    """``nbytes`` bytes, read a chunk at a time into one buffer (no member is read whole at once)."""
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    filled = 0
    while filled < nbytes:
        chunk = reader.read(min(_CHUNK, nbytes - filled))
        if not chunk:
            raise ModelFileError(f"{path}: entry {name!r} is truncated ({filled} of {nbytes} bytes)")
        view[filled:filled + len(chunk)] = chunk
        filled += len(chunk)
    return buffer


def _fail(path, key, expected, got):
    raise ModelFileError(f"{os.fspath(path)}: meta[{key!r}] must be {expected}, got {got!r}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_meta(meta, path):
    """Types and ranges of every meta entry that building the model reads."""
    from .functions import ACTIVATIONS, LOSSES
    from .optim import OPTIMIZERS

    v = meta.get("format_version")
    if not _is_int(v):
        _fail(path, "format_version", "an integer", v)
    if v > FORMAT_VERSION:
        raise ModelFileError(f"{os.fspath(path)}: written in model format {v} by a newer gpumlp "
                             f"({meta.get('gpumlp_version', '?')}); this gpumlp ({_version()}) reads format "
                             f"{FORMAT_VERSION} and older; upgrade gpumlp")
    if v < 1:
        _fail(path, "format_version", f"between 1 and {FORMAT_VERSION}", v)
    required = ("sizes", "activation", "loss", "weight_decay", "bias", "dtype", "seed", "optimizer", "epochs",
                "loss_curve", "validation_curve", "validation_loss_curve", "rng_state", "preprocessing")
    for key in required:
        if key not in meta:
            raise ModelFileError(f"{os.fspath(path)}: meta has no {key!r} entry")
    sizes = meta["sizes"]
    if not isinstance(sizes, list) or len(sizes) < 2 or not all(_is_int(n) and n >= 1 for n in sizes):
        _fail(path, "sizes", "a list of at least 2 positive integers", sizes)
    n_hidden = len(sizes) - 2
    act = meta["activation"]
    acts = [act] * n_hidden if isinstance(act, str) else act
    if not isinstance(acts, list) or len(acts) != n_hidden or not all(a in ACTIVATIONS for a in acts):
        _fail(path, "activation", f"one of {sorted(ACTIVATIONS)} or a list of {n_hidden} of them", act)
    if meta["loss"] not in LOSSES:
        _fail(path, "loss", f"one of {sorted(LOSSES)}", meta["loss"])
    wd = meta["weight_decay"]
    if not _is_real(wd) or not math.isfinite(wd) or wd < 0:
        _fail(path, "weight_decay", "a finite number >= 0", wd)
    if not isinstance(meta["bias"], bool):
        _fail(path, "bias", "true or false", meta["bias"])
    if meta["dtype"] not in ("float32", "float64"):
        _fail(path, "dtype", "'float32' or 'float64'", meta["dtype"])
    if meta["seed"] is not None and not _is_int(meta["seed"]):
        _fail(path, "seed", "an integer or null", meta["seed"])
    opt = meta["optimizer"]
    if not isinstance(opt, dict) or opt.get("name") not in OPTIMIZERS:
        _fail(path, "optimizer", f"an object with a 'name' in {OPTIMIZERS}", opt)
    if not _is_int(opt.get("t")) or opt["t"] < 0:
        _fail(path, "optimizer", "an object with a step count 't' >= 0", opt)
    if not _is_int(meta["epochs"]) or meta["epochs"] < 0:
        _fail(path, "epochs", "an integer >= 0", meta["epochs"])
    for key in ("loss_curve", "validation_curve", "validation_loss_curve"):
        curve = meta[key]
        if not isinstance(curve, list) or not all(_is_real(x) for x in curve):
            _fail(path, key, "a list of numbers", curve)
    try:
        np.random.default_rng().bit_generator.state = meta["rng_state"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        _fail(path, "rng_state", f"a NumPy PCG64 state ({exc})", meta["rng_state"])
    pre = meta["preprocessing"]
    if not isinstance(pre, dict) or pre.get("scaling") not in (None, *_SCALINGS) \
            or not isinstance(pre.get("classes"), bool):
        _fail(path, "preprocessing", f"an object with 'scaling' in {(None, *_SCALINGS)} and 'classes' true/false",
              pre)
    _check_preprocessing_meta(pre, sizes, meta["loss"], path)
    _check_training_state(meta, path)
    if meta.get("training") is not None and not isinstance(meta["training"], dict):
        _fail(path, "training", "an object or null", meta["training"])
    meta.setdefault("training", None)


def _check_preprocessing_meta(pre, sizes, loss, path):
    """The entries format 2 added to meta['preprocessing'] (each may be absent: format 1)."""
    for key in ("impute", "pipeline"):
        if not isinstance(pre.get(key, False), bool):
            _fail(path, f"preprocessing.{key}", "true or false", pre[key])
    target = pre.get("target_scaling")
    if target not in (None, *_TARGET_SCALINGS):
        _fail(path, "preprocessing.target_scaling", f"null or one of {_TARGET_SCALINGS}", target)
    if target is not None and loss == "cross_entropy":
        _fail(path, "preprocessing.target_scaling", "null for a cross_entropy model (it has no targets to scale)",
              target)
    names = pre.get("feature_names")
    if names is not None and (not isinstance(names, list) or len(names) != sizes[0]
                              or not all(isinstance(n, str) and len(n) <= _MAX_NAME for n in names)):
        _fail(path, "preprocessing.feature_names", f"null or a list of {sizes[0]} names (one per input, at most "
              f"{_MAX_NAME} characters each)", _short(names))
    label = pre.get("label_name")
    if label is not None and (not isinstance(label, str) or len(label) > _MAX_NAME):
        _fail(path, "preprocessing.label_name", f"null or a name of at most {_MAX_NAME} characters", _short(label))


def _check_training_state(meta, path):
    """The entries of later fit features (schedule, history, early stopping); each may be absent."""
    from . import schedules

    if meta.get("lr_schedule") is not None:
        try:
            schedules.from_json(meta["lr_schedule"])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            _fail(path, "lr_schedule", f"a learning-rate schedule ({exc})", meta["lr_schedule"])
    n = meta.get("samples_seen", 0)
    if not _is_int(n) or n < 0:
        _fail(path, "samples_seen", "an integer >= 0", n)
    history = meta.get("history")
    if history is not None and (not isinstance(history, dict) or not all(
            isinstance(v, list) and all(x is None or _is_real(x) for x in v) for v in history.values())):
        _fail(path, "history", "an object of lists of numbers (or null)", history)
    monitor = meta.get("monitor")
    if monitor is not None:
        _check_monitor(monitor, path)


def _check_monitor(monitor, path):
    try:
        PlateauMonitor.from_json(monitor)
    except ValueError as exc:
        raise ModelFileError(f"{os.fspath(path)}: meta['monitor'] must be null or the early-stopping state: "
                             f"{exc}") from None


def _n_params(meta):
    sizes = meta["sizes"]
    n = sum(o * i for o, i in zip(sizes[1:], sizes[:-1]))
    return n + (sum(sizes[1:]) if meta["bias"] else 0)


def _check_flat(arrays, name, n, path, dtype):
    """A flat float array of n entries, finite in the model's ``dtype`` (as it will be loaded)."""
    a = arrays.get(name)
    if a is None:
        raise ModelFileError(f"{os.fspath(path)}: no {name!r} entry")
    if a.dtype.kind != "f":
        raise ModelFileError(f"{os.fspath(path)}: {name!r} must hold floats, got dtype {a.dtype}")
    if a.shape != (n,):
        raise ModelFileError(f"{os.fspath(path)}: {name!r} must have shape ({n},) for sizes and bias as in meta, "
                             f"got {a.shape}")
    if not np.isfinite(a).all():
        raise ModelFileError(f"{os.fspath(path)}: {name!r} contains NaN or infinity")
    with np.errstate(over="ignore"):
        if not np.isfinite(a.astype(dtype, copy=False)).all():
            raise ModelFileError(f"{os.fspath(path)}: {name!r} has values beyond the range of the model's "
                                 f"dtype {dtype} (meta['dtype'])")


def _check_arrays(meta, arrays, path):
    """Every array present is expected, has the right shape and dtype, and is finite."""
    p = os.fspath(path)
    n = _n_params(meta)
    _check_flat(arrays, "theta", n, path, meta["dtype"])
    name, slots = _optimizer_slots(meta, path)
    t, opt = meta["optimizer"]["t"], meta["optimizer"]
    present = {k[len("optimizer."):] for k in arrays if k.startswith("optimizer.")}
    for k in sorted(present):
        if k not in slots:
            raise ModelFileError(f"{p}: unexpected entry 'optimizer.{k}' for the {name} optimizer "
                                 f"(it keeps {sorted(slots) or 'no arrays'})")
        _check_flat(arrays, f"optimizer.{k}", n, path, meta["dtype"])
    if t > 0 and present != slots and not (name == "sgd" and not opt.get("momentum")):
        missing = sorted(slots - present)
        raise ModelFileError(f"{p}: the {name} optimizer has taken {t} steps but its state "
                             f"{', '.join('optimizer.' + k for k in missing)} is missing")
    pre = meta["preprocessing"]
    if pre["scaling"] is not None:
        _check_scaling(arrays, meta["sizes"][0], p)
    elif "scaling.offset" in arrays or "scaling.scale" in arrays:
        raise ModelFileError(f"{p}: scaling arrays present but meta['preprocessing']['scaling'] is null")
    if pre["classes"]:
        if "classes" not in arrays:
            raise ModelFileError(f"{p}: meta says classes are stored but there is no 'classes' entry")
        _check_classes(arrays["classes"], meta["sizes"][-1], meta["loss"], f"{p}: 'classes'")
    elif "classes" in arrays:
        raise ModelFileError(f"{p}: 'classes' entry present but meta['preprocessing']['classes'] is false")
    _check_new_preprocessing(pre, arrays, meta["sizes"], p)
    if "best_theta" in arrays:  # early stopping's best weights so far
        _check_flat(arrays, "best_theta", n, path, meta["dtype"])
    known = {"theta", "best_theta", *_PREPROCESSING} | {f"optimizer.{k}" for k in present}
    extra = sorted(set(arrays) - known)
    if extra:
        raise ModelFileError(f"{p}: unexpected entries {extra}")


_PREPROCESSING = ("scaling.offset", "scaling.scale", "classes", "impute.mean", "target.offset", "target.scale")


def _check_new_preprocessing(pre, arrays, sizes, where):
    """Format 2's arrays: present exactly when meta['preprocessing'] says so, finite, of their shape."""
    if pre.get("impute", False):
        _check_vector(arrays, "impute.mean", sizes[0], "one per input feature", where)
    elif "impute.mean" in arrays:
        raise ModelFileError(f"{where}: 'impute.mean' entry present but meta['preprocessing']['impute'] is not true")
    if pre.get("target_scaling") is not None:
        for key in ("target.offset", "target.scale"):
            _check_vector(arrays, key, sizes[-1], "one per output", where)
        if not (arrays["target.scale"] > 0).all():
            raise ModelFileError(f"{where}: 'target.scale' must be > 0 everywhere")
    elif "target.offset" in arrays or "target.scale" in arrays:
        raise ModelFileError(f"{where}: target scaling arrays present but meta['preprocessing']['target_scaling'] "
                             f"is null")


def _check_vector(arrays, key, n, says, where):
    a = arrays.get(key)
    if a is None:
        raise ModelFileError(f"{where}: no {key!r} entry, but meta['preprocessing'] says it is stored")
    if a.dtype.kind != "f" or a.shape != (n,):
        raise ModelFileError(f"{where}: {key!r} must be ({n},) floats ({says}), got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise ModelFileError(f"{where}: {key!r} contains NaN or infinity")


def _check_scaling(arrays, d, where):
    for key in ("scaling.offset", "scaling.scale"):
        a = arrays.get(key)
        if a is None:
            raise ModelFileError(f"{where}: no {key!r} entry, but the model is saved with scaling")
        if a.dtype.kind != "f" or a.shape != (d,):
            raise ModelFileError(f"{where}: {key!r} must be ({d},) floats (one per input feature), "
                                 f"got {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise ModelFileError(f"{where}: {key!r} contains NaN or infinity")
    if not (arrays["scaling.scale"] > 0).all():
        raise ModelFileError(f"{where}: 'scaling.scale' must be > 0 everywhere")


def _check_classes(classes, q, loss, where):
    if loss != "cross_entropy":
        raise ModelFileError(f"{where}: class labels only apply to cross_entropy models, this one uses {loss}")
    if classes.dtype.kind not in "biufU" or classes.shape != (q,):
        raise ModelFileError(f"{where}: must be ({q},) numbers or text, one per output, got {classes.dtype} "
                             f"{classes.shape}")
    if classes.dtype.kind == "f" and not np.isfinite(classes).all():
        raise ModelFileError(f"{where}: contains NaN or infinity")
    if q > 1 and not (classes[1:] > classes[:-1]).all():
        raise ModelFileError(f"{where}: must be strictly increasing (sorted, no repeats)")
