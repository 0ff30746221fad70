"""Every CUDA source of gpumlp compiles with NVRTC for sm_80 (A100) and sm_90 (H100), no GPU needed.

- each kernels/*.cu, as ``_kernels.make_module`` hands it to CuPy (our headers inlined), and every
  extern "C" kernel that ``_cupy_ops`` launches is in the binary under its unmangled name;
- each ElementwiseKernel (the fused φ forward / φ′ backward), wrapped the way CuPy wraps it
  (cupy/_core/_kernel.pyx: CuPy's headers, ``typedef``s of T, the preamble, then an
  ``extern "C" __global__`` loop over ``CArray`` parameters and a ``CIndexer``), for float and double,
  for the 1-D contiguous arrays CuPy reduces our (B, h) buffers to and for a 2-D strided case.
  The kernel objects are the real ones from ``_kernels.make_elementwise``: their name, parameters,
  operation and preamble are read from them, not retyped here;
- that hand-written wrapper is token for token what CuPy's own (private) generator produces for these
  kernels, where this CuPy version exposes it.

NVRTC runs without a driver (docs GPU.md). Where it is missing the tests skip, except in CI (``$CI``
set), where a missing compiler is a failure: this is the check that CI runs our CUDA through.
"""
from __future__ import annotations

import os

import pytest

from ci import in_ci
from gpumlp import _kernels

ARCHS = ("sm_80", "sm_90")
CTYPE = {"float32": "float", "float64": "double"}




def _unavailable(why):
    if in_ci():
        pytest.fail(f"CI must compile the CUDA sources, but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError, or the NVRTC library itself missing
        _unavailable(f"NVRTC is not usable ({type(exc).__name__}: {exc}); "
                     "pip install cupy-cuda13x nvidia-cuda-nvrtc")
    return nvrtc


@pytest.fixture(scope="module")
def cupy_include_options():
    """The include paths CuPy passes to NVRTC (core.pyx assemble_cupy_compiler_options)."""
    try:
        import cupy
    except Exception as exc:
        _unavailable(f"CuPy is not importable ({exc})")
    inc = os.path.join(os.path.dirname(cupy.__file__), "_core", "include")
    return [f"-I{inc}/cupy/_cccl/cub", f"-I{inc}/cupy/_cccl/thrust", f"-I{inc}/cupy/_cccl/libcudacxx",
            f"-I{inc}"]


def nvrtc_compile(nvrtc, src, name, arch, extra=()):
    """NVRTC → (CUBIN or None, log) for one arch, with the options CuPy adds (C++17, flush-to-zero)."""
    prog = nvrtc.createProgram(src, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"-arch={arch}", "--std=c++17", "-ftz=true", *extra])
        except nvrtc.NVRTCError as exc:
            return None, f"{nvrtc.getProgramLog(prog)}\n{exc}"
        return nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def assert_compiled(result, what):
    cubin, log = result
    assert cubin is not None, f"NVRTC failed on {what}:\n{log}"
    return cubin


# --------------------------------------------------------------------------- the .cu files
def test_every_cu_file_is_listed_with_its_kernels():
    # A new .cu must say which kernels it exports, so that the test below looks for them.
    assert sorted(_kernels.RAW_KERNELS) == _kernels.cu_files()


def test_every_loss_has_its_fused_kernel():
    # CupyOps.loss_grad launches gpumlp_<loss>: a loss added to functions.LOSSES needs its kernel in loss.cu.
    from gpumlp.functions import LOSSES

    assert {f"gpumlp_{name}" for name in LOSSES} == set(_kernels.RAW_KERNELS["loss.cu"])


@pytest.fixture(scope="module")
def cu_binaries(nvrtc):
    return {(cu, arch): nvrtc_compile(nvrtc, _kernels.module_source(cu), cu, arch, _kernels.RAW_OPTIONS)
            for cu in _kernels.RAW_KERNELS for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu_name", sorted(_kernels.RAW_KERNELS))
def test_cu_file_compiles(cu_binaries, cu_name, arch):
    assert "#include \"gpumlp_" not in _kernels.module_source(cu_name)  # headers inlined: no -I needed
    cubin = assert_compiled(cu_binaries[cu_name, arch], f"{cu_name} for {arch}")
    for function in _kernels.RAW_KERNELS[cu_name]:
        for suffix in _kernels.DTYPE_SUFFIX.values():
            # extern "C": the ELF symbol is the plain name, the one RawModule.get_function asks for
            assert (function + suffix).encode() + b"\0" in cubin, f"{function + suffix} missing in {cu_name}"


# --------------------------------------------------------------------------- ElementwiseKernels
def cupy_style_source(kernels, ctype, ndim, c_contiguous, index_32_bits):
    """The translation unit CuPy builds for an ElementwiseKernel called on arrays of one dtype,
    following cupy/_core/_kernel.pyx (_get_elementwise_kernel_code and
    _get_simple_elementwise_kernel_code) and core.pyx (the headers CuPy prepends).

    Several kernels that share one preamble go into one unit, each kernel as CuPy writes it after the
    common part (headers, typedef, preamble): the same code with fewer NVRTC runs (each parses CuPy's
    headers again, ~0.25 s)."""
    preambles = {k.preamble for k in kernels}
    assert len(preambles) == 1, "kernels compiled together must share their preamble"
    headers = "".join(f"#include <cupy/{h}>\n" for h in ("complex.cuh", "carray.cuh", "atomics.cuh",
                                                            "math_constants.h"))
    carray = f"CArray<{ctype}, {ndim}, {int(c_contiguous)}, {int(index_32_bits)}>"
    src = f"{headers}typedef {ctype} T;\n{preambles.pop()}\n"
    for kernel in kernels:
        params, refs = [], []
        for p in kernel.params:
            if p.name == "_ind":
                continue
            assert p.ctype == "T" and not p.raw, "only T-typed array parameters are expected here"
            params.append(f"{'const ' if p.is_const else ''}{carray} _raw_{p.name}")
            refs.append(f"{'const ' if p.is_const else ''}T &{p.name} = _raw_{p.name}[_ind.get()];")
        params.append(f"CIndexer<{ndim}, {int(index_32_bits)}> _ind")
        body = "\n    ".join(refs + [kernel.operation])
        src += (f'extern "C" __global__ void {kernel.name}({", ".join(params)}) {{\n'
                f"  ;\n  #pragma unroll 1\n  CUPY_FOR(i, _ind.size()) {{\n    _ind.set(i);\n    {body};\n  }}\n  ;\n}}\n")
    return src


def test_every_activation_has_a_forward_and_backward_kernel():
    from gpumlp.functions import ACTIVATIONS

    assert set(_kernels.ACTIVATIONS) == set(ACTIVATIONS)
    assert set(_kernels.ELEMENTWISE) == {f"gpumlp_{a}_{d}" for a in ACTIVATIONS for d in ("forward", "backward")}


@pytest.fixture(scope="module")
def elementwise_binaries(nvrtc, cupy_include_options):
    kernels = [_kernels.make_elementwise(name) for name in sorted(_kernels.ELEMENTWISE)]
    return {(dtype, arch): nvrtc_compile(nvrtc, cupy_style_source(kernels, ctype, ndim=1, c_contiguous=True,
                                                                  index_32_bits=True),
                                         f"elementwise_{dtype}.cu", arch, cupy_include_options)
            for dtype, ctype in CTYPE.items() for arch in ARCHS}


@pytest.mark.parametrize("name", sorted(_kernels.ELEMENTWISE))
def test_elementwise_kernel_compiles_as_cupy_wraps_it(elementwise_binaries, name):
    kernel = _kernels.make_elementwise(name)
    assert kernel.name == name and name.startswith("gpumlp_")
    assert kernel.preamble == _kernels.source(_kernels.MATH_HEADER)
    for dtype in CTYPE:
        for arch in ARCHS:
            cubin = assert_compiled(elementwise_binaries[dtype, arch], f"the {dtype} kernels for {arch}")
            assert name.encode() + b"\0" in cubin


def test_elementwise_kernel_compiles_for_strided_2d_and_64bit_indexing(nvrtc, cupy_include_options):
    # Non-contiguous (B, h) views and > 2³¹ elements make CuPy pick these template arguments.
    kernel = _kernels.make_elementwise("gpumlp_gelu_backward")
    src = cupy_style_source([kernel], "float", ndim=2, c_contiguous=False, index_32_bits=False)
    assert_compiled(nvrtc_compile(nvrtc, src, "gelu_backward_2d.cu", "sm_90", cupy_include_options), "2-D")


def test_a_broken_kernel_fails_to_compile(nvrtc, cupy_include_options):
    # The harness must be able to fail: an operation naming a function that does not exist.
    class Broken:
        name, preamble, operation = "gpumlp_broken", _kernels.source(_kernels.MATH_HEADER), "h = gpumlp_nope(z)"
        params = _kernels.make_elementwise("gpumlp_relu_forward").params

    src = cupy_style_source([Broken], "float", 1, True, True)
    prog = nvrtc.createProgram(src, "broken.cu", [], [])
    with pytest.raises(nvrtc.NVRTCError):
        nvrtc.compileProgram(prog, ["-arch=sm_80", "--std=c++17", *cupy_include_options])
    assert "gpumlp_nope" in nvrtc.getProgramLog(prog)
    nvrtc.destroyProgram(prog)


def _cupy_generated_code(kernel, dtype, ndim, c_contiguous, index_32_bits):
    """CuPy's own code for ``kernel`` from its private generator (cupy/_core/_kernel.pyx), the code
    CuPy would compile when called with such arrays; skips if that private API has changed."""
    import numpy as np

    try:
        import cupy
        from cupy._core import _carray
        from cupy._core import _kernel

        ndarray_kind, indexer_kind = 1, 2  # _kernel.pxd: ARG_KIND_NDARRAY = 1, ARG_KIND_INDEXER
        n_arrays = len(kernel.params) - 1
        infos = tuple(_kernel._ArgInfo(ndarray_kind, cupy.ndarray, np.dtype(dtype), ndim, c_contiguous,
                                       index_32_bits) for _ in range(n_arrays))
        infos += (_kernel._ArgInfo(indexer_kind, _carray.Indexer, None, ndim, False, index_32_bits),)
        type_map = _kernel._TypeMap((("T", np.dtype(dtype)),))
        return _kernel._get_elementwise_kernel_code(infos, type_map, kernel.params, kernel.operation, kernel.name,
                                                    kernel.preamble)
    except (ImportError, AttributeError, TypeError) as exc:
        pytest.skip(f"CuPy's private kernel-code generator is not available in this version ({exc})")


@pytest.mark.parametrize("layout", [(1, True, True), (2, False, False)], ids=["contiguous", "strided-2d-64bit"])
@pytest.mark.parametrize("dtype", sorted(CTYPE))
@pytest.mark.parametrize("name", sorted(_kernels.ELEMENTWISE))
def test_our_wrapper_is_the_code_cupy_generates(name, dtype, layout):
    """The wrapper compiled above is, token for token, what this CuPy generates for the kernel (the GPU
    test checks the same through the public ``cached_code`` after a real call)."""
    kernel = _kernels.make_elementwise(name)
    ours = cupy_style_source([kernel], CTYPE[dtype], *layout)
    ours = "\n".join(line for line in ours.splitlines() if not line.startswith("#include <cupy/"))
    assert " ".join(_cupy_generated_code(kernel, dtype, *layout).split()) == " ".join(ours.split())


# --------------------------------------------------------------------------- what the host build does not do
def _ptx_of_each_kernel(nvrtc, cupy_include_options, names, ctype, extra=()):
    """PTX (for compute_90, with CuPy's options) of the ElementwiseKernels ``names``: kernel name -> its body."""
    import re

    src = cupy_style_source([_kernels.make_elementwise(n) for n in names], ctype, 1, True, True)
    prog = nvrtc.createProgram(src, "ptx.cu", [], [])
    try:
        nvrtc.compileProgram(prog, ["-arch=compute_90", "--std=c++17", "-ftz=true", *cupy_include_options, *extra])
        ptx = nvrtc.getPTX(prog).decode()
    finally:
        nvrtc.destroyProgram(prog)
    return {body.split("(")[0].strip(): body for body in re.split(r"\.entry ", ptx)[1:]}


def test_nvrtc_flushes_float32_and_leaves_multiply_adds_to_be_fused(nvrtc, cupy_include_options):
    """What the host build of the device math does not model, as NVRTC compiles it with CuPy's options
    (tests/test_kernels_host.py's gpu_float_model models both, and test_gpu.py expects both):
    - -ftz=true: float32 arithmetic and comparisons carry .ftz (relu′'s z > 0 reads a subnormal z as 0);
      float64 none;
    - NVRTC's default --fmad=true: the multiply and the subtraction of tanh′ = 1 − h·h carry no rounding
      modifier, which lets ptxas fuse them into one FMA (PTX ISA: mul/add/sub without .rn may be fused),
      where --fmad=false writes .rn and so forbids it."""
    names = ("gpumlp_relu_backward", "gpumlp_tanh_backward")
    f32 = _ptx_of_each_kernel(nvrtc, cupy_include_options, names, "float")
    f64 = _ptx_of_each_kernel(nvrtc, cupy_include_options, names, "double")
    assert "setp.gt.ftz.f32" in f32["gpumlp_relu_backward"]
    assert "setp.gt.f64" in f64["gpumlp_relu_backward"] and ".ftz" not in f64["gpumlp_relu_backward"]
    for ptx, t in ((f32["gpumlp_tanh_backward"], "ftz.f32"), (f64["gpumlp_tanh_backward"], "f64")):
        assert f"mul.{t}" in ptx and f"sub.{t}" in ptx  # fusable: no .rn
        assert "mul.rn." not in ptx and "sub.rn." not in ptx
    strict = _ptx_of_each_kernel(nvrtc, cupy_include_options, names, "float", ["--fmad=false"])
    assert "mul.rn.ftz.f32" in strict["gpumlp_tanh_backward"] and "sub.rn.ftz.f32" in strict["gpumlp_tanh_backward"]


def test_cupy_compiles_every_kernel_with_flush_to_zero():
    """The premise of the test above: CuPy adds -ftz=true to every compile (cupy/cuda/compiler.py), and
    _kernels passes no --fmad option of its own (NVRTC's default, fusing, applies)."""
    import inspect

    try:
        from cupy.cuda import compiler
    except Exception as exc:
        _unavailable(f"CuPy is not importable ({exc})")
    assert "options += ('-ftz=true',)" in inspect.getsource(compiler)
    assert not any("fmad" in o for o in _kernels.RAW_OPTIONS)
