"""The hold-out rule: a seeded, stratified split of the rows (the command line's test and validation
splits and ``fit``'s early-stopping split), and gpumlp 0.1's rule for the files it saved."""
from __future__ import annotations

import math

import numpy as np


def split_indices(y, fraction, seed=0, stratify=True):
    """Seeded (kept, held_out) indices, each sorted: ``ceil(fraction · n)`` examples held out.

    The one hold-out rule of gpumlp: the command line's test and validation splits and ``fit``'s
    early-stopping split. Stratified (for class labels), each class contributes in proportion to its
    count, the rounding settled by largest remainders so that the total is exact; the members of each
    class are taken in the order of one seeded permutation of all n examples.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {fraction!r}")
    y = np.asarray(y)
    n = y.shape[0]
    n_out = math.ceil(fraction * n)
    if n_out < 1 or n - n_out < 1:
        raise ValueError(f"holding out a fraction {fraction} of {n} examples leaves {n - n_out} to keep and "
                         f"{n_out} to hold out; both must be at least 1")
    perm = np.random.default_rng(seed).permutation(n)
    if stratify:
        classes, idx = np.unique(y[perm], return_inverse=True)
        quota = np.bincount(idx) * n_out / n
        take = np.floor(quota).astype(int)
        take[np.argsort(-(quota - take), kind="stable")[:n_out - take.sum()]] += 1
        held_out = np.concatenate([perm[idx == c][:take[c]] for c in range(len(classes))])
    else:
        held_out = perm[:n_out]
    is_out = np.zeros(n, bool)
    is_out[held_out] = True
    return np.flatnonzero(~is_out), np.flatnonzero(is_out)


def split_indices_v1(y, test_size, seed=0, stratify=True):
    """The command line's split before gpumlp 0.2 (round(test_size · count) per class, each class drawn
    in turn from one generator), kept only so that model files trained with it evaluate and resume on
    the same test split. New runs use ``split_indices``."""
    y = np.asarray(y)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    if stratify:
        test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:int(round(test_size * np.sum(y == c)))]
                                       for c in np.unique(y)]))
    else:
        test = np.sort(rng.permutation(n)[:int(round(test_size * n))])
    mask = np.ones(n, bool)
    mask[test] = False
    train = np.flatnonzero(mask)
    if train.size == 0 or test.size == 0:
        raise ValueError(f"test_size={test_size} leaves an empty {'training' if train.size == 0 else 'test'} "
                         f"set with {n} samples")
    return train, test


# ---------------------------------------------------------------------------------- the streamed split
# A streamed file is split without an index of its rows: each row's part follows from its chunk (a row
# group, a block of rows fixed by the file), its stratum (its class, or one stratum for regression) and
# its rank among that stratum's rows in the chunk. See ``StreamSplit``.
_GOLDEN = 0x9E3779B97F4A7C15
_PURPOSES = {"test": 0x7465737400000000, "validation": 0x76616C6964000000}


def _mix64(x):
    """splitmix64's finaliser on a uint64 array: a bijection whose output bits all depend on every input bit."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(key, t):
    """Seeded uniforms in [0, 1), one per entry of ``t`` (uint64 counters) under the uint64 ``key``."""
    with np.errstate(over="ignore"):
        bits = _mix64(_mix64(np.asarray(t, np.uint64) * np.uint64(_GOLDEN)) ^ np.uint64(key))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def stratum_keys(labels):
    """A uint64 key per label (numbers by their float64 value, so that 3 and 3.0 agree; text by a hash of
    its UTF-8 bytes): what the streamed split stratifies by."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "O":  # Python objects: numbers keyed as numbers, anything else as text
        try:
            labels = labels.astype(np.float64)
        except (TypeError, ValueError):
            labels = labels.astype(str)
    if labels.dtype.kind in "US":
        import hashlib

        return np.array([int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                         for v in labels.tolist()], np.uint64)
    values = np.asarray(labels, np.float64) + 0.0  # + 0.0: -0.0 is 0.0
    return values.view(np.uint64).copy()


def window_held(j, fraction, key):
    """Which members ``j`` (0-based ranks in a stratum, int64) a fraction is held out of: "jittered
    systematic sampling". With φ a seeded phase in [0, 1), member j lies in window t = ⌊f·j + φ⌋; each
    window (the indices i with ⌊f·i + φ⌋ = t: ⌊1/f⌋ or ⌈1/f⌉ of them, window 0 starting below 0) holds
    out one index, at a seeded uniform position in it, so that window 0 holds out a member with the
    probability of its share. The first m members hold out f·m in expectation, and always less than two
    from it: only window 0 and the window of member m − 1 are partly seen, each off by less than one
    (a window's own position is uniform, so a bound of one would need aligned windows, whose
    expectation is not f·m where 1/f is not an integer). Each decision is made online from j alone."""
    j = np.asarray(j, np.int64)
    if j.size == 0:
        return np.zeros(0, bool)
    f, phi = float(fraction), float(_uniform(key, np.zeros(1, np.uint64))[0])

    def window(m):
        return np.floor(f * m + phi)

    def first(t):  # the first index of window t, exactly as window() rounds (window 0 starts below 0)
        a = np.ceil((t - phi) / f)
        for _ in range(2):
            a = np.where(window(a - 1) >= t, a - 1, a)
            a = np.where(window(a) < t, a + 1, a)
        return a

    t = window(j)
    a, b = first(t), first(t + 1)
    position = a + np.floor(_uniform(key, t.astype(np.uint64) + np.uint64(1)) * (b - a))
    return j == position.astype(np.int64)


class StreamSplit:
    """The streamed test and validation split: a seeded rule that needs no index of the rows.

    Within each chunk (a Parquet row group, a block of rows of an .npy or CSV file: fixed by the file,
    not by the memory budget or the number of ranks), the rows of each stratum (class label; one
    stratum for regression) are ranked in file order, and ``window_held`` holds out ``test_size`` of
    them; the validation split holds out ``validation_split`` of the stratum's remaining (training)
    rows the same way, under another key. Each chunk and class is thus split in proportion up to less
    than two rows, so the whole split is stratified and its sizes are within 2 × (chunks × classes)
    rows of the fractions, in expectation exact (the errors of the chunks are independent, of mean 0). The part of a row depends on the seed, its chunk, its label and
    its rank only: any reader of a chunk (another epoch, another rank, ``gpumlp evaluate``) finds it again.

    ``assign(chunk, keys, counters)`` -> parts (0 train, 1 validation, 2 test) for the next rows of a
    chunk, their stratum ``keys`` (``stratum_keys``); ``counters`` (a dict kept per chunk by the caller:
    stratum -> rows and training rows seen so far) carries the ranks across the slices of one chunk.
    """

    TRAIN, VALIDATION, TEST = 0, 1, 2

    def __init__(self, test_size=0.0, validation_split=0.0, seed=0):
        for name, v in (("test_size", test_size), ("validation_split", validation_split)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {v!r}")
        self.test_size, self.validation_split, self.seed = float(test_size), float(validation_split), int(seed)

    def _key(self, chunk, stratum, purpose):
        k = _mix64(np.array([self.seed & (2**64 - 1)], np.uint64)) ^ np.uint64(_PURPOSES[purpose])
        k = _mix64(k ^ np.uint64(chunk & (2**64 - 1)))
        return int(_mix64(k ^ np.uint64(stratum))[0])

    def assign(self, chunk, keys, counters):
        keys = np.asarray(keys, np.uint64)
        parts = np.zeros(keys.shape[0], np.int8)
        if not (self.test_size or self.validation_split) or keys.size == 0:
            return parts
        strata, inverse = np.unique(keys, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=strata.size))))
        for s, stratum in enumerate(strata.tolist()):
            rows = order[bounds[s]:bounds[s + 1]]
            seen, trained = counters.get(stratum, (0, 0))
            test = np.zeros(rows.size, bool)
            if self.test_size:
                test = window_held(seen + np.arange(rows.size), self.test_size, self._key(chunk, stratum, "test"))
            train = rows[~test]
            parts[rows[test]] = self.TEST
            if self.validation_split:
                val = window_held(trained + np.arange(train.size), self.validation_split,
                                  self._key(chunk, stratum, "validation"))
                parts[train[val]] = self.VALIDATION
            counters[stratum] = (seen + rows.size, trained + train.size)
        return parts

    def to_json(self):
        return {"rule": "stream-windows-v1", "test_size": self.test_size,
                "validation_split": self.validation_split, "seed": self.seed}
