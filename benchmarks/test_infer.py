"""Inference throughput (forward pass only): gpumlp's predict path, PyTorch under inference_mode,
and the floor of two matrix products; one group per shape."""
import pytest

from gpumlp import bench

from conftest import shapes


@pytest.mark.parametrize("variant", bench.VARIANTS, ids=lambda v: "-".join(dict.fromkeys(v)))
@pytest.mark.parametrize("shape", shapes(["S", "M", "L", "L-cpu"]))
def test_infer(run_case, shape, variant):
    run_case("infer", shape, *variant)
