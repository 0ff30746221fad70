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

# ---------------------------------------------------------------------------------- CSV headers
def write(tmp_path, name, text, compress=False):
    p = tmp_path / name
    raw = text.encode("utf-8")
    p.write_bytes(gzip.compress(raw) if compress else raw)
    return p


def test_a_header_that_counts_the_columns_is_a_header(tmp_path):
    """DataFrame.to_csv(index=False) of a frame with default column names writes 0,1,...,n-1."""
    p = write(tmp_path, "d.csv", "0,1,2,3\n5.1,3.5,1.4,0\n4.9,3.0,1.4,1\n")
    t = D.load_table(p)
    np.testing.assert_array_equal(t.X, [[5.1, 3.5, 1.4], [4.9, 3.0, 1.4]])
    np.testing.assert_array_equal(t.y, [0, 1])
    assert t.header and t.feature_names == ["0", "1", "2"] and t.label_name == "3"


def test_two_columns_0_1_are_data_unless_forced(tmp_path):
    """With two columns "0,1" is as likely a sample (feature 0, label 1) as a header."""
    p = write(tmp_path, "d.csv", "0,1\n1,0\n")
    X, _ = D.load(p)
    np.testing.assert_array_equal(X, [[0], [1]])
    t = D.load_table(p, header=True)
    assert t.feature_names == ["0"] and t.label_name == "1" and t.y.tolist() == [0]


@pytest.mark.parametrize("text", ["\ufeffa,b,label\n1,2,0\n3,4,1\n", '\ufeff"a","b","label"\n1,2,0\n3,4,1\n'])
def test_a_bom_is_dropped_from_the_header_names(tmp_path, text):
    t = D.load_table(write(tmp_path, "d.csv", text), label_column="label")
    assert t.feature_names == ["a", "b"] and t.label_name == "label"
    np.testing.assert_array_equal(t.X, [[1, 2], [3, 4]])


@pytest.mark.parametrize("compress", [False, True])
def test_a_bom_before_numbers_keeps_the_first_row(tmp_path, compress):
    p = write(tmp_path, "d.csv.gz" if compress else "d.csv", "\ufeff1,2,0\n3,4,1\n", compress)
    t = D.load_table(p)
    assert not t.header and t.feature_names is None
    np.testing.assert_array_equal(t.X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(t.y, [0, 1])


def test_a_first_row_of_text_over_numbers_is_a_header_text_labels_or_not(tmp_path):
    t = D.load_table(write(tmp_path, "d.csv", "radius,texture,diagnosis\n1.5,2,malignant\n3,4,benign\n"))
    assert t.feature_names == ["radius", "texture"] and t.label_name == "diagnosis"
    t = D.load_table(write(tmp_path, "e.csv", "1.5,2,malignant\n3,4,benign\n"))
    assert not t.header and t.X.shape == (2, 2)


def test_header_can_be_forced_either_way(tmp_path):
    p = write(tmp_path, "d.csv", "1990,2000,2010\n1,2,3\n4,5,6\n")  # numbers as names: not detected
    assert D.load(p)[0].shape == (3, 2)
    t = D.load_table(p, header=True)
    assert t.feature_names == ["1990", "2000"] and t.X.shape == (2, 2)
    with pytest.raises(ValueError, match=r"line 1.*column 1 \('a'\)|column 1 holds text \('a' on line 1\)"):
        D.load(write(tmp_path, "e.csv", "a,b,c\n1,2,3\n"), header=False)
    with pytest.raises(ValueError, match="header must be None"):
        D.load(p, header="yes")


def test_a_label_column_named_in_the_first_row_makes_it_a_header(tmp_path):
    p = write(tmp_path, "d.csv", "10,20,y\n1,2,3\n")
    X, y = D.load(p, label_column="y")
    np.testing.assert_array_equal(X, [[1, 2]])
    np.testing.assert_array_equal(y, [3])


# ---------------------------------------------------------------------------------- CSV fields
def test_quoted_numbers_parse(tmp_path):
    X, y = D.load(write(tmp_path, "d.csv", '"x","y"\n"1.5","0"\n" 3",1\n'), label_column="y")
    np.testing.assert_array_equal(X, [[1.5], [3.0]])
    np.testing.assert_array_equal(y, [0, 1])


@pytest.mark.parametrize("name, compress", [("d.tsv", False), ("d.tsv.gz", True), ("D.TSV", False)])
def test_tsv_files_are_tab_separated_by_default(tmp_path, name, compress):
    X, y = D.load(write(tmp_path, name, "a\tb\tlabel\n1\t2.5\t0\n3\t4\t1\n", compress))
    np.testing.assert_array_equal(X, [[1, 2.5], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])


@pytest.mark.parametrize("delimiter", ["tab", "TAB", "\\t", "\t"])
def test_a_tab_delimiter_by_name_or_as_typed_on_a_shell(tmp_path, delimiter):
    X, _ = D.load(write(tmp_path, "d.txt", "1\t2\t0\n3\t4\t1\n"), delimiter=delimiter)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    assert D.csv_delimiter("d.txt", delimiter) == "\t"


def test_delimiter_errors():
    with pytest.raises(ValueError, match="delimiter must be one character"):
        D.csv_delimiter("d.csv", ";;")
    with pytest.raises(TypeError, match="delimiter must be a string"):
        D.csv_delimiter("d.csv", 9)
    assert D.csv_delimiter("d.csv") == "," and D.csv_delimiter("d.csv", ";") == ";"


def test_text_labels_give_a_string_y(tmp_path):
    p = write(tmp_path, "d.csv", "r,t,diagnosis\n1,2, malignant\n3,4,benign\n5,6,benign\n")
    X, y = D.load(p)
    assert y.dtype.kind == "U" and y.tolist() == ["malignant", "benign", "benign"]
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert X.dtype == np.float64


def test_text_in_a_feature_column_names_the_column_and_row(tmp_path):
    p = write(tmp_path, "bad.csv", "r,colour,y\n1,2,0\n3,red,1\n")
    with pytest.raises(ValueError, match=r"bad.csv: .*column 2 \('colour'\) holds text \('red' on line 3\)"):
        D.load(p)


def test_a_label_column_of_numbers_and_text_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"label column 3 holds text \('x' on line 2\) and numbers"):
        D.load(write(tmp_path, "bad.csv", "1,2,0\n3,4,x\n"))


@pytest.mark.parametrize("text, row, column", [
    ("a,b,y\n1,,0\n3,4,1\n", 2, "column 2 ('b')"),
    ("a,b,y\n1,2,0\n3,NA,1\n", 3, "column 2 ('b')"),
    ("a,b,y\n1,2,0\n\n3,4,1\nNaN,5,0\n", 5, "column 1 ('a')"),  # a blank line still counts as a row
    ("1,2,0\n?,4,1\n", 2, "column 1"),
    ("a,b,y\n1,2,0\n3,4,\n", 3, "column 3 ('y')"),
])
def test_missing_values_name_the_1_based_row_and_column(tmp_path, text, row, column):
    p = write(tmp_path, "holes.csv", text)
    with pytest.raises(ValueError) as exc:
        D.load(p)
    message = str(exc.value)
    assert message.startswith(f"{p}: missing value on line {row}, {column}")


def test_missing_values_dropped_or_kept_for_the_caller_to_impute(tmp_path):
    p = write(tmp_path, "holes.csv", "a,b,y\n1,,0\n3,4,1\nnan,6,0\n7,8,1\n")
    X, y = D.load(p, missing="drop")
    np.testing.assert_array_equal(X, [[3, 4], [7, 8]])
    np.testing.assert_array_equal(y, [1, 1])
    X, y = D.load(p, missing="keep")
    np.testing.assert_array_equal(X, [[1, np.nan], [3, 4], [np.nan, 6], [7, 8]])
    np.testing.assert_array_equal(y, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="missing must be one of"):
        D.load(p, missing="impute")


def test_a_missing_label_cannot_be_kept_and_dropping_everything_is_an_error(tmp_path):
    p = write(tmp_path, "holes.csv", "a,y\n1,0\n2,NA\n")
    with pytest.raises(ValueError, match=r"holes.csv: missing label on line 3, column 2 \('y'\)"):
        D.load(p, missing="keep")
    assert D.load(p, missing="drop")[1].tolist() == [0]
    with pytest.raises(ValueError, match="every row has a missing value"):
        D.load(write(tmp_path, "empty.csv", "a,y\n,0\n2,?\n"), missing="drop")


def test_missing_text_labels_are_dropped(tmp_path):
    p = write(tmp_path, "d.csv", "a,y\n1,benign\n2,\n3,malignant\n")
    X, y = D.load(p, missing="drop")
    assert y.tolist() == ["benign", "malignant"] and X.ravel().tolist() == [1, 3]


def test_a_ragged_row_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"line 3 has 2 fields, the header has 3"):
        D.load(write(tmp_path, "bad.csv", "a,b,y\n1,2,3\n4,5\n"))


def test_load_table_returns_names_and_load_keeps_returning_x_and_y(tmp_path):
    p = write(tmp_path, "d.csv", "a,label,b\n1,0,2.5\n3,1,4\n")
    t = D.load_table(p, label_column="label")
    assert (t.feature_names, t.label_name, t.header) == (["a", "b"], "label", True)
    X, _ = D.load(p, label_column="label")
    np.testing.assert_array_equal(X, t.X)
    t = D.load_table(p, label_column=None, require_labels=False)
    assert t.y is None and t.feature_names == ["a", "label", "b"] and t.label_name is None
    t = D.load_table("digits")
    assert t.X.shape == (1797, 64) and t.feature_names is None and not t.header
    with pytest.raises(ValueError, match="header and missing apply to CSV files"):
        D.load("digits", missing="drop")


# ---------------------------------------------------------------------------------- NPZ contents
@pytest.mark.parametrize("X, y, message", [
    (np.ones((3, 2)) + 1j, np.arange(3), r"X holds complex numbers \(dtype complex128\)"),
    (np.array([["a", "b"]] * 3), np.arange(3), r"X holds text \(dtype <U1\)"),
    (np.ones((3, 2)), np.ones((3, 2)), r"y must be 1-D \(one label per sample\), got shape \(3, 2\)"),
    (np.ones((3, 2)), np.array([0.0, np.nan, 1.0]), r"y holds nan \(sample 2\)"),
    (np.ones((3, 2)), np.array([0, 1, 2]) + 0j, r"y holds complex numbers"),
])
def test_npz_contents_that_cannot_be_data_are_named(tmp_path, X, y, message):
    p = tmp_path / "d.npz"
    np.savez(p, X=X, y=y)
    with pytest.raises(ValueError, match=message) as exc:
        D.load(p)
    assert str(exc.value).startswith(str(p))


def test_npz_text_labels_load(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 2)), y=np.array(["cat", "dog"]))
    assert D.load(tmp_path / "d.npz")[1].tolist() == ["cat", "dog"]


# ---------------------------------------------------------------------------------- scaling near the limits
def test_standard_scaling_near_the_float_limit_does_not_overflow():
    """The same data divided by 1e300 is an ordinary reference: offsets and scales are 1e300 times
    its own, and the scaled values are the same."""
    X = np.array([[1e308, -1e308, 1.0], [-1e308, 1.5e308, 2.0], [5e307, 0.0, 3.0], [1.7e308, -1.7e308, 4.0]])
    s = D.Scaler("standard").fit(X)
    ref = D.Scaler("standard").fit(X / 1e300)
    assert np.isfinite(s.offset).all() and np.isfinite(s.scale).all()
    np.testing.assert_allclose(s.offset[:2], ref.offset[:2] * 1e300, rtol=1e-13)
    np.testing.assert_allclose(s.scale[:2], ref.scale[:2] * 1e300, rtol=1e-13)
    out = s.transform(X, np.float64)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, :2], ref.transform(X / 1e300, np.float64)[:, :2], rtol=1e-13)
    np.testing.assert_allclose(out[:, 2], (X[:, 2] - 2.5) / np.std(X[:, 2]), rtol=1e-15)


def test_standard_scaling_of_ordinary_data_is_the_plain_formula_to_the_last_bit():
    """Dividing by a power of two is exact, so the overflow-safe computation changes no bit."""
    rng = np.random.default_rng(0)
    X = rng.normal(3.0, 7.0, size=(257, 5)) * np.array([1e-3, 1, 1e3, 1e6, 1e-9])
    s = D.Scaler("standard").fit(X)
    np.testing.assert_array_equal(s.offset, X.mean(axis=0))
    np.testing.assert_array_equal(s.scale, X.std(axis=0))
    np.testing.assert_array_equal(s.transform(X, np.float64), (X - X.mean(axis=0)) / X.std(axis=0))
    Xf = np.asfortranarray(X)
    np.testing.assert_array_equal(D.Scaler("standard").fit(Xf).offset, Xf.mean(axis=0))
