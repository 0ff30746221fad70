"""The numbers do not move when the code does: training runs and model files recorded on main before
the split into model, step and trainer (``tests/reference/``), replayed with today's code.

**Exactly, where this machine's numerics were recorded.** What decides a NumPy run's bits besides our
code is the BLAS kernel family and NumPy's SIMD level (``tests/reference/numerics.py`` says why and
how a set is recorded: always with main's code from before the split, never today's). Where this
machine's configuration has a set, every number must equal it to the bit (``assert_array_equal``):
the split kept the order of every floating-point operation, so a change that moves one rounding fails.

**Within a stated tolerance, elsewhere.** Another kernel or SIMD level sums in another order: an ulp
here and there, carried through training. On a configuration with no set, every floating-point array
is compared normwise with the original set:

    max|ours − ref| / max|ref|  ≤  C · u · n

with u the unit roundoff of the run's dtype (2⁻²⁴, 2⁻⁵³), n the optimizer steps of the run, and
C = 32 for the parameters, losses, scores and SGD's velocity, C = 256 for Adam's moments m and v.

Why that form: a step adds a rounding of a few u to what it computes and carries what came before
forward, so two configurations drift apart at most about linearly in the steps. Why those C:
measured over the 12 configurations this machine can be made to run (4 OpenBLAS kernel families by
``OPENBLAS_CORETYPE`` × 3 NumPy SIMD levels by ``NPY_DISABLE_CPU_FEATURES``, main's code, every
pair), the largest difference is 3.4·u·n for the parameters and losses and 28.5·u·n for Adam's
moments (``deep_leaky``; Adam divides by √v̂, so a component whose gradient is at the rounding
level steps by up to η either way, and its moments carry that). C leaves about 9× for
configurations that could not be measured here (ARM, Accelerate, MKL). Integers and strings
(epochs, best epoch, stop reason) and where NaN stands are compared exactly: no configuration moved
them.

**Tight enough to catch a real change** (tests below, each against that tolerance): one step of a
run with its learning rate off by one part in 10⁸ (float64: every case fails by 14× or more) or
doubled (float32); one step with an operation done out of order (∂J/∂h taken from W after its
update). What the tolerance lets through is what another kernel does: a reordered sum (one batch's
rows in reverse order) moves the bits, which the exact comparison catches, and stays within it.

Exactness that is a property of our code on one machine (a resumed run equals the run that never
stopped, N ranks equal one process, a checkpoint replays) is tested exactly elsewhere, on any machine.
"""
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp.step import Step

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import cases  # noqa: E402
import files  # noqa: E402
import numerics  # noqa: E402

HERE = Path(__file__).parent / "reference"
SETS = numerics.reference_sets()
MATCH = numerics.matching_set()  # the set recorded with this machine's numerics, or None
REFERENCE = MATCH or SETS[0]  # what this machine replays: exactly its own set, else the original within tolerance

UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53}
C_STATE, C_MOMENTS = 32, 256
MOMENTS = ("optimizer.m", "optimizer.v")


def tolerance(key, dtype, n_steps):
    """The largest normwise relative difference allowed for ``key`` of a run of ``n_steps`` in ``dtype``."""
    return (C_MOMENTS if key in MOMENTS else C_STATE) * UNIT_ROUNDOFF[dtype] * n_steps


def differences(got, want, dtype, n_steps):
    """Each array of ``got`` further from ``want`` than the tolerance allows, as a readable line."""
    if set(got) != set(want):
        return [f"recorded {sorted(set(got) ^ set(want))} on one side only"]
    out = []
    for key, w in want.items():
        g = got[key]
        if g.shape != w.shape or g.dtype != w.dtype:
            out.append(f"{key}: {g.dtype}{g.shape} against {w.dtype}{w.shape}")
        elif w.dtype.kind != "f":
            if not np.array_equal(g, w):
                out.append(f"{key}: {g} against {w} (compared exactly)")
        else:
            fin = np.isfinite(w)
            if not (np.array_equal(np.isfinite(g), fin) and np.array_equal(g[~fin], w[~fin], equal_nan=True)):
                out.append(f"{key}: NaN or infinity elsewhere than in the reference")
                continue
            scale = np.abs(w[fin]).max(initial=0.0)
            err = np.abs(g[fin] - w[fin]).max(initial=0.0)
            tol = tolerance(key, dtype, n_steps)
            if err > tol * scale:
                out.append(f"{key}: relative difference {err / scale:.2e} > {tol:.2e} = C·u·n, n = {n_steps}")
    return out


def assert_replays(got, want, dtype, n_steps, what, exact):
    if exact:
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{what}: {key}")
    else:
        assert differences(got, want, dtype, n_steps) == [], what


@pytest.fixture(scope="module", autouse=True)
def _say_how_it_compares():
    if MATCH is None:
        warnings.warn(f"tests/reference has no set for this machine's numerics {numerics.signature()}: the "
                      f"reference runs are compared within the tolerance, not exactly (numerics.py records one)")


@functools.cache
def reference(name):
    return numerics.load(name)


def case_reference(results, name, dtype):
    prefix = f"{name}/{dtype}/"
    return {k[len(prefix):]: v for k, v in reference(results).items() if k.startswith(prefix)}


@contextlib.contextmanager
def counted_steps(at=None, perturb=None):
    """Counts ``Step.train`` calls (the optimizer steps) in ``calls[0]``; call number ``at`` runs as
    ``perturb(train, step, x, y, w, optimizer, lr)`` instead."""
    calls = [0]
    train = Step.train

    def counted(step, x, y, w, optimizer, lr):
        calls[0] += 1
        if calls[0] == at:
            return perturb(train, step, x, y, w, optimizer, lr)
        return train(step, x, y, w, optimizer, lr)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Step, "train", counted)
        yield calls


def run_case(name, dtype, at=None, perturb=None):
    with counted_steps(at, perturb) as calls:
        got = cases.record(cases.CASES[name](dtype))
    return got, calls[0]


@functools.cache
def replayed(name, dtype):
    """Today's record of a reference case and its step count (computed once per session)."""
    return run_case(name, dtype)


CASE_PARAMS = [(name, dtype) for name in sorted(cases.CASES) for dtype in cases.DTYPES]


@pytest.mark.parametrize("name,dtype", CASE_PARAMS)
def test_training_gives_main_s_numbers(name, dtype):
    got, n = replayed(name, dtype)
    assert_replays(got, case_reference(REFERENCE["results"], name, dtype), dtype, n, f"{name} {dtype}",
                   exact=MATCH is not None)


# -- the model files ------------------------------------------------------------------------------------


def _pipeline_t(path):
    return gpumlp.load(path, backend="numpy").named_steps["mlp"].optimizer.t


@functools.cache
def continued_cli(tmp):
    f = Path(tmp) / "m.npz"
    shutil.copy(HERE / "cli_main.npz", f)
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    subprocess.run([sys.executable, "-m", "gpumlp", *files.CLI_RESUME, "--resume", str(f), "--save", str(f),
                    "--backend", "numpy"], check=True, env=env, capture_output=True)
    # a command-line file loads as the Pipeline of its model and preprocessing; the weights are the model's
    mlp = gpumlp.load(f, backend="numpy").named_steps["mlp"]
    # momentum SGD counts its updates: the steps of the continuation are the count's growth
    return mlp.get_weights()[0].ravel(), mlp.optimizer.t - _pipeline_t(HERE / "cli_main.npz")


@functools.cache
def continued_adam():
    with counted_steps() as calls:
        m = files.adam_continue(gpumlp.load(HERE / "adam_mid.npz", backend="numpy"))
    return np.concatenate([w.ravel() for w in m.get_weights()]), calls[0]


@functools.cache
def continued_es():
    with counted_steps() as calls:
        m = files.es_continue(gpumlp.load(HERE / "es_mid.npz", backend="numpy"), 9)
    return np.concatenate([w.ravel() for w in m.get_weights()]), calls[0]


def assert_continues(key, weights, n, continued):
    want = reference(continued)[key]
    assert_replays({"weights": weights}, {"weights": want}, weights.dtype.name, n, key, exact=MATCH is not None)


@pytest.fixture(scope="module")
def cli_tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli"))


def test_a_command_line_file_from_main_resumes_to_main_s_weights(cli_tmp):
    assert_continues("cli_main", *continued_cli(cli_tmp), REFERENCE["continued"])


def test_an_adam_checkpoint_from_main_continues_to_main_s_weights():
    assert_continues("adam_mid", *continued_adam(), REFERENCE["continued"])


def test_a_mid_fit_early_stopping_checkpoint_from_main_continues_exactly():
    assert_continues("es_mid", *continued_es(), REFERENCE["continued"])


# -- the tolerance: wide enough for another machine, tight enough for a real change ---------------------


@pytest.mark.parametrize("other", [s for s in SETS if s is not MATCH], ids=lambda s: s["results"])
def test_every_other_recorded_configuration_is_within_the_tolerance(other, cli_tmp):
    """What the tolerance is for, shown on any machine: today's numbers against the sets of the other
    kernel families and SIMD levels."""
    found = []
    for name, dtype in CASE_PARAMS:
        got, n = replayed(name, dtype)
        found += [f"{name} {dtype}: {d}" for d in differences(got, case_reference(other["results"], name, dtype),
                                                              dtype, n)]
    for key, (weights, n) in {"cli_main": continued_cli(cli_tmp), "adam_mid": continued_adam(),
                              "es_mid": continued_es()}.items():
        found += [f"{key}: {d}" for d in differences({"w": weights}, {"w": reference(other["continued"])[key]},
                                                     weights.dtype.name, n)]
    assert found == []


# One step's learning rate changed, relatively: in float64 by one part in 1e8; in float32 doubled (its
# unit roundoff is 2^29 times larger: a run that converges, like `adaptive`, forgets smaller changes
# to below 32·u·n, and the float64 comparison is the sharp one for the code both dtypes share).
CHANGED_LR = {"float64": 1e-8, "float32": 1.0}


@pytest.mark.parametrize("name,dtype", CASE_PARAMS)
def test_one_step_with_a_changed_learning_rate_is_caught(name, dtype):
    _, n = replayed(name, dtype)
    rho = CHANGED_LR[dtype]
    got, _ = run_case(name, dtype, at=n // 2 + 1,
                      perturb=lambda train, step, x, y, w, opt, lr: train(step, x, y, w, opt, lr * (1 + rho)))
    assert differences(got, case_reference(REFERENCE["results"], name, dtype), dtype, n) != []


def _weights_updated_before_the_input_gradient(train, step, *args):
    """The step with each layer's W updated before ∂J/∂h = d W is taken from it (the order the folded
    plain-SGD update must not have): input_grad is held back until the layer's weight_grad has run."""
    ops, held = step.model.ops, []
    input_grad, weight_grad = ops.input_grad, ops.weight_grad

    def weight_grad_first(d, x, out, alpha=1.0, beta=0.0):
        result = weight_grad(d, x, out, alpha, beta)
        while held:
            input_grad(*held.pop())
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "input_grad", lambda d, W, out: held.append((d, W, out)) or out)
        mp.setattr(ops, "weight_grad", weight_grad_first)
        return train(step, *args)


FOLDED_SGD = ("sgd", "sgd_bias_tanh", "class_weight_dict", "convergence", "step")  # plain SGD: W updated in the GEMM
# Measured here: the out-of-order step lands 1.5e7 (convergence) to 8e11 times over the tolerance in
# float64 and 2.4 to 1500 times over it in float32, except convergence in float32, which converges back
# to the same point and forgets one step's change to below 32·u·n (its float64 run is the check).
OUT_OF_ORDER = [(n, d) for n in FOLDED_SGD for d in cases.DTYPES if (n, d) != ("convergence", "float32")]


@pytest.mark.parametrize("name,dtype", OUT_OF_ORDER)
def test_one_step_with_an_operation_out_of_order_is_caught(name, dtype):
    _, n = replayed(name, dtype)
    got, _ = run_case(name, dtype, at=n // 2 + 1, perturb=_weights_updated_before_the_input_gradient)
    assert differences(got, case_reference(REFERENCE["results"], name, dtype), dtype, n) != []


def _rows_reversed(train, step, x, y, w, optimizer, lr):
    """The same step on the batch's rows in reverse order: the same math, its sums taken the other way."""
    flip = lambda a: None if a is None else np.ascontiguousarray(a[::-1])
    return train(step, flip(x), flip(y), flip(w), optimizer, lr)


@pytest.mark.parametrize("dtype", cases.DTYPES)
@pytest.mark.parametrize("name", ["sgd", "adam", "deep_leaky", "weights"])
def test_a_reordered_sum_moves_the_bits_and_stays_within_the_tolerance(name, dtype):
    want, n = replayed(name, dtype)
    got, _ = run_case(name, dtype, at=n // 2 + 1, perturb=_rows_reversed)
    assert any(not np.array_equal(got[k], want[k], equal_nan=want[k].dtype.kind == "f") for k in want)  # the exact comparison sees it
    assert differences(got, want, dtype, n) == []  # the tolerance lets it through, as another kernel's order
