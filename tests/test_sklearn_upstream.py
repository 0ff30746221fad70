"""scikit-learn's own tests of its MLP, run against gpumlp.sklearn.

The file is sklearn/neural_network/tests/test_mlp.py of the installed scikit-learn (pinned in the test
extra, so it does not change under us). It is read at test time, its one import of the two estimators
is rewritten to gpumlp.sklearn, and its test functions are collected here, marks and parametrisations
included; nothing of it is copied into this repository. The summary line at the end of the run
(tests/conftest.py) counts them.

Every test of the file passes; none needs a mark here. The private internals that three of them read
are provided under scikit-learn's names, each an honest view of our own state (gpumlp/sklearn.py's
docstring): ``_no_improvement_count`` (test_n_iter_no_change, test_n_iter_no_change_inf),
``_optimizer.learning_rate`` (test_learning_rate_warmstart, test_adaptive_learning_rate) and
``_loss_grad_lbfgs`` (test_gradient). The two tests that need pandas skip where it is not installed,
as they do for scikit-learn itself (the test extra installs it).
"""
import os
import types
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install gpumlp[test])")

PINNED = "1.9.1"  # the release whose file these counts are for (pyproject.toml's test extra)
SOURCE = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
THEIRS = "from sklearn.neural_network import MLPClassifier, MLPRegressor"
OURS = "from gpumlp.sklearn import MLPClassifier, MLPRegressor"
N_TESTS = 43  # test functions in the pinned file (59 tests once parametrised)


def _load():
    text = SOURCE.read_text(encoding="utf-8")
    assert text.count(THEIRS) == 1, f"{SOURCE} no longer imports the estimators as {THEIRS!r}"
    module = types.ModuleType("sklearn_test_mlp_on_gpumlp")
    module.__file__ = str(SOURCE)
    exec(compile(text.replace(THEIRS, OURS), str(SOURCE), "exec"), module.__dict__)
    return module


UPSTREAM = _load()
UPSTREAM_TESTS = sorted(name for name, f in vars(UPSTREAM).items() if name.startswith("test_") and callable(f))
globals().update({name: getattr(UPSTREAM, name) for name in UPSTREAM_TESTS})


@pytest.fixture(params=[42] if os.environ.get("SKLEARN_TESTS_GLOBAL_RANDOM_SEED") != "all" else list(range(100)))
def global_random_seed(request):
    """scikit-learn's fixture (its conftest.py): 42, or every seed in [0, 99] with the variable set to "all"."""
    return request.param


def test_the_upstream_file_is_the_pinned_one_and_uses_our_estimators():
    from gpumlp.sklearn import MLPClassifier, MLPRegressor

    assert sklearn.__version__ == PINNED, f"scikit-learn {sklearn.__version__}: the counts are for {PINNED}"
    assert UPSTREAM.MLPClassifier is MLPClassifier and UPSTREAM.MLPRegressor is MLPRegressor
    assert len(UPSTREAM_TESTS) == N_TESTS
