"""backend.py is the one module that reaches CuPy (README "How the code is organised"): the rest asks it
(``array_module(a)``, ``resolve("cupy").xp``, ``cublas_module()``), so that what "CuPy" means (the
driver checked first, the CUDA libraries probed, a stand-in that a test puts in sys.modules) is decided
in one place. The CuPy implementation itself (CupyOps and its kernels) and the NCCL engine are the
exceptions, each named below with what it imports."""
import ast
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import validation

PACKAGE = Path(gpumlp.__file__).parent
CUPY_PACKAGES = ("cupy", "cupyx", "cupy_backends")
ALLOWED = {
    "backend.py": None,  # anything
    "_cupy_ops.py": None,  # CupyOps: built on cupy (a stand-in in sys.modules in the host tests)
    "_kernels.py": None,  # our kernels as cupy.ElementwiseKernel / RawModule objects
    "distributed.py": {"cupy.cuda.nccl"},  # the NCCL engine, after resolve("cupy")
    "cli/info.py": {"cupy"},  # reports the installed CuPy's versions even where it cannot run
}


def cupy_imports(path):
    """(line, module) of every import of CuPy in ``path``: import statements, ``__import__("...")``
    and ``importlib.import_module("...")`` with a constant name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            f = node.func
            if (f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")) in ("__import__", "import_module"):
                names = [node.args[0].value]
        found += [(node.lineno, m) for m in names if m and m.split(".")[0] in CUPY_PACKAGES]
    return found


def test_the_finder_sees_each_way_of_importing(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import cupy\nfrom cupyx.scipy import sparse\nx = __import__('cupy')\n"
                 "import importlib\ny = importlib.import_module('cupy.cublas')\nimport numpy\n")
    assert cupy_imports(f) == [(1, "cupy"), (2, "cupyx.scipy"), (3, "cupy"), (5, "cupy.cublas")]


def test_only_backend_imports_cupy():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        allowed = ALLOWED.get(rel, set())
        bad = [(line, m) for line, m in cupy_imports(path) if allowed is not None and m not in allowed]
        if bad:
            offenders[rel] = bad
    assert offenders == {}


class _DeviceArray(np.ndarray):
    """A "CuPy array" for backend.is_device_array (its type's module); .get() would be a host copy."""

    def get(self):
        raise AssertionError("validated through a copy to the host")


_DeviceArray.__module__ = "cupy._core.core"


@pytest.fixture
def stand_in_cupy(monkeypatch):
    import sys
    import types

    calls = []
    cupy = types.ModuleType("cupy")

    def isfinite(a):
        calls.append("isfinite")
        return np.isfinite(np.asarray(a))

    cupy.isfinite, cupy.round = isfinite, np.round
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return calls


def test_device_arrays_are_validated_with_the_backends_cupy(stand_in_cupy):
    """check_X / check_y take CuPy from backend.array_module: here the stand-in in sys.modules,
    used on the device array itself (no copy to the host)."""
    X = np.arange(12.0).reshape(4, 3).view(_DeviceArray)
    assert validation.check_X(X, n_features=3, dtype=np.float64) is X
    y = np.array([0.0, 1.0, 2.0, 1.0]).view(_DeviceArray)
    assert validation.check_y(y, "cross_entropy", 4, 3) is y
    assert stand_in_cupy == ["isfinite", "isfinite"]
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        validation.check_X(bad.view(_DeviceArray))
