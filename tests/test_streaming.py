"""Streamed training from Python (issue 16): ``MLP.fit(gpumlp.data.stream(...))``, ``predict``/``score``/
``objective`` over a stream, early stopping from a stream, the errors found before the first epoch, the
shuffle of sorted files, the reader thread's cleanup and the streamed batches on the CuPy stand-in.

The file formats' own reading (chunks, rows, CSV rules) is tests/test_stream_sources.py's; here every
file is small (a few thousand rows) and each test trains for a few epochs. No float bits are recorded:
runs are compared with each other (bit for bit where the arithmetic is the same, else within tolerances
that say why)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import gpumlp
from gpumlp.data import stream
import test_kernels_host

lib, grid_lib, standin = test_kernels_host.lib, test_kernels_host.grid_lib, test_kernels_host.standin  # fixtures (8.)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

D, K = 6, 3


def blobs(n, seed, d=D, k=K):
    """(X, y): k Gaussian classes in d dimensions whose centres are fixed by d and k (so that train and test
    sets drawn with different seeds come from the same distribution); about 90 % separable."""
    centres = np.random.default_rng(1000 + d * 10 + k).normal(scale=1.2, size=(k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return centres[y] + rng.normal(size=(n, d)), y


def write_csv(path, X, y, header=True):
    names = [f"f{j}" for j in range(X.shape[1])] + ["label"]
    with open(path, "w") as f:
        if header:
            f.write(",".join(names) + "\n")
        for row, label in zip(X.tolist(), np.asarray(y).tolist()):
            f.write(",".join(repr(v) for v in row) + f",{label}\n")  # repr: every float64 exactly
    return path


def write_parquet(path, X, y, row_group_size=250):
    columns = {f"f{j}": X[:, j] for j in range(X.shape[1])} | {"label": y}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_npy(tmp_path, X, y):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "X.npy", tmp_path / "y.npy"


class Chunks:
    """A re-iterable of (X_chunk, y_chunk) pairs that is not a sequence (no len, no indexing)."""

    def __init__(self, X, y, rows):
        self.X, self.y, self.rows = X, y, rows

    def __iter__(self):
        for a in range(0, self.X.shape[0], self.rows):
            yield self.X[a:a + self.rows], self.y[a:a + self.rows]


def pairs(X, y, rows=300):
    return [(X[a:a + rows], y[a:a + rows]) for a in range(0, X.shape[0], rows)]


@pytest.fixture(scope="module")
def data():
    (X, y), (Xt, yt) = blobs(2000, 1), blobs(1000, 2)
    return X, y, Xt, yt


def _source(kind, tmp_path, X, y):
    if kind == "csv":
        return stream(write_csv(tmp_path / "d.csv", X, y), chunk_rows=300)
    if kind == "parquet":
        return stream(write_parquet(tmp_path / "d.parquet", X, y))
    if kind == "npy":
        Xf, yf = write_npy(tmp_path, X, y)
        return stream(Xf, labels=yf, chunk_rows=300)
    if kind == "pairs":
        return pairs(X, y)
    return Chunks(X, y, 300)


FIT = dict(epochs=8, batch_size=32, lr=0.05)


# ---------------------------------------------------------------------------------- 1. fit from a stream
@pytest.mark.parametrize("kind", ["csv", "parquet", "npy", "pairs", "iterable"])
def test_a_streamed_fit_reaches_the_accuracy_of_the_fit_in_memory(kind, tmp_path, data):
    X, y, Xt, yt = data
    src = _source(kind, tmp_path, X, y)
    streamed = gpumlp.MLP([D, 16, K], seed=0).fit(src, **FIT)
    memory = gpumlp.MLP([D, 16, K], seed=0).fit(X, y, **FIT)
    # The bound for fit from Python: the shuffles differ (chunks and a buffer, not a permutation),
    # so the two runs end at different weights of about the same quality.
    assert abs(streamed.score(Xt, yt) - memory.score(Xt, yt)) <= 0.02
    assert memory.score(Xt, yt) > 0.8  # a problem that the comparison means something on
    assert streamed.samples_seen_ == FIT["epochs"] * X.shape[0]
    assert len(streamed.loss_curve_) == len(streamed.history_["loss"]) == FIT["epochs"] == streamed.epochs_
    assert np.all(np.isfinite(streamed.loss_curve_))


def _regression(n, seed, kind):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    w = np.random.default_rng(7).normal(size=D) / np.sqrt(D)
    t = X @ w
    if kind == "squared":
        return X, t + 0.1 * rng.normal(size=n)
    if kind == "binary_cross_entropy":
        return X, (t + 0.3 * rng.normal(size=n) > 0).astype(np.float64)
    return X, rng.poisson(np.exp(0.8 * t)).astype(np.float64)  # poisson: counts


@pytest.mark.parametrize("loss", ["squared", "binary_cross_entropy", "poisson"])
def test_one_output_losses_train_from_a_stream_as_in_memory(loss, tmp_path):
    (X, t), (Xt, tt) = _regression(2000, 3, loss), _regression(1000, 4, loss)
    src = stream(write_parquet(tmp_path / "r.parquet", X, t))
    kw = dict(seed=0, loss=loss)
    streamed = gpumlp.MLP([D, 16, 1], **kw).fit(src, epochs=10, batch_size=32, lr=0.02)
    memory = gpumlp.MLP([D, 16, 1], **kw).fit(X, t, epochs=10, batch_size=32, lr=0.02)
    # R² (squared, poisson) or accuracy (binary): different shuffles of the same rows, same quality.
    assert abs(streamed.score(Xt, tt) - memory.score(Xt, tt)) <= 0.02
    # A problem the comparison means something on (the Poisson counts' own noise bounds their R² near 0.2).
    assert memory.score(Xt, tt) > {"squared": 0.8, "binary_cross_entropy": 0.8, "poisson": 0.15}[loss]
    assert streamed.samples_seen_ == 10 * 2000 and len(streamed.loss_curve_) == 10
    assert streamed.predict(src).shape == (2000,)


# ---------------------------------------------------------------------------------- 2. determinism
def test_the_same_seed_gives_the_same_weights_bit_for_bit(tmp_path, data):
    X, y, _, _ = data
    path = write_parquet(tmp_path / "d.parquet", X, y)
    a = gpumlp.MLP([D, 16, K], seed=3).fit(stream(path), **FIT)
    b = gpumlp.MLP([D, 16, K], seed=3).fit(stream(path), **FIT)
    np.testing.assert_array_equal(a.theta, b.theta)
    c = gpumlp.MLP([D, 16, K], seed=4).fit(stream(path), **FIT)
    assert not np.array_equal(a.theta, c.theta)


@pytest.mark.parametrize("budget,buffer", [("32MiB", None), (64 * 2**20, 64), ("1GiB", 1000)])
def test_other_budgets_and_shuffle_buffers_still_converge(budget, buffer, tmp_path, data):
    X, y, Xt, yt = data
    Xf, yf = write_npy(tmp_path, X, y)
    src = stream(Xf, labels=yf, chunk_rows=200, memory_budget=budget, shuffle_buffer=buffer)
    m = gpumlp.MLP([D, 16, K], seed=0).fit(src, **FIT)
    memory = gpumlp.MLP([D, 16, K], seed=0).fit(X, y, **FIT)
    assert abs(m.score(Xt, yt) - memory.score(Xt, yt)) <= 0.02


@pytest.mark.parametrize("kind", ["csv", "parquet", "npy", "pairs", "iterable"])
def test_unshuffled_streamed_fit_is_the_unshuffled_fit_in_memory_bit_for_bit(kind, tmp_path, data):
    """shuffle=False: no chunk order, no buffer: the batches are the file's rows in order, so the float64
    CPU run is the in-memory run exactly (the same products in the same order)."""
    X, y, _, _ = data
    src = _source(kind, tmp_path, X, y)
    kw = dict(FIT, epochs=3, shuffle=False)
    streamed = gpumlp.MLP([D, 16, K], seed=0, dtype="float64").fit(src, **kw)
    memory = gpumlp.MLP([D, 16, K], seed=0, dtype="float64").fit(X, y, **kw)
    np.testing.assert_array_equal(streamed.theta, memory.theta)
    assert streamed.loss_curve_ == memory.loss_curve_


# ---------------------------------------------------------------------------------- 3. predict and scores
@pytest.mark.parametrize("kind", ["csv", "parquet", "npy", "pairs", "iterable"])
def test_predict_score_and_objective_over_a_stream_are_those_of_the_arrays(kind, tmp_path, data):
    X, y, _, _ = data
    m = gpumlp.MLP([D, 16, K], seed=0).fit(X, y, epochs=2, batch_size=32, lr=0.05)
    src = _source(kind, tmp_path, X, y)
    if kind in ("pairs", "iterable"):
        src = stream(src)
    else:
        assert src.n_rows == X.shape[0] and src.n_features == D
    np.testing.assert_array_equal(m.predict(src), m.predict(X))  # the same rows in the same order and dtype
    np.testing.assert_array_equal(m.decision_function(src), m.decision_function(X))
    np.testing.assert_array_equal(m.predict_proba(src), m.predict_proba(X))
    assert m.score(src) == m.score(X, y)  # hits over rows: counts, exact
    # The mean loss summed block by block (float64 sums of float32 block means) against one float32 mean.
    assert m.objective(src) == pytest.approx(m.objective(X, y), rel=1e-5)


@pytest.mark.parametrize("loss", ["squared", "binary_cross_entropy", "poisson"])
def test_one_output_scores_over_a_stream(loss, tmp_path):
    X, t = _regression(1500, 5, loss)
    m = gpumlp.MLP([D, 8, 1], seed=0, loss=loss).fit(X, t, epochs=3, batch_size=32, lr=0.02)
    src = stream(write_parquet(tmp_path / "r.parquet", X, t, row_group_size=200))
    np.testing.assert_array_equal(m.predict(src), m.predict(X))
    if loss == "binary_cross_entropy":
        np.testing.assert_array_equal(m.predict_proba(src), m.predict_proba(X))
    # R² from merged per-block moments in float64 against the in-memory float32 sums (accuracy: counts).
    assert m.score(src) == pytest.approx(m.score(X, t), abs=1e-5)
    assert m.objective(src) == pytest.approx(m.objective(X, t), rel=1e-5)


def test_predict_over_a_file_without_labels(tmp_path, data):
    X, y, _, _ = data
    m = gpumlp.MLP([D, 16, K], seed=0).fit(X, y, epochs=1)
    np.save(tmp_path / "X.npy", X)
    src = stream(tmp_path / "X.npy", chunk_rows=128)
    assert not src.has_labels
    np.testing.assert_array_equal(m.predict(src), m.predict(X))
    np.testing.assert_array_equal(m.predict([(X[:700], None), (X[700:], None)]), m.predict(X))
    with pytest.raises(ValueError, match="labels"):
        m.score(src)


def test_train_score_and_partial_fit_take_a_stream(data):
    X, y, _, _ = data
    m = gpumlp.MLP([D, 8, K], seed=0).fit(pairs(X, y), epochs=2, train_score=True)
    assert m.history_["score"][-1] == m.score(X, y)
    p = gpumlp.MLP([D, 8, K], seed=0)
    p.partial_fit(pairs(X, y), None, classes=[0, 1, 2])
    assert p.epochs_ == 1 and p.samples_seen_ == X.shape[0]


# ---------------------------------------------------------------------------------- 4. validation
def test_early_stopping_from_a_stream_holds_the_validation_split_in_memory(tmp_path, data):
    X, y, Xt, yt = data
    src = stream(write_parquet(tmp_path / "d.parquet", X, y))
    m = gpumlp.MLP([D, 16, K], seed=0).fit(src, epochs=40, batch_size=32, lr=0.05, early_stopping=True,
                                          validation_fraction=0.2, n_iter_no_change=3)
    assert m.stop_reason_ in ("plateau", "epochs")
    assert len(m.validation_curve_) == m.epochs_ and np.all(np.isfinite(m.validation_curve_))
    # samples_seen_ counts the training rows only: the seeded split holds out about 20 % (within 0.01).
    n_train = m.samples_seen_ / m.epochs_
    assert n_train == int(n_train) and abs(n_train / X.shape[0] - 0.8) <= 0.01
    assert m.score(Xt, yt) > 0.8
    again = gpumlp.MLP([D, 16, K], seed=0).fit(src, epochs=40, batch_size=32, lr=0.05, early_stopping=True,
                                              validation_fraction=0.2, n_iter_no_change=3)
    np.testing.assert_array_equal(again.theta, m.theta)


def test_validation_data_arrays_with_a_stream(tmp_path, data):
    X, y, Xt, yt = data
    src = stream(write_parquet(tmp_path / "d.parquet", X, y))
    m = gpumlp.MLP([D, 16, K], seed=0).fit(src, epochs=3, batch_size=32, lr=0.05, validation_data=(Xt, yt))
    assert len(m.validation_curve_) == 3
    assert m.validation_curve_[-1] == m.score(Xt, yt)
    assert m.samples_seen_ == 3 * X.shape[0]


def test_a_validation_split_too_large_for_its_budget_share_is_refused_without_change(tmp_path):
    d = 200
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5000, d)).astype(np.float32), rng.integers(0, 2, 5000)
    Xf, yf = write_npy(tmp_path, X, y)
    src = stream(Xf, labels=yf, memory_budget="32MiB")
    m = gpumlp.MLP([d, 4, 2], seed=0)
    theta, state = m.theta.copy(), m.rng.bit_generator.state
    # 90 % of 5000 rows of 200 float32 features: 3.6 MB, more than the validation's 10 % of 32 MiB.
    with pytest.raises(ValueError, match="share of the memory budget"):
        m.fit(src, epochs=1, early_stopping=True, validation_fraction=0.9)
    np.testing.assert_array_equal(m.theta, theta)
    assert m.epochs_ == 0 and m.monitor_ is None and m.rng.bit_generator.state == state


# ---------------------------------------------------------------------------------- 5. errors
def _unchanged(m, theta):
    np.testing.assert_array_equal(m.theta, theta)
    assert m.epochs_ == 0 and m.samples_seen_ == 0 and m.loss_curve_ == []


@pytest.fixture
def npy_source(tmp_path, data):
    X, y, _, _ = data
    Xf, yf = write_npy(tmp_path, X, y)
    return stream(Xf, labels=yf, chunk_rows=300)


@pytest.mark.parametrize("kw,match", [
    (dict(y=np.zeros(2000, int)), "y with a streamed source"),
    (dict(sample_weight=np.ones(2000)), "sample_weight with a streamed source"),
    (dict(class_weight="balanced"), "class_weight with a streamed source"),
])
def test_arrays_beside_a_stream_are_refused(kw, match, npy_source):
    m = gpumlp.MLP([D, 4, K], seed=0)
    theta = m.theta.copy()
    with pytest.raises(ValueError, match=match):
        m.fit(npy_source, epochs=1, **kw)
    _unchanged(m, theta)


@pytest.mark.parametrize("labels,match", [
    (np.arange(2000) % 4, r"output indices in \[0, 3\)"),
    (np.arange(2000) % 3 - 1, r"output indices in \[0, 3\)"),
])
def test_labels_that_are_not_output_indices_are_refused(labels, match, tmp_path, data):
    X = data[0]
    src = stream(write_parquet(tmp_path / "d.parquet", X, labels))
    m = gpumlp.MLP([D, 4, K], seed=0)
    theta = m.theta.copy()
    with pytest.raises(ValueError, match=match):
        m.fit(src, epochs=1)
    _unchanged(m, theta)


def test_text_labels_are_refused_for_a_model_taking_indices(tmp_path, data):
    X, y, _, _ = data
    src = stream(write_csv(tmp_path / "t.csv", X, np.array(["a", "b", "c"])[y]))
    m = gpumlp.MLP([D, 4, K], seed=0)
    theta = m.theta.copy()
    with pytest.raises(ValueError, match="output indices"):
        m.fit(src, epochs=1)
    _unchanged(m, theta)


@pytest.mark.parametrize("bad,match", [("", "missing value"), ("abc", "abc|not a number|non-numeric")])
def test_a_bad_value_late_in_a_csv_fails_before_the_first_epoch(bad, match, tmp_path, data):
    X, y, _, _ = data
    path = write_csv(tmp_path / "late.csv", X, y)
    lines = path.read_text().splitlines()
    fields = lines[1900].split(",")  # line 1901 of the file (the header is line 1), the third column
    fields[2] = bad
    lines[1900] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    src = stream(path, chunk_rows=300)
    m = gpumlp.MLP([D, 4, K], seed=0)
    theta, seen = m.theta.copy(), []
    with pytest.raises(ValueError, match=match) as err:
        m.fit(src, epochs=2, callbacks=lambda model, record: seen.append(record))
    message = str(err.value)
    assert "late.csv" in message and "1901" in message and "column 3" in message, message
    assert "line 1901" in message, message
    assert seen == []
    _unchanged(m, theta)


def test_lbfgs_refuses_a_stream(npy_source):
    m = gpumlp.MLP([D, 4, K], seed=0, optimizer="lbfgs")
    theta = m.theta.copy()
    with pytest.raises(ValueError, match="lbfgs"):
        m.fit(npy_source, epochs=1)
    with pytest.raises(ValueError, match="lbfgs"):
        m.fit(pairs(*blobs(100, 0)), epochs=1)
    _unchanged(m, theta)


def test_a_source_without_labels_cannot_train(tmp_path, data):
    X, y, _, _ = data
    src = stream(write_parquet(tmp_path / "d.parquet", X, y), label=False)
    assert not src.has_labels and src.n_features == D + 1
    m = gpumlp.MLP([D + 1, 4, K], seed=0)
    theta = m.theta.copy()
    with pytest.raises(ValueError, match="needs labels"):
        m.fit(src, epochs=1)
    with pytest.raises(ValueError, match="needs labels"):
        m.fit([(np.hstack([X, y[:, None]]), None)], epochs=1)
    _unchanged(m, theta)


def test_multi_output_regression_is_refused_from_a_stream(npy_source):
    m = gpumlp.MLP([D, 4, 2], seed=0, loss="squared")
    theta = m.theta.copy()
    with pytest.raises(ValueError, match="2 outputs"):
        m.fit(npy_source, epochs=1)
    _unchanged(m, theta)


def test_arrays_need_y(data):
    m = gpumlp.MLP([D, 4, K], seed=0)
    with pytest.raises(TypeError, match="y is required"):
        m.fit(data[0])


def test_a_generator_is_refused_it_is_read_only_once(data):
    X, y, _, _ = data
    m = gpumlp.MLP([D, 4, K], seed=0)
    with pytest.raises(TypeError, match="re-iterable"):
        m.fit(((X[a:a + 100], y[a:a + 100]) for a in range(0, 2000, 100)), epochs=1)


class Counted(Chunks):
    def __init__(self, *args):
        super().__init__(*args)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_an_iterable_is_read_once_per_epoch_not_once_per_chunk(data):
    """A re-iterable that is not a sequence can only be read from its start: its chunks come in its own
    order, one pass an epoch (plus the check and counting passes), whatever the seed."""
    X, y, _, _ = data
    chunks = Counted(X, y, 100)  # 20 chunks
    gpumlp.MLP([D, 4, K], seed=0).fit(chunks, epochs=3, batch_size=32)
    assert chunks.passes <= 3 + 2


def test_the_model_must_take_the_sources_features(npy_source):
    m = gpumlp.MLP([D + 1, 4, K], seed=0)
    with pytest.raises(ValueError, match="features"):
        m.fit(npy_source, epochs=1)
    with pytest.raises(ValueError, match="features"):
        m.predict(npy_source)


# ---------------------------------------------------------------------------------- 6. the shuffle
@pytest.fixture
def sorted_file(tmp_path):
    X, y = blobs(3000, 5)
    order = np.argsort(y, kind="stable")
    Xf, yf = write_npy(tmp_path, X[order], y[order])
    return Xf, yf, X[order], y[order]


def test_a_file_sorted_by_class_still_trains(sorted_file, data):
    Xf, yf, X, y = sorted_file
    _, _, Xt, yt = data
    src = stream(Xf, labels=yf, chunk_rows=100, shuffle_buffer=256)  # 30 chunks of one class each
    m = gpumlp.MLP([D, 16, K], seed=0).fit(src, **FIT)
    memory = gpumlp.MLP([D, 16, K], seed=0).fit(X, y, **FIT)
    assert m.score(Xt, yt) >= memory.score(Xt, yt) - 0.02


def test_an_epochs_batches_mix_the_classes_of_a_sorted_file(sorted_file):
    Xf, yf, X, y = sorted_file
    src = stream(Xf, labels=yf, chunk_rows=100, shuffle_buffer=256)
    view = src.view(np.float64, label_dtype=np.int64, batch_size=32)
    batches = list(view.epoch(12345, 32))
    ys = np.concatenate([b[1] for b in batches])
    assert sorted(ys.tolist()) == sorted(y.tolist())  # every row once
    single = np.mean([len(np.unique(b[1])) == 1 for b in batches])
    # Unshuffled, 91 of the 94 batches hold one class; a buffer of 2.5 chunks read in a seeded order mixes
    # two or three chunks (often of different classes) in most batches.
    assert single < 0.5, single
    unshuffled = list(view.epoch(None, 32))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in unshuffled]), y)
    other = np.concatenate([b[1] for b in view.epoch(54321, 32)])
    assert not np.array_equal(other, ys)


# ---------------------------------------------------------------------------------- 7. the reader thread
def _readers():
    return [t for t in threading.enumerate() if t.name == "gpumlp-reader" and t.is_alive()]


def _no_readers_left():
    for t in _readers():
        t.join(timeout=2)
    return _readers() == []


def test_no_reader_thread_outlives_a_fit(npy_source):
    gpumlp.MLP([D, 4, K], seed=0).fit(npy_source, epochs=2)
    assert _no_readers_left()


@pytest.fixture
def small_buffer(tmp_path):
    """A source whose epoch is many blocks (a buffer of 256 rows of 20,000), so that the reader thread is
    still reading, blocked on its full queue, when the epoch is left early."""
    X, y = blobs(20000, 6)
    Xf, yf = write_npy(tmp_path, X, y)
    return stream(Xf, labels=yf, chunk_rows=500, shuffle_buffer=256)


def test_no_reader_thread_outlives_a_fit_that_fails_mid_epoch(small_buffer):
    def fail(k, n):
        if k == 5:
            raise RuntimeError("stop here")

    m = gpumlp.MLP([D, 4, K], seed=0)
    with pytest.raises(RuntimeError, match="stop here") as err:
        gpumlp.Trainer(m, batch_size=8, on_step=fail, step_interval=1).fit(small_buffer, None, epochs=2)
    assert err.traceback  # its frames, the epoch's generators among their locals, are still held here
    assert _no_readers_left()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow that diverges
def test_no_reader_thread_outlives_a_divergence(small_buffer):
    m = gpumlp.MLP([D, 4, K], seed=0)
    theta = m.theta.copy()
    with pytest.raises(gpumlp.DivergenceError) as err:
        m.fit(small_buffer, epochs=2, lr=1e30)
    assert err.traceback
    assert _no_readers_left()
    _unchanged(m, theta)  # restored to the epoch's start


def test_no_reader_thread_outlives_a_callback_that_raises(npy_source):
    def fail(model, record):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        gpumlp.MLP([D, 4, K], seed=0).fit(npy_source, epochs=2, callbacks=fail)
    assert _no_readers_left()


# ---------------------------------------------------------------------------------- 9. stream's own errors
def test_stream_refuses_a_budget_under_32_mib(npy_source, tmp_path):
    Xf = tmp_path / "X.npy"
    with pytest.raises(ValueError, match="at least 32 MiB"):
        stream(Xf, labels=tmp_path / "y.npy", memory_budget="31MiB")
    with pytest.raises(ValueError, match="at least 32 MiB"):
        stream(Xf, labels=tmp_path / "y.npy", memory_budget=2**20)
    assert stream(Xf, labels=tmp_path / "y.npy", memory_budget="32MiB").memory_budget == 32 * 2**20


@pytest.mark.parametrize("size", ["lots", "12 parsecs", "-5MiB", "MiB", ""])
def test_stream_refuses_a_size_it_cannot_read(size, npy_source, tmp_path):
    with pytest.raises(ValueError, match="256MiB"):
        stream(tmp_path / "X.npy", labels=tmp_path / "y.npy", memory_budget=size)


def test_stream_refuses_a_format_that_cannot_stream(tmp_path, data):
    X, y, _, _ = data
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(ValueError, match="cannot be streamed"):
        stream(tmp_path / "d.npz")
    with pytest.raises(FileNotFoundError):
        stream(tmp_path / "missing.parquet")
    with pytest.raises(TypeError, match="pairs"):
        stream(42)


# ---------------------------------------------------------------------------------- 8. the GPU path, on the stand-in
@pytest.fixture
def pinned_standin(standin, monkeypatch):
    """The CuPy stand-in (tests/cupy_standin.py) with what ``_stream.PinnedBatches`` asks of CuPy and the
    stand-in lacks: pinned host memory (a bytearray), streams and events (the stand-in runs everything at
    once, in order, so they only need to exist) and ``ndarray.set(host, stream=)``."""
    import cupy_standin

    class Event:
        def __init__(self, **kw):
            pass

        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

    class Stream:
        def __init__(self, non_blocking=False):
            pass

        def wait_event(self, event):
            pass

        def synchronize(self):
            pass

    cuda, current, recorded = standin.cupy.cuda, Stream(), []
    for name, value in (("alloc_pinned_memory", bytearray), ("Event", Event), ("Stream", Stream),
                        ("get_current_stream", lambda: current)):
        monkeypatch.setattr(cuda, name, value, raising=False)
    plain_set = cupy_standin.DeviceArray.set
    monkeypatch.setattr(cupy_standin.DeviceArray, "set", lambda self, host, stream=None: plain_set(self, host))
    standin.compute_events = lambda: sum(s is current for s in recorded)  # events recorded on the step's stream
    return standin


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_streamed_fit_on_the_gpu_stand_in_is_the_cpu_streamed_fit(shuffle, pinned_standin, monkeypatch, tmp_path,
                                                                    data):
    """ViewBatches on the GPU backend: each block's rows through PinnedBatches(x=block) to the device. The
    batches are the host's (the epoch's seed comes from the model's host rng on either backend), so the
    runs differ only as the device kernels' sums differ from NumPy's: float64, a few ulps per step."""
    X, y, _, _ = data
    Xf, yf = write_npy(tmp_path, X, y)
    src = stream(Xf, labels=yf, chunk_rows=300, shuffle_buffer=256)  # many blocks: the pinned slots reused
    kw = dict(epochs=2, batch_size=32, lr=0.05, shuffle=shuffle)
    cpu = gpumlp.MLP([D, 16, K], seed=0, dtype="float64", bias=True).fit(src, **kw)
    from gpumlp._stream import PinnedBatches

    blocks, epoch = [], PinnedBatches.epoch

    def spy(self, order, batch_size, x=None):
        blocks.append(x.shape[0])
        yield from epoch(self, order, batch_size, x=x)

    monkeypatch.setattr(PinnedBatches, "epoch", spy)
    gpu = pinned_standin.model([D, 16, K], seed=0, dtype="float64", bias=True).fit(src, **kw)
    assert gpu.array_backend.is_gpu and sum(blocks) == 2 * X.shape[0] and len(blocks) > 10
    # Every batch's slot is marked read by its step once the step is queued, the last batch of each block
    # too: the next block's first copy into that slot waits for it (on a GPU, else it overwrites the rows
    # a queued step still reads; the stand-in runs at once, so only the count shows it). Plus one event
    # per PinnedBatches, recorded when it is made.
    steps, made = sum(-(-b // 32) for b in blocks), 2
    assert pinned_standin.compute_events() == steps + made
    np.testing.assert_allclose(gpu.theta.get(), cpu.theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-9)
    assert gpu.samples_seen_ == cpu.samples_seen_ == 2 * X.shape[0]
    np.testing.assert_array_equal(gpu.predict(src), cpu.predict(src))
    assert _no_readers_left()
