"""The CUDA extras install what the GPU path loads (issue 17, GPU review 1).

CuPy 14 wheels carry the CUDA runtime but load cuBLAS (the GEMMs), NVRTC (our kernels) and cuSPARSE
(sparse X) only when first used: on a machine with a driver and no CUDA toolkit a bare ``cupy-cuda13x``
imports, counts the devices, and fails at the first model. Every extra that installs CuPy for the GPU
path must bring those libraries: CuPy's own ``[ctk]`` extra, NVIDIA's wheels of its CUDA line. (The test
extra is the exception on purpose: CI has no GPU and needs NVRTC alone, through nvidia-cuda-nvrtc.)
"""
import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
GPU_EXTRAS = ["cuda12", "cuda13", "nccl-cuda12", "nccl-cuda13"]


def _cupy(extra):
    reqs = [Requirement(r) for r in EXTRAS[extra] if Requirement(r).name.startswith("cupy-cuda")]
    assert len(reqs) == 1, f"{extra}: one CuPy wheel, got {reqs}"
    return reqs[0]


def test_every_extra_that_installs_cupy_is_listed_here():
    installs_cupy = {name for name, reqs in EXTRAS.items() if any(r.startswith("cupy-cuda") for r in reqs)}
    assert installs_cupy == set(GPU_EXTRAS) | {"test"}


@pytest.mark.parametrize("extra", GPU_EXTRAS)
def test_the_gpu_extras_bring_the_cuda_libraries(extra):
    req = _cupy(extra)
    line = extra[-2:]
    assert req.name == f"cupy-cuda{line}x"
    assert "ctk" in req.extras, f"{extra}: {req} installs CuPy without cuBLAS and NVRTC"
    # [ctk] (cuda-toolkit, found through cuda-pathfinder) is CuPy 14's: an older CuPy would ignore it
    assert not req.specifier.contains("13.6.0") and req.specifier.contains("14.2.0"), str(req)


def test_the_ctk_extra_of_the_installed_cupy_brings_cublas_nvrtc_and_cusparse():
    """What [ctk] means, read from the CuPy wheel installed here (its metadata, no GPU needed)."""
    for dist in ("cupy-cuda13x", "cupy-cuda12x"):
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        ctk = [Requirement(r) for r in requires if 'extra == "ctk"' in r.replace("'", '"')]
        assert ctk, f"{dist} has no [ctk] extra"
        (toolkit,) = ctk
        assert toolkit.name == "cuda-toolkit" and {"cublas", "nvrtc", "cusparse"} <= toolkit.extras
        assert toolkit.specifier.contains(f"{dist[9:11]}.0")  # the toolkit of the wheel's CUDA line
        return
    pytest.skip("no CuPy wheel installed here to read [ctk] from")
