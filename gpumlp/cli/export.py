"""``gpumlp export``: a saved model as one ONNX file (``gpumlp.to_onnx``): for a file that ``gpumlp train``
saved, its whole pipeline (imputation, scaling, the MLP, the label names or the targets' units) in one graph."""
from __future__ import annotations

import os
import sys

from ..onnx_export import MIN_OPSET
from ..pipeline import Pipeline, load, to_onnx
from .parser import UsageError
from .report import missing_extra


def export_path(args):
    """--output, else MODEL with the suffix .onnx beside it (never the model file itself, nor a directory)."""
    output = args.output if args.output is not None else os.path.splitext(args.model)[0] + ".onnx"
    if os.path.abspath(output) == os.path.abspath(args.model):
        raise UsageError(f"the ONNX file would overwrite the model {args.model}: name another with --output")
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a directory: name the file to write, e.g. {os.path.join(output, 'model.onnx')}")
    return output


def cmd_export(args):
    output = export_path(args)
    try:
        import onnx
    except ImportError:
        raise missing_extra("gpumlp export", "onnx", "onnx") from None
    newest = onnx.defs.onnx_opset_version()
    if args.opset is not None and not MIN_OPSET <= args.opset <= newest:
        raise UsageError(f"--opset must be from {MIN_OPSET} to {newest} (the newest the installed onnx knows), "
                         f"got {args.opset}")
    model = load(args.model, backend="numpy")  # the weights are read on the host: no GPU needed
    proto = to_onnx(model, output, dtype=args.dtype, opset=args.opset)
    if not args.quiet:
        graph = proto.graph
        outputs = ", ".join(o.name for o in graph.output)
        what = "pipeline" if isinstance(model, Pipeline) else "model"
        print(f"gpumlp export: wrote the {what} of {args.model} to {output} (opset {proto.opset_import[0].version}, "
              f"{args.dtype or 'float32'}): input X [N, {graph.input[0].type.tensor_type.shape.dim[1].dim_value}], "
              f"outputs {outputs}", file=sys.stderr)
    return 0
