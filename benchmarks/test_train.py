"""Training throughput: one group per shape (S, M, L on a GPU, L-cpu), each with gpumlp on every
available backend, PyTorch (same net, SGD with weight decay) and the GEMM floor (the step's five
matrix products alone). A timed call runs ``steps_per_call`` full steps and synchronises."""
import pytest

from gpumlp import bench

from conftest import shapes


@pytest.mark.parametrize("variant", bench.VARIANTS, ids=lambda v: "-".join(dict.fromkeys(v)))
@pytest.mark.parametrize("shape", shapes(["S", "M", "L", "L-cpu"]))
def test_train(run_case, shape, variant):
    run_case("train", shape, *variant)
