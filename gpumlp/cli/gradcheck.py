"""``gpumlp check-gradients``: ``gpumlp.check_gradients`` on a few rows of data, for a saved model (on
its training split, or on --data) or for a new net built from the same options as ``gpumlp train``.
Exit status 1 when a gradient disagrees with central differences."""
from __future__ import annotations

import sys

import numpy as np

from ..backend import resolve
from ..gradcheck import check_gradients
from .evaluate import file_settings, given_options, load_pipeline
from .graph import MODEL_OPTIONS
from .parser import DEFAULTS, UsageError
from .report import json_line
from .settings import prepare, read_for_model, saved_value, train_settings
from .train import build_model

# Options of a new net's data preparation: a saved model brings its own.
NEW_DATA_OPTIONS = ("test_data", "test_labels", "test_size", "validation_split", "scaling", "target_scaling")


def saved_model_batch(args):
    """(MLP, X, y): a saved model with rows of --data (read as evaluate reads them), or of the training
    split of the run that saved it."""
    given = [f"--{k.replace('_', '-')}" for k in MODEL_OPTIONS + NEW_DATA_OPTIONS if getattr(args, k, None) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a new net; "
                         f"{args.model} is a saved model with its own")
    pipeline = load_pipeline(args.model, args.backend)
    mlp = pipeline.named_steps["mlp"]
    if args.data is not None:
        X, y, _ = read_for_model(file_settings(args, pipeline), pipeline, labels=True, given=given_options(args),
                                 command="check-gradients")
        return mlp, pipeline.transform(X), pipeline.encode_targets(y), args.data
    saved = mlp.training_config_
    if not saved:
        raise UsageError(f"{args.model} holds no training settings (not saved by 'gpumlp train'); give --data")
    if given_options(args):
        raise UsageError("data options need --data")
    s = {k: saved_value(saved, k) for k in saved if k != "history"}
    s.update({k: saved_value(saved, k) for k in ("header", "missing", "target_scaling")})
    d = prepare(s, pipeline.preprocessing, mlp.dtype)
    return mlp, d.X_train, d.y_train, f"the training split of {s['data']}"


def new_net_batch(args):
    """(MLP, X, y): a new net from the train options, with rows of the training split of its data."""
    s = train_settings(args, None)
    backend = resolve(args.backend or "auto")
    d = prepare(s)
    q = len(d.classes) if d.classes is not None else (1 if d.y_train.ndim == 1 else d.y_train.shape[1])
    return build_model(s, d.X_train.shape[1], q, backend.name), d.X_train, d.y_train, \
        f"the training split of {s['data']}"


def cmd_check_gradients(args):
    mlp, X, y, source = saved_model_batch(args) if args.model is not None else new_net_batch(args)
    seed = DEFAULTS["seed"] if args.seed is None else args.seed
    rows = np.sort(np.random.default_rng(seed).permutation(X.shape[0])[:args.rows])
    result = check_gradients(mlp, X[rows], y[rows], threshold=args.threshold, eps=args.fd_eps,
                             max_entries=args.max_entries, seed=seed)
    if not args.quiet:
        print(f"{len(rows)} rows of {source}")
        print(result)
    else:
        print(result.summary)
    if args.json:
        print(json_line(dict(result.to_dict(), rows=len(rows), data=source, model_file=args.model)), flush=True)
    if not result.passed:
        names = ", ".join(dict.fromkeys(t.name for t in result.failed))
        print(f"gpumlp check-gradients: {len(result.failed)} of {len(result)} gradients disagree with central "
              f"differences ({names})", file=sys.stderr)
        return 1
    return 0
