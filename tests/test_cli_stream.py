"""The command line on streamed data (issue 16, "Data larger than memory"): ``gpumlp train --stream``
from CSV, Parquet (a file and a directory) and .npy with labels, against the same run in memory;
--json's counts; evaluate --stream (the run's own test rows, rebuilt, and every row of a file);
predict --stream to CSV and Parquet, row for row as in memory; bad rows found mid-file before the
first epoch; the usage errors; resume and checkpoints; the sharded run under ``mpiexec -n 2``; the
peak resident memory under a 64 MiB budget.

Most commands run in-process (``gpumlp.cli.main``, as tests/test_cli_data.py does); the MPI job, the
blocked pyarrow import and the memory measurement need processes of their own."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import cli
from ci import mpiexec, needed

ROOT = Path(__file__).resolve().parents[1]
N_ROWS, N_FEATURES, N_CLASSES = 6000, 10, 4
TRAIN = ["--hidden", "32", "--epochs", "10", "--backend", "numpy", "--dtype", "float64", "--json", "--quiet"]
FAST = ["--hidden", "8", "--epochs", "2", "--backend", "numpy", "--quiet"]


def main(capsys, *args):
    """(exit status, stdout, stderr) of ``gpumlp ARGS`` run in this process (argparse's errors exit 2)."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def blobs(n=N_ROWS, seed=0):
    """Gaussian classes far enough apart that a small net scores about 0.99: differences of a few rows
    between two test splits move the accuracy by less than the 0.01 the issue allows, a broken
    preprocessing (unscaled, mislabelled, misaligned columns) by far more."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.2, size=(N_CLASSES, N_FEATURES))
    y = rng.integers(0, N_CLASSES, n)
    X = centres[y] + rng.normal(size=(n, N_FEATURES))
    X = X * np.linspace(1, 50, N_FEATURES) + np.linspace(-100, 100, N_FEATURES)  # scaling matters
    return X, y


def write_csv(path, X, y, names=True):
    with open(path, "w") as f:
        if names:
            f.write(",".join([f"f{j}" for j in range(X.shape[1])] + ["label"]) + "\n")
        for row, t in zip(X, y):
            f.write(",".join("%.17g" % v for v in row) + f",{t}\n")
    return path


def write_parquet(path, X, y, row_group_size=700):
    pa, pq = needed("pyarrow"), needed("pyarrow.parquet")
    table = pa.table({**{f"f{j}": X[:, j] for j in range(X.shape[1])}, "label": y})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same rows as CSV, a Parquet file, a directory of three Parquet files and .npy features + labels."""
    root = tmp_path_factory.mktemp("stream")
    X, y = blobs()
    files = {"csv": write_csv(root / "data.csv", X, y), "parquet": write_parquet(root / "data.parquet", X, y)}
    (root / "dir").mkdir()
    for i, part in enumerate(np.array_split(np.arange(N_ROWS), 3)):
        write_parquet(root / "dir" / f"part{i}.parquet", X[part], y[part])
    files["directory"] = root / "dir"
    np.save(root / "X.npy", X)
    np.save(root / "y.npy", y)
    files["npy"] = root / "X.npy"
    return root, X, y, files


def data_args(files, fmt):
    args = ["--data", files[fmt]]
    return args + (["--labels", files["npy"].parent / "y.npy"] if fmt == "npy" else [])


def train_json(capsys, *args):
    rc, out, err = main(capsys, "train", *args)
    assert rc == 0, err
    return last_json(out)


# ---------------------------------------------------------------------------------- training, each format
@pytest.mark.parametrize("fmt", ["csv", "parquet", "directory", "npy"])
def test_streamed_training_matches_the_run_in_memory(capsys, data, fmt, tmp_path):
    """Every format: --json's keys and counts (the split within 0.01 of its fractions), and the test
    accuracy within 0.01 of the same run in memory (on the CSV of the same rows)."""
    _, _, _, files = data
    rc, out, err = main(capsys, "train", "--data", files["csv"], *TRAIN)
    memory = last_json(out)
    r = train_json(capsys, *data_args(files, fmt), "--stream", "--memory-budget", "64MiB", *TRAIN,
                   "--validation-split", "0.1", "--save", tmp_path / "m.npz")
    for key in memory:
        assert key in r, key
    n = r["n_train"] + r["n_validation"] + r["n_test"]
    assert n == N_ROWS and r["n_dropped"] == 0
    assert abs(r["n_test"] / N_ROWS - 0.2) <= 0.01
    assert abs(r["n_validation"] / (r["n_train"] + r["n_validation"]) - 0.1) <= 0.01
    assert r["epochs"] == 10 and r["sizes"] == [N_FEATURES, 32, N_CLASSES]
    assert memory["test_accuracy"] > 0.97
    assert abs(r["test_accuracy"] - memory["test_accuracy"]) <= 0.01, (r["test_accuracy"], memory["test_accuracy"])
    saved = gpumlp.load(tmp_path / "m.npz", backend="numpy")
    config = saved.named_steps["mlp"].training_config_
    assert config["stream"] is True and config["memory_budget"] == 64 * 2**20
    assert config["stream_split"] == {"rule": "stream-windows-v1", "test_size": 0.2, "validation_split": 0.1,
                                      "seed": 0}
    assert config["data_digest"].startswith("stream-") and config["data_files"]
    assert saved.preprocessing.scaler is not None and list(saved.classes_) == list(range(N_CLASSES))


def test_a_streamed_runs_model_predicts_from_python_as_in_memory(capsys, data, tmp_path):
    """gpumlp.load(path).predict(X) of a streamed run: the same preprocessing (the names, classes, the
    scaler fitted on the training rows) as an in-memory run, so it predicts raw rows."""
    _, X, y, files = data
    train_json(capsys, "--data", files["parquet"], "--stream", *TRAIN, "--save", tmp_path / "m.npz")
    p = gpumlp.load(tmp_path / "m.npz", backend="numpy")
    assert p.preprocessing.feature_names == [f"f{j}" for j in range(N_FEATURES)] and p.label_name_ == "label"
    assert np.mean(p.predict(X) == y) > 0.97
    scaled = p.preprocessing.scaler.transform(X, np.float64)  # fitted on the training rows: about 0 and 1 on all
    np.testing.assert_allclose(scaled.mean(axis=0), 0, atol=0.05)
    np.testing.assert_allclose(scaled.std(axis=0), 1, atol=0.05)


# ---------------------------------------------------------------------------------- evaluate and predict
@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    """A streamed run on the CSV with its --json."""
    _, _, _, files = data
    path = tmp_path_factory.mktemp("model") / "s.npz"
    assert cli.main(["train", "--data", str(files["csv"]), "--stream", *TRAIN, "--save", str(path)]) == 0
    return path


def test_evaluate_stream_rescores_the_runs_test_rows(capsys, data, tmp_path):
    _, _, _, files = data
    r = train_json(capsys, "--data", files["csv"], "--stream", *TRAIN, "--save", tmp_path / "m.npz")
    for extra in ([], ["--stream"], ["--stream", "--memory-budget", "32MiB"]):
        rc, out, err = main(capsys, "evaluate", tmp_path / "m.npz", *extra, "--json")
        assert rc == 0, err
        e = last_json(out)
        assert e["accuracy"] == r["test_accuracy"] and e["n_samples"] == r["n_test"]
        assert e["data_loss"] == pytest.approx(r["test_L"], rel=1e-12)
        assert "streamed split rule" in e["test_set"]


def test_evaluate_notices_a_changed_file(capsys, data, tmp_path):
    """The model records each file's size and modification time: a touched file with the same data is
    re-scanned and accepted (a warning), a changed one refused by its digest."""
    _, X, y, _ = data
    path = write_csv(tmp_path / "d.csv", X[:1000], y[:1000])
    train_json(capsys, "--data", path, "--stream", *FAST, "--json", "--save", tmp_path / "m.npz")
    rc, out, _ = main(capsys, "evaluate", tmp_path / "m.npz", "--json")
    before = last_json(out)
    os.utime(path, ns=(1, 1))
    rc, out, err = main(capsys, "evaluate", tmp_path / "m.npz", "--json")
    assert rc == 0 and last_json(out)["accuracy"] == before["accuracy"]
    assert "modified" in err and "the same" in err
    y2 = y[:1000].copy()
    y2[500] = (y2[500] + 1) % N_CLASSES
    write_csv(path, X[:1000], y2)
    rc, out, err = main(capsys, "evaluate", tmp_path / "m.npz")
    assert rc == 1 and "is not the data the model was trained on" in err and str(path) in err
    rc, out, err = main(capsys, "train", "--resume", tmp_path / "m.npz", "--epochs", "3")
    assert rc == 1 and "is not the data the model was trained on" in err


def test_evaluate_every_row_of_a_file_streamed_as_in_memory(capsys, data, model):
    _, _, _, files = data
    results = []
    for extra in ([], ["--stream"], ["--stream", "--memory-budget", "32MiB"]):
        rc, out, err = main(capsys, "evaluate", model, "--data", files["csv"], *extra, "--json")
        assert rc == 0, err
        results.append(last_json(out))
    for r in results[1:]:
        assert r["n_samples"] == N_ROWS and r["accuracy"] == results[0]["accuracy"]
        assert r["data_loss"] == pytest.approx(results[0]["data_loss"], rel=1e-12)
    rc, out, err = main(capsys, "evaluate", model, "--data", files["parquet"], "--stream", "--json")
    assert rc == 0 and last_json(out)["accuracy"] == results[0]["accuracy"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("proba", [False, True])
def test_predict_stream_writes_what_predict_in_memory_does(capsys, data, model, tmp_path, suffix, proba):
    """One prediction per row in the file's order, equal to the in-memory predict of the same model."""
    _, X, _, files = data
    extra = ["--proba"] if proba else []
    expected = gpumlp.load(model, backend="numpy")
    expected = expected.predict_proba(X) if proba else expected.predict(X)
    out_stream, out_memory = tmp_path / f"s{suffix}", tmp_path / f"m{suffix}"
    for out, more in ((out_stream, ["--stream", "--memory-budget", "32MiB"]), (out_memory, [])):
        rc, _, err = main(capsys, "predict", model, "--data", files["csv"], *extra, *more, "--output", out)
        assert rc == 0, err
        assert f"wrote {N_ROWS} predictions" in err
    if suffix == ".csv":  # %.7g text: equal bytes, probabilities too
        assert out_stream.read_bytes() == out_memory.read_bytes()
        got = np.loadtxt(out_stream, delimiter=",")
    else:
        pq = needed("pyarrow.parquet")
        a, b = pq.read_table(out_stream), pq.read_table(out_memory)
        assert a.schema.equals(b.schema) and a.num_rows == N_ROWS
        if not proba:  # labels row for row; probabilities to rounding (the GEMM's blocks differ)
            assert a.equals(b)
        assert a.column_names == ([str(c) for c in range(N_CLASSES)] if proba else ["prediction"])
        got = np.column_stack([a.column(c).to_numpy() for c in a.column_names])
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-7)


def test_predict_stream_of_npy_features_to_standard_output(capsys, data, model):
    _, X, _, files = data
    rc, out, err = main(capsys, "predict", model, "--data", files["npy"], "--stream")
    assert rc == 0, err
    got = np.array(out.split(), int)
    np.testing.assert_array_equal(got, gpumlp.load(model, backend="numpy").predict(X))


# ---------------------------------------------------------------------------------- bad input mid-file
def _mid_file_error(capsys, tmp_path, path, *args):
    rc, out, err = main(capsys, "train", "--data", path, "--stream", "--hidden", "8", "--epochs", "2",
                        "--backend", "numpy", "--progress", "lines", "--save", tmp_path / "m.npz", *args)
    assert rc == 1
    assert "epoch" not in out and not (tmp_path / "m.npz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left either
    return err


@pytest.mark.parametrize("bad", ["abc", ""])
def test_a_bad_value_late_in_a_csv_names_the_file_line_and_column(capsys, data, tmp_path, bad):
    _, X, y, _ = data
    path = write_csv(tmp_path / "bad.csv", X, y)
    lines = path.read_text().splitlines()
    fields = lines[5499].split(",")  # line 5500 of the file (the header is line 1)
    fields[3] = bad
    lines[5499] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    err = _mid_file_error(capsys, tmp_path, path)
    # the file's line (the header is line 1), as the in-memory reader names it ("row" or "line")
    assert str(path) in err and "line 5500" in err and "column 4" in err and "'f3'" in err, err


def test_a_truncated_parquet_file_fails_before_training(capsys, data, tmp_path):
    _, X, y, _ = data
    path = write_parquet(tmp_path / "t.parquet", X, y)
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    err = _mid_file_error(capsys, tmp_path, path)
    assert str(path) in err and ("truncated" in err or "damaged" in err), err


def test_a_label_the_model_never_saw_is_named_with_its_row(capsys, data, model, tmp_path):
    _, X, y, _ = data
    y2 = y.astype(object)
    y2[4000] = 7
    path = write_csv(tmp_path / "unseen.csv", X, y2)
    rc, out, err = main(capsys, "evaluate", model, "--data", path, "--stream")
    assert rc == 1 and str(path) in err and "7" in err, err


# ---------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, words", [
    (["--optimizer", "lbfgs"], "full-batch"),
    (["--memory-budget", "16MiB"], "at least 32MiB"),
    (["--memory-budget", "lots"], "a size reads like 256MiB"),
    (["--sharded"], "--distributed"),
    (["--test-data", "{csv}"], "--test-data"),
    (["--format", "npz"], "cannot be streamed"),
    (["--shuffle-buffer", "10"], "at least one batch"),
    (["--distributed", "mpi"], "needs --sharded"),
])
def test_what_stream_refuses_is_a_usage_error(capsys, data, args, words):
    _, _, _, files = data
    args = [a.format(csv=files["csv"]) for a in args]
    rc, out, err = main(capsys, "train", "--data", files["csv"], "--stream", *FAST, *args)
    assert rc == 2 and words in err, err


def test_files_that_do_not_stream_are_usage_errors(capsys, data, tmp_path):
    _, X, y, files = data
    np.savez(tmp_path / "d.npz", X=X, y=y)
    for path, words in ((tmp_path / "d.npz", "cannot be streamed"), ("digits", "embedded")):
        rc, out, err = main(capsys, "train", "--data", path, "--stream", *FAST)
        assert rc == 2 and words in err and "Parquet" in err, err
    rc, out, err = main(capsys, "train", "--data", files["csv"], "--memory-budget", "64MiB", *FAST)
    assert rc == 2 and "--memory-budget applies to --stream" in err
    rc, out, err = main(capsys, "train", "--data", files["npy"], "--stream", *FAST)
    assert rc == 2 and "--labels y.npy" in err


def test_evaluate_and_predict_refuse_what_they_cannot_stream(capsys, data, model, tmp_path):
    _, _, _, files = data
    rc, out, err = main(capsys, "train", "--data", files["csv"], *FAST, "--save", tmp_path / "mem.npz")
    assert rc == 0, err
    for args, words in ((["evaluate", tmp_path / "mem.npz", "--stream"], "trained in memory"),
                        (["evaluate", model, "--data", files["csv"], "--memory-budget", "64MiB"], "applies to --stream"),
                        (["predict", model, "--data", files["csv"], "--stream", "-o", tmp_path / "p.npy"], ".parquet"),
                        (["predict", model, "--data", files["npy"].parent / "none.npz", "--stream"], "no such")):
        rc, out, err = main(capsys, *args)
        assert rc in (1, 2) and words in err, (args, err)
    assert not (tmp_path / "p.npy").exists()


def test_parquet_without_pyarrow_names_the_extra(data, tmp_path):
    _, _, _, files = data
    blocker = tmp_path / "block" / "pyarrow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named pyarrow')\n")
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "block"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-m", "gpumlp", "train", "--data", str(files["parquet"]), "--stream", *FAST],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and 'pip install "gpumlp[parquet]"' in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------------------------- resume, checkpoints, early stopping
def test_resume_and_checkpoints_streamed(capsys, data, tmp_path):
    """--checkpoint-every writes the file during a streamed run; --resume continues it streamed on the same
    file (its settings kept: the split rule), and --stream cannot be dropped on resume (another split)."""
    _, _, _, files = data
    path = tmp_path / "m.npz"
    rc, out, err = main(capsys, "train", "--data", files["parquet"], "--stream", "--hidden", "8", "--epochs", "2",
                        "--backend", "numpy", "--progress", "lines", "--save", path, "--checkpoint-every", "1")
    assert rc == 0, err and path.exists()
    r = train_json(capsys, "--resume", path, "--epochs", "4", "--save", path, "--json", "--memory-budget", "48MiB")
    assert r["epochs"] == 4 and r["epochs_trained"] == 2 and r["n_test"] + r["n_train"] == N_ROWS
    m = gpumlp.load(path, backend="numpy").named_steps["mlp"]
    assert m.epochs_ == 4 and len(m.loss_curve_) == 4 and m.training_config_["stream"] is True
    rc, out, err = main(capsys, "evaluate", path, "--json")
    assert rc == 0 and last_json(out)["accuracy"] == r["test_accuracy"]


def test_early_stopping_streamed(capsys, data, tmp_path):
    _, _, _, files = data
    r = train_json(capsys, "--data", files["csv"], "--stream", "--early-stopping", "--n-iter-no-change", "2",
                   "--hidden", "8", "--epochs", "40", "--backend", "numpy", "--optimizer", "adam", "--lr", "0.01",
                   "--lr-schedule", "cosine", "--json", "--quiet")
    assert r["n_validation"] > 0 and r["epochs"] <= 40 and r["test_accuracy"] > 0.9


# ---------------------------------------------------------------------------------- sharded under MPI
def test_sharded_streamed_training_under_two_ranks(data, tmp_path):
    """mpiexec -n 2 gpumlp train --stream --distributed mpi --sharded: each rank reads its own chunks (the
    Parquet file's row groups); the result is within 0.01 test accuracy of the one-process streamed run,
    with the same split (counts) and digest."""
    _, _, _, files = data
    exe = mpiexec()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GPUMLP_BACKEND="numpy", OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    args = ["-m", "gpumlp", "train", "--data", str(files["parquet"]), "--stream", *TRAIN, "--batch-size", "32"]
    one = subprocess.run([sys.executable, *args, "--save", "one.npz"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert one.returncode == 0, one.stderr
    cmd = [exe, "-n", "2", sys.executable, *args, "--distributed", "mpi", "--sharded", "--save", "two.npz"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"the sharded job hung: killed after 180 s\n{out[-2000:]}\n{err[-3000:]}")
    assert p.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}"
    r1, r2 = last_json(one.stdout), last_json(out)
    assert r2["ranks"] == 2 and r2["distributed"] == "mpi"
    assert (r2["n_train"], r2["n_test"]) == (r1["n_train"], r1["n_test"])
    assert abs(r2["test_accuracy"] - r1["test_accuracy"]) <= 0.01
    c1, c2 = (gpumlp.load(tmp_path / f, backend="numpy").named_steps["mlp"].training_config_
              for f in ("one.npz", "two.npz"))
    assert c1["data_digest"] == c2["data_digest"] and c2["sharded"] is True


# ---------------------------------------------------------------------------------- peak memory
PEAK = """
import resource, runpy, sys
sys.argv = ["gpumlp"] + sys.argv[1:]
try:
    runpy.run_module("gpumlp", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
status = open("/proc/self/status").read()
hwm = [int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")][0]
print("VMHWM_KIB", hwm, file=sys.stderr)
sys.exit(code)
"""


def _peak_kib(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    return int(p.stderr.split("VMHWM_KIB")[-1].split()[0])


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_peak_memory_stays_within_the_budget_plus_the_fixed_overhead(tmp_path, fmt):
    """A 240 MB .npy (written in chunks through a memory map, never whole in this process), or the same
    rows as Parquet in row groups of 65,536, trained for one epoch under --memory-budget 64MiB: the
    process's peak resident memory (VmHWM, file-backed pages of the memory map included) stays below the
    same command's on a tiny file of the format plus the budget plus 32 MiB. For Parquet the decoder's
    pages are inside the budget, and pyarrow's pool gives back what it freed (mimalloc kept 80 MiB)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc/self/status (VmHWM)")
    if fmt == "parquet":
        pa, pq = needed("pyarrow"), needed("pyarrow.parquet")
    n, d = 1_000_000, 30  # 240 MB of float64 features
    big = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=(n, d))
    labels = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=np.int64, shape=(n,))
    rng = np.random.default_rng(0)
    writer = None
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        big[a:b] = rng.normal(size=(b - a, d))
        labels[a:b] = big[a:b, 0] > 0
        if fmt == "parquet":
            t = pa.table({**{f"x{j}": big[a:b, j] for j in range(d)}, "y": labels[a:b]})
            writer = writer or pq.ParquetWriter(tmp_path / "X.parquet", t.schema)
            writer.write_table(t, row_group_size=65536)
    big.flush()
    labels.flush()
    del big, labels
    x_small, y_small = rng.normal(size=(2000, d)), rng.integers(0, 2, 2000)
    np.save(tmp_path / "x_small.npy", x_small)
    np.save(tmp_path / "y_small.npy", y_small)
    args = ["train", "--stream", "--memory-budget", "64MiB", "--epochs", "1", "--hidden", "16", "--backend",
            "numpy", "--batch-size", "256", "--quiet", "--test-size", "0.01"]
    if fmt == "parquet":
        writer.close()
        pq.write_table(pa.table({**{f"x{j}": x_small[:, j] for j in range(d)}, "y": y_small}),
                       tmp_path / "x_small.parquet")
        small = _peak_kib(tmp_path, *args, "--data", "x_small.parquet")
        large = _peak_kib(tmp_path, *args, "--data", "X.parquet")
    else:
        small = _peak_kib(tmp_path, *args, "--data", "x_small.npy", "--labels", "y_small.npy")
        large = _peak_kib(tmp_path, *args, "--data", "X.npy", "--labels", "y.npy")
    limit = small + (64 + 32) * 1024
    assert large < limit, f"peak {large / 1024:.0f} MiB, tiny file {small / 1024:.0f} MiB, limit {limit / 1024:.0f} MiB"


# ---------------------------------------------------------------------------------- the README's commands
def test_the_readme_section_runs(tmp_path):
    """README "Data larger than memory": its commands as printed (fewer rows and epochs; the Parquet
    directory is a placeholder, mpiexec is the MPI test's), each exiting 0."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Data larger than memory"):text.index("## Model files")]
    block = section[section.index("```bash\n") + 8:]
    lines = [line for line in block[:block.index("```")].splitlines() if "clicks/" not in line
             and not line.startswith("mpiexec")]
    assert len(lines) == 5
    script = "\n".join(lines).replace("200000", "5000").replace("--early-stopping", "--early-stopping --epochs 3")
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    env.update(PYTHONPATH=str(ROOT), PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    p = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (tmp_path / "predictions.parquet").exists() and "every row" in p.stdout
