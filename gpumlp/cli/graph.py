"""``gpumlp graph``: the lecture's computational graph of a saved model, or of a new net from the
model options (``MLP.graph``), as Graphviz DOT, SVG or PNG."""
from __future__ import annotations

import os
import sys

from ..pipeline import Pipeline, load
from .parser import UsageError
from .report import missing_extra
from .settings import train_settings
from .train import build_model

# The net that the model options describe without data: gpumlp train's on the embedded digits (8×8, 10 classes).
NEW_NET = {"inputs": 64, "outputs": 10}
MODEL_OPTIONS = ("hidden", "activation", "loss", "weight_decay", "bias", "dtype", "inputs", "outputs")
FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}


def model_of(args, extra=()):
    """The MLP of a saved model (any of the model options given with it is an error), or a new one."""
    if args.model is not None:
        given = [f"--{k.replace('_', '-')}" for k in MODEL_OPTIONS + tuple(extra) if getattr(args, k, None) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} a new net; "
                             f"{args.model} is a saved model with its own")
        model = load(args.model, backend="numpy")
        return model.named_steps["mlp"] if isinstance(model, Pipeline) else model
    s = train_settings(args, None)
    d = args.inputs or NEW_NET["inputs"]
    q = args.outputs or (NEW_NET["outputs"] if s["loss"] == "cross_entropy" else 1)
    return build_model(s, d, q, "numpy")  # drawing needs no GPU


def output_format(args):
    if args.format is not None:
        return args.format
    if args.output is None:
        return "dot"
    suffix = os.path.splitext(args.output)[1].lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot tell the format from {args.output!r}: name a .dot, .gv, .svg or .png file, "
                         f"or give --format")
    return FORMATS[suffix]


def cmd_graph(args):
    fmt = output_format(args)
    if fmt == "png":
        if args.output is None and sys.stdout.isatty():
            raise UsageError("a PNG is binary: write it to a file with --output graph.png (or redirect standard "
                             "output)")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise missing_extra("a PNG graph", "matplotlib", "plot") from None
    graph = model_of(args).graph(batch_size=args.batch_size)
    if args.output is not None:
        graph.save(args.output, format=fmt)
        if not args.quiet:
            print(f"gpumlp graph: wrote the {fmt.upper()} graph of {len(graph.nodes)} nodes to {args.output}",
                  file=sys.stderr)
    elif fmt == "png":
        sys.stdout.buffer.write(graph.to_png())
        sys.stdout.flush()
    else:  # DOT and SVG are UTF-8 files, as --output writes them, whatever the locale's encoding
        text = graph.to_dot() if fmt == "dot" else graph.to_svg()
        sys.stdout.flush()
        if hasattr(sys.stdout, "buffer"):
            sys.stdout.buffer.write(text.encode("utf-8"))
        else:  # a text-only stream put in place by the caller
            sys.stdout.write(text)
        sys.stdout.flush()
    return 0
