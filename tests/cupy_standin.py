"""A host stand-in for CuPy that refuses host (NumPy) arrays wherever real CuPy refuses them.

The "device" memory is host memory: a ``DeviceArray`` wraps a NumPy array, and ``DeviceCSR`` a SciPy CSR
matrix (as cupyx.scipy.sparse's). What real CuPy does with a NumPy array, the stand-in does too:

- operators and functions (``a + b``, ``cupy.isfinite(a)``, ``cupy.take``, ``matmul``, ``ascontiguousarray``,
  every other NumPy function reached through the module) take device arrays, Python and NumPy scalars;
  a NumPy array (a 0-d one too) is a TypeError, as CuPy's ``Unsupported type <class 'numpy.ndarray'>``;
- ``a[key] = host_array`` is CuPy's ValueError "non-scalar numpy.ndarray cannot be used for fill" (CuPy
  copies a host array into a device one only by ``cupy.asarray`` / ``ndarray.set``; its empty-slice copy
  is opt-in, ``CUPY_EXPERIMENTAL_SLICE_COPY``); host index arrays are fine, as in CuPy;
- ``np.asarray(device_array)`` is CuPy's TypeError "Implicit conversion to a NumPy array is not allowed";
  ``.get()`` copies to the host; NumPy functions and ufuncs called on device arrays dispatch to the
  device (``__array_function__``, ``__array_ufunc__``), refusing host operands as above;
- ``asarray``, ``array`` (host -> device copies) and the ``*_like`` constructors (they read only shape and
  dtype) take either;
- results are device arrays, reductions 0-d device arrays (CuPy returns no NumPy scalars);
- kernels (``ElementwiseKernel``, ``RawModule`` functions) and cuBLAS (``cublas.gemm``, ``gemv``) take only
  device arrays (the kernels: TypeError "Unsupported type", as CuPy's argument conversion).

``DeviceArray.data.ptr`` is the address of its first element, as CuPy's ``MemoryPointer``. The module's
type names start with "cupy", so ``gpumlp.backend.is_device_array`` answers True for them.
"""
from __future__ import annotations

import types

import numpy as np


def _host_error(what, a):
    return TypeError(f"{what}: Unsupported type {type(a)} (real CuPy refuses host arrays here: "
                     f"move it with cupy.asarray first)")


def unwrap(a, what="operand"):
    """A device array's NumPy memory; scalars pass; a host array is a TypeError, as in CuPy."""
    if isinstance(a, (DeviceArray, DeviceCSR)):
        return a._a
    if isinstance(a, np.ndarray):
        raise _host_error(what, a)
    if isinstance(a, (list, tuple)):
        return type(a)(unwrap(x, what) for x in a)
    return a


def wrap(r):
    """NumPy results as device results: arrays and NumPy scalars (as 0-d arrays, as CuPy's reductions)."""
    if isinstance(r, np.ndarray):
        return DeviceArray(r)
    if isinstance(r, np.generic):
        return DeviceArray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(wrap(x) for x in r)
    if isinstance(r, list):
        return [wrap(x) for x in r]
    return r


def _key(key):
    """An index: device index arrays unwrapped; host index arrays are allowed (CuPy moves them)."""
    if isinstance(key, tuple):
        return tuple(_key(k) for k in key)
    return key._a if isinstance(key, DeviceArray) else key


def strict(fn, what):
    """``fn`` (a NumPy function or method) on device arrays only, its results on the device."""
    def call(*args, **kwargs):
        args = unwrap(args, what)
        kwargs = {k: unwrap(v, what) for k, v in kwargs.items()}
        return wrap(fn(*args, **kwargs))
    call.__name__ = getattr(fn, "__name__", what)
    return call


class DeviceArray:
    """A stand-in ``cupy.ndarray`` (module docstring)."""

    __module__ = "cupy._standin"
    __array_priority__ = 100  # as cupy.ndarray's

    def __init__(self, a):
        assert isinstance(a, np.ndarray) and not isinstance(a, DeviceArray)
        self._a = a

    # -- what CuPy's ndarray has -----------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))
    data = property(lambda self: types.SimpleNamespace(ptr=self._a.ctypes.data))
    _c_contiguous = property(lambda self: self._a.flags.c_contiguous)
    _f_contiguous = property(lambda self: self._a.flags.f_contiguous)

    def get(self):
        """A host copy (cupy.ndarray.get)."""
        return np.array(self._a)

    def set(self, host):
        """Copy a host array of the same shape into this one (cupy.ndarray.set)."""
        assert isinstance(host, np.ndarray) and host.shape == self.shape
        self._a[...] = host

    def copy(self, order="C"):
        return DeviceArray(self._a.copy(order))

    def astype(self, dtype, copy=True, **kw):
        r = self._a.astype(dtype, copy=copy, **kw)
        return self if r is self._a else DeviceArray(r)

    def reshape(self, *shape, **kw):
        return DeviceArray(self._a.reshape(*shape, **kw))

    def item(self):
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    def __getattr__(self, name):  # methods (sum, all, take, fill, ravel, ...) on the device
        attr = getattr(self._a, name)
        if callable(attr):
            return strict(attr, f"ndarray.{name}")
        raise AttributeError(name)

    # -- conversions: none implicit to the host, scalars as CuPy gives them -------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                        "construct a NumPy array explicitly.")

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __index__(self):
        return self._a.__index__()

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (wrap(x) for x in self._a)

    # -- indexing -----------------------------------------------------------------------------------
    def __getitem__(self, key):
        return wrap(self._a[_key(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        self._a[_key(key)] = unwrap(value, "assigned value")

    # -- NumPy's protocols: device arrays dispatch to the device, host operands are refused ------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = unwrap(inputs, f"numpy.{ufunc.__name__}")
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = unwrap(out, f"numpy.{ufunc.__name__} out")
        r = getattr(ufunc, method)(*inputs, **kwargs)
        if out is None:
            return wrap(r)
        return out[0] if isinstance(out, tuple) and len(out) == 1 else out

    def __array_function__(self, func, types_, args, kwargs):
        return strict(func, f"numpy.{func.__name__}")(*args, **kwargs)


def _operator(name, inplace=False):
    def op(self, other):
        if isinstance(other, np.ndarray):
            raise _host_error(f"ndarray.{name}", other)
        if not isinstance(other, (DeviceArray, int, float, complex, bool, np.generic)):
            return NotImplemented
        r = getattr(self._a, name)(unwrap(other))
        if r is NotImplemented:
            return r
        return self if inplace else wrap(r)
    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lt", "le", "eq", "ne", "gt", "ge"):
    for _dunder in (f"__{_name}__", f"__r{_name}__"):
        if hasattr(np.ndarray, _dunder):
            setattr(DeviceArray, _dunder, _operator(_dunder))
    if hasattr(np.ndarray, f"__i{_name}__"):
        setattr(DeviceArray, f"__i{_name}__", _operator(f"__i{_name}__", inplace=True))
for _dunder in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(DeviceArray, _dunder, lambda self, _d=_dunder: wrap(getattr(self._a, _d)()))


class DeviceCSR:
    """A stand-in cupyx.scipy.sparse.csr_matrix: a SciPy sparse matrix "on the device". Built from a
    SciPy matrix (or another one) it copies it as CSR, as cupyx's constructor moves it to the device."""

    __module__ = "cupyx.scipy.sparse._standin"

    def __init__(self, m):
        self._a = (m._a if isinstance(m, DeviceCSR) else m).tocsr().copy()

    @classmethod
    def _of(cls, m):  # the result of an operation: no copy, in whatever format SciPy gave
        obj = cls.__new__(cls)
        obj._a = m
        return obj

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    nnz = property(lambda self: self._a.nnz)
    data = property(lambda self: DeviceArray(self._a.data))  # the stored values, on the device (a view)
    T = property(lambda self: DeviceCSR._of(self._a.T))

    def tocsr(self):
        return DeviceCSR._of(self._a.tocsr())

    def astype(self, dtype):
        return DeviceCSR._of(self._a.astype(dtype))

    def get(self):
        return self._a.copy()

    def __getitem__(self, key):
        return DeviceCSR._of(self._a[_key(key)])

    def __matmul__(self, other):
        return wrap(self._a @ unwrap(other, "sparse @"))

    def __rmatmul__(self, other):
        return wrap(unwrap(other, "@ sparse") @ self._a)


def device_blas(gemm, gemv):
    """cupy.cublas-like gemm and gemv on device arrays only, computed by ``gemm``/``gemv`` on their NumPy
    memory (a host array is refused: real CuPy's cupy/cublas.py reads attributes NumPy arrays lack)."""
    def gemm_(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        what = "cupy.cublas.gemm"
        gemm(transa, transb, unwrap(a, what), unwrap(b, what), out=unwrap(out, what), alpha=alpha, beta=beta)
        return out

    def gemv_(transa, alpha, a, x, beta, y):
        what = "cupy.cublas.gemv"
        gemv(transa, alpha, unwrap(a, what), unwrap(x, what), beta, unwrap(y, what))

    for a in (gemm_, gemv_):
        a.__name__ = a.__name__.rstrip("_")
    return types.SimpleNamespace(gemm=gemm_, gemv=gemv_)


def make_cupyx():
    """The stand-in ``cupyx.scipy.sparse`` module: ``csr_matrix(scipy_matrix)`` moves it to the "device"."""
    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix = DeviceCSR  # host -> device: data, indices, indptr
    return sparse


def make_cupy(elementwise, raw_function):
    """The stand-in ``cupy`` module. ``elementwise(kernel, arrays)`` runs an ElementwiseKernel (the object,
    with its name, parameters, operation and preamble) on NumPy arrays (the last is the output); ``raw_function(code, name)`` gives a callable ``(grid, block, args)``
    that runs a RawKernel on arguments already converted to NumPy arrays, None and scalars."""
    cupy = types.ModuleType("cupy")
    cupy.ndarray = DeviceArray

    def module_getattr(name):  # every other NumPy name: dtypes as they are, functions on the device
        if name.startswith("_"):  # not numpy's __file__, __path__, __spec__, ...
            raise AttributeError(name)
        attr = getattr(np, name)
        return strict(attr, f"cupy.{name}") if callable(attr) and not isinstance(attr, type) else attr

    cupy.__getattr__ = module_getattr

    def asarray(a, dtype=None, order=None):
        if isinstance(a, DeviceArray):
            return a.astype(dtype, copy=False) if dtype is not None else a
        return DeviceArray(np.array(a, dtype=dtype, order=order or "K", copy=True))  # host -> device

    def array(a, dtype=None, copy=True, order="K"):
        if isinstance(a, DeviceArray):
            return DeviceArray(np.array(a._a, dtype=dtype, copy=copy, order=order))
        return DeviceArray(np.array(a, dtype=dtype, copy=True, order=order))

    def like(fn):
        def make(a, *args, **kwargs):
            return DeviceArray(fn(a._a if isinstance(a, DeviceArray) else a, *args, **kwargs))
        return make

    cupy.asarray, cupy.array = asarray, array
    for name in ("empty_like", "zeros_like", "ones_like", "full_like"):
        setattr(cupy, name, like(getattr(np, name)))

    def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):  # out = alpha op(a) op(b) + beta out
        prod = (a.T if transa == "T" else a) @ (b.T if transb == "T" else b)
        out[...] = alpha * prod + (beta * out if beta else 0)

    def gemv(transa, alpha, a, x, beta, y):  # y = alpha op(a) x + beta y
        y[...] = alpha * ((a.T if transa == "T" else a) @ x) + (beta * y if beta else 0)

    cupy.cublas = device_blas(gemm, gemv)

    def kernel_args(args, what):
        out = []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                raise TypeError(f"{what} argument {i}: Unsupported type {type(a)}")
            out.append(a._a if isinstance(a, DeviceArray) else a)
        return out

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, operation, name, preamble=""):
            self.in_params, self.out_params, self.operation, self.name = in_params, out_params, operation, name
            self.preamble = preamble

        def __call__(self, *arrays):
            elementwise(self, kernel_args(arrays, self.name))

    class RawModule:
        def __init__(self, code, options=()):
            self.code, self.options = code, options

        def get_function(self, name):
            fn = raw_function(self.code, name)
            return lambda grid, block, args: fn(grid, block, tuple(kernel_args(args, name)))

    cupy.ElementwiseKernel, cupy.RawModule = ElementwiseKernel, RawModule

    stream = types.SimpleNamespace(synchronize=lambda: None)
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceCount=lambda: 1,
                                      memGetInfo=lambda: (1 << 40, 1 << 40),
                                      getDeviceProperties=lambda i: {"name": b"host stand-in for CuPy"},
                                      runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0),
        get_current_stream=lambda: stream, Device=lambda *a: types.SimpleNamespace(id=0))
    cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_bytes=lambda: 0, used_bytes=lambda: 0)
    cupy.__version__ = "host stand-in"
    return cupy
