"""PyTorch's door: a model as a ``torch.nn.Sequential`` and such a Sequential as a model.

    seq = gpumlp.to_torch(m)                            # Linear, φ, ..., Linear: seq(x) is m's outputs o
    m2 = gpumlp.from_torch(seq, loss="cross_entropy")   # a new MLP with seq's weights

``to_torch`` copies the weights (out, in) and biases bit for bit, in the model's dtype, onto the CPU (``.to("cuda")``
moves the module); its forward returns o, before the output unit (softmax, sigmoid, exp), which belongs to the
loss. ``from_torch`` reads the same shape of Sequential back, checking all of it before anything is built.
torch is imported only when one of them is called (``import gpumlp`` never imports it); where it is missing
they raise an ImportError that names it.

Each activation of ``functions.ACTIVATIONS`` and its torch module (``from_torch`` takes exactly these):

    relu        nn.ReLU()
    leaky_relu  nn.LeakyReLU(negative_slope=0.01)          functions.LEAKY_SLOPE (torch's default)
    sigmoid     nn.Sigmoid()
    tanh        nn.Tanh()
    gelu        nn.GELU(approximate="tanh")                 ours is the tanh form; torch's default is erf's
    softplus    nn.Softplus(beta=1, threshold=40)           see below
    identity    nn.Identity()

Softplus. Ours is log(1 + e^z) = max(z, 0) + log1p(e^−|z|), with no threshold. torch's returns z itself where
z > threshold, which is log(1 + e^z) − log1p(e^−z): at its default threshold of 20 off by up to 2.1e-9, below
float32's resolution there (half an ulp of 20 is 9.5e-7) but 1e-10 relative in float64, beyond the 1e-12 that
these exports promise. ``to_torch`` writes threshold=40: above it ours rounds to z itself in both dtypes
(log1p(e^−40) = 4.2e-18, half an ulp of 40 is 3.6e-15), and below it torch's log1p(exp(z)) cannot overflow
(e^40 is finite in float32). ``from_torch`` takes β = 1 and a threshold t where torch's shortcut is within the
dtype's tolerance of log(1 + e^z), log1p(e^−t) ≤ tol·t (1e-5 for float32: t ≥ 10, torch's default included;
1e-12 for float64: t ≥ 25); a smaller threshold (float64's default among them) is refused, naming the module.
"""
from __future__ import annotations

import math

import numpy as np

from .functions import LEAKY_SLOPE
from .mlp import MLP

__all__ = ["to_torch", "from_torch"]

SOFTPLUS_THRESHOLD = 40.0  # module docstring: ours and torch's agree to rounding on both sides of it
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}  # relative, the issue's
# from_torch's own arguments: the rest of an MLP's constructor is the module's
FROM_MODULE = ("sizes", "activation", "bias", "dtype")


def _torch(what):
    """(torch, torch.nn), or an ImportError that names PyTorch and how to install it."""
    try:
        import torch
        from torch import nn
    except ImportError as exc:
        raise ImportError(f"gpumlp.{what} needs PyTorch (torch), which is not installed: pip install torch",
                          name="torch") from exc
    return torch, nn


def _torch_activation(nn, name):
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity,
            "leaky_relu": lambda: nn.LeakyReLU(negative_slope=LEAKY_SLOPE),
            "gelu": lambda: nn.GELU(approximate="tanh"),
            "softplus": lambda: nn.Softplus(beta=1.0, threshold=SOFTPLUS_THRESHOLD)}[name]()


def to_torch(model):
    """``model`` (a ``gpumlp.MLP``) as a ``torch.nn.Sequential``: per layer an ``nn.Linear`` (weight (out, in) and,
    when the model has biases, bias: copies of ours, bit for bit, in the model's dtype, on the CPU), and after each
    hidden one its activation's module (module docstring). Its forward gives the outputs o, as
    ``model.decision_function`` does. torch's random state is not touched (no initialisation is drawn)."""
    torch, nn = _torch("to_torch")
    if not isinstance(model, MLP):
        hint = ""
        if hasattr(model, "named_steps"):
            hint = ("; a Pipeline's preprocessing has no torch module here: export pipeline.named_steps['mlp'] "
                    "and feed it pipeline.transform(X)")
        elif hasattr(model, "model_"):
            hint = f"; the fitted {type(model).__name__}'s model is its .model_"
        raise TypeError(f"to_torch takes a gpumlp.MLP, got {type(model).__name__}{hint}")
    dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[model.dtype]
    weights, biases = model.get_weights(), model.get_biases()  # host copies: torch owns them from here
    layers = []
    for l, W in enumerate(weights):
        linear = nn.utils.skip_init(nn.Linear, W.shape[1], W.shape[0], bias=model.bias, dtype=dtype)
        linear.weight = nn.Parameter(torch.from_numpy(W))
        if model.bias:
            linear.bias = nn.Parameter(torch.from_numpy(biases[l]))
        layers.append(linear)
        if l < model.n_layers - 1:
            layers.append(_torch_activation(nn, model.activations[l]))
    return nn.Sequential(*layers)


def from_torch(module, *, loss, **options):
    """A new ``gpumlp.MLP`` with the weights of ``module``, a ``torch.nn.Sequential`` of ``nn.Linear`` layers with
    one activation module between each two (``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.LeakyReLU`` of slope
    0.01, ``nn.GELU(approximate="tanh")``, ``nn.Softplus`` of β = 1 (threshold: module docstring), ``nn.Identity``),
    ending with a Linear: its output is the model's o. ``loss`` (required: the module does not say what its outputs
    are) and ``options`` (backend, weight_decay, optimizer, seed, ...) are the MLP's; its sizes, activations, bias
    (all layers or none) and dtype (float32 or float64, every parameter the same) are the module's.

    Everything is checked before anything is built: another module, a setting other than ours, a missing or
    doubled activation, widths that do not chain, mixed biases or dtypes, non-finite parameters raise a
    ValueError or TypeError naming the module by its name in ``module``. ``to_torch(from_torch(seq, ...))`` gives
    seq's outputs."""
    torch, nn = _torch("from_torch")
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"from_torch reads a torch.nn.Sequential of Linear layers and activations, got "
                        f"{type(module).__name__}")
    given = sorted(set(options) & set(FROM_MODULE))
    if given:
        raise TypeError(f"from_torch takes {given} from the module itself; pass only the MLP's other options")
    linears, activations = _read_layers(module, nn)
    dtype = _common_dtype(linears, torch)
    bias = _common_bias(linears)
    weights, biases = [], []
    for name, linear in linears:
        weights.append(_host_parameter(linear.weight, name, "weight"))
        if bias:
            biases.append(_host_parameter(linear.bias, name, "bias"))
    for (name, act), (_, linear) in zip(activations, linears[1:]):
        if isinstance(act, nn.Softplus):
            _check_softplus_threshold(name, act, dtype)
    sizes = (linears[0][1].in_features, *(linear.out_features for _, linear in linears))
    names = [_activation_name(name, act, nn) for name, act in activations]
    activation = names[0] if len(set(names)) == 1 else (names or "relu")  # one name for all, as MLP's default
    model = MLP(sizes, activation=activation, loss=loss, bias=bias, dtype=dtype, **options)
    model.set_weights(weights, biases if bias else None)
    return model


def _describe(name, child):
    return f"module {name!r} ({child!r})"


def _read_layers(module, nn):
    """([(name, Linear)], [(name, activation module)]) of ``module``: Linear (activation Linear)*, checked."""
    children = list(module.named_children())
    if not children:
        raise ValueError("from_torch: the Sequential is empty; it needs at least one Linear layer")
    linears, activations = [], []
    for position, (name, child) in enumerate(children):
        if type(child) is nn.Linear:
            if position % 2:
                raise ValueError(f"from_torch: {_describe(name, child)} follows a Linear without an activation "
                                 f"between them; each hidden layer of an MLP has one (nn.Identity() for none)")
            if linears and child.in_features != linears[-1][1].out_features:
                raise ValueError(f"from_torch: {_describe(name, child)} takes {child.in_features} inputs, the "
                                 f"Linear before it gives {linears[-1][1].out_features}")
            linears.append((name, child))
            continue
        _activation_name(name, child, nn)  # a module that is no activation of ours is refused here
        if position % 2 == 0:
            raise ValueError(f"from_torch: {_describe(name, child)} is not preceded by a Linear layer; an MLP "
                             f"starts with a Linear and has one activation after each hidden Linear")
        activations.append((name, child))
    if len(activations) == len(linears):
        name, child = activations[-1]
        raise ValueError(f"from_torch: {_describe(name, child)} comes after the last Linear; the model's outputs "
                         f"are the last Linear's o (softmax, sigmoid or exp belong to the loss)")
    return linears, activations


def _activation_name(name, child, nn):
    """Our name of an activation module whose formula is ours, else a ValueError (a setting) or TypeError
    (another module) naming it."""
    plain = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Identity: "identity"}
    kind = type(child)
    if kind in plain:
        return plain[kind]
    if kind is nn.LeakyReLU:
        if child.negative_slope != LEAKY_SLOPE:
            raise ValueError(f"from_torch: {_describe(name, child)} has negative_slope {child.negative_slope}; "
                             f"gpumlp's leaky_relu has slope {LEAKY_SLOPE}")
        return "leaky_relu"
    if kind is nn.GELU:
        if child.approximate != "tanh":
            raise ValueError(f"from_torch: {_describe(name, child)} is the exact (erf) GELU; gpumlp's gelu is the "
                             f"tanh approximation, nn.GELU(approximate='tanh')")
        return "gelu"
    if kind is nn.Softplus:
        if child.beta != 1:
            raise ValueError(f"from_torch: {_describe(name, child)} has beta {child.beta}; gpumlp's softplus is "
                             f"log(1 + e^z), beta 1")
        return "softplus"
    raise TypeError(f"from_torch: {_describe(name, child)} is not a layer of gpumlp's MLP; it takes nn.Linear, "
                    f"nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.GELU(approximate='tanh'), nn.Softplus and "
                    f"nn.Identity")


def _check_softplus_threshold(name, child, dtype):
    """torch's Softplus returns z above its threshold t; refused where that is off from log(1 + e^z) by more than
    the dtype's tolerance (module docstring)."""
    t, tol = float(child.threshold), TOLERANCE[dtype]
    if not t > 0 or math.log1p(math.exp(-t)) > tol * t:
        smallest = next(k for k in range(1, 100) if math.log1p(math.exp(-k)) <= tol * k)
        raise ValueError(f"from_torch: {_describe(name, child)} returns z for z > {t:g}, which differs from "
                         f"log(1 + e^z) (gpumlp's softplus, no threshold) by up to {math.log1p(math.exp(-t)):.2g}, "
                         f"more than {dtype.name}'s {tol:g} relative; use a threshold of at least {smallest} "
                         f"(to_torch writes {SOFTPLUS_THRESHOLD:g})")


def _common_dtype(linears, torch):
    dtypes = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
    first = linears[0][1].weight.dtype
    for name, linear in linears:
        for p in linear.parameters():
            if p.dtype not in dtypes:
                raise ValueError(f"from_torch: {_describe(name, linear)} holds {p.dtype} parameters; an MLP is "
                                 f"float32 or float64 (convert the module with .float() or .double())")
            if p.dtype != first:
                raise ValueError(f"from_torch: {_describe(name, linear)} holds {p.dtype} parameters, the first "
                                 f"Linear {first}; an MLP has one dtype")
    return dtypes[first]


def _common_bias(linears):
    with_bias = [linear.bias is not None for _, linear in linears]
    if len(set(with_bias)) > 1:
        name, linear = linears[with_bias.index(not with_bias[0])]
        raise ValueError(f"from_torch: {_describe(name, linear)} {'has' if not with_bias[0] else 'has no'} bias, "
                         f"the first Linear {'has' if with_bias[0] else 'has none'}; an MLP has biases in every "
                         f"layer or in none")
    return with_bias[0]


def _host_parameter(p, name, what):
    """A parameter as a host NumPy array (read from any device), checked finite."""
    try:
        a = p.detach().cpu().numpy()
    except Exception as exc:  # a meta tensor (no data), ...
        raise ValueError(f"from_torch: the {what} of module {name!r} cannot be read ({exc})") from exc
    if not np.isfinite(a).all():
        raise ValueError(f"from_torch: the {what} of module {name!r} holds NaN or infinity")
    return a
