"""The command line on ordinary data (issue 12): columns matched by name, text labels, missing values,
.tsv files, a Python Pipeline that predicts as `gpumlp predict` does, digests of the training data,
L and J reported apart, options that do not apply, regression on scikit-learn's diabetes set, Ctrl-C
checkpoints, the progress bar and the plot, install hints for missing extras.

Most commands run in-process (``gpumlp.cli.main``, as the console script calls it); the few that
need a fresh interpreter (blocked imports, the progress bar's terminal width) run in a subprocess."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpumlp
from gpumlp import cli, io
from gpumlp.cli import report
from gpumlp.data import load_digits

FAST = ["--epochs", "3", "--hidden", "16", "--backend", "numpy"]


def main(capsys, *args):
    """(exit status, stdout, stderr) of ``gpumlp ARGS`` run in this process."""
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def write_table(path, X, y, names=None, label="label", delimiter=",", fmt="%.6g"):
    lines = [] if names is None else [delimiter.join([*names, label])]
    for row, target in zip(X, y):
        fields = ["" if isinstance(v, float) and np.isnan(v) else fmt % v for v in row]
        lines.append(delimiter.join([*fields, str(target)]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    """scikit-learn's breast-cancer set as a CSV with a header and text labels (malignant/benign)."""
    datasets = pytest.importorskip("sklearn.datasets")
    b = datasets.load_breast_cancer()
    names = [n.replace(" ", "_") for n in b.feature_names]
    path = tmp_path_factory.mktemp("cancer") / "cancer.csv"
    write_table(path, b.data, b.target_names[b.target], names, label="diagnosis")
    return path, b.data, b.target_names[b.target], names


@pytest.fixture(scope="module")
def cancer_model(cancer, tmp_path_factory):
    path = cancer[0]
    model = tmp_path_factory.mktemp("cancer_model") / "m.npz"
    assert cli.main(["train", "--data", str(path), "--label-column", "diagnosis", "--epochs", "20", "--quiet",
                     "--backend", "numpy", "--save", str(model)]) == 0
    return model


# ---------------------------------------------------------------------------------- columns by name
def test_predict_and_evaluate_reorder_the_columns_by_name(cancer, cancer_model, tmp_path, capsys):
    path, X, y, names = cancer
    rc, out, _ = main(capsys, "predict", cancer_model, "--data", path)
    assert rc == 0
    straight = out.split()
    order = np.random.default_rng(0).permutation(len(names))
    shuffled = write_table(tmp_path / "shuffled.csv", X[:, order], y, [names[j] for j in order], label="diagnosis")
    rc, out, _ = main(capsys, "predict", cancer_model, "--data", shuffled)
    assert rc == 0 and out.split() == straight
    # the label column may stand anywhere: it is found by its name
    first = tmp_path / "label_first.csv"
    first.write_text("\n".join([",".join(["diagnosis", *names])] +
                               [",".join([t, *(f"{v:.6g}" for v in row)]) for row, t in zip(X, y)]) + "\n")
    rc, out, _ = main(capsys, "predict", cancer_model, "--data", first)
    assert rc == 0 and out.split() == straight
    # an NPZ names no columns: taken in the model's order, and said so
    np.savez(tmp_path / "c.npz", X=X)
    rc, out, err = main(capsys, "predict", cancer_model, "--data", tmp_path / "c.npz")
    assert rc == 0 and out.split() == straight and "names no columns; they are taken to be the model's" in err
    e1 = last_json(main(capsys, "evaluate", cancer_model, "--data", path, "--json")[1])
    e2 = last_json(main(capsys, "evaluate", cancer_model, "--data", shuffled, "--json")[1])
    assert e1["accuracy"] == e2["accuracy"] > 0.9 and e1["n_samples"] == 569


def test_columns_that_are_missing_or_differ_are_refused_by_name(cancer, cancer_model, tmp_path, capsys):
    _, X, y, names = cancer
    renamed = write_table(tmp_path / "renamed.csv", X, y, ["radius", *names[1:]], label="diagnosis")
    rc, _, err = main(capsys, "predict", cancer_model, "--data", renamed)
    assert rc == 1 and "missing ['mean_radius']" in err and "not among them ['radius']" in err
    fewer = write_table(tmp_path / "fewer.csv", X[:, 1:], y, names[1:], label="diagnosis")
    rc, _, err = main(capsys, "evaluate", cancer_model, "--data", fewer)
    assert rc == 1 and "missing ['mean_radius']" in err
    headless = write_table(tmp_path / "headless.csv", X, y)
    rc, _, err = main(capsys, "predict", cancer_model, "--data", headless)
    assert rc == 1 and "has no header line" in err and "named columns (mean_radius" in err
    assert len(err.strip().splitlines()) == 1


def test_without_a_header_the_column_count_must_match(tmp_path, capsys):
    X, y = load_digits()
    write_table(tmp_path / "d.csv", X[:400], y[:400], fmt="%d")
    model = tmp_path / "m.npz"
    assert main(capsys, "train", "--data", tmp_path / "d.csv", *FAST, "--save", model)[0] == 0
    write_table(tmp_path / "short.csv", X[:5, :60], y[:5], fmt="%d")
    rc, _, err = main(capsys, "predict", model, "--data", tmp_path / "short.csv")
    assert rc == 1 and "has 61 columns; the model expects 64 features (or 65 columns with the label column)" in err
    np.savetxt(tmp_path / "features.csv", X[:5], fmt="%d", delimiter=",")
    rc, out, _ = main(capsys, "predict", model, "--data", tmp_path / "features.csv")
    assert rc == 0 and len(out.split()) == 5


def test_header_and_no_header_force_the_decision(tmp_path, capsys):
    """A header of numbers (years) is not detectable; --header says it is one, --no-header that it is data."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    path = tmp_path / "years.csv"
    path.write_text("1990,1991,1992,2000\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{t}\n" for (a, b, c), t in zip(X, y)))
    rc, out, _ = main(capsys, "train", "--data", path, *FAST, "--header", "--json", "--save", tmp_path / "h.npz")
    r = last_json(out)
    assert rc == 0 and r["n_train"] + r["n_test"] == 60
    assert gpumlp.load(tmp_path / "h.npz").feature_names_in_.tolist() == ["1990", "1991", "1992"]
    rc, out, _ = main(capsys, "train", "--data", path, *FAST, "--no-header", "--json")
    r = last_json(out)
    assert rc == 0 and r["n_train"] + r["n_test"] == 61 and "3 classes" in out  # the first row read as data
    rc, out, _ = main(capsys, "train", "--data", path, *FAST, "--json")
    assert last_json(out)["n_train"] + last_json(out)["n_test"] == 61  # undetectable without being told
    rc, out, err = main(capsys, "train", "--data", "digits", *FAST, "--header")
    assert rc == 1 and "apply to CSV files" in err


# ---------------------------------------------------------------------------------- Python = command line
def test_the_python_pipeline_predicts_exactly_what_gpumlp_predict_writes(tmp_path, capsys):
    """Issue 12: gpumlp.load(path).predict(X_raw) gave 0.87 where gpumlp predict gave 0.99 on the digits."""
    X, y = load_digits()
    model = tmp_path / "m.npz"
    assert main(capsys, "train", "--backend", "numpy", "--quiet", "--save", model)[0] == 0
    np.savetxt(tmp_path / "X.csv", X, fmt="%d", delimiter=",")
    rc, _, _ = main(capsys, "predict", model, "--data", tmp_path / "X.csv", "--output", tmp_path / "p.npy")
    assert rc == 0
    cli_pred = np.load(tmp_path / "p.npy")
    p = gpumlp.load(model)
    assert isinstance(p, gpumlp.Pipeline)
    np.testing.assert_array_equal(p.predict(X), cli_pred)
    assert np.mean(cli_pred == y) > 0.98 and p.score(X, y) == np.mean(cli_pred == y)
    rc, _, _ = main(capsys, "predict", model, "--data", tmp_path / "X.csv", "--proba", "--output", tmp_path / "q.npy")
    np.testing.assert_array_equal(p.predict_proba(X), np.load(tmp_path / "q.npy"))
    assert p.n_features_in_ == 64 and p.classes_.tolist() == list(range(10))


# ---------------------------------------------------------------------------------- text labels
def test_text_labels_train_evaluate_and_predict_back_as_text(cancer, cancer_model, tmp_path, capsys):
    path, X, y, _ = cancer
    p = gpumlp.load(cancer_model)
    assert p.classes_.tolist() == ["benign", "malignant"] and p.label_name_ == "diagnosis"
    rc, out, _ = main(capsys, "predict", cancer_model, "--data", path)
    assert rc == 0 and set(out.split()) == {"benign", "malignant"}
    assert out.split() == p.predict(X).tolist()
    assert np.mean(np.array(out.split()) == y) > 0.9
    rc, _, _ = main(capsys, "predict", cancer_model, "--data", path, "--output", tmp_path / "p.npy")
    assert np.load(tmp_path / "p.npy").dtype.kind == "U"
    rc, out, _ = main(capsys, "evaluate", cancer_model, "--json")
    assert rc == 0 and last_json(out)["accuracy"] > 0.9
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(path.read_text().replace(",benign\n", ",healthy\n", 1))
    rc, _, err = main(capsys, "evaluate", cancer_model, "--data", wrong)
    assert rc == 1 and "label(s) ['healthy'] not among the model's classes ['benign', 'malignant']" in err


# ---------------------------------------------------------------------------------- missing values
@pytest.fixture
def holes(tmp_path):
    X, y = load_digits()
    X = X[:500].astype(float)
    X[[4, 40, 77], [2, 9, 30]] = np.nan
    return write_table(tmp_path / "holes.csv", X, y[:500], [f"p{i}" for i in range(64)], fmt="%d"), X, y[:500]


def test_missing_values_are_an_error_naming_row_and_column_from_1(holes, capsys):
    path, _, _ = holes
    rc, out, err = main(capsys, "train", "--data", path, *FAST)
    assert rc == 1 and out == ""
    assert "missing value on line 6, column 3 ('p2')" in err  # line 6: the header, then rows 1..5
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_drop_counts_the_dropped_rows(holes, capsys):
    path, _, _ = holes
    rc, out, _ = main(capsys, "train", "--data", path, *FAST, "--missing", "drop", "--json")
    r = last_json(out)
    assert rc == 0 and r["n_dropped"] == 3 and r["n_train"] + r["n_test"] == 497
    assert "3 rows with missing values dropped" in out


def test_missing_impute_is_saved_and_applied_at_predict(holes, tmp_path, capsys):
    path, X, y = holes
    model = tmp_path / "m.npz"
    rc, out, _ = main(capsys, "train", "--data", path, *FAST, "--missing", "impute", "--save", model)
    assert rc == 0 and "missing values imputed" in out
    p = gpumlp.load(model)
    imputer = p.named_steps["imputer"]
    train, _ = gpumlp.data.split_indices(y, 0.2, seed=0)
    np.testing.assert_allclose(imputer.mean, np.nanmean(X[train], axis=0), rtol=1e-13)  # training split only
    rc, out, _ = main(capsys, "predict", model, "--data", path)
    assert rc == 0 and [int(v) for v in out.split()] == p.predict(X).tolist()
    filled = np.where(np.isnan(X), imputer.mean, X)
    np.testing.assert_array_equal(p.predict(X), p.named_steps["mlp"].predict(p.named_steps["scaler"].transform(filled)))
    # a model trained without imputing cannot impute at predict
    plain = tmp_path / "plain.npz"
    assert main(capsys, "train", "--data", path, *FAST, "--missing", "drop", "--save", plain)[0] == 0
    rc, _, err = main(capsys, "predict", plain, "--data", path)
    assert rc == 1 and "missing value on line 6, column 3 ('p2')" in err
    rc, _, err = main(capsys, "predict", plain, "--data", path, "--missing", "impute")
    assert rc == 2 and "needs a model trained with --missing impute" in err


# ---------------------------------------------------------------------------------- delimiters
def test_tsv_is_tab_separated_by_default_and_tab_can_be_named(tmp_path, capsys):
    X, y = load_digits()
    write_table(tmp_path / "d.tsv", X[:300], y[:300], delimiter="\t", fmt="%d")
    write_table(tmp_path / "d.txt", X[:300], y[:300], delimiter="\t", fmt="%d")
    rc, out, _ = main(capsys, "train", "--data", tmp_path / "d.tsv", *FAST, "--json")
    assert rc == 0 and last_json(out)["n_train"] == 240
    for tab in ("tab", "\\t", "\t"):
        rc, out, _ = main(capsys, "train", "--data", tmp_path / "d.txt", *FAST, "--delimiter", tab, "--json")
        assert rc == 0 and last_json(out)["n_train"] == 240
    rc, _, err = main(capsys, "train", "--data", tmp_path / "d.txt", *FAST)
    assert rc == 1 and "single column" in err  # a .txt is comma-separated unless told otherwise
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--delimiter", "ab"])
    assert exit_.value.code == 2 and "delimiter must be one character" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- --save, Ctrl-C, messages
def test_save_to_a_directory_or_an_unwritable_place_fails_before_training(tmp_path, capsys):
    rc, out, err = main(capsys, "train", *FAST, "--save", tmp_path)
    assert rc == 2 and "is a directory; give a file name" in err and "epoch" not in out
    if os.geteuid() == 0:  # root writes through permission bits: use a place no one can write to
        place = "/sys"
        if os.access(place, os.W_OK) and subprocess.run(["touch", "/sys/gpumlp-probe"], capture_output=True,
                                                        check=False).returncode == 0:
            pytest.skip("no unwritable directory to test with")
    else:
        place = tmp_path / "ro"
        place.mkdir()
        place.chmod(0o500)
    rc, out, err = main(capsys, "train", *FAST, "--save", os.path.join(place, "m.npz"))
    assert rc == 2 and "cannot write files in" in err and "epoch" not in out
    assert ".tmp" not in err and "Errno" not in err


def test_ctrl_c_with_save_writes_a_checkpoint_that_resume_continues_exactly(tmp_path, capsys, monkeypatch):
    common = ["--backend", "numpy", "--hidden", "16", "--momentum", "0.9", "--epochs", "6", "--quiet"]
    assert main(capsys, "train", *common, "--save", tmp_path / "straight.npz")[0] == 0
    real_epoch = report.Progress.epoch

    def ctrl_c_in_epoch_3(self, record, val_L):
        if record["epoch"] == 3:
            raise KeyboardInterrupt
        return real_epoch(self, record, val_L)

    monkeypatch.setattr(report.Progress, "epoch", ctrl_c_in_epoch_3)
    ck = tmp_path / "ck.npz"
    rc, _, err = main(capsys, "train", *common, "--save", ck)
    assert rc == 130
    assert f"saved the state after epoch 2 to {ck}; continue with: gpumlp train --resume {ck} --save {ck}" in err
    monkeypatch.setattr(report.Progress, "epoch", real_epoch)
    assert gpumlp.load(ck).named_steps["mlp"].epochs_ == 2
    assert main(capsys, "train", "--resume", ck, "--save", ck, "--quiet")[0] == 0
    a, b = np.load(tmp_path / "straight.npz"), np.load(ck)
    for k in a.files:
        if k != "meta":
            assert a[k].tobytes() == b[k].tobytes(), k
    monkeypatch.setattr(report.Progress, "epoch", ctrl_c_in_epoch_3)
    rc, _, err = main(capsys, "train", *common)
    assert rc == 130 and "nothing was saved (with --save MODEL" in err


def test_an_os_error_never_shows_a_temporary_name_or_errno(tmp_path, capsys, monkeypatch):
    target = tmp_path / "m.npz"

    def disk_full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(tmp_path, ".m.npz.123.abcd1234.tmp"))

    monkeypatch.setattr(io, "write", disk_full)
    rc, _, err = main(capsys, "train", *FAST, "--save", target)
    assert rc == 1
    assert err.strip() == f"gpumlp train: error: cannot write the model to {target}: no space left on device"
    exc = OSError(errno.EACCES, "Permission denied", str(tmp_path / ".x.npz.9.ff.tmp"))
    assert report.describe(exc, None) == f"{tmp_path}: permission denied"


# ---------------------------------------------------------------------------------- digests
def test_resume_and_evaluate_refuse_changed_data_and_name_the_files(tmp_path, capsys):
    X, y = load_digits()
    data = write_table(tmp_path / "d.csv", X[:400], y[:400], fmt="%d")
    model = tmp_path / "m.npz"
    assert main(capsys, "train", "--data", data, *FAST, "--save", model)[0] == 0
    rc, out, _ = main(capsys, "evaluate", model)
    assert rc == 0 and f"the test split of {data} (80 rows held out by --seed 0, --test-size 0.2)" in out
    X2 = X[:400].copy()
    X2[7, 20] += 1
    write_table(data, X2, y[:400], fmt="%d")  # one value changed in place
    rc, _, err = main(capsys, "train", "--resume", model, "--epochs", "5")
    assert rc == 1 and f"--resume: {data} is not the data the model was trained on" in err
    assert "the model file records" in err and f"for {data}" in err
    rc, _, err = main(capsys, "evaluate", model)
    assert rc == 1 and "is not the data the model was trained on" in err and "give the file to score with --data" in err
    rc, out, _ = main(capsys, "evaluate", model, "--data", data, "--json")
    assert rc == 0 and last_json(out)["test_set"] == f"{data} (every row)" and last_json(out)["n_samples"] == 400


def test_a_file_saved_by_gpumlp_0_1_evaluates_on_its_own_split_and_says_it_has_no_digest(tmp_path, capsys):
    """cli_main.npz (format 1, no digest, no split rule) keeps its old split: split_indices_v1."""
    import shutil
    from pathlib import Path

    f = tmp_path / "old.npz"
    shutil.copy(Path(__file__).parent / "reference" / "cli_main.npz", f)
    rc, out, err = main(capsys, "evaluate", f, "--json", "--backend", "numpy")
    assert rc == 0 and "records no digest of its training data (saved before gpumlp 0.2)" in err
    X, y = load_digits()
    _, test = gpumlp.data.split_indices_v1(y, 0.2, seed=0)
    p = gpumlp.load(f, backend="numpy")
    e = last_json(out)
    assert e["n_samples"] == len(test) and e["accuracy"] == pytest.approx(p.score(X[test], y[test]), abs=1e-12)
    assert "gpumlp 0.1's split rule" in e["test_set"]


def test_evaluate_names_a_separate_test_file(tmp_path, capsys):
    X, y = load_digits()
    write_table(tmp_path / "train.csv", X[:1500], y[:1500], fmt="%d")
    write_table(tmp_path / "test.csv", X[1500:], y[1500:], fmt="%d")
    model = tmp_path / "m.npz"
    assert main(capsys, "train", "--data", tmp_path / "train.csv", "--test-data", tmp_path / "test.csv", *FAST,
                "--save", model)[0] == 0
    rc, out, _ = main(capsys, "evaluate", model, "--json")
    assert rc == 0 and last_json(out)["test_set"] == f"{tmp_path / 'test.csv'} (the run's --test-data)"
    assert last_json(out)["n_samples"] == 297


# ---------------------------------------------------------------------------------- what is reported
def test_data_loss_and_objective_are_reported_apart_and_labelled(tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, _ = main(capsys, "train", *FAST, "--weight-decay", "0.01", "--save", model, "--json")
    r = last_json(out)
    assert rc == 0
    m = gpumlp.load(model).named_steps["mlp"]
    s = 0.5 * 0.01 * sum(float((W.astype(np.float64) ** 2).sum()) for W in m.get_weights())
    assert r["train_J"] - r["train_L"] == pytest.approx(s, rel=1e-5) and s > 0.01
    (summary,) = [line for line in out.splitlines() if line.startswith("test accuracy")]
    assert summary.startswith("test accuracy") and "test L" in summary and "train L" in summary and " J " in summary
    rc, out, _ = main(capsys, "evaluate", model, "--json")
    e = last_json(out)
    assert e["objective"] - e["data_loss"] == pytest.approx(s, rel=1e-5)
    assert "data loss L" in out and "objective J" in out


def test_per_epoch_lines_show_validation_only_and_the_test_score_once(tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, out, _ = main(capsys, "train", *FAST, "--validation-split", "0.2", "--save", model)
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert rc == 0 and len(epochs) == 3
    assert all("val L" in line and "val acc" in line and "test" not in line for line in epochs)
    assert sum("test accuracy" in line for line in out.splitlines()) == 1
    config = gpumlp.load(model).named_steps["mlp"].training_config_
    assert "history" not in config and len(config["data_digest"]) == 32


@pytest.mark.parametrize("args, fragment", [
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd, and this run uses adam"),
    (["--beta1", "0.8", "--eps", "1e-6"], "--beta1, --eps apply to --optimizer adam, and this run uses sgd"),
    (["--optimizer", "adam", "--nesterov"], "--nesterov applies to --optimizer sgd"),
    (["--target-scaling", "none"], "--target-scaling applies to --loss squared"),
])
def test_options_that_do_not_apply_are_usage_errors(args, fragment, capsys):
    rc, out, err = main(capsys, "train", *FAST, *args)
    assert rc == 2 and fragment in err and out == ""


def test_resuming_an_adam_run_refuses_sgd_options(tmp_path, capsys):
    assert main(capsys, "train", *FAST, "--optimizer", "adam", "--lr", "0.001", "--quiet", "--save",
                tmp_path / "a.npz")[0] == 0
    rc, _, err = main(capsys, "train", "--resume", tmp_path / "a.npz", "--epochs", "5", "--momentum", "0.5")
    assert rc == 2 and "--momentum applies to --optimizer sgd, and this run uses adam" in err


# ---------------------------------------------------------------------------------- regression
def test_regression_on_the_diabetes_set_trains_at_the_default_rate_and_predicts_in_its_units(tmp_path, capsys):
    """On main --loss squared diverged at the default lr on scikit-learn's diabetes data (targets 25..346)."""
    datasets = pytest.importorskip("sklearn.datasets")
    b = datasets.load_diabetes(scaled=False)
    path = write_table(tmp_path / "diabetes.csv", b.data, b.target, list(b.feature_names), label="target")
    model = tmp_path / "m.npz"
    rc, out, err = main(capsys, "train", "--data", path, "--loss", "squared", "--backend", "numpy", "--save", model,
                        "--json", "--quiet")
    assert rc == 0, err
    r = last_json(out)
    assert r["test_r2"] > 0.1 and "L on standardised targets" in out
    p = gpumlp.load(model)
    assert p.named_steps["target_scaler"].offset[0] == pytest.approx(b.target.mean(), rel=0.05)
    rc, out, _ = main(capsys, "predict", model, "--data", path, "--output", tmp_path / "p.npy")
    pred = np.load(tmp_path / "p.npy")
    np.testing.assert_array_equal(pred, p.predict(b.data))
    assert 100 < pred.mean() < 200 and pred.std() > 20  # the targets' units (mean 152), not standardised ones
    rc, out, _ = main(capsys, "evaluate", model, "--data", path, "--json")
    assert last_json(out)["r2"] == pytest.approx(p.score(b.data, b.target), rel=1e-12)
    assert last_json(out)["r2"] > 0.1
    # --target-scaling none is the old behaviour: the default rate diverges on these targets
    rc, _, err = main(capsys, "train", "--data", path, "--loss", "squared", "--target-scaling", "none", "--quiet")
    assert rc == 1 and "diverged" in err


# ---------------------------------------------------------------------------------- progress bar and plot
class _Args:
    quiet, progress = False, "bar"


def test_the_bar_moves_within_an_epoch_and_finishes_after_early_stopping(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    monkeypatch.setenv("COLUMNS", "80")
    progress = report.Progress(_Args(), 0, 200, True, "accuracy", 1000)
    progress.step(25, 100)
    assert progress.bar.n == pytest.approx(0.25)
    record = {"epoch": 1, "loss": 0.5, "lr": 0.1, "val_score": 0.9, "val_loss": 0.3}
    progress.epoch(record, 0.29)
    progress.step(50, 100)
    assert progress.bar.n == pytest.approx(1.5)
    progress.epoch(dict(record, epoch=2), 0.28)
    progress.close("stopped early (plateau, best 1)")
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").split("\n") if f.strip()]
    assert all(len(f) <= 80 for f in frames), max(frames, key=len)
    assert "100%" in frames[-1] and "stopped early" in frames[-1] and "epoch 2/200" in frames[-1]
    assert err.endswith("\n")


def test_the_bar_is_readable_at_80_columns_in_a_real_run():
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    env.update(COLUMNS="80", LINES="24")
    p = subprocess.run([sys.executable, "-m", "gpumlp", "train", "--epochs", "200", "--hidden", "16",
                        "--early-stopping", "--n-iter-no-change", "2", "--progress", "bar", "--backend", "numpy"],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    frames = [f for f in p.stderr.replace("\r", "\n").split("\n") if f.strip()]
    assert frames and all(len(f) <= 80 for f in frames), max(frames, key=len)
    assert "val_acc" in frames[-1] or "stopped early" in frames[-1]
    assert "stopped early" in frames[-1] and "100%" in frames[-1]


def test_the_plot_marks_the_best_epoch_and_names_data_net_and_optimizer(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    model = tmp_path / "m.npz"
    rc, _, _ = main(capsys, "train", *FAST, "--validation-split", "0.2", "--save", model, "--plot", tmp_path / "c.png")
    assert rc == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    m = gpumlp.load(model).named_steps["mlp"]
    s = m.training_config_
    fig = report.curves_figure(m, s, "accuracy", 0.95)
    try:
        title = fig._suptitle.get_text()
        assert "digits" in title and "64-16-10" in title and "sgd (lr 0.02, momentum 0.9)" in title
        assert "test accuracy 0.9500" in title
        best = int(np.argmax(m.validation_curve_)) + 1
        for ax in fig.axes:
            marks = [line for line in ax.get_lines() if line.get_label().startswith("best validation score")]
            assert len(marks) == 1 and marks[0].get_xdata()[0] == best
        assert [line.get_label() for line in fig.axes[1].get_lines()][0] == "validation accuracy"
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------- missing extras
def _blocked(tmp_path, module):
    blocker = tmp_path / "block" / module
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"raise ImportError('No module named {module}')\n")
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "block"), os.environ.get("PYTHONPATH", "")])
    return env


def test_gpumlp_sklearn_without_scikit_learn_says_what_to_install(tmp_path):
    p = subprocess.run([sys.executable, "-c", "import gpumlp.sklearn"], capture_output=True, text=True,
                       env=_blocked(tmp_path, "sklearn"), timeout=120, check=False)
    assert p.returncode == 1
    hint = 'gpumlp.sklearn needs scikit-learn >= 1.6, which is not installed: pip install "gpumlp[sklearn]"'
    assert f"ImportError: {hint}" in p.stderr
    p = subprocess.run([sys.executable, "-c", "import gpumlp; print('ok')"], capture_output=True, text=True,
                       env=_blocked(tmp_path / "again", "sklearn"), timeout=120, check=False)
    assert p.stdout.strip() == "ok"  # gpumlp itself never needs it
