"""tests/test_gpu.py run on the CPU, on the strict CuPy stand-in (tests/cupy_standin.py, its kernels run by
the host builds of tests/test_kernels_host.py, the ElementwiseKernels by its GPU arithmetic model), so that the GPU tests are right the first time they meet
a GPU: every call they make into CuPy, CupyOps, the model and the trainer, every host/device crossing
(the stand-in refuses NumPy arrays where real CuPy does), and their own arithmetic and tolerances
against results that differ from a GPU's only as the host's libm and summation order differ. The GPU
tests of tests/test_optim.py (the fused update kernels, Adam's device step counter) run here too.

Not run here, because only a GPU can answer them (they run there, from tests/test_gpu.py):
- what CUDA itself does: TF32 math modes, CuPy's memory pool and its hooks, a kernel spinning on
  %globaltimer to show that a step does not wait, stream capture and graph replay, CuPy's generated
  kernel source, pinned-memory streaming;
- the largest sizes (over 10⁵ elements or 9000 rows): under the fiber emulation each takes seconds, and
  their grid-stride loops and multi-block reductions are the code the smaller sizes here run over
  several blocks too (listed in HEAVY, dropped from the parametrizations, not skipped), and the
  command-line run over the digits (SLOW; the command line runs on the stand-in on small data in
  tests/test_kernels_host.py).
"""
from __future__ import annotations

import functools

import pytest

import test_gpu as G
import test_optim as O
from test_kernels_host import gpu_float_model, grid_lib, standin, standin_sparse  # noqa: F401 (fixtures)

GPU_ONLY = {
    "test_tf32_is_opt_in_and_changes_float32_products_only_at_the_1e3_level",
    "test_a_training_step_allocates_nothing",
    "test_the_adam_update_replays_from_a_cuda_graph",
    "test_a_training_step_does_not_wait_for_the_gpu",
    "test_the_progress_hook_is_called_while_the_gpu_still_works",
    "test_cupy_generates_the_code_the_nvrtc_test_compiles",
    "test_streamed_training_data_give_the_same_run_as_resident_data",
    "test_loss_after_a_larger_grid_is_still_right",  # 9000 rows; the counter reset: test_kernels_host
}
HEAVY = {"n": lambda n: n > 100_000, "B,q": lambda B, q: B * q > 50_000}
# Five epochs of the command line over the digits (a minute under emulation); the command line's device
# paths run on small data here in tests/test_kernels_host.py (test_the_command_line_on_the_stand_in).
SLOW = {"test_a_command_line_run_on_the_gpu_predicts_from_python_on_either_backend"}


@pytest.fixture(scope="module")
def lib(gpu_float_model):
    """The stand-in's ElementwiseKernels run on the device math built to do arithmetic as the GPU does
    (float32 flushed to zero as by CuPy's -ftz=true, multiply-adds fused as by NVRTC): test_gpu.py's
    expectations for subnormal and saturating inputs are the GPU's, and are checked against that here."""
    return gpu_float_model.lib


@pytest.fixture(autouse=True)
def cp(standin_sparse):
    """The stand-in as ``cp`` for every test, and installed as ``cupy`` (with cupyx' sparse matrices) for
    the tests that only build models with backend="cupy"."""
    return standin_sparse.cupy


def _without_heavy_cases(fn):
    """``fn`` with the HEAVY parameter sets left out of its parametrize marks and without its ``gpu`` mark
    (which has it skipped where no GPU answers: here the stand-in does), as a new function object."""
    marks = []
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "gpu":
            continue
        if mark.name == "parametrize" and mark.args[0] in HEAVY:
            names, values = mark.args[0], mark.args[1]
            heavy = HEAVY[names]
            values = [v for v in values if not heavy(*(v if isinstance(v, tuple) else (v,)))]
            mark = pytest.mark.parametrize(names, values, **mark.kwargs).mark
        marks.append(mark)

    @functools.wraps(fn)
    def test(*args, **kwargs):
        return fn(*args, **kwargs)

    test.pytestmark = marks
    return test


for _name in dir(G):
    if _name.startswith("test_") and _name not in GPU_ONLY | SLOW:
        globals()[_name] = _without_heavy_cases(getattr(G, _name))

# tests/test_optim.py's GPU tests: the fused SGD and Adam kernels through CupyOps against the NumPy rules,
# and whole epochs of each optimizer (they ask cupy_status first: the stand-in answers it).
OPTIM_GPU_TESTS = ("test_fused_sgd_kernel_matches_numpy", "test_fused_adam_kernel_matches_numpy",
                   "test_cupy_training_matches_numpy")
for _name in OPTIM_GPU_TESTS:
    globals()[_name] = _without_heavy_cases(getattr(O, _name))


@pytest.fixture(autouse=True)
def _optim_sees_the_stand_in(standin, monkeypatch):
    monkeypatch.setattr(O, "cupy_status", lambda: (True, "the host stand-in for CuPy"))


def test_every_gpu_test_runs_here_or_is_named_as_gpu_only():
    ran = {name for name in globals() if name.startswith("test_") and name in dir(G)}
    assert ran | GPU_ONLY | SLOW == {name for name in dir(G) if name.startswith("test_")}
    assert GPU_ONLY | SLOW <= set(dir(G)), "a name that test_gpu.py no longer has"
    gpu_marked = {name for name in dir(O) if name.startswith("test_")
                  and any(m.name == "gpu" for m in getattr(getattr(O, name), "pytestmark", []))}
    assert gpu_marked == set(OPTIM_GPU_TESTS), "test_optim.py's GPU tests changed: run the new ones here too"
