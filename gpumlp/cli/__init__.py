"""The ``gpumlp`` command: train, evaluate, predict, info, bench.

    gpumlp train                          the lecture's net on the embedded digits (>= 96 % test accuracy)
    gpumlp train --data mnist/train-images-idx3-ubyte.gz --test-data mnist/t10k-images-idx3-ubyte.gz
    gpumlp train --data cancer.csv --label-column diagnosis --missing impute --save model.npz
    gpumlp train --resume model.npz --epochs 80 --save model.npz     continue a saved run up to 80 epochs
    gpumlp evaluate model.npz [--data FILE]          test accuracy (the run's own test split by default)
    gpumlp predict model.npz --data FILE [--output predictions.csv]   columns matched by header name
    gpumlp train --data big.parquet --stream --memory-budget 2GiB     read a chunk at a time (README)
    gpumlp info                           versions, the backend "auto" picks and why, the device
    gpumlp graph -o graph.svg             the lecture's computational graph of the net, with its gradients
    gpumlp check-gradients [MODEL]        every gradient of backpropagation against central differences
    gpumlp export model.npz -o model.onnx the saved model (its whole pipeline) as one ONNX file

Exit status: 0 success, 2 usage errors (bad options), 1 anything else, with a one-line message on
standard error (the traceback too with --debug). With --json the last line of standard output is a
JSON object with the results.

The package, one module per job:

    parser.py     options, their types and defaults          settings.py   a run's settings and data files
    train.py      gpumlp train                                evaluate.py   gpumlp evaluate, gpumlp predict
    info.py       gpumlp info                                 report.py     progress, JSON line, plot, errors
    graph.py      gpumlp graph                                gradcheck.py  gpumlp check-gradients
    export.py     gpumlp export                               streamed.py   --stream: data larger than memory

Data preparation (loading, the split, label encoding, imputation, scaling) is ``gpumlp.data.prepare``;
a run's model and preprocessing are a ``gpumlp.Pipeline``, used through public names only.
``gpumlp bench`` hands its arguments to ``gpumlp.bench``.
"""
from __future__ import annotations

import codecs
import contextlib
import io
import os
import sys

from .evaluate import cmd_evaluate, cmd_predict
from .export import cmd_export
from .gradcheck import cmd_check_gradients
from .graph import cmd_graph
from .info import cmd_info
from .parser import UsageError, build_parser
from .report import Interrupted, describe
from .train import cmd_train

__all__ = ["main", "build_parser"]


def main(argv=None):
    with _printable_streams():
        return _main(argv)


def _escape_unencodable(exc):
    """The error handler of _printable_streams: a character the stream's encoding lacks becomes a
    backslash escape (\\u2202 for ∂); a byte that surrogateescape carried through from an undecodable
    name (a file name on a C locale) goes out as that byte, as surrogateescape itself would write it."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    c = exc.object[exc.start]
    if 0xDC80 <= ord(c) <= 0xDCFF:
        return bytes([ord(c) - 0xDC00]), exc.start + 1
    return c.encode("ascii", "backslashreplace").decode("ascii"), exc.start + 1


codecs.register_error("gpumlp.escape", _escape_unencodable)


@contextlib.contextmanager
def _printable_streams():
    """While a command runs, a character that standard output or error cannot encode (λ, ∂, ε, R² in
    help texts, results and graphs, on an ASCII or Latin-1 locale) is written as a backslash escape
    instead of ending the command with a UnicodeEncodeError; the streams get their own handler back
    after it. (Python's own for standard output is "strict", or "surrogateescape" on a C locale;
    both raise on such characters.)"""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="gpumlp.escape")
            except (ValueError, OSError, io.UnsupportedOperation):  # closed, or not reconfigurable
                continue
            changed.append((stream, errors))
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError, io.UnsupportedOperation):
                stream.reconfigure(errors=errors)


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad options
    debug = getattr(args, "debug", False)
    try:
        return {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "info": cmd_info,
                "graph": cmd_graph, "check-gradients": cmd_check_gradients, "export": cmd_export}[args.command](args)
    except UsageError as exc:
        if debug:
            raise
        parser.print_usage(sys.stderr)
        print(f"gpumlp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (gpumlp predict ... | head): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:  # train says what it saved (Interrupted); the others were reading only
        if debug:
            raise
        what = str(exc) if isinstance(exc, Interrupted) and str(exc) else "interrupted"
        print(f"gpumlp {args.command}: {what}", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback: every failure a user can cause lands here
        if debug:
            raise
        print(f"gpumlp {args.command}: error: {describe(exc, args)}", file=sys.stderr)
        return 1


def _bench(argv):
    try:
        from .. import bench
    except ModuleNotFoundError as exc:
        if exc.name != "gpumlp.bench":
            raise
        print("gpumlp bench: error: this installation has no benchmark module (gpumlp.bench)", file=sys.stderr)
        return 1
    return bench.main(argv)

