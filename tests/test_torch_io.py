"""gpumlp.to_torch / gpumlp.from_torch (gpumlp/torch_io.py): a model as a torch.nn.Sequential and back.

torch is in the test extra, so these run in CI; the ImportError without it is tested with torch hidden."""
from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import gpumlp
from gpumlp import functions as F
from gpumlp import torch_io

torch = pytest.importorskip("torch")  # in the test extra: installed wherever the suite runs in CI
nn = torch.nn

ACTS = sorted(F.ACTIVATIONS)
# the tolerances, measured as max|torch − ours| / max|ours| over the outputs
TOL = {"float32": 1e-5, "float64": 1e-12}
TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _inputs(d, dtype, n=400, seed=3):
    """Rows whose pre-activations reach far into every activation's tails (softplus past its threshold of 40,
    gelu's and tanh's saturation) as well as near 0."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.repeat([0.1, 1.0, 10.0, 60.0], n // 4)[:, None]
    return X.astype(dtype)


def _torch_out(seq, X):
    with torch.no_grad():
        return seq(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ACTS)
def test_to_torch_is_the_model_layer_by_layer(activation, bias, dtype):
    m = gpumlp.MLP((6, 9, 7, 4), activation=activation, bias=bias, dtype=dtype, backend="numpy", seed=2)
    seq = torch_io.to_torch(m)
    assert isinstance(seq, nn.Sequential) and len(seq) == 5
    linears = [seq[0], seq[2], seq[4]]
    for l, lin in enumerate(linears):
        assert type(lin) is nn.Linear and lin.weight.dtype == TORCH_DTYPE[dtype]
        assert np.array_equal(lin.weight.detach().numpy(), m.get_weights()[l])  # (out, in), bit for bit
        assert lin.weight.detach().numpy().tobytes() == m.get_weights()[l].tobytes()
        assert (lin.bias is not None) == bias
        if bias:
            assert lin.bias.detach().numpy().tobytes() == m.get_biases()[l].tobytes()
    for act in (seq[1], seq[3]):
        assert torch_io._activation_name("x", act, nn) == activation  # the module from_torch reads back
    X = _inputs(6, dtype)
    out, ours = _torch_out(seq, X), m.decision_function(X)
    assert out.dtype == ours.dtype == np.dtype(dtype)
    assert _rel(out, ours) <= TOL[dtype]


def test_to_torch_writes_each_activation_as_our_formula():
    acts = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softplus", "identity"]
    seq = torch_io.to_torch(gpumlp.MLP([3] * 8 + [2], activation=acts, backend="numpy", seed=0))
    modules = list(seq)[1::2]
    assert [type(a) for a in modules] == [nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.Softplus,
                                          nn.Identity]
    assert modules[1].negative_slope == F.LEAKY_SLOPE
    assert modules[4].approximate == "tanh"
    assert modules[5].beta == 1 and modules[5].threshold == 40


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_hidden_layer_and_a_list_of_activations(dtype):
    for sizes, act in (((5, 3), "relu"), ((5, 8, 6, 3), ["gelu", "softplus"])):
        m = gpumlp.MLP(sizes, activation=act, bias=True, dtype=dtype, backend="numpy", seed=4)
        seq = torch_io.to_torch(m)
        assert len(seq) == 2 * len(sizes) - 3
        X = _inputs(5, dtype)
        assert _rel(_torch_out(seq, X), m.decision_function(X)) <= TOL[dtype]


def test_torchs_default_softplus_threshold_is_not_ours_in_float64_and_40_is():
    """Why to_torch writes threshold=40 (gpumlp/torch_io.py's docstring): torch's Softplus returns z above its
    threshold; at the default 20 that is off from log(1 + e^z) by up to log1p(e^−20) = 2.1e-9, beyond float64's
    tolerance; at 40 the two agree to rounding everywhere, up to z = 700 (where e^z nearly overflows)."""
    z = np.concatenate([np.linspace(-120, 120, 48001), np.linspace(19, 45, 26001), [88.0, 700.0, 1e4]])
    ours = F.softplus_forward(z)
    default = nn.Softplus()(torch.from_numpy(z)).numpy()
    assert np.max(np.abs(default - ours)) > 1e-9  # so from_torch refuses it in float64
    for dtype, tol in ((np.float64, 1e-15), (np.float32, 2.4e-7)):  # a few ulps
        zz = z.astype(dtype)
        with np.errstate(over="ignore"):
            ours = F.softplus_forward(zz)
        t = nn.Softplus(beta=1.0, threshold=torch_io.SOFTPLUS_THRESHOLD)(torch.from_numpy(zz)).numpy()
        assert np.all(np.abs(t - ours) <= tol * np.maximum(np.abs(ours), 1.0) + 1e-40)
    # float32: the default's shortcut is below float32's resolution above 20 (half an ulp is 9.5e-7)
    assert math.log1p(math.exp(-20)) < np.spacing(np.float32(20)) / 2


def test_to_torch_leaves_torchs_random_state_and_the_model_alone():
    m = gpumlp.MLP((4, 5, 3), bias=True, backend="numpy", seed=0)
    before, theta = torch.random.get_rng_state(), m.theta.copy()
    seq = torch_io.to_torch(m)
    assert torch.equal(torch.random.get_rng_state(), before)  # no initialisation was drawn
    with torch.no_grad():
        for p in seq.parameters():
            p.add_(1.0)  # the module's parameters are its own copies
    np.testing.assert_array_equal(m.theta, theta)
    assert all(p.requires_grad for p in seq.parameters())  # trainable, as any torch module


def test_to_torch_refuses_what_is_not_a_model():
    m = gpumlp.MLP((4, 5, 3), backend="numpy", seed=0)
    with pytest.raises(TypeError, match=r"named_steps\['mlp'\]"):
        torch_io.to_torch(gpumlp.Pipeline(m))
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from gpumlp.sklearn import MLPClassifier

    est = MLPClassifier(hidden_layer_sizes=(5,), max_iter=2, backend="numpy", random_state=0)
    with pytest.warns(Warning):
        est.fit(np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 3)
    with pytest.raises(TypeError, match=r"\.model_"):
        torch_io.to_torch(est)
    with pytest.raises(TypeError, match="gpumlp.MLP, got dict"):
        torch_io.to_torch({})
    seq = torch_io.to_torch(est.model_)
    assert _rel(_torch_out(seq, np.ones((3, 4))), est.model_.decision_function(np.ones((3, 4)))) <= 1e-12


# ------------------------------------------------------------------------------ from_torch
def _seq(acts, widths=(5, 8, 7, 3), bias=True, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers = []
    for l, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(i, o, bias=bias, dtype=dtype))
        if l < len(widths) - 2:
            layers.append(acts[l] if isinstance(acts, list) else acts())
    return nn.Sequential(*layers)


ACCEPTED = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
    "leaky_relu": nn.LeakyReLU, "gelu": lambda: nn.GELU(approximate="tanh"),
    "softplus": lambda: nn.Softplus(threshold=40),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_from_torch_gives_the_modules_weights_and_outputs(name, bias, dtype):
    seq = _seq(ACCEPTED[name], bias=bias, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        for p in seq.parameters():
            p.mul_(3.0)  # larger pre-activations than torch's initialisation gives
    m = torch_io.from_torch(seq, loss="squared", backend="numpy")
    assert (m.sizes, m.activations, m.bias, m.dtype.name) == ((5, 8, 7, 3), [name, name], bias, dtype)
    for l, lin in enumerate(list(seq)[::2]):
        assert m.get_weights()[l].tobytes() == lin.weight.detach().numpy().tobytes()
        if bias:
            assert m.get_biases()[l].tobytes() == lin.bias.detach().numpy().tobytes()
    X = _inputs(5, dtype)
    want = _torch_out(seq, X)
    assert _rel(m.decision_function(X), want) <= TOL[dtype]
    assert _rel(_torch_out(torch_io.to_torch(m), X), want) <= TOL[dtype]  # to_torch(from_torch(seq)) is seq


def test_from_torch_takes_torchs_default_softplus_in_float32_and_named_children():
    seq = nn.Sequential(OrderedDict(hidden=nn.Linear(4, 6), act=nn.Softplus(), out=nn.Linear(6, 2)))
    m = torch_io.from_torch(seq, loss="cross_entropy", backend="numpy", weight_decay=1e-3, seed=5)
    assert m.dtype.name == "float32" and m.activations == ["softplus"] and m.weight_decay == 1e-3
    X = _inputs(4, "float32")
    assert _rel(m.decision_function(X), _torch_out(seq, X)) <= 1e-5
    m.fit(X, np.arange(len(X)) % 2, epochs=1)  # a model like any other
    single = torch_io.from_torch(nn.Sequential(nn.Linear(3, 2, dtype=torch.float64)), loss="squared",
                                 backend="numpy")
    assert single.sizes == (3, 2) and single.n_layers == 1


@pytest.fixture
def nothing_built(monkeypatch):
    """from_torch's MLP replaced by one that fails the test if it is ever constructed."""
    def built(*args, **kwargs):
        raise AssertionError("an MLP was built before the module was refused")

    monkeypatch.setattr(torch_io, "MLP", built)


def _bad():
    def one(act, dtype=torch.float64):
        return _seq([act], widths=(5, 8, 3), dtype=dtype)

    return [
        (one(nn.GELU()), ValueError, r"module '1' \(GELU\(approximate='none'\)\).*erf"),
        (one(nn.LeakyReLU(0.2)), ValueError, r"module '1' .*negative_slope 0.2"),
        (one(nn.Softplus(beta=2, threshold=40)), ValueError, r"module '1' .*beta 2"),
        (one(nn.Softplus()), ValueError, r"module '1' \(Softplus.*at least 25"),  # float64, threshold 20
        (one(nn.Softplus(threshold=5), dtype=torch.float32), ValueError, r"module '1' .*at least 10"),
        (one(nn.SiLU()), TypeError, r"module '1' \(SiLU\(\)\) is not a layer"),
        (one(nn.Dropout()), TypeError, r"module '1' \(Dropout"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), ValueError, r"module '1' .*without an activation"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(dim=1)), TypeError,
         r"module '3' \(Softmax"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Sigmoid()), ValueError,
         r"module '3' \(Sigmoid\(\)\) comes after the last Linear"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), ValueError, r"module '0' \(ReLU\(\)\) is not preceded"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)), ValueError,
         r"module '2' \(Tanh\(\)\) is not preceded"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2)), ValueError, r"module '2' .*takes 5 inputs"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)), ValueError,
         r"module '2' .*has no bias"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, dtype=torch.float64)), ValueError,
         r"module '2' .*torch.float64.*one dtype"),
        (nn.Sequential(nn.Linear(3, 2, dtype=torch.float16)), ValueError, r"module '0' .*torch.float16"),
        (nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU()), nn.Linear(4, 2)), TypeError,
         r"module '1' \(Sequential"),
        (nn.Sequential(), ValueError, "empty"),
        (nn.Linear(3, 2), TypeError, "torch.nn.Sequential.*got Linear"),
    ]


@pytest.mark.parametrize("case", range(len(_bad())))
def test_from_torch_refuses_what_is_not_our_mlp_naming_the_module(case, nothing_built):
    module, error, message = _bad()[case]
    with pytest.raises(error, match=message):
        torch_io.from_torch(module, loss="squared")


def test_from_torch_refuses_non_finite_parameters_and_its_own_options(nothing_built):
    seq = _seq(nn.ReLU)
    with torch.no_grad():
        seq[2].bias[1] = float("nan")
    with pytest.raises(ValueError, match="bias of module '2' holds NaN"):
        torch_io.from_torch(seq, loss="squared")
    with pytest.raises(TypeError, match=r"\['dtype', 'sizes'\] from the module"):
        torch_io.from_torch(_seq(nn.ReLU), loss="squared", sizes=(1, 2), dtype="float32")
    with pytest.raises(TypeError, match="loss"):
        torch_io.from_torch(_seq(nn.ReLU))  # required: the module does not say what its outputs are


def test_a_bad_loss_or_option_is_the_mlps_error():
    with pytest.raises(ValueError, match="loss must be one of"):
        torch_io.from_torch(_seq(nn.ReLU), loss="hinge")
    with pytest.raises(ValueError, match="weight_decay"):
        torch_io.from_torch(_seq(nn.ReLU), loss="squared", weight_decay=-1.0)


# ------------------------------------------------------------------------------ torch optional
def test_without_torch_both_raise_an_import_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.setitem(sys.modules, "torch.nn", None)
    m = gpumlp.MLP((3, 2), backend="numpy")
    for call in (lambda: gpumlp.to_torch(m), lambda: gpumlp.from_torch(object(), loss="squared")):
        with pytest.raises(ImportError, match=r"needs PyTorch \(torch\).*pip install torch") as info:
            call()
        assert info.value.name == "torch"


def test_import_gpumlp_does_not_import_torch_and_works_without_it():
    code = ("import sys; sys.modules['torch'] = None; import gpumlp; assert callable(gpumlp.to_torch); "
            "m = gpumlp.MLP((3, 2), backend='numpy')\n"
            "try:\n    gpumlp.to_torch(m)\nexcept ImportError as e:\n    print(e)\n"
            "del sys.modules['torch']; import importlib; sys.modules.pop('torch', None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "gpumlp.to_torch needs PyTorch (torch)" in out.stdout
    out = subprocess.run([sys.executable, "-c", "import sys, gpumlp; gpumlp.to_torch; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
