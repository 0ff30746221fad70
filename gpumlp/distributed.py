"""Communicators for data-parallel training: one process per rank, on MPI (mpi4py) or NCCL (CuPy).

    from gpumlp import distributed
    comm = distributed.init("mpi")        # or "nccl" (one GPU per process), or "auto"
    comm.rank, comm.size                  # this process's rank and the number of ranks
    model.fit(X, y, comm=comm)            # the trainer that uses it: gpumlp.data_parallel

Engines (``engines()`` says which work here, ``gpumlp info`` prints it):

    mpi    any MPI through mpi4py (``pip install 'gpumlp[mpi]'``, and an MPI library: the cluster's, or
           ``pip install mpich``). NumPy arrays go to MPI as they are. CuPy arrays go to MPI directly
           when the MPI is CUDA-aware (``MPIX_Query_cuda_support``, or $GPUMLP_MPI_CUDA_AWARE=1/0),
           after the compute stream has finished with them; otherwise through a pinned host buffer
           (device → pinned on the compute stream, MPI on the host, pinned → device).
    nccl   NCCL through CuPy (``cupy.cuda.nccl``; the extras nccl-cuda12 / nccl-cuda13), bootstrapped
           over MPI: rank 0's NCCL unique id reaches every rank by an MPI broadcast, no socket or file
           of ours. Each process takes one GPU: its rank among the processes of its node (or the one GPU
           it sees, when the launcher gives each process its own). Collectives of device arrays run on
           the device, on the current (compute) stream: no host copy, no wait.
    auto   nccl where every rank can use it (a CUDA device, NCCL loads, the "auto" backend is CuPy),
           else mpi.

A communicator's collectives (every rank calls each, in the same order):

    allreduce(buf)        sum a flat array over the ranks, in place (the gradient, once per step)
    bcast(buf, root=0)    rank root's array into every rank's, in place
    exchange(value)       every rank's small picklable value, in rank order (on the host, via MPI)
    exchange(error=exc)   ... from a rank that failed: every rank then raises (see below)
    require_identical(what, value)   a clear ValueError on every rank if the ranks' values differ

``digest(*arrays)`` is the cheap fingerprint the trainer compares across ranks: the shapes, dtypes and
every byte of arrays up to 64 MiB, an evenly spaced sample of rows beyond (exact bytes, so that equal
data give equal digests on any machine).

Failures. A rank that raises must not leave the others waiting in a collective. Where gpumlp knows
every rank is at the same point (the checks before training, the end of each epoch), a failing rank
passes its exception to ``exchange``, and every rank raises: the failing one its own exception, the
others a ``RankError`` carrying that rank's message (a ValueError / TypeError when it was one). Those
exceptions are collective (``is_collective``): every rank raises them together. Anywhere else the job
has to end: ``init`` installs an excepthook (as ``python -m mpi4py`` does) that prints the rank's
traceback and calls MPI_Abort when an exception that is not collective ends the program, and the
trainer aborts the job on an exception inside an epoch. ``SingleProcess()`` is a communicator of one
rank without MPI: the data-parallel code path in one process.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass

import numpy as np

from .backend import array_module, cupy_status, is_device_array, resolve

ENGINES = ("mpi", "nccl", "auto")
CUDA_AWARE_VAR = "GPUMLP_MPI_CUDA_AWARE"
DIGEST_BYTES = 64 * 2**20  # arrays up to this size are hashed whole, larger ones by a sample of rows

_MPI_HINT = ("gpumlp.distributed needs mpi4py and an MPI library: pip install 'gpumlp[mpi]' (mpi4py), plus "
             "mpich from PyPI (pip install mpich) where the system has no MPI")


class RankError(RuntimeError):
    """Another rank failed at a point where every rank checks; ``rank`` and ``message`` say which and why."""

    def __init__(self, rank, message):
        super().__init__(f"rank {rank} failed: {message}")
        self.rank, self.message = rank, message


class RankValueError(RankError, ValueError):
    """Another rank raised a ValueError (bad data or settings)."""


class RankTypeError(RankError, TypeError):
    """Another rank raised a TypeError."""


def is_collective(exc) -> bool:
    """Whether ``exc`` is raised on every rank together (an agreed error, or a decision from global values)."""
    return bool(getattr(exc, "gpumlp_collective", False))


def mark_collective(exc, origin=None):
    """Mark ``exc`` as raised on every rank together (``origin``: the rank whose failure it is)."""
    exc.gpumlp_collective = True
    if origin is not None and getattr(exc, "gpumlp_origin", None) is None:
        exc.gpumlp_origin = origin
    return exc


def _describe(exc):
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or type(exc).__name__}"


def _remote_error(rank, kind, message):
    cls = {"ValueError": RankValueError, "TypeError": RankTypeError}.get(kind, RankError)
    return mark_collective(cls(rank, message), origin=rank)


# ---------------------------------------------------------------------------------- fingerprints
def digest(*arrays) -> str:
    """A hex fingerprint of the arrays (NumPy or CuPy; None allowed): shapes, dtypes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        h.update(f"{tuple(a.shape)}:{np.dtype(a.dtype).str};".encode())
        sample = a
        if a.ndim and a.nbytes > DIGEST_BYTES:  # evenly spaced rows, the first and the last among them
            n, row = a.shape[0], max(a.nbytes // a.shape[0], 1)
            rows = np.unique(np.linspace(0, n - 1, max(DIGEST_BYTES // row, 2)).astype(np.int64))
            xp = array_module(a)
            sample = xp.take(a, xp.asarray(rows), axis=0)
        host = sample.get() if is_device_array(sample) else np.asarray(sample)
        h.update(memoryview(np.ascontiguousarray(host)).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------- communicators
class Communicator:
    """The collectives of one group of ranks (see the module docstring); built by ``init``."""

    engine = ""

    def __init__(self, mpi_comm, mpi_module):
        self.mpi, self._MPI = mpi_comm, mpi_module
        self.rank, self.size = int(mpi_comm.Get_rank()), int(mpi_comm.Get_size())

    def __repr__(self):
        return f"<{type(self).__name__} {self.engine}: rank {self.rank} of {self.size}>"

    # -- flat buffers ------------------------------------------------------------------------
    def allreduce(self, buf):
        """Sum ``buf`` (a contiguous NumPy or CuPy array) over the ranks, in place. Returns ``buf``."""
        if self.size > 1:
            self._mpi_allreduce(buf)
        return buf

    def bcast(self, buf, root=0):
        """Rank ``root``'s ``buf`` into every rank's ``buf``, in place. Returns ``buf``."""
        if self.size > 1:
            self._mpi_bcast(buf, root)
        return buf

    def _mpi_allreduce(self, buf):
        self.mpi.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)

    def _mpi_bcast(self, buf, root):
        self.mpi.Bcast(buf, root=root)

    # -- small host values ---------------------------------------------------------------------
    def exchange(self, value=None, *, error=None):
        """Every rank's ``value`` as a list in rank order. If a rank passes ``error`` (its exception),
        every rank raises: that rank its own exception, the others a ``RankError`` with its message."""
        mine = (None, value) if error is None else ((type(error).__name__, _describe(error)), None)
        entries = self.mpi.allgather(mine) if self.size > 1 else [mine]
        failed = [(r, e[0]) for r, e in enumerate(entries) if e[0] is not None]
        if failed:
            if error is not None:
                raise mark_collective(error, origin=self.rank)
            rank, (kind, message) = failed[0]
            raise _remote_error(rank, kind, message)
        return [e[1] for e in entries]

    def bcast_object(self, value, root=0):
        """Rank ``root``'s picklable ``value`` on every rank."""
        return self.mpi.bcast(value, root=root) if self.size > 1 else value

    def require_identical(self, what, value, hint=""):
        """ValueError on every rank, naming the ranks, unless every rank passed the same ``value``."""
        values = self.exchange(value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            detail = _first_difference(values[0], values[differ[0]], differ[0]) if isinstance(value, dict) else ""
            raise mark_collective(ValueError(
                f"{what} differ between ranks (rank{'s' if len(differ) > 1 else ''} {', '.join(map(str, differ))} "
                f"against rank 0{detail})" + (f". {hint}" if hint else "")))
        return values[0]

    def barrier(self):
        if self.size > 1:
            self.mpi.Barrier()

    def abort(self, exc=None, code=1, message=None):
        """End the whole job now (MPI_Abort). First one line on standard error, ``message`` or what
        failed here, then ``exc``'s traceback (when no message is given)."""
        err = sys.__stderr__
        try:
            what = "" if exc is None else f": {_describe(exc)}"
            print(message or f"gpumlp.distributed: rank {self.rank} of {self.size} failed{what}; ending the job "
                             f"(MPI_Abort)", file=err, flush=True)
            if exc is not None and message is None:
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
            err.flush()
            time.sleep(0.2)  # the launcher forwards this rank's output before it ends the processes
        finally:
            try:
                self.mpi.Abort(code)
            finally:  # MPI_Abort may return before the launcher ends the processes: this one stops here
                os._exit(code)

    # -- what the trainer asks ---------------------------------------------------------------------
    def model_problem(self, model):
        """Why this communicator cannot train ``model`` (a string), or None."""
        return None


def _first_difference(a, b, rank):
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            return f": {key} is {a.get(key)!r} on rank 0, {b.get(key)!r} on rank {rank}"
    return ""


def describe_array(a):
    """'shape dtype #digest' of an array (or None): what ``require_identical`` shows of data."""
    return None if a is None else f"{tuple(a.shape)} {np.dtype(a.dtype).name} #{digest(a)[:12]}"


class MPICommunicator(Communicator):
    """MPI through mpi4py; device arrays CUDA-aware or staged through pinned host memory."""

    engine = "mpi"

    def __init__(self, mpi_comm, mpi_module, cuda_aware=None):
        super().__init__(mpi_comm, mpi_module)
        self.cuda_aware = mpi_cuda_aware() if cuda_aware is None else bool(cuda_aware)
        self._pinned = {}

    def allreduce(self, buf):
        if self.size > 1:
            self._device_call(buf, self._mpi_allreduce) if is_device_array(buf) else self._mpi_allreduce(buf)
        return buf

    def bcast(self, buf, root=0):
        if self.size > 1:
            if is_device_array(buf):
                self._device_call(buf, lambda b: self._mpi_bcast(b, root))
            else:
                self._mpi_bcast(buf, root)
        return buf

    def _device_call(self, buf, op):
        """``op`` on a device buffer: MPI reads device memory only once the compute stream wrote it."""
        cupy = array_module(buf)
        stream = cupy.cuda.get_current_stream()
        if self.cuda_aware:
            stream.synchronize()
            op(buf)
            return
        host, copied = self._pinned_like(cupy, buf, stream)
        buf.get(out=host, stream=stream)  # into pinned memory, then waits for the stream
        op(host)
        buf.set(host, stream=stream)  # pinned -> device, ordered before the stream's next work: it
        copied.record(stream)  # reads host after this returns, until this event (see _pinned_like)

    def _pinned_like(self, cupy, buf, stream):
        """A pinned host buffer shaped as ``buf`` and its event, recorded after the last asynchronous
        pinned -> device copy that reads it. A buffer is freed (the cache holds four) only once that
        copy has finished, since CuPy's pinned pool hands the memory out again at once; one reused on
        another stream is overwritten there only after it."""
        key = (buf.size, buf.dtype.str)
        entry = self._pinned.get(key)
        if entry is None:
            if len(self._pinned) >= 4:
                for _, event in self._pinned.values():
                    event.synchronize()
                self._pinned.clear()
            mem = cupy.cuda.alloc_pinned_memory(max(buf.nbytes, 1))
            entry = self._pinned[key] = (np.frombuffer(mem, buf.dtype, buf.size), cupy.cuda.Event(disable_timing=True))
        else:
            stream.wait_event(entry[1])
        return entry[0].reshape(buf.shape), entry[1]


class NCCLCommunicator(Communicator):
    """NCCL (``cupy.cuda.nccl``) for device arrays, bootstrapped over the MPI communicator, which
    also carries the host-side collectives. One GPU per process, chosen at construction."""

    engine = "nccl"

    def __init__(self, mpi_comm, mpi_module, *, nccl=None, cupy=None):
        super().__init__(mpi_comm, mpi_module)
        error = None
        try:
            self._cupy = cupy if cupy is not None else resolve("cupy").xp
            self._nccl = nccl if nccl is not None else nccl_module()
            self._types = {np.dtype(np.float32): self._nccl.NCCL_FLOAT32,
                           np.dtype(np.float64): self._nccl.NCCL_FLOAT64,
                           np.dtype(np.int64): self._nccl.NCCL_INT64}
        except Exception as exc:  # noqa: BLE001 - every rank must learn that this one cannot go on
            error = exc
        self.exchange(error=error)
        self.device = self._select_device()
        uid = self._nccl.get_unique_id() if self.rank == 0 else None
        uid = self.bcast_object(uid, root=0)  # the bootstrap: rank 0's id, by MPI
        self._comm = self._nccl.NcclCommunicator(self.size, uid, self.rank)

    def _select_device(self):
        """This process's GPU: its rank among its node's processes (or the only GPU it sees). Every
        rank learns of a node with too few GPUs, or of two ranks on one GPU, and raises."""
        MPI, cuda = self._MPI, self._cupy.cuda
        local = self.mpi.Split_type(MPI.COMM_TYPE_SHARED)
        local_rank, local_size = local.Get_rank(), local.Get_size()
        local.Free()
        index = where = error = None
        try:
            count = cuda.runtime.getDeviceCount()
            if count < 1:
                raise RuntimeError("NCCL needs a GPU per process, and this process sees none")
            if count > 1 and local_rank >= count:
                raise RuntimeError(f"{local_size} processes share a node with {count} GPUs: NCCL needs one GPU "
                                   f"per process (start at most {count} per node)")
            index = 0 if count == 1 else local_rank
            cuda.Device(index).use()
            where = (MPI.Get_processor_name(), str(cuda.Device(index).pci_bus_id))
        except Exception as exc:  # noqa: BLE001
            error = exc
        places = self.exchange((index, where), error=error)
        seen = {}
        for r, (_, place) in enumerate(places):
            if place in seen:
                raise mark_collective(RuntimeError(
                    f"ranks {seen[place]} and {r} would share the GPU {place[1]} on {place[0]}: NCCL needs one "
                    f"GPU per process (give each process its own device, e.g. through CUDA_VISIBLE_DEVICES)"))
            seen[place] = r
        return places[self.rank][0]

    # The three hooks of the device path (the tests' stand-in replaces them to run it on host memory).
    def _on_device(self, buf):
        return is_device_array(buf)

    def _pointer(self, buf):
        return buf.data.ptr

    def _stream(self):
        return self._cupy.cuda.get_current_stream().ptr

    def _nccl_type(self, buf):
        t = self._types.get(np.dtype(buf.dtype))
        if t is None:
            raise TypeError(f"NCCL collectives here take float32, float64 or int64 arrays, got {buf.dtype}")
        if not buf.flags.c_contiguous:
            raise ValueError("NCCL collectives need a contiguous buffer")
        return t

    def allreduce(self, buf):
        if not self._on_device(buf):
            return super().allreduce(buf)
        if self.size > 1:
            p = self._pointer(buf)
            self._comm.allReduce(p, p, buf.size, self._nccl_type(buf), self._nccl.NCCL_SUM, self._stream())
        return buf

    def bcast(self, buf, root=0):
        if not self._on_device(buf):
            return super().bcast(buf, root)
        if self.size > 1:
            self._comm.bcast(self._pointer(buf), buf.size, self._nccl_type(buf), root, self._stream())
        return buf

    def model_problem(self, model):
        if not model.array_backend.is_gpu:
            return (f"the NCCL engine trains models on the GPU, and this one is on {model.backend!r}: build it "
                    f"with backend='cupy' (or use distributed.init('mpi'))")
        device = getattr(model.theta.device, "id", None)
        if device is not None and device != self.device:
            return (f"the model's parameters are on GPU {device}, this rank's GPU is {self.device}: build the "
                    f"model after distributed.init('nccl'), which selects each process's GPU")
        return None


class SingleProcess(Communicator):
    """One rank, no MPI: the data-parallel code path in a single process (collectives are identities)."""

    engine = "single"

    def __init__(self):
        self.mpi = self._MPI = None
        self.rank, self.size = 0, 1

    def abort(self, exc=None, code=1, message=None):
        raise SystemExit(code)


# ---------------------------------------------------------------------------------- what is available
@dataclass(frozen=True)
class Engine:
    name: str
    available: bool
    detail: str


def mpiexec():
    """The ``mpiexec`` beside this Python (a virtual environment with mpich from PyPI), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def engines(probe=True):
    """{"mpi": Engine, "nccl": Engine}: whether each engine can run here, and what it is. Nothing is
    initialised in this process: MPI is probed in a child process (``probe=False`` skips that)."""
    return {"mpi": _mpi_engine(probe), "nccl": _nccl_engine()}


def _mpi_engine(probe):
    if importlib.util.find_spec("mpi4py") is None:
        return Engine("mpi", False, f"mpi4py is not installed ({_MPI_HINT})")
    from importlib.metadata import version

    try:
        mpi4py_version = version("mpi4py")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        mpi4py_version = "?"
    if "mpi4py.MPI" in sys.modules:
        library = " ".join(sys.modules["mpi4py.MPI"].Get_library_version().splitlines()[0].split())
        return Engine("mpi", True, f"{library} through mpi4py {mpi4py_version}")
    if not probe:
        return Engine("mpi", True, f"mpi4py {mpi4py_version} (the MPI library not probed)")
    code = ("import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
            "print(' '.join(MPI.Get_library_version().splitlines()[0].split()))")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Engine("mpi", False, f"mpi4py {mpi4py_version} is installed, but probing it failed ({exc})")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
        return Engine("mpi", False, f"mpi4py {mpi4py_version} cannot load an MPI library ({last}); {_MPI_HINT}")
    mpiexec_path = mpiexec()
    return Engine("mpi", True, f"{r.stdout.strip()} through mpi4py {mpi4py_version}"
                  + (f"; mpiexec: {mpiexec_path}" if mpiexec_path else "; no mpiexec on PATH"))


def nccl_module():
    """``cupy.cuda.nccl`` with NCCL loaded; ImportError naming the wheel to install otherwise."""
    resolve("cupy")  # CuPy through the backend module (BackendUnavailable without a device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CuPy warns at import when libnccl is missing; we say it below
        nccl = importlib.import_module("cupy.cuda.nccl")
    if not getattr(nccl, "available", False):
        raise ImportError("CuPy cannot load NCCL: pip install 'gpumlp[nccl-cuda13]' (or nccl-cuda12, for your "
                          "CUDA line: they bring the nvidia-nccl-cu13/cu12 wheel)")
    return nccl


def _nccl_engine():
    ok, why = cupy_status()
    if not ok:
        return Engine("nccl", False, why)
    try:
        nccl = nccl_module()
    except ImportError as exc:
        return Engine("nccl", False, str(exc))
    v = nccl.get_version()
    return Engine("nccl", True, f"NCCL {v // 10000}.{v // 100 % 100}.{v % 100} with {why}")


def _nccl_usable():
    """(usable, why) for "auto": NCCL loads, a device answers, and the "auto" backend is CuPy."""
    engine = _nccl_engine()
    if not engine.available:
        return False, engine.detail
    try:
        backend = resolve("auto")
    except Exception as exc:  # noqa: BLE001 - a bad $GPUMLP_BACKEND is the model's error to report
        return False, str(exc)
    if not backend.is_gpu:
        return False, f"the 'auto' backend is {backend.name!r}"
    return True, engine.detail


def mpi_cuda_aware():
    """Whether the loaded MPI takes device pointers: $GPUMLP_MPI_CUDA_AWARE (1/0) if set, else the
    library's ``MPIX_Query_cuda_support`` (MPICH, Open MPI), else False (staging is always correct)."""
    forced = os.environ.get(CUDA_AWARE_VAR, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    for name in ("libmpi.so.12", "libmpi.so.40", "libmpi_abi.so.1", "libmpi.so"):
        try:
            lib = ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
            query = lib.MPIX_Query_cuda_support
        except (OSError, AttributeError):
            continue
        query.restype = ctypes.c_int
        return bool(query())
    return False


# ---------------------------------------------------------------------------------- init
def _import_mpi():
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:  # mpi4py missing, or its MPI library
        raise ImportError(f"{_MPI_HINT} ({type(exc).__name__}: {exc})") from exc
    if not MPI.Is_initialized():  # mpi4py.rc.initialize was switched off by the program
        MPI.Init_thread()
    return MPI


def init(engine="auto", *, comm=None, abort_on_error=True):
    """The communicator of this process: ``engine`` "mpi", "nccl" or "auto" over the mpi4py
    communicator ``comm`` (default COMM_WORLD). Collective: every rank calls it.

    ``abort_on_error``: with more than one rank, an exception that ends this program and is not
    collective ends the whole job (MPI_Abort) instead of leaving the other ranks waiting."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    MPI = _import_mpi()
    world = MPI.COMM_WORLD if comm is None else comm
    probe = Communicator(world, MPI)
    if engine == "auto":  # every rank must pick the same engine
        usable = probe.exchange(_nccl_usable()[0])
        engine = "nccl" if all(usable) else "mpi"
    elif engine == "nccl":  # asked for by name: NCCL and a device suffice (the model says backend='cupy')
        nccl = _nccl_engine()
        ok, why = nccl.available, nccl.detail
        probe.exchange(error=None if ok else RuntimeError(
            f"distributed.init('nccl'): NCCL cannot run here: {why}. Install the nccl-cuda12/nccl-cuda13 extra "
            f"on a machine with a GPU per process, or use 'mpi'"))
    result = NCCLCommunicator(world, MPI) if engine == "nccl" else MPICommunicator(world, MPI)
    if abort_on_error and result.size > 1:
        _install_abort_hook(result)
    return result


_HOOKED = []


def _install_abort_hook(comm):
    """An excepthook that ends the job when this rank dies of an exception the others cannot know of."""
    if _HOOKED:
        _HOOKED[0] = comm
        return
    _HOOKED.append(comm)
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        c = _HOOKED[0]
        if is_collective(exc):  # every rank raises it: print it once (rank 0, or the rank it came from)
            if c.rank in (0, getattr(exc, "gpumlp_origin", 0)):
                previous(exc_type, exc, tb)
            return
        c.abort(exc)

    sys.excepthook = hook


def save(model, path, comm):
    """Write ``model`` to ``path`` from rank 0 only; every rank returns once it is written, and every
    rank raises if writing failed. Collective."""
    error = None
    if comm.rank == 0:
        try:
            model.save(path)
        except Exception as exc:  # noqa: BLE001
            error = exc
    comm.exchange(error=error)
