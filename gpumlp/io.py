"""Model files: a NumPy ``.npz`` archive, never pickle (loading executes no code).

This module knows the file format and nothing of the model class: it writes and reads a
``gpumlp.state.ModelState`` (``MLP.state_dict()``; ``MLP.from_state_dict`` builds a model from one,
and ``gpumlp.load(path)`` is the two together). A model file holds

    meta                  uint8 bytes of a UTF-8 JSON object: format_version, gpumlp_version, the
                          model's settings (sizes, activation, loss, λ, bias, dtype, seed, optimizer
                          hyper-parameters and step count, epochs, curves, RNG state, schedule,
                          history, plateau monitor), and "preprocessing" (scaling kind, whether
                          classes are stored) and "training" (the command-line settings, or null)
    theta                 all weights then all biases, flat, in the model's dtype
    optimizer.<name>      optimizer state (SGD velocity; Adam m and v), flat like theta
    scaling.offset        (d,) float64, with scaling.scale: x ↦ (x − offset) / scale
    scaling.scale
    classes               (q,) the label of each output unit (cross-entropy models trained by the CLI)

``save``/``write`` write to a temporary file beside the target, flush it to disk and rename it over
the target (``os.replace``), so a crash leaves either the old file or the new one, never half of one.
``read`` checks everything before anything is built and raises ``ModelFileError`` (a ValueError)
naming the file, the entry and what is wrong.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import zipfile
import numpy as np

from .monitor import PlateauMonitor
from .state import ModelState

FORMAT_VERSION = 1
_SCALINGS = ("standard", "max")


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not an archive, or an entry missing or wrong."""


# ---------------------------------------------------------------------------------- save
def save(model, path, *, scaler=None, classes=None, training=None):
    """Write ``model`` (anything with a ``state_dict()``, i.e. a ``gpumlp.MLP``) to ``path`` (exactly
    that name; no suffix is added), atomically.

    ``scaler`` (a ``gpumlp.data.Scaler``), ``classes`` (label of each output) and ``training``
    (a JSON-serialisable dict) replace the model's own ``scaler_``, ``classes_`` and
    ``training_config_`` in the file when given.
    """
    if not callable(getattr(model, "state_dict", None)):
        raise TypeError(f"model must be a gpumlp.MLP, got {type(model).__name__}")
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
    """Run write(file) on a temporary file beside ``path``, fsync it, rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
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
    meta, arrays = _read(path)
    _check_meta(meta, path)
    _check_arrays(meta, arrays, path)
    return ModelState(meta, arrays)


def _read(path):
    """(meta dict, {name: array}) from the archive, or ModelFileError saying why not."""
    path_s = os.fspath(path)
    if not os.path.exists(path_s):
        raise FileNotFoundError(f"no such model file: {path_s}")
    if os.path.isdir(path_s):
        raise ModelFileError(f"{path_s} is a directory, not a model file")
    if not zipfile.is_zipfile(path_s):
        raise ModelFileError(f"{path_s}: not a gpumlp model file (not an .npz archive)")
    try:
        with np.load(path_s, allow_pickle=False) as z:
            names = list(z.files)
            arrays = {}
            for name in names:
                try:
                    arrays[name] = z[name]
                except ValueError as exc:  # object arrays: refused, never unpickled
                    raise ModelFileError(f"{path_s}: entry {name!r} cannot be read without pickle "
                                         f"({exc}); gpumlp model files never contain pickled objects") from None
    except ModelFileError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError(f"{path_s}: damaged archive ({type(exc).__name__}: {exc})") from None
    raw = arrays.pop("meta", None)
    if raw is None:
        raise ModelFileError(f"{path_s}: no 'meta' entry; not a gpumlp model file")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(f"{path_s}: 'meta' must be 1-D uint8 JSON bytes, got {raw.dtype} shape {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path_s}: 'meta' is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path_s}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta, arrays


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
    except (TypeError, ValueError, KeyError) as exc:
        _fail(path, "rng_state", f"a NumPy PCG64 state ({exc})", meta["rng_state"])
    pre = meta["preprocessing"]
    if not isinstance(pre, dict) or pre.get("scaling") not in (None, *_SCALINGS) \
            or not isinstance(pre.get("classes"), bool):
        _fail(path, "preprocessing", f"an object with 'scaling' in {(None, *_SCALINGS)} and 'classes' true/false",
              pre)
    _check_training_state(meta, path)
    if meta.get("training") is not None and not isinstance(meta["training"], dict):
        _fail(path, "training", "an object or null", meta["training"])
    meta.setdefault("training", None)


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
    from .optim import make_optimizer

    p = os.fspath(path)
    n = _n_params(meta)
    _check_flat(arrays, "theta", n, path, meta["dtype"])
    opt = dict(meta["optimizer"])
    name, t = opt.pop("name"), opt.pop("t")
    try:
        slots = set(make_optimizer(name, **opt).state_names)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{p}: meta['optimizer'] has invalid settings: {exc}") from None
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
    if "best_theta" in arrays:  # early stopping's best weights so far
        _check_flat(arrays, "best_theta", n, path, meta["dtype"])
    known = {"theta", "best_theta", "scaling.offset", "scaling.scale", "classes"} | {f"optimizer.{k}" for k in present}
    extra = sorted(set(arrays) - known)
    if extra:
        raise ModelFileError(f"{p}: unexpected entries {extra}")


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
    if classes.dtype.kind not in "biuf" or classes.shape != (q,):
        raise ModelFileError(f"{where}: must be ({q},) numbers, one per output, got {classes.dtype} {classes.shape}")
    if classes.dtype.kind == "f" and not np.isfinite(classes).all():
        raise ModelFileError(f"{where}: contains NaN or infinity")
    if q > 1 and not (np.diff(classes) > 0).all():
        raise ModelFileError(f"{where}: must be strictly increasing (sorted, no repeats)")
