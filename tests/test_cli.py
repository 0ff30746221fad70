"""The `gpumlp` command, run as a user runs it: in a subprocess, checking output and exit status."""
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import cli
from gpumlp.data import load_digits

FAST = ["--epochs", "3", "--hidden", "16"]


def run(*args, cwd=None, env=None, check_rc=None):
    full_env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}  # "auto" means auto here
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "gpumlp", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=full_env, timeout=120)
    if check_rc is not None:
        assert p.returncode == check_rc, f"rc {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- the main job
def test_default_train_reaches_96_percent_quickly():
    """The README's first command: no arguments, the lecture's net on the embedded digits."""
    p = run("train", "--json", check_rc=0)
    r = last_json(p.stdout)
    assert r["test_accuracy"] >= 0.96
    assert r["seconds"] < 30
    assert r["epochs"] == 50 and r["sizes"] == [64, 128, 10]
    assert r["backend"] in ("numpy", "cupy") and r["device"]
    assert r["samples_per_second"] > 0 and 0 < r["train_loss"] < 0.1
    assert "Traceback" not in p.stderr


def test_console_script_is_installed():
    exe = shutil.which("gpumlp", path=str(Path(sys.executable).parent)) or shutil.which("gpumlp")
    if exe is None:
        pytest.skip("the gpumlp console script is not on PATH (package not installed)")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"gpumlp {gpumlp.__version__}"


def test_plain_per_epoch_lines_when_not_a_terminal():
    p = run("train", *FAST, check_rc=0)
    lines = p.stdout.splitlines()
    epochs = [l for l in lines if l.startswith("epoch ")]
    assert len(epochs) == 3
    assert epochs[0].startswith("epoch 1/3") and "train J" in epochs[0]
    assert "test" not in epochs[0] and "val" not in epochs[0]  # no test score per epoch; no validation split
    assert "samples/s" in epochs[0]
    assert lines[-1].startswith("test accuracy")
    assert p.stderr == ""


def test_quiet_prints_only_the_result_and_json_is_last():
    p = run("train", *FAST, "--quiet", "--json", check_rc=0)
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("test accuracy")
    r = json.loads(lines[1])
    for key in ("test_accuracy", "train_loss", "epochs", "backend", "device", "seconds", "samples_per_second"):
        assert key in r
    assert p.stderr == ""


def test_progress_bar_goes_to_stderr():
    pytest.importorskip("tqdm")
    p = run("train", *FAST, "--progress", "bar", check_rc=0)
    assert "3/3" in p.stderr and "epoch" in p.stderr
    assert not any(l.startswith("epoch ") for l in p.stdout.splitlines())


def test_validation_split_and_early_stopping():
    p = run("train", "--epochs", "200", "--hidden", "16", "--early-stopping", "--n-iter-no-change", "3",
            "--json", check_rc=0)
    r = last_json(p.stdout)
    assert "val acc" in p.stdout and "val L" in p.stdout
    assert r["stop_reason"] == "plateau" and r["epochs"] < 200
    assert r["n_train"] + r["n_test"] < 1797  # a tenth of the training split held out for validation


def test_python_api_options_reach_the_model(tmp_path):
    run("train", "--epochs", "2", "--hidden", "20", "12", "--activation", "tanh,relu", "--bias", "--dtype",
        "float64", "--optimizer", "adam", "--lr", "0.005", "--weight-decay", "0.001", "--lr-schedule",
        "step:step_size=1,gamma=0.5", "--batch-size", "64", "--scaling", "max", "--seed", "3",
        "--save", tmp_path / "m.npz", "--quiet", check_rc=0)
    m = gpumlp.load(tmp_path / "m.npz", model_only=True)
    assert m.sizes == (64, 20, 12, 10) and m.activation == ["tanh", "relu"] and m.bias
    assert m.dtype == np.float64 and m.optimizer.name == "adam" and m.weight_decay == 0.001
    assert m.history_["lr"] == [0.005, 0.0025]
    assert m.scaler_.kind == "max" and m.seed == 3 and m.optimizer.t == 2 * 23  # ceil(1438 / 64) steps


JSON_KEYS = {"test_accuracy", "test_score", "metric", "test_L", "train_L", "train_J", "train_loss", "epochs",
             "epochs_trained", "stop_reason", "best_epoch", "backend", "device", "seconds", "samples_per_second",
             "total_seconds", "n_train", "n_test", "n_validation", "n_dropped", "test_set", "sizes", "model",
             "ranks", "distributed"}


def test_the_json_line_agrees_with_the_lines_before_it(tmp_path, capsys):
    """--json's keys (the README's and the rest: a script reads them), each agreeing with the human lines:
    the counts of the first line, the test set's words, the saved file, and on a resume the epochs in all."""
    path = tmp_path / "m.npz"
    common = ["--backend", "numpy", "--json", "--progress", "none"]
    assert cli.main(["train", *FAST, "--validation-split", "0.1", "--save", str(path), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    r = json.loads(lines[-1])
    assert set(r) == JSON_KEYS and len(lines) == 5
    assert f"({r['n_train']} train, {r['n_test']} test, {r['n_validation']} validation samples" in lines[0]
    assert r["n_validation"] > 0 and lines[1] == f"test set: {r['test_set']}, scored once, after training"
    assert lines[2].startswith(f"test accuracy {r['test_accuracy']:.4f}, test L {r['test_L']:.4f} on "
                               f"{r['n_test']} samples; train L {r['train_L']:.4f}, J {r['train_J']:.4f}; 3 epochs in ")
    assert lines[3] == f"saved the model to {path}" and r["model"] == str(path)
    assert r["test_score"] == r["test_accuracy"] and r["metric"] == "accuracy" and r["sizes"] == [64, 16, 10]
    assert r["total_seconds"] >= r["seconds"] > 0 and r["ranks"] == 1 and r["distributed"] is None
    assert r["epochs"] == r["epochs_trained"] == 3 and r["stop_reason"] == "epochs" and r["n_dropped"] == 0
    assert r["train_J"] > r["train_L"] > 0  # J = L + λ/2 Σ‖W‖², λ = 1e-4 by default
    assert cli.main(["train", "--resume", str(path), "--epochs", "5", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    again = json.loads(lines[-1])
    assert set(again) == JSON_KEYS and len(lines) == 4 and again["model"] is None
    assert again["epochs"] == 5 and again["epochs_trained"] == 2 and "; 2 epochs (5 in all) in " in lines[2]
    assert again["n_train"] == r["n_train"] and again["test_set"] == r["test_set"]


# ---------------------------------------------------------------------------------- resume
def test_resume_gives_bit_identical_weights(tmp_path):
    common = ["--backend", "numpy", "--hidden", "24", "--momentum", "0.8", "--lr-schedule",
              "step:step_size=2,gamma=0.5", "--quiet"]
    run("train", "--epochs", "5", "--save", tmp_path / "straight.npz", *common, check_rc=0)
    run("train", "--epochs", "2", "--save", tmp_path / "part.npz", *common, check_rc=0)
    p = run("train", "--resume", tmp_path / "part.npz", "--epochs", "5", "--save", tmp_path / "resumed.npz",
            "--quiet", "--json", check_rc=0)
    r = last_json(p.stdout)
    assert r["epochs"] == 5 and r["epochs_trained"] == 3
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if k != "meta":
            assert a[k].tobytes() == b[k].tobytes(), k
    ma, mb = (json.loads(z["meta"].tobytes()) for z in (a, b))
    assert ma["loss_curve"] == mb["loss_curve"] and ma["rng_state"] == mb["rng_state"]


def test_extending_a_finished_cosine_run_warns_that_its_rate_stays_at_the_end(tmp_path):
    run("train", *FAST, "--lr-schedule", "cosine", "--save", tmp_path / "m.npz", "--quiet", check_rc=0)
    p = run("train", "--resume", tmp_path / "m.npz", "--epochs", "4", "--quiet", check_rc=0)
    assert "cosine schedule ends at epoch 3" in p.stderr
    p = run("train", "--resume", tmp_path / "m.npz", "--epochs", "3", "--quiet", check_rc=0)
    assert "cosine" not in p.stderr


def test_resume_refuses_to_change_the_architecture(tmp_path):
    run("train", *FAST, "--save", tmp_path / "m.npz", "--quiet", check_rc=0)
    p = run("train", "--resume", tmp_path / "m.npz", "--hidden", "32", check_rc=2)
    assert "--hidden cannot be changed when resuming" in p.stderr
    p = run("train", "--resume", tmp_path / "m.npz", "--seed", "1", check_rc=2)
    assert "--seed cannot be changed when resuming" in p.stderr
    p = run("train", "--resume", tmp_path / "m.npz", "--epochs", "3", "--quiet", check_rc=0)
    assert "nothing to train" in p.stderr and "counts the epochs in all" in p.stderr


def test_checkpoint_every_writes_during_training(tmp_path):
    p = run("train", *FAST, "--checkpoint-every", "2", "--save", tmp_path / "ck.npz", check_rc=0)
    assert gpumlp.load(tmp_path / "ck.npz", model_only=True).epochs_ == 3
    assert run("train", *FAST, "--checkpoint-every", "2", check_rc=2).stderr.strip().endswith(
        "--checkpoint-every needs --save MODEL")
    assert "saved the model" in p.stdout


# ---------------------------------------------------------------------------------- user data
def write_idx(path, array):
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw))


def test_idx_files_with_separate_test_set(tmp_path):
    X, y = load_digits()
    images = X.reshape(-1, 8, 8).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:1500])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y[:1500].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[1500:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[1500:].astype(np.uint8))
    p = run("train", "--data", tmp_path / "train-images-idx3-ubyte.gz",
            "--test-data", tmp_path / "t10k-images-idx3-ubyte.gz", "--epochs", "10", "--json", "--quiet",
            check_rc=0)
    r = last_json(p.stdout)
    assert r["n_train"] == 1500 and r["n_test"] == 297 and r["test_accuracy"] > 0.85


def test_csv_labels_are_mapped_back_and_predict_and_evaluate(tmp_path):
    X, y = load_digits()
    keep = np.isin(y, [3, 5, 9])
    table = np.column_stack([y[keep] * 10, X[keep]])  # labels 30, 50, 90 in the first column
    header = "digit," + ",".join(f"p{i}" for i in range(64))
    np.savetxt(tmp_path / "d.csv", table, fmt="%d", delimiter=",", header=header, comments="")
    model = tmp_path / "m.npz"
    p = run("train", "--data", tmp_path / "d.csv", "--label-column", "digit", "--epochs", "10",
            "--save", model, "--json", check_rc=0)
    r = last_json(p.stdout)
    assert "3 classes" in p.stdout and r["test_accuracy"] > 0.9
    assert gpumlp.load(model).classes_.tolist() == [30, 50, 90]

    # evaluate on the run's own test split by default: the same number train reported
    e = last_json(run("evaluate", model, "--json", check_rc=0).stdout)
    assert e["accuracy"] == pytest.approx(r["test_accuracy"]) and e["n_samples"] == r["n_test"]

    # predict from a CSV with the label column (dropped by name) and without one
    out = tmp_path / "pred.txt"
    run("predict", model, "--data", tmp_path / "d.csv", "--label-column", "digit", "--output", out, check_rc=0)
    pred = np.loadtxt(out)
    assert set(np.unique(pred)) <= {30, 50, 90} and np.mean(pred == y[keep] * 10) > 0.9
    np.savetxt(tmp_path / "features.csv", X[keep][:5], fmt="%d", delimiter=",", comments="",
               header=",".join(f"p{i}" for i in range(64)))
    p = run("predict", model, "--data", tmp_path / "features.csv", check_rc=0)
    assert [int(v) for v in p.stdout.split()] == (y[keep][:5] * 10).tolist()
    p = run("predict", model, "--data", tmp_path / "features.csv", "--proba", "--output", tmp_path / "p.npy",
            check_rc=0)
    proba = np.load(tmp_path / "p.npy")
    assert proba.shape == (5, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)

    # a file laid out as the training file: its label column is the run's ("digit", first), not the last
    p = run("predict", model, "--data", tmp_path / "d.csv", check_rc=0)
    np.testing.assert_array_equal(np.array(p.stdout.split(), float), pred)
    e = last_json(run("evaluate", model, "--data", tmp_path / "d.csv", "--json", check_rc=0).stdout)
    assert e["n_samples"] == len(pred) and e["accuracy"] == pytest.approx(np.mean(pred == y[keep] * 10))

    # a label the model never saw
    bad = table[:4].copy()
    bad[0, 0] = 70
    np.savetxt(tmp_path / "bad.csv", bad, fmt="%d", delimiter=",", header=header, comments="")
    p = run("evaluate", model, "--data", tmp_path / "bad.csv", "--label-column", "digit", check_rc=1)
    assert "label(s) [70]" in p.stderr and "not among the model's classes" in p.stderr


def test_npz_regression_reports_r2(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2
    np.savez(tmp_path / "r.npz", X=X, y=y)
    p = run("train", "--data", tmp_path / "r.npz", "--loss", "squared", "--epochs", "100", "--lr", "0.01", "--bias",
            "--hidden", "32", "--json", check_rc=0)
    r = last_json(p.stdout)
    assert r["test_r2"] > 0.8 and r["metric"] == "r2" and "test_accuracy" not in r
    assert "test_r2" in p.stdout
    p = run("train", "--data", tmp_path / "r.npz", check_rc=1)  # continuous targets, classification loss
    assert "not whole numbers" in p.stderr and "--loss squared" in p.stderr


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    p = run("train", *FAST, "--plot", tmp_path / "curves.png", check_rc=0)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote the curves" in p.stdout


def test_plot_without_matplotlib_fails_before_training(tmp_path):
    blocker = tmp_path / "block" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), os.environ.get("PYTHONPATH", "")])}
    p = run("train", "--plot", tmp_path / "c.png", env=env, check_rc=1)
    assert 'pip install "gpumlp[plot]"' in p.stderr and "epoch" not in p.stdout
    assert len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------- errors and exit codes
def absent_dir(args, fragment, tmp_path):
    """{absent} in a case: a directory that surely does not exist (a fixed /nonexistent may, and root
    would then train and write there)."""
    absent = tmp_path / "absent"
    assert not absent.exists()
    return [a.replace("{absent}", str(absent)) for a in args], fragment.replace("{absent}", str(absent))


@pytest.mark.parametrize("args, fragment", [
    (["train", "--lr", "-1"], "--lr: must be > 0"),
    (["train", "--lr", "nan"], "--lr: must be > 0"),
    (["train", "--epochs", "0"], "--epochs: must be > 0"),
    (["train", "--batch-size", "2.5"], "--batch-size: expected an integer"),
    (["train", "--momentum", "1"], "--momentum: must lie in [0, 1)"),
    (["train", "--test-size", "1.5"], "--test-size: must lie in (0, 1)"),
    (["train", "--hidden", "0"], "hidden sizes must be positive"),
    (["train", "--lr-schedule", "wavy"], "unknown schedule 'wavy'"),
    (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["train", "--activation", "swish"], "activation must be one of"),
    (["train", "--nesterov", "--momentum", "0"], "--nesterov needs --momentum > 0"),
    (["train", "--seed", "-1"], "--seed: must be >= 0"),
    (["train", "--save", "{absent}/m.npz"], "--save {absent}/m.npz: no such directory {absent}"),
    (["train", "--plot", "{absent}/c.png"], "--plot {absent}/c.png: no such directory {absent}"),
    (["nonsense"], "invalid choice"),
    ([], "required"),
])
def test_usage_errors_exit_2(args, fragment, tmp_path):
    args, fragment = absent_dir(args, fragment, tmp_path)
    p = run(*args, check_rc=2)
    assert fragment in p.stderr and "usage:" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args, fragment", [
    (["train", "--data", "{absent}/x.csv"], "no such data file: {absent}/x.csv"),
    (["evaluate", "{absent}/m.npz"], "no such model file"),
    (["train", "--lr", "1e6", "--epochs", "3"], "diverged"),
])
def test_failures_exit_1_with_one_line(args, fragment, tmp_path):
    args, fragment = absent_dir(args, fragment, tmp_path)
    p = run(*args, check_rc=1)
    assert fragment in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_divergence_message_says_when_and_what_to_do():
    p = run("train", "--lr", "1e6", "--epochs", "3", check_rc=1)
    assert "epoch 1" in p.stderr and "smaller learning rate" in p.stderr


def test_bad_model_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "m.npz").write_text("not a model")
    p = run("evaluate", tmp_path / "m.npz", check_rc=1)
    assert p.stderr.strip() == f"gpumlp evaluate: error: {tmp_path / 'm.npz'}: not a gpumlp model file " \
                               f"(not an .npz archive)"
    p = run("evaluate", tmp_path / "m.npz", "--debug", check_rc=1)
    assert "Traceback" in p.stderr and "ModelFileError" in p.stderr


def test_gpu_out_of_memory_suggests_a_smaller_batch(monkeypatch, capsys):
    """Training on CuPy raising OutOfMemoryError (faked: no GPU needed) gives a one-line hint."""
    oom = type("OutOfMemoryError", (MemoryError,), {"__module__": "cupy.cuda.memory"})

    def fit(self, *a, **k):
        raise oom("Out of memory allocating 8,589,934,592 bytes (allocated so far: 0 bytes).")

    monkeypatch.setattr(gpumlp.Trainer, "fit", fit)
    rc = cli.main(["train", "--batch-size", "4096", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "the GPU ran out of memory" in err and "smaller --batch-size (now 4096)" in err
    assert len(err.strip().splitlines()) == 1


def test_cupy_is_not_imported_on_the_numpy_path(tmp_path):
    code = ("import sys; from gpumlp.cli import main; rc = main(['train', '--backend', 'numpy', '--epochs', '1',"
            " '--hidden', '8', '--quiet']); assert rc == 0; assert 'cupy' not in sys.modules, 'cupy imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------------------------- info and bench
def test_info_reports_versions_backend_and_device():
    p = run("info", check_rc=0)
    assert f"gpumlp {gpumlp.__version__}" in p.stdout and f"NumPy  {np.__version__}" in p.stdout
    assert "backend 'auto' picks" in p.stdout and "device:" in p.stdout
    r = last_json(run("info", "--json", check_rc=0).stdout)
    assert r["numpy"] == np.__version__ and r["auto_backend"] in ("numpy", "cupy") and r["reason"]
    assert r["device"] and "cupy" in r and "cuda_runtime" in r


def test_info_honours_the_environment_variable():
    p = run("info", "--json", env={"GPUMLP_BACKEND": "numpy"}, check_rc=0)
    r = last_json(p.stdout)
    assert r["auto_backend"] == "numpy" and r["env"] == "numpy"


def test_bench_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("gpumlp.bench")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "gpumlp.bench", fake)
    monkeypatch.setattr(gpumlp, "bench", fake, raising=False)
    assert cli.main(["bench", "--smoke", "--json"]) == 7
    assert seen == [["--smoke", "--json"]]


def test_bench_subcommand_reaches_the_benchmark_parser():
    pytest.importorskip("gpumlp.bench")
    p = run("bench", "--help", check_rc=0)
    assert p.stdout.startswith("usage: gpumlp bench")


def test_a_run_killed_after_a_checkpoint_resumes_bit_identically(tmp_path, monkeypatch, capsys):
    """Interrupted right after the epoch-4 checkpoint (mid-fit: momentum, a schedule and early stopping's
    monitor are all in flight), then resumed: the same bits as the run that was never interrupted."""
    from gpumlp import io

    common = ["--backend", "numpy", "--hidden", "16", "--momentum", "0.9", "--lr-schedule", "exponential:gamma=0.9",
              "--early-stopping", "--n-iter-no-change", "50", "--epochs", "8", "--quiet"]
    assert cli.main(["train", *common, "--save", str(tmp_path / "straight.npz")]) == 0

    real_save = io.save

    def save_then_die(model, path, **kw):
        real_save(model, path, **kw)
        if model.named_steps["mlp"].epochs_ == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(io, "save", save_then_die)
    ck = tmp_path / "ck.npz"
    assert cli.main(["train", *common, "--save", str(ck), "--checkpoint-every", "2"]) == 130
    assert f"gpumlp train --resume {ck} --save {ck}" in capsys.readouterr().err  # without --save, lost
    monkeypatch.setattr(io, "save", real_save)
    assert gpumlp.load(ck, model_only=True).epochs_ == 4

    assert cli.main(["train", "--resume", str(ck), "--save", str(ck), "--quiet"]) == 0
    a, b = np.load(tmp_path / "straight.npz"), np.load(ck)
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if k != "meta":
            assert a[k].tobytes() == b[k].tobytes(), k
    assert json.loads(a["meta"].tobytes())["history"] == json.loads(b["meta"].tobytes())["history"]
