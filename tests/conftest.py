"""GPU plumbing for the tests: items marked ``gpu`` run only where CuPy imports and a CUDA device
answers (``gpumlp.backend.cupy_status``); elsewhere they are skipped with the reason."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    from gpumlp.backend import cupy_status

    ok, why = cupy_status()
    if not ok:
        skip = pytest.mark.skip(reason=f"needs CuPy and a CUDA device: {why}")
        for item in gpu_items:
            item.add_marker(skip)
