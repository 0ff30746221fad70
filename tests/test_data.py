"""Data loaders on small files the tests write, the embedded digits, the split and the scaling."""
import gzip
import struct

import numpy as np
import pytest

from gpumlp import data as D


def write_idx(path, array, type_code=0x08, compress=False):
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    raw = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.asarray(array, dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.fixture
def mnist_like(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12).astype(np.uint8)
    return images, labels, tmp_path


# ---------------------------------------------------------------------------------- embedded
def test_embedded_digits_shape_values_and_classes():
    X, y = D.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.uint8
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_embedded_digits_are_scikit_learns_copy():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    X, y = D.load_digits()
    np.testing.assert_array_equal(X, ref.data)
    np.testing.assert_array_equal(y, ref.target)


def test_load_digits_by_name():
    X, y = D.load("digits")
    assert X.shape == (1797, 64)


# ---------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_with_labels_found_by_mnist_name(mnist_like, compress):
    images, labels, tmp = mnist_like
    suffix = ".gz" if compress else ""
    img = write_idx(tmp / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    X, y = D.load(img)
    np.testing.assert_array_equal(X, images.reshape(12, 12))
    np.testing.assert_array_equal(y, labels)
    assert D.detect_format(img) == "idx"


def test_idx_other_types_and_explicit_labels(tmp_path):
    a = np.arange(24, dtype=np.float64).reshape(4, 6) / 7
    img = write_idx(tmp_path / "x.bin", a, 0x0E)
    lab = write_idx(tmp_path / "y.bin", np.array([1, -2, 3, 300]), 0x0B)
    X, y = D.load(img, format="idx", labels=lab)
    np.testing.assert_array_equal(X, a)
    assert y.tolist() == [1, -2, 3, 300]
    assert D.detect_format(img) == "idx"  # sniffed from the magic number


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: b"\x01" + raw[1:], "not an IDX file"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "not an IDX file"),
    (lambda raw: raw[:3] + b"\x00" + raw[4:], "not an IDX file"),
    (lambda raw: raw[:-1], "holds 35 bytes after the header"),
    (lambda raw: raw + b"\x00", "holds 37 bytes after the header"),
    (lambda raw: raw[:7], "header truncated"),
])
def test_idx_rejects_bad_magic_and_sizes(tmp_path, mutate, message):
    good = write_idx(tmp_path / "good", np.zeros((3, 3, 4), np.uint8)).read_bytes()
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(mutate(good))
    with pytest.raises(ValueError, match=message) as exc:
        D.read_idx(bad)
    assert str(bad) in str(exc.value)


def test_idx_corrupt_gzip(tmp_path):
    raw = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(raw[:-6])
    with pytest.raises(ValueError, match="corrupt gzip"):
        D.read_idx(p)


def test_idx_label_count_mismatch_and_missing_labels(mnist_like):
    images, labels, tmp = mnist_like
    img = write_idx(tmp / "a-images-idx3-ubyte", images)
    lab = write_idx(tmp / "other", labels[:5])
    with pytest.raises(ValueError, match="holds 5 labels but .* holds 12 images"):
        D.load(img, labels=lab)
    with pytest.raises(ValueError, match="no labels file"):
        D.load(img)
    X, y = D.load(img, require_labels=False)
    assert X.shape == (12, 12) and y is None


# ---------------------------------------------------------------------------------- CSV
def test_csv_with_header_and_named_label_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,label,b\n1,0,2.5\n3,1,4\n5,2,-6e1\n")
    X, y = D.load(p, label_column="label")
    np.testing.assert_array_equal(X, [[1, 2.5], [3, 4], [5, -60]])
    np.testing.assert_array_equal(y, [0, 1, 2])
    X, y = D.load(p, label_column="0")  # index given as text (as from the command line)
    np.testing.assert_array_equal(y, [1, 3, 5])


def test_csv_without_header_default_last_column_and_gzip(tmp_path):
    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(b"1;2;7\n3;4;8\n"))
    X, y = D.load(p, delimiter=";")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [7, 8])
    X, y = D.load(p, delimiter=";", label_column=0)
    np.testing.assert_array_equal(X, [[2, 7], [4, 8]])


@pytest.mark.parametrize("text, kw, message", [
    ("1,2\n3,x\n", {}, "not a numeric CSV"),
    ("1,2,3\n4,5\n", {}, "not a numeric CSV"),
    ("a,b\n", {}, "no data rows"),
    ("", {}, "no data rows"),
    ("1,2\n", {"label_column": 2}, "out of range"),
    ("1,2\n", {"label_column": "y"}, "has no header"),
    ("a,b\n1,2\n", {"label_column": "y"}, "not a column"),
    ("1\n2\n", {}, "single column"),
])
def test_csv_errors_name_the_file(tmp_path, text, kw, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        D.load(p, **kw)


# ---------------------------------------------------------------------------------- NPZ and dispatch
def test_npz_round_trip_and_errors(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = D.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    np.savez(tmp_path / "nox.npz", features=X)
    with pytest.raises(ValueError, match="no array named 'X'"):
        D.load(tmp_path / "nox.npz")
    np.savez(tmp_path / "noy.npz", X=X)
    with pytest.raises(ValueError, match="no array named 'y'"):
        D.load(tmp_path / "noy.npz")
    assert D.load(tmp_path / "noy.npz", require_labels=False)[1] is None
    np.savez(tmp_path / "short.npz", X=X, y=y[:3])
    with pytest.raises(ValueError, match="y has shape"):
        D.load(tmp_path / "short.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}], dtype=object), y=y)
    with pytest.raises(ValueError, match="cannot read arrays"):
        D.load(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        D.load(tmp_path / "junk.npz")


def test_load_missing_file_directory_and_bad_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        D.load(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="is a directory"):
        D.load(tmp_path)
    with pytest.raises(ValueError, match="format must be one of"):
        D.load("digits", format="parquet")


# ---------------------------------------------------------------------------------- split
def test_split_is_seeded_stratified_disjoint_and_complete():
    _, y = D.load_digits()
    tr, te = D.split_indices(y, 0.2, seed=3)
    tr2, te2 = D.split_indices(y, 0.2, seed=3)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, D.split_indices(y, 0.2, seed=4)[1])
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.union1d(tr, te), np.arange(y.size))
    per_class = np.bincount(y[te], minlength=10) / np.bincount(y, minlength=10)
    assert np.all(np.abs(per_class - 0.2) < 0.01)  # each class held out in proportion


def test_split_unstratified_and_bad_sizes():
    y = np.linspace(0, 1, 50)
    tr, te = D.split_indices(y, 0.3, seed=0, stratify=False)
    assert te.size == 15 and tr.size == 35
    for bad in (0, 1, 1.5, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="held-out fraction"):
            D.split_indices(y, bad)
    assert [a.tolist() for a in D.split_indices(np.arange(2), 0.1)] in ([[0], [1]], [[1], [0]])  # ceil: 1 of 2
    with pytest.raises(ValueError, match="leaves 0 to keep"):
        D.split_indices(np.arange(1), 0.5)


def test_stratified_split_holds_out_exactly_ceil_fraction_n():
    """Largest remainders: the total is exact even where rounding each class would not be."""
    y = np.repeat([0, 1, 2], [5, 5, 5])
    kept, held = D.split_indices(y, 0.1, seed=0)
    assert held.size == 2 and kept.size == 13  # ceil(1.5); rounding per class would give 0 or 3
    for n, frac in [(7, 0.5), (100, 0.33), (11, 0.2)]:
        y = np.arange(n) % 3
        assert D.split_indices(y, frac, seed=1)[1].size == int(np.ceil(frac * n))


def test_the_old_command_line_split_is_kept_for_old_files():
    """Model files saved before the one hold-out rule recorded no rule: their split stays the one they
    were trained with (a different one would mix test rows into training when they are resumed)."""
    _, y = D.load_digits()
    tr, te = D.split_indices_v1(y, 0.2, seed=0)
    assert te.size == sum(int(round(0.2 * np.sum(y == c))) for c in range(10)) == 359  # rounded per class
    assert D.split_indices(y, 0.2, seed=0)[1].size == 360  # ceil(0.2 · 1797)


# ---------------------------------------------------------------------------------- scaling and labels
def test_standard_scaling_uses_training_statistics_only():
    Xtr = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    Xte = np.array([[10.0, 7.0]])
    s = D.Scaler("standard").fit(Xtr)
    np.testing.assert_allclose(s.offset, [2.0, 5.0])
    np.testing.assert_allclose(s.scale, [np.sqrt(8 / 3), 1.0])  # constant feature: scale 1, not 0
    out = s.transform(Xte, np.float64)
    np.testing.assert_allclose(out, [[8 / np.sqrt(8 / 3), 2.0]])
    assert s.transform(Xtr).dtype == np.float32
    np.testing.assert_array_equal(Xte, [[10.0, 7.0]])  # input untouched


def test_max_scaling_divides_by_the_largest_training_value():
    X, _ = D.load_digits()
    s = D.Scaler("max").fit(X[:100])
    out = s.transform(X[:100], np.float64)
    assert out.max() == 1.0 and out.min() == 0.0
    np.testing.assert_allclose(out, X[:100] / 16.0)


def test_max_scaling_of_signed_integers_uses_the_largest_magnitude():
    """IDX type 0x09 is signed bytes: |−128| is 128, not the −128 that np.abs gives back for int8."""
    X = np.array([[-128, 5], [3, 100]], np.int8)
    s = D.Scaler("max").fit(X)
    np.testing.assert_array_equal(s.scale, [128.0, 128.0])
    assert np.abs(s.transform(X, np.float64)).max() == 1.0


def test_scaler_errors():
    with pytest.raises(ValueError, match="scaling must be one of"):
        D.Scaler("minmax")
    with pytest.raises(ValueError, match="not fitted"):
        D.Scaler("standard").transform(np.ones((2, 2)))
    s = D.Scaler("standard").fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        s.transform(np.ones((3, 3)))
    np.testing.assert_array_equal(D.Scaler("none").transform(np.ones((2, 2)), np.float64), np.ones((2, 2)))


def test_label_encoder():
    y = np.array([3.0, -1.0, 3.0, 7.0])
    enc = D.LabelEncoder().fit(y, whole_floats_as_int=True)
    assert enc.classes_.tolist() == [-1, 3, 7] and enc.classes_.dtype == np.int64
    assert enc.transform(y).tolist() == [1, 0, 1, 2]
    assert enc.inverse_transform([2, 0]).tolist() == [7, -1]
    assert D.LabelEncoder().fit(y).classes_.dtype == np.float64  # kept as given unless asked
    enc = D.LabelEncoder().fit(np.array([0.5, 0.25, 0.5]), whole_floats_as_int=True)
    assert enc.classes_.tolist() == [0.25, 0.5] and enc.transform([0.5, 0.25, 0.5]).tolist() == [1, 0, 1]
    text = D.LabelEncoder().fit(np.array(["malignant", "benign", "benign"]))
    assert text.classes_.tolist() == ["benign", "malignant"] and text.transform(["malignant"]).tolist() == [1]
    with pytest.raises(ValueError, match=r"the test data holds label\(s\) \[9\] not among the model's classes"):
        D.LabelEncoder([1, 3, 7]).transform([3, 9], "the test data")
    with pytest.raises(ValueError, match="NaN"):
        D.LabelEncoder().fit(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="numbers or strings"):
        D.LabelEncoder().fit(np.array([1 + 2j]))
