"""`gpumlp export` (issue 15), run as a user runs it: in a subprocess, checking the file, the output and
the exit status."""
import os
import subprocess
import sys

import numpy as np
import pytest

import gpumlp
from ci import needed
from gpumlp.data import load_digits


onnx = needed("onnx")
ort = needed("onnxruntime")


def run(*args, cwd=None, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "gpumlp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=120)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.npz"
    r = run("train", "--epochs", "3", "--hidden", "16", "--activation", "gelu", "--bias", "--save", path, "--quiet")
    assert r.returncode == 0, r.stderr
    return path


def outputs(path, X):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"X": X})


@pytest.mark.parametrize("extra,dtype,opset", [((), np.float32, 20), (("--dtype", "float64"), np.float64, 20),
                                               (("--opset", "17"), np.float32, 17)])
def test_export_writes_the_pipeline_that_predicts_as_gpumlp_predict(saved, tmp_path, extra, dtype, opset):
    out = tmp_path / "m.onnx"
    r = run("export", saved, "--output", out, *extra)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert f"wrote the pipeline of {saved} to {out} (opset {opset}" in r.stderr and "label, probabilities" in r.stderr
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    X = load_digits()[0].astype(dtype)  # raw pixels 0..16: the file's scaling runs inside the graph
    label, proba = outputs(out, X)
    p = gpumlp.load(saved)
    if dtype == np.float64:  # a float32 model exported as float64 computes what a float64 copy of it does
        m = p.named_steps["mlp"]
        m64 = gpumlp.MLP(m.sizes, activation="gelu", bias=True, dtype="float64", backend="numpy")
        m64.set_weights(m.get_weights(), m.get_biases())
        p = gpumlp.Pipeline(m64, scaler=p.named_steps["scaler"], classes=p.classes_)
    np.testing.assert_array_equal(label, p.predict(X))
    ours = p.predict_proba(X)
    assert np.abs(proba - ours).max() / np.abs(ours).max() <= (1e-5 if dtype == np.float32 else 1e-10)


def test_export_without_output_writes_beside_the_model_and_quietly(saved, tmp_path):
    model = tmp_path / "digits.npz"
    model.write_bytes(saved.read_bytes())
    r = run("export", "digits.npz", "-q", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == r.stderr == ""
    assert (tmp_path / "digits.onnx").exists()


@pytest.mark.parametrize("case,status,message", [
    ("missing", 1, "no such model file"),
    ("not a model", 1, "not a gpumlp model file"),
    ("opset 12", 2, "--opset must be from 13 to"),
    ("opset word", 2, "expected an integer"),
    ("dtype", 2, "invalid choice: 'float16'"),
    ("directory", 2, "is a directory"),
    ("itself", 2, "would overwrite the model"),
])
def test_export_failures_are_one_line_with_the_exit_status(saved, tmp_path, case, status, message):
    (tmp_path / "junk.npz").write_text("not a model")
    (tmp_path / "m.onnx").write_bytes(saved.read_bytes())
    args = {"missing": [tmp_path / "absent" / "m.npz", "-o", tmp_path / "x.onnx"],
            "not a model": [tmp_path / "junk.npz"], "opset 12": [saved, "-o", tmp_path / "x.onnx", "--opset", "12"],
            "opset word": [saved, "--opset", "new"], "dtype": [saved, "--dtype", "float16"],
            "directory": [saved, "-o", tmp_path], "itself": [tmp_path / "m.onnx"]}[case]
    r = run("export", *args)
    assert r.returncode == status, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert [l for l in r.stderr.splitlines() if not l.startswith("usage:")][-1].startswith("gpumlp export: error:")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "junk.onnx").exists()


def test_export_without_onnx_names_the_extra(saved, tmp_path):
    """A stand-in onnx package that fails to import, first on the path, as where onnx is not installed."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "__init__.py").write_text("raise ImportError('No module named onnx')\n")
    r = run("export", saved, "-o", tmp_path / "x.onnx", env={"PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.path.dirname(os.path.dirname(gpumlp.__file__))])})
    assert r.returncode == 1 and 'pip install "gpumlp[onnx]"' in r.stderr and "Traceback" not in r.stderr
