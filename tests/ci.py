"""What a test needs from the machine, and CI's rule for it: where $CI is set (``.ci/run`` sets it), a
missing tool or test-extra module fails the test instead of skipping it, since CI installs them all."""
from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needed(module):
    """The test extra's ``module``, imported: skipped where it is absent, except in CI, where it fails."""
    if in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module)


def mpiexec():
    """The mpiexec that runs the multi-process tests (with mpi4py importable): skipped where either is
    absent, except in CI, where it fails."""
    import importlib.util

    from gpumlp import distributed

    exe = distributed.mpiexec()
    if exe is None or importlib.util.find_spec("mpi4py") is None:
        why = "mpi4py and mpiexec are needed (pip install -e '.[test]' brings mpi4py and mpich)"
        if in_ci():
            pytest.fail(f"CI must run the multi-process tests, but {why}")
        pytest.skip(why)
    return exe
