"""The layout the code promises (gpumlp/__init__.py, README "How the code is organised"): no import
cycles between gpumlp's modules, the file format without the model class, clients on public names,
one module that asks whether an array is CuPy's, and the step's two phases."""
import ast
import math
import re
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import Step, Trainer

PACKAGE = Path(gpumlp.__file__).parent


def _module_name(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """module -> the gpumlp modules it imports (at module level or inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if base.startswith("gpumlp"):
                    for alias in node.names:  # "from . import io" imports the module gpumlp.io
                        sub = f"{base}.{alias.name}"
                        deps.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                                 or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else base)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("gpumlp")}
        graph[name] = {d for d in deps if d != name}
    return graph


def test_the_modules_import_no_cycle():
    graph = _imports()
    assert "gpumlp.mlp" in graph and "gpumlp.io" in graph["gpumlp.mlp"]
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep == "gpumlp":
                continue  # the package's __init__ only re-exports
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_file_format_and_the_step_do_not_know_the_model_class():
    graph = _imports()
    for module in ("gpumlp.io", "gpumlp.state", "gpumlp.step", "gpumlp.trainer", "gpumlp.ops", "gpumlp.optim",
                   "gpumlp.lbfgs"):
        assert "gpumlp.mlp" not in graph[module], module


def test_only_backend_asks_whether_an_array_is_cupys():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "backend.py" and re.search(r"__module__\.startswith\(.cupy", p.read_text(encoding="utf-8"))]
    assert offenders == []


CLIENTS = [*sorted((PACKAGE / "cli").glob("*.py")), PACKAGE / "sklearn.py", PACKAGE / "bench.py",
           *sorted((PACKAGE.parent / "benchmarks").glob("*.py"))]


def _private_reaches(source, package_relative=True):
    """Where ``source`` reaches a private name that is not its own: an attribute ``x._name`` of anything but
    bare ``self``/``cls`` (``model._W``, ``self.model_._steps``, ``self.estimator._set_layers``), a
    ``getattr(x, "_name")``, or an import of a private gpumlp module or of a private name from a gpumlp
    module (relative imports are gpumlp's when ``package_relative``). Dunders and ``_version`` aside."""
    def private(name):
        return name.startswith("_") and not name.startswith("__") and name != "_version"

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
            obj, name = node.args[:2]
            own = isinstance(obj, ast.Name) and obj.id in ("self", "cls")
            if not own and isinstance(name, ast.Constant) and isinstance(name.value, str) and private(name.value):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if not (module.split(".")[0] == "gpumlp" or (node.level and package_relative)):
                continue  # another package's (a benchmark's helper from its sibling script)
            if any(private(part) for part in module.split(".")):
                found.append(f"from {'.' * node.level}{module} import ...")
            found += [f"from {'.' * node.level}{module} import {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.split(".")[0] == "gpumlp" and any(private(p) for p in a.name.split("."))]
    return found


def test_the_private_name_check_sees_every_way_of_reaching_one():
    """The check itself: each line below reaches a private name (the first is the one that a regular
    expression over the names model, m, est, ... missed: the estimators' coefs_ lists called it), and the
    client's own private methods, dunders and the version module pass."""
    bad = ["self.estimator._set_layers(kind, new)", "model._W[0]", "m._steps.clear()", "self.model_._lock",
           "pipeline.named_steps['mlp']._reference", "getattr(model, '_lock')",
           "from gpumlp._numpy_ops import NumpyOps", "from .._cupy_ops import CupyOps", "from ..mlp import _check_sizes",
           "import gpumlp._kernels", "from gpumlp import _stream"]
    for line in bad:
        assert _private_reaches(line), line
    good = ("self._write_back()\ncls._registry\nx.__dict__\ngetattr(self, '_multilabel', False)\n"
            "from .._version import __version__\nfrom compare_cpu import _timed\ngetattr(args, 'batch_size', None)\n"
            "from ..mlp import MLP")
    assert _private_reaches(good, package_relative=False) == []
    assert _private_reaches("from .compare_cpu import _timed") != []  # relative: gpumlp's


@pytest.mark.parametrize("path", CLIENTS, ids=lambda p: p.name)
def test_clients_use_public_names_only(path):
    """The command line, the estimators and the benchmarks reach no private attribute of gpumlp's
    objects (nor of one another's) and import no private gpumlp module or name (the kernel sources
    of gpu_check aside)."""
    assert _private_reaches(path.read_text(encoding="utf-8"), package_relative=path.parent != PACKAGE.parent / "benchmarks") == []


# ------------------------------------------------------------------------------ one screen per function
def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", [*sorted((PACKAGE / "cli").glob("*.py")), PACKAGE / "sklearn.py",
                                  PACKAGE / "mlp.py"], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_of_the_clients_and_the_model_fit_on_a_screen(path):
    """STYLE.md: one screen per function, each with one job. 60 lines, from def to its last line."""
    assert [(name, n) for name, n in _functions(path) if n > 60] == []


def test_the_model_class_stays_under_450_lines():
    """The lecture's model is parameters, forward/backward and predict; training lives in step.py and
    trainer.py, the checks in validation.py and mlp.py's module functions."""
    classes = [n for n in ast.parse((PACKAGE / "mlp.py").read_text(encoding="utf-8")).body
               if isinstance(n, ast.ClassDef) and n.name == "MLP"]
    assert len(classes) == 1 and classes[0].end_lineno - classes[0].lineno + 1 < 450


# ------------------------------------------------------------------------------ the step's two phases
def _model(**kw):
    kw = {"seed": 0, "backend": "numpy", "dtype": "float64", "weight_decay": 0.05, "bias": True, **kw}
    return gpumlp.MLP((5, 7, 6, 3), activation=["tanh", "relu"], **kw)


def _batch(n=24, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, n), rng.uniform(0.5, 2, n)


@pytest.mark.parametrize("kw", [{"momentum": 0.9}, {"optimizer": "adam"}, {"optimizer": "adam", "decoupled": True}])
def test_the_two_phases_taken_apart_equal_the_step(kw):
    """gradients then apply (the seam a data-parallel trainer uses) gives the fused/combined step's
    bits; gradients alone leaves θ as it was and puts ∂L/∂θ into model.grad."""
    X, y, w = _batch()
    a, b = _model(**kw), _model(**kw)
    xa, ya, wa = a.to_device(X, y, w)
    for _ in range(3):
        Ja = a.training_step(24).train(xa, ya, wa, a.optimizer, 0.1)
        theta = b.theta.copy()
        sb = Step(b, 24)
        Jb = sb.gradients(xa, ya, wa)
        np.testing.assert_array_equal(b.theta, theta)
        sb.apply(b.optimizer, 0.1)
        assert float(Ja) == float(Jb)
        np.testing.assert_array_equal(a.theta, b.theta)


def test_plain_sgd_fused_equals_its_two_phases_to_rounding():
    """Plain SGD folds W ← (1 − ηλ)W − η dᵀa into the GEMM; taken apart it is θ − η(∂L/∂θ + λθ):
    the same update in another order of operations (float64: within 1e-12 relative)."""
    X, y, w = _batch()
    a, b = _model(), _model()
    x, yy, ww = a.to_device(X, y, w)
    a.training_step(24).train(x, yy, ww, a.optimizer, 0.1)
    step = b.training_step(24)
    step.gradients(x, yy, ww)
    step.apply(b.optimizer, 0.1)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-15)
    assert not np.array_equal(a.theta, _model().theta)


def test_gradients_is_the_reference_backward_and_objective_gradient_adds_lambda_theta():
    X, y, w = _batch()
    m = _model()
    g = m.backward(m.forward(X, y, w))  # reference: ∂J/∂W with λW, ∂J/∂b
    x, yy, ww = m.to_device(X, y, w)
    step = m.training_step(24)
    J = step.gradients(x, yy, ww)
    assert float(J) == pytest.approx(m.forward(X, y, w).J, rel=1e-13)
    for l, (dW, W) in enumerate(zip(g.dW, m.weights)):
        np.testing.assert_allclose(m.weight_grads[l] + m.weight_decay * W, dW, rtol=1e-12, atol=1e-14)
    step.objective_gradient(x, yy, ww)
    for l, dW in enumerate(g.dW):
        np.testing.assert_allclose(m.weight_grads[l], dW, rtol=1e-12, atol=1e-14)
    for l, db in enumerate(g.db):
        np.testing.assert_allclose(m.bias_grads[l], db, rtol=1e-12, atol=1e-14)


def test_objective_gradient_follows_finite_differences():
    """J(θ) and ∂J/∂θ as a function of the flat θ (what L-BFGS needs), central differences in float64."""
    X, y, w = _batch(12)
    m = _model()
    x, yy, ww = m.to_device(X, y, w)
    step = m.training_step(12)
    step.objective_gradient(x, yy, ww)
    grad = m.grad.copy()
    rng = np.random.default_rng(2)
    theta = m.theta.copy()
    for i in rng.choice(theta.size, 25, replace=False):
        h = 1e-6
        m.theta[i] = theta[i] + h
        up = float(step.gradients(x, yy, ww))
        m.theta[i] = theta[i] - h
        down = float(step.gradients(x, yy, ww))
        m.theta[i] = theta[i]
        assert grad[i] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-8)


def test_a_step_made_for_a_batch_size_takes_smaller_batches_and_refuses_larger_ones():
    X, y, _ = _batch(24)
    a, b = _model(), _model()
    x, yy, _ = a.to_device(X, y)
    Step(a, 24).train(x[:10], yy[:10], None, a.optimizer, 0.1)
    Step(b, 10).train(x[:10], yy[:10], None, b.optimizer, 0.1)
    np.testing.assert_array_equal(a.theta, b.theta)
    with pytest.raises(ValueError, match="does not fit a step made for 10"):
        Step(b, 10).train(x, yy, None, b.optimizer, 0.1)


# ------------------------------------------------------------------------------ the trainer
def test_the_trainer_is_what_fit_runs():
    X, y, w = _batch(90)
    a, b = _model(momentum=0.9), _model(momentum=0.9)
    a.fit(X, y, epochs=3, batch_size=16, lr=0.05, sample_weight=w)
    Trainer(b, batch_size=16, lr=0.05).fit(X, y, 3, sample_weight=w)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.loss_curve_ == b.loss_curve_
    c = _model(momentum=0.9)
    trainer = Trainer(c, batch_size=16, lr=0.05)
    data = trainer.prepare(X, y, w)
    for _ in range(3):  # the loop's body by hand: the schedule is constant, the order from c.rng
        trainer.run_epoch(data, 0.05)
    np.testing.assert_array_equal(a.theta, c.theta)


def test_on_step_reports_host_counters_within_the_epoch_and_changes_no_bit():
    """The per-step hook of progress bars: plain ints (k, n_steps) every step_interval steps, and the
    training it watches is bit for bit the training without it."""
    X, y, w = _batch(90)
    a, b, c = _model(momentum=0.9), _model(momentum=0.9), _model(momentum=0.9)
    Trainer(a, batch_size=16, lr=0.05).fit(X, y, 3, sample_weight=w)
    seen, every = [], []
    Trainer(b, batch_size=16, lr=0.05, on_step=lambda k, n: seen.append((k, n)), step_interval=2).fit(
        X, y, 3, sample_weight=w)
    Trainer(c, batch_size=16, lr=0.05, on_step=lambda k, n: every.append(k)).fit(X, y, 2, sample_weight=w)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.loss_curve_ == b.loss_curve_
    assert seen == [(2, 6), (4, 6), (6, 6)] * 3 and all(type(k) is int and type(n) is int for k, n in seen)
    assert every == [1, 2, 3, 4, 5, 6] * 2  # 6 steps an epoch: about 100 calls an epoch means every step
    with pytest.raises(TypeError, match="on_step must be a callable"):
        Trainer(a, on_step=3)
    with pytest.raises(ValueError, match="step_interval"):
        Trainer(a, on_step=print, step_interval=0)


def test_the_trainer_checks_its_settings_before_anything_changes():
    m = _model()
    theta = m.theta.copy()
    for kw, err in [({"batch_size": 0}, ValueError), ({"lr": -1}, ValueError), ({"callbacks": [3]}, TypeError)]:
        with pytest.raises(err):
            Trainer(m, **kw)
    np.testing.assert_array_equal(m.theta, theta)


def test_the_plateau_monitor_round_trips_through_json():
    from gpumlp.monitor import PlateauMonitor

    mon = PlateauMonitor(mode="val_score", patience=3, tol=1e-3, split=True, validation_fraction=0.2,
                         split_seed=12, best=0.5, best_epoch=4, count=2)
    assert PlateauMonitor.from_json(mon.to_json()) == mon
    bad = dict(mon.to_json(), patience=0)
    with pytest.raises(ValueError, match="'patience' is wrong"):
        PlateauMonitor.from_json(bad)
    with pytest.raises(ValueError, match="must be an object with the keys"):
        PlateauMonitor.from_json({"mode": "loss"})
    assert math.isinf(float("inf"))  # (the monitor refuses non-finite bests below)
    with pytest.raises(ValueError, match="'best' is wrong"):
        PlateauMonitor.from_json(dict(mon.to_json(), best=float("nan")))
