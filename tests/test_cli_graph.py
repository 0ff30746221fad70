"""`gpumlp graph` and `gpumlp check-gradients`: the command line gives what the Python API gives
(MLP.graph, gpumlp.check_gradients) for a saved model or a new net from train's options, and its
exit status says whether every gradient agrees."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpumlp
from gpumlp import cli
from gpumlp import functions as F


def main(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    assert main("train", "--epochs", "2", "--hidden", "12", "--bias", "--save", path, "--quiet") == 0
    return path


def lecture_net(**kw):
    """gpumlp train's net as its defaults build it (64-128-10, relu, λ 1e-4, SGD momentum 0.9, seed 0)."""
    return gpumlp.MLP((64, 128, 10), **{"weight_decay": 1e-4, "momentum": 0.9, "seed": 0, "backend": "numpy", **kw})


# ------------------------------------------------------------------------------ gpumlp graph
def test_graph_writes_the_dot_of_trains_net_by_default(capsys):
    assert main("graph") == 0
    assert capsys.readouterr().out == lecture_net().graph().to_dot()


def test_graph_of_a_new_net_from_the_model_options(tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main("graph", "--hidden", "16", "8", "--activation", "tanh,gelu", "--bias", "--loss", "squared",
                "--inputs", "5", "--outputs", "2", "--weight-decay", "0", "--dtype", "float64",
                "--batch-size", "4", "-o", out) == 0
    m = gpumlp.MLP((5, 16, 8, 2), activation=["tanh", "gelu"], bias=True, loss="squared", weight_decay=0.0,
                   dtype="float64", momentum=0.9, backend="numpy")
    assert out.read_text(encoding="utf-8") == m.graph(batch_size=4).to_dot()
    assert "wrote the DOT graph of 35 nodes" in capsys.readouterr().err


def test_graph_of_a_saved_model_as_svg(saved, tmp_path):
    out = tmp_path / "g.svg"
    assert main("graph", saved, "--batch-size", "8", "-o", out, "-q") == 0
    mlp = gpumlp.load(saved).named_steps["mlp"]
    assert out.read_text(encoding="utf-8") == mlp.graph(batch_size=8).to_svg()
    assert "(8, 12)" in out.read_text(encoding="utf-8")


def test_graph_png_to_a_file_and_to_a_pipe(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "g.png"
    assert main("graph", "-o", out, "-q") == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = subprocess.run([sys.executable, "-m", "gpumlp", "graph", "--format", "png"], capture_output=True,
                       timeout=120, check=False)
    assert p.returncode == 0 and p.stdout == out.read_bytes()


def test_graph_usage_errors(saved, tmp_path, capsys, monkeypatch):
    assert main("graph", saved, "--hidden", "3") == 2
    assert "--hidden describes a new net" in capsys.readouterr().err
    assert main("graph", "-o", tmp_path / "g.pdf") == 2
    assert "cannot tell the format" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main("graph", "-o", tmp_path / "g.png") == 1
    err = capsys.readouterr().err
    assert 'pip install "gpumlp[plot]"' in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


# ------------------------------------------------------------------------------ gpumlp check-gradients
def test_check_gradients_of_trains_net_passes(capsys):
    assert main("check-gradients", "--json", "--backend", "numpy") == 0
    out = capsys.readouterr().out
    assert "16 rows of the training split of digits" in out
    assert "all 7 gradients agree with central differences" in out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["passed"] is True and r["n_samples"] == 16 and r["rows"] == 16
    assert [t["name"] for t in r["tensors"]] == ["∂J/∂o", "∂J/∂W2", "∂J/∂h", "∂J/∂z", "∂J/∂W1", "∂J/∂W2", "∂J/∂W1"]
    assert all(t["rel_error"] < 1e-6 for t in r["tensors"])


def test_check_gradients_is_check_gradients_on_the_same_rows(capsys):
    """The command's numbers are the Python call's on the rows it names (train's split, seeded sample)."""
    assert main("check-gradients", "--hidden", "8", "--activation", "tanh", "--bias", "--rows", "5",
                "--seed", "3", "--max-entries", "40", "--json", "--backend", "numpy", "-q") == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from gpumlp.data import prepare

    d = prepare("digits", seed=3, test_size=0.2, scaling="standard", classify=True, dtype=np.dtype("float32"))
    rows = np.sort(np.random.default_rng(3).permutation(d.X_train.shape[0])[:5])
    m = gpumlp.MLP((64, 8, 10), activation="tanh", bias=True, weight_decay=1e-4, momentum=0.9, seed=3,
                   backend="numpy")
    want = gpumlp.check_gradients(m, d.X_train[rows], d.y_train[rows], max_entries=40, seed=3)
    assert [t["rel_error"] for t in r["tensors"]] == [t.rel_error for t in want]
    assert r["n_samples"] == 5


def test_check_gradients_of_a_saved_model_on_its_split_and_on_other_data(saved, tmp_path, capsys):
    assert main("check-gradients", saved, "--quiet") == 0
    assert capsys.readouterr().out.startswith("all 11 gradients agree")
    X, y = gpumlp.data.load_digits()
    np.savez(tmp_path / "d.npz", X=X[:40], y=y[:40])
    assert main("check-gradients", saved, "--data", tmp_path / "d.npz", "--rows", "7") == 0
    out = capsys.readouterr().out
    assert f"7 rows of {tmp_path / 'd.npz'}" in out and "on 7 examples" in out


def test_check_gradients_usage_errors(saved, tmp_path, capsys):
    assert main("check-gradients", saved, "--activation", "tanh") == 2
    assert "--activation applies to a new net" in capsys.readouterr().err
    assert main("check-gradients", saved, "--test-size", "0.3") == 2
    assert "--test-size applies to a new net" in capsys.readouterr().err
    bare = tmp_path / "bare.npz"
    gpumlp.MLP((64, 4, 10), backend="numpy").save(bare)
    assert main("check-gradients", bare) == 2
    assert "give --data" in capsys.readouterr().err


def test_a_wrong_backward_fails_the_command_with_status_1(monkeypatch, capsys):
    relu = F.ACTIVATIONS["relu"]
    monkeypatch.setitem(F.ACTIVATIONS, "relu", F.Activation("relu", relu.forward, lambda dh, z, h: dh.copy()))
    assert main("check-gradients", "--hidden", "8", "--backend", "numpy") == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert "gradients disagree with central differences (∂J/∂z, ∂J/∂W1)" in captured.err


def test_the_help_lists_both_commands():
    p = subprocess.run([sys.executable, "-m", "gpumlp", "--help"], capture_output=True, text=True, timeout=60,
                       check=False, env={k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"})
    assert p.returncode == 0 and "graph" in p.stdout and "check-gradients" in p.stdout


@pytest.mark.parametrize("handler", ["strict", "surrogateescape"])  # Python's, elsewhere and on a C locale
def test_a_terminal_that_cannot_show_the_symbols_gets_escapes_and_the_dot_stays_utf8(tmp_path, handler):
    """Standard output that cannot encode ∂, λ or ² (an ASCII or Latin-1 locale; PYTHONIOENCODING stands
    in for one on any machine): --help, check-gradients and a regression's R² come out with backslash
    escapes instead of exit status 1 and a UnicodeEncodeError, and the DOT on standard output is the
    UTF-8 file that --output writes."""
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    env["PYTHONIOENCODING"] = f"ascii:{handler}"

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "gpumlp", *map(str, args)], capture_output=True, env=env,
                           timeout=120, check=False)
        assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
        return p.stdout

    assert b"\\u03bb" in run("train", "--help")  # λ
    out = run("check-gradients", "--hidden", "8", "--backend", "numpy")
    assert b"\\u2202J/\\u2202W1" in out and b"all 7 gradients agree" in out
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    np.savez(tmp_path / "r.npz", X=X, y=X[:, 0] - X[:, 1])
    assert b"test R\\xb2" in run("train", "--data", tmp_path / "r.npz", "--loss", "squared", "--epochs", "2",
                                  "--backend", "numpy", "--quiet")
    run("graph", "-o", tmp_path / "g.dot", "-q")
    dot = run("graph")
    assert dot == (tmp_path / "g.dot").read_bytes() and "∂J/∂W1".encode("utf-8") in dot
