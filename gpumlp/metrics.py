"""Scores of outputs against targets, on NumPy or CuPy arrays alike: what ``MLP.score`` reports.

    accuracy(o, y, w)   the (weighted) fraction of rows whose largest output is the label
    subset_accuracy(p, y, w)   the (weighted) fraction of rows whose every predicted label p is right
                        (indicator rows, binary or multilabel: sklearn.metrics.accuracy_score's)
    r2(o, y, w)         R² per output column, averaged uniformly (sklearn.metrics.r2_score's default);
                        1 for a perfectly predicted constant column, 0 for an imperfectly predicted one
    score(loss, o, y, w)   what MLP.score reports for ``loss`` (a functions.Loss): one of the above
"""
from __future__ import annotations

from .backend import array_module


def accuracy(o, y, w=None):
    hit = o.argmax(axis=1) == y
    return float(hit.mean() if w is None else (w * hit).sum() / w.sum())


def subset_accuracy(prediction, y, w=None):
    hit = (prediction == y).all(axis=1)
    return float(hit.mean() if w is None else (w * hit).sum() / w.sum())


def r2(o, y, w=None):
    xp = array_module(o)
    wc = xp.ones((y.shape[0], 1), y.dtype) if w is None else w[:, None]
    ss_res = (wc * (y - o) ** 2).sum(axis=0)
    ss_tot = (wc * (y - (wc * y).sum(axis=0) / wc.sum()) ** 2).sum(axis=0)
    r = xp.where(ss_tot > 0, 1 - ss_res / xp.where(ss_tot > 0, ss_tot, 1), xp.where(ss_res > 0, 0.0, 1.0))
    return float(r.mean())


def score(loss, o, y, w=None):
    """Accuracy (cross-entropy); subset accuracy of the logistic outputs, each label predicted 1 where its
    probability exceeds ½ (binary cross-entropy); R² of the prediction ψ(o) (squared, Poisson)."""
    if loss.name == "cross_entropy":
        return accuracy(o, y, w)
    if loss.is_classification:
        return subset_accuracy(loss.predict(o), y, w)
    return r2(loss.output(o), y, w)
