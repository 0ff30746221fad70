"""Data for training: the embedded digits, loaders for a user's files, a seeded split, feature scaling.

    X, y = load_digits()                                # (1797, 64) uint8 pixels 0..16, labels 0..9
    X, y = load("train-images-idx3-ubyte.gz")           # MNIST IDX; labels file found by its name
    X, y = load("data.csv", label_column="label")       # CSV, label column by name or index
    X, y = load("data.tsv", missing="drop")             # tab-separated; rows with missing values dropped
    table = load_table("data.csv")                      # X, y and the header's feature and label names
    X, y = load("data.npz")                             # NPZ with arrays X and y
    src = stream("big.parquet", memory_budget="256MiB") # larger than memory: read a chunk at a time
    train, test = split_indices(y, 0.2, seed=0)         # the one hold-out rule (stratified, seeded)
    codes = LabelEncoder().fit(y).transform(y)          # class labels -> output indices
    scaler = Scaler("standard").fit(X[train])           # fitted on the training split only
    d = prepare("data.csv", missing="impute")           # a run's data: split, encoded, imputed, scaled

Every loader returns host NumPy arrays (X 2-D, y 1-D or None; y is text, dtype <U, when a CSV's
labels are words) and raises ValueError with the file's name and what is wrong (rows and columns
counted from 1) when a file is not what it claims to be. Only regular files are read: a FIFO or a
device is refused before a byte is read.

One module per job:

    base.py           the Table a loader returns, opening regular files only, error-message helpers
    digits.py         the embedded digits
    idx.py, csvfile.py, npz.py      the file formats
    loading.py        any file by its format (detect_format, load, load_table)
    split.py          the hold-out rule
    labels.py         class labels <-> output indices, class weights
    preprocessing.py  the mean imputer and the scaler
    prepared.py       a run's data (prepare), the data digest, another file's columns by name

    Streamed data (files larger than memory; ``stream``):
    chunks.py         what every streamed format gives: chunks (row groups, blocks of rows) and slices
    parquet.py, npy.py, csvfile.py (CsvSource)      the streamed formats
    rows.py           the missing-value policy and the split's parts, applied as rows are read
    reader.py         the prefetching reader thread and the shuffle buffer
    streaming.py      stream(): the source, its memory plan, its views (parts of the split) and epochs
    statistics.py     the statistics pass (labels, moments, digest, part sizes) and prepare_stream
"""
from .base import EMBEDDED, Table, _open_regular
from .csvfile import csv_columns, csv_delimiter, load_csv, read_csv
from .digits import load_digits
from .idx import load_idx, read_idx
from .labels import LabelEncoder, class_sample_weights
from .loading import FORMATS, detect_format, load, load_table
from .npz import load_npz
from .prepared import MISSING, TARGET_SCALINGS, Prepared, align_columns, data_digest, prepare
from .preprocessing import SCALINGS, MeanImputer, Scaler, scale_targets
from .split import split_indices, split_indices_v1
from .statistics import StreamPrepared, prepare_stream
from .streaming import StreamSource, parse_size, stream

__all__ = ["EMBEDDED", "FORMATS", "MISSING", "SCALINGS", "TARGET_SCALINGS", "Table", "Prepared", "LabelEncoder",
           "MeanImputer", "Scaler", "load_digits", "load", "load_table", "load_csv", "read_csv", "csv_columns",
           "csv_delimiter", "load_idx", "read_idx", "load_npz", "detect_format", "split_indices",
           "split_indices_v1", "class_sample_weights", "scale_targets", "align_columns", "data_digest", "prepare",
           "stream", "StreamSource", "StreamPrepared", "prepare_stream", "parse_size"]
