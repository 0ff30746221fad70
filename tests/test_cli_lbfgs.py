"""`gpumlp train --optimizer lbfgs`: full-batch L-BFGS from the command line (SciPy needed)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("scipy.optimize", reason="SciPy is not installed (pip install gpumlp[lbfgs])")


def run(*args, check_rc=None):
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    p = subprocess.run([sys.executable, "-m", "gpumlp", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=120)
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def test_train_with_lbfgs_saves_a_model_that_resumes(tmp_path):
    model = tmp_path / "m.npz"
    p = run("train", "--optimizer", "lbfgs", "--epochs", "40", "--hidden", "32", "--bias", "--save", model,
            "--json", check_rc=0)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["test_accuracy"] >= 0.95 and 0 < r["epochs"] <= 40
    assert r["stop_reason"] in ("epochs", "converged")
    import gpumlp

    m = gpumlp.load(model, backend="numpy").named_steps["mlp"]  # the command line saves a Pipeline
    assert m.optimizer.name == "lbfgs" and m.optimizer.t == r["epochs"]
    if r["epochs"] == 40:  # stopped at the limit: --resume trains on up to --epochs in all
        p = run("train", "--resume", model, "--epochs", "45", "--save", model, "--json", check_rc=0)
        assert json.loads(p.stdout.strip().splitlines()[-1])["epochs"] <= 45


@pytest.mark.parametrize("option", [["--early-stopping"], ["--n-iter-no-change", "3"], ["--lr", "0.1"],
                                    ["--batch-size", "8"], ["--momentum", "0.5"], ["--distributed", "mpi"]])
def test_lbfgs_refuses_the_minibatch_options(option):
    p = run("train", "--optimizer", "lbfgs", *option, check_rc=2)
    assert option[0] in p.stderr and "Traceback" not in p.stderr
