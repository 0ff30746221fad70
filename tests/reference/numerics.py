"""What decides the bits of a NumPy training run besides our code, and the reference sets recorded for
each such configuration (``numerics.json``).

Two runs of the same code give the same bits exactly when they take every floating-point operation in
the same order. On the NumPy backend that order is ours except inside two libraries, both chosen per
machine at run time:

    the BLAS kernels    OpenBLAS picks its GEMM kernels by CPU (SkylakeX on AVX-512, Haswell on AVX2,
                        Sandybridge on AVX, ...): another kernel sums a product's terms in another
                        order (1 ulp here and there, then carried through training)
    NumPy's SIMD level  NumPy dispatches exp, log, tanh, its sums and its einsum by CPU feature level
                        (X86_V4 = AVX-512, X86_V3 = AVX2, X86_V2 = baseline); the levels differ in bits

``signature()`` names both, with the library versions and the platform. Not part of it, because they
do not move the bits: the BLAS thread count (OpenBLAS splits a product's rows and columns among its
threads, never the sum over k: 1 and 2 threads replay every reference identically), and the CPU's
vendor and model beyond the kernels and the level. ``KERNEL_FAMILIES`` maps the OpenBLAS core names
that run the same kernels as another onto it (checked by forcing each with ``OPENBLAS_CORETYPE``: all
40 training runs identical).

The references are what main computed before the model/step/trainer split (commit ``CODE``), so a set
for another configuration is recorded with that commit's code, never today's:

    git worktree add /tmp/main-before-split 7500802
    [OPENBLAS_CORETYPE=...] [NPY_DISABLE_CPU_FEATURES=...] PYTHONPATH=/tmp/main-before-split \\
        python tests/reference/numerics.py record

``record`` refuses to run on any other code (a clean checkout of ``CODE``) and writes
``results-<kernels>-<simd>.npz`` and ``continued-<kernels>-<simd>.npz`` with their entry in
``numerics.json``. ``python tests/reference/numerics.py`` prints this machine's signature and the
set it matches.
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MANIFEST = HERE / "numerics.json"

# OpenBLAS core name -> the core whose GEMM kernels it runs (same bits on every reference run)
KERNEL_FAMILIES = {"Zen": "Haswell", "Cooperlake": "SkylakeX"}


def _simd_level():
    """NumPy's SIMD dispatch level on this CPU: X86_V4 / X86_V3 / X86_V2 on x86-64 (the AVX512_ICL and
    AVX512_SPR targets above X86_V4 leave every reference run's bits as they are), else the dispatch
    targets enabled, joined by '+'."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # NumPy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        except ImportError:
            return "unknown"
    for level in ("X86_V4", "X86_V3", "X86_V2"):
        if __cpu_features__.get(level):
            return level
    return "+".join(t for t in __cpu_dispatch__ if __cpu_features__.get(t)) or "baseline"


def _blas():
    """(library and version, kernel family) of the BLAS that NumPy calls, from threadpoolctl; ("unknown",
    "unknown") when it cannot be told (threadpoolctl absent, a BLAS it does not know)."""
    try:
        import threadpoolctl
    except ImportError:
        return "unknown", "unknown"
    numpy_dir = Path(np.__file__).resolve().parent
    for info in threadpoolctl.threadpool_info():
        path = Path(info.get("filepath", "")).resolve()
        # NumPy's wheels keep their OpenBLAS in numpy.libs/ (Linux, Windows) or numpy/.dylibs/ (macOS)
        if info.get("user_api") == "blas" and (numpy_dir.parent / "numpy.libs" in path.parents
                                               or numpy_dir in path.parents):
            arch = str(info.get("architecture"))
            return f"{info.get('internal_api')} {info.get('version')}", KERNEL_FAMILIES.get(arch, arch)
    return "unknown", "unknown"


def signature():
    """This machine's numerics: what a reference set must have been recorded with to replay bit for bit."""
    blas, kernels = _blas()
    return {"platform": f"{sys.platform}-{platform.machine()}", "numpy": np.__version__, "simd": _simd_level(),
            "blas": blas, "kernels": kernels}


def manifest():
    return json.loads(MANIFEST.read_text())


def reference_sets():
    """Every recorded set: {"results", "continued", "numerics", "recorded"}, the original one first."""
    return manifest()["sets"]


def matching_set(sig=None):
    """The set recorded with this machine's numerics (compared exactly), or None (compared within the
    tolerance; see tests/test_reference_results.py)."""
    sig = signature() if sig is None else sig
    if "unknown" in sig.values():
        return None
    return next((s for s in reference_sets() if s["numerics"] == sig), None)


def load(name):
    with np.load(HERE / name) as f:
        return {k: f[k] for k in f.files}


def _code_commit():
    """The commit of the gpumlp that is imported, and whether its checkout is clean."""
    import gpumlp

    src = Path(gpumlp.__file__).resolve().parent
    run = lambda *a: subprocess.run(["git", "-C", str(src), *a], capture_output=True, text=True, check=True).stdout
    return run("rev-parse", "HEAD").strip(), run("status", "--porcelain", "--untracked-files=no").strip() == ""


def record():
    """Record the references for this machine's numerics with main's code from before the split."""
    import cases
    import files

    m = manifest()
    commit, clean = _code_commit()
    if not (commit == m["code"] and clean):
        sys.exit(f"record with a clean checkout of {m['code']} on PYTHONPATH (main before the split), not "
                 f"{commit}{'' if clean else ' with changes'}: the references are that code's numbers")
    sig = signature()
    if "unknown" in sig.values():
        sys.exit(f"this machine's numerics cannot be told ({sig}): nothing recorded")
    tag = f"{sig['kernels']}-{sig['simd']}"
    entry = {"results": f"results-{tag}.npz", "continued": f"continued-{tag}.npz", "numerics": sig,
             "recorded": f"{datetime.date.today()} with {commit[:7]}'s code by numerics.py record"}
    results, continued = cases.record_all(), files.continued(HERE)  # both before anything is written
    np.savez_compressed(HERE / entry["results"], **results)
    np.savez_compressed(HERE / entry["continued"], **continued)
    m["sets"] = [s for s in m["sets"] if s["numerics"] != sig] + [entry]
    MANIFEST.write_text(json.dumps(m, indent=1) + "\n")
    print(f"recorded {entry['results']} and {entry['continued']} for {sig}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if sys.argv[1:] == ["record"]:
        record()
    else:
        found = matching_set()
        print(json.dumps(signature()), "->", found["results"] if found else "no set recorded: within the tolerance")
