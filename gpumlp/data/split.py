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
