"""The lecture's computational graph of a model, with the backward pass beside it.

The lecture draws forward propagation as a graph: variables as boxes, operators as circles, arrows
as data flow (x, W1 → z → h, W2 → o, y → L; W1, W2 → s; L, s → J). ``graph(model)`` (``MLP.graph``)
draws it for any model (any depth, with or without biases, each layer's activation), with the shape
of every tensor for a batch size, and beside each variable that backpropagation differentiates its
gradient, labelled with the lecture's name (∂J/∂o, ∂J/∂W2, ∂J/∂h, ∂J/∂z, ∂J/∂W1; per layer for deeper
nets, ∂J/∂b with biases), the lecture's formula for it, and what computes it: the reference function
(``gpumlp.functions``), the training step's ``Ops`` method (``gpumlp.ops``) and what the GPU runs
(cuBLAS, or our kernels in ``kernels/``).

    g = model.graph(batch_size=32)      # a Graph: g.nodes, g.edges (shapes for B = 32; None: "B")
    g.to_dot()                          # Graphviz DOT text (dot -Tpng graph.dot > graph.png)
    g.to_svg()                          # SVG laid out here: no Graphviz needed (Jupyter shows g inline)
    g.to_png("graph.png")               # PNG through matplotlib (pip install "gpumlp[plot]")
    g.save("graph.svg")                 # .dot / .gv, .svg or .png, by the suffix

Names follow the lecture: x, W1, z, h, W2, o, y, L, s, J for one hidden layer; z1, h1, ..., zk, hk for
k hidden layers; b1, b2, ... with biases. The names of functions and kernels are read from the
code's own tables (``functions.ACTIVATIONS``/``LOSSES``, the ``Ops`` interface, ``_kernels.ELEMENTWISE``
and ``RAW_KERNELS``), so a renamed kernel cannot leave a stale name here: looking it up fails.

Layout (SVG and PNG; DOT asks Graphviz for the same columns): one column per step of the forward
chain, four rows. Row 0 holds the regulariser (‖·‖² and s), row 1 the parameters with their gradients
beside them (∂J/∂W left of W, ∂J/∂b right of b), row 2 the forward chain x → ... → J, row 3 the
gradients of the chain's variables under them, the backward pass running right to left, and y under
the loss. No edge crosses a node.
"""
from __future__ import annotations

import html
import numbers
import os
import re
from dataclasses import dataclass, field

from . import _kernels
from . import functions as F
from .io import atomic_write
from .ops import Ops

__all__ = ["Edge", "Graph", "Layout", "Node", "gradient_name", "graph", "lecture_name"]

# What CupyOps runs for the matrix products (gpumlp/_cupy_ops.py); tests/test_graph.py records a
# CupyOps step on a stand-in and holds this table, and every kernel name below, to what it launched.
CUBLAS = {"linear": "cuBLAS gemm", "weight_grad": "cuBLAS gemm", "input_grad": "cuBLAS gemm", "bias_grad": "cuBLAS gemv"}
GRADIENT_COLOR = "#b03a2e"
GRADIENT_FILL = "#fdf2f0"
VARIABLE_FILL = "#eef3fb"


@dataclass(frozen=True)
class Node:
    """A variable (box), an operator (circle) or a gradient (dashed box) of the graph.

    ``label`` is the lecture's name (or the operator's symbol), ``shape`` the tensor's shape (ints,
    or "B" for the batch; () for a scalar; None for an operator), ``lines`` the text under the label
    (formula, what computes it), ``computed_by`` the same as data: {"reference": ..., "step": ...,
    "gpu": (...)}, ``of`` the variable a gradient belongs to, (``row``, ``col``) its place in the grid."""

    id: str
    kind: str
    label: str
    shape: tuple | None
    row: int
    col: int
    lines: tuple = ()
    computed_by: dict = field(default_factory=dict, compare=False)
    of: str | None = None

    @property
    def text(self):
        """Every line the node shows: the label, the shape (for tensors), then ``lines``."""
        head = [self.label] + ([] if self.shape is None else [shape_text(self.shape)])
        return tuple(head) + tuple(self.lines)


@dataclass(frozen=True)
class Edge:
    """``tail`` → ``head``: "forward" (data flow), "backward" (the gradient flowing back) or
    "gradient" (a variable and its gradient, undirected)."""

    tail: str
    head: str
    kind: str


def shape_text(shape):
    if shape == ():
        return "scalar"
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def lecture_name(kind, layer, n_layers):
    """The lecture's name of a tensor: kind "W"/"b" of layer ``layer`` (0-based, of ``n_layers``
    linear layers) is W1, b1, ...; kind "z"/"h" of hidden layer ``layer`` is z, h with one hidden
    layer (the lecture's net) and z1, h1, ... with more."""
    if kind in ("W", "b"):
        return f"{kind}{layer + 1}"
    return kind if n_layers == 2 else f"{kind}{layer + 1}"


def gradient_name(variable):
    return f"∂J/∂{variable}"


# ------------------------------------------------------------------------------ what computes what
def _reference(function):
    return f"functions.{function.__name__}"


def _step(method):
    return getattr(Ops, method).__qualname__  # AttributeError if the interface renamed it


def _elementwise(name):
    """``name`` of _kernels.ELEMENTWISE and the __device__ functions its operation calls."""
    _, _, operation = _kernels.ELEMENTWISE[name]
    devices = [f for f in re.findall(r"\bgpumlp_\w+", operation) if f != name]
    return f"{name} ({', '.join(devices)})"


def _raw(function, dtype):
    """The RawKernel ``function`` for ``dtype`` and its .cu file, from _kernels.RAW_KERNELS."""
    for cu_name, functions in _kernels.RAW_KERNELS.items():
        if function in functions:
            return f"{function}{_kernels.DTYPE_SUFFIX[str(dtype)]} ({cu_name})"
    raise KeyError(f"no gpumlp kernel named {function!r} in gpumlp._kernels.RAW_KERNELS")


def _computed_by(reference, step, gpu, decay=None):
    by = {"reference": reference, "step": step, "gpu": tuple(gpu)}
    if decay is not None:
        by["decay"] = decay
    return by


def _lines(by):
    return (f"reference: {by['reference']}", f"step: {by['step']}", *(f"GPU: {g}" for g in by["gpu"]),
            *([by["decay"]] if "decay" in by else []))


def _decay_line(model):
    """Where the step adds λW to ∂L/∂W (the update's pass over θ, not the backward pass)."""
    opt = model.optimizer
    if getattr(opt, "foldable", False):
        return "+λW: folded into the gemm (plain SGD)"
    kernel = f"gpumlp_{opt.name}_update"
    if any(kernel in fns for fns in _kernels.RAW_KERNELS.values()):
        return f"+λW: {_raw(kernel, model.dtype)}"
    return "+λW: Step.objective_gradient"


# ------------------------------------------------------------------------------ the graph
class _Builder:
    def __init__(self, model, batch_size):
        self.model, self.B = model, "B" if batch_size is None else batch_size
        self.nodes, self.edges = [], []

    def node(self, id, kind, label, shape, row, col, lines=(), computed_by=None, of=None):
        self.nodes.append(Node(id, kind, label, None if shape is None else tuple(shape), row, col, tuple(lines),
                               computed_by or {}, of))
        return id

    def edge(self, tail, head, kind="forward"):
        self.edges.append(Edge(tail, head, kind))

    def gradient(self, variable, shape, row, col, formula, by):
        gid = self.node(f"grad:{variable}", "gradient", gradient_name(variable), shape, row, col,
                        (f"= {formula}", *_lines(by)), by, of=variable)
        self.edge(variable, gid, "gradient")
        return gid

    def build(self):
        m, B = self.model, self.B
        sizes, n_layers, dtype, lam = m.sizes, m.n_layers, m.dtype, m.weight_decay
        a, col = self.node("x", "variable", "x", (B, sizes[0]), 2, 0), 0
        chain = []  # per layer (index, its input's name, W's name, its output's name, the input's column)
        weights = []
        for l in range(n_layers):
            out = sizes[l + 1]
            W = lecture_name("W", l, n_layers)
            weights.append(W)
            op = self.node(f"op:linear{l + 1}", "operator", "×+" if m.bias else "×", None, 2, col + 1,
                           computed_by=_computed_by(_reference(F.linear_forward), _step("linear"), [CUBLAS["linear"]]))
            self.node(W, "variable", W, (out, sizes[l]), 1, col + 1)
            self.edge(a, op)
            self.edge(W, op)
            if m.bias:
                b = lecture_name("b", l, n_layers)
                self.node(b, "variable", b, (out,), 1, col + 2)
                self.edge(b, op)
            last = l == n_layers - 1
            pre = "o" if last else lecture_name("z", l, n_layers)
            self.node(pre, "variable", pre, (B, out), 2, col + 2)
            self.edge(op, pre)
            chain.append((l, a, W, pre, col))
            if not last:
                act = m.activations[l]
                phi = self.node(f"op:phi{l + 1}", "operator", "φ", None, 2, col + 3,
                                lines=(act,), computed_by=_computed_by(
                                    _reference(F.ACTIVATIONS[act].forward), _step("act_forward"),
                                    [_elementwise(f"gpumlp_{act}_forward")]))
                self.edge(pre, phi)
                a = self.node(lecture_name("h", l, n_layers), "variable", lecture_name("h", l, n_layers),
                              (B, out), 2, col + 4)
                self.edge(phi, a)
                col += 4
        col += 2  # o's column
        loss = F.LOSSES[m.loss]
        loss_kernel = _raw(f"gpumlp_{m.loss}", dtype)
        self.node("op:loss", "operator", "l", None, 2, col + 1, lines=(m.loss,), computed_by=_computed_by(
            _reference(loss.forward), _step("loss_grad"), [loss_kernel]))
        self.node("y", "variable", "y", (B,) if m.loss == "cross_entropy" else (B, sizes[-1]), 3, col + 1,
                  lines=("labels",) if m.loss == "cross_entropy" else ("targets",))
        self.node("L", "variable", "L", (), 2, col + 2)
        self.node("op:regulariser", "operator", "‖·‖²", None, 0, col + 2, lines=("λ/2 Σ‖W‖²",),
                  computed_by=_computed_by(_reference(F.regulariser), _step("sq_norm"), [_raw("gpumlp_sum", dtype)]))
        self.node("s", "variable", "s", (), 0, col + 3, lines=(f"λ = {lam:g}",))
        self.node("op:sum", "operator", "+", None, 2, col + 3,
                  computed_by=_computed_by("MLP.forward", "Step.gradients", []))
        self.node("J", "variable", "J", (), 2, col + 4, lines=("objective",))
        for tail, head in (("o", "op:loss"), ("y", "op:loss"), ("op:loss", "L"), ("L", "op:sum"),
                           *((W, "op:regulariser") for W in weights), ("op:regulariser", "s"), ("s", "op:sum"),
                           ("op:sum", "J")):
            self.edge(tail, head)
        self.backward(chain, loss, loss_kernel)
        return Graph(tuple(self.nodes), tuple(self.edges), _title(m, self.B))

    def backward(self, chain, loss, loss_kernel):
        """The gradients, output layer first, as MLP.backward computes them."""
        m = self.model
        n_layers, lam = m.n_layers, m.weight_decay
        upstream = self.gradient("o", (self.B, m.sizes[-1]), 3, chain[-1][4] + 2, "∂L/∂o", _computed_by(
            _reference(loss.backward), _step("loss_grad"), [loss_kernel]))
        for l, a, W, pre, col in reversed(chain):
            d = gradient_name(pre)
            weight_formula = f"{d} {a}ᵀ" + (f" + λ{W}" if lam else "")
            self.gradient(W, (m.sizes[l + 1], m.sizes[l]), 1, col, weight_formula, _computed_by(
                _reference(F.linear_backward), _step("weight_grad"), [CUBLAS["weight_grad"]],
                _decay_line(m) if lam else None))
            if m.bias:
                b = lecture_name("b", l, n_layers)
                self.gradient(b, (m.sizes[l + 1],), 1, col + 3, f"Σ over the batch of {d}", _computed_by(
                    _reference(F.linear_backward), _step("bias_grad"), [CUBLAS["bias_grad"]]))
            if l == 0:
                break
            act = m.activations[l - 1]
            h, z = lecture_name("h", l - 1, n_layers), lecture_name("z", l - 1, n_layers)
            dh = self.gradient(h, (self.B, m.sizes[l]), 3, col, f"{W}ᵀ {d}", _computed_by(
                _reference(F.linear_backward), _step("input_grad"), [CUBLAS["input_grad"]]))
            self.edge(upstream, dh, "backward")
            dz = self.gradient(z, (self.B, m.sizes[l]), 3, col - 2, f"{gradient_name(h)} ⊙ {act}′({z})",
                               _computed_by(_reference(F.ACTIVATIONS[act].backward), _step("act_backward"),
                                            [_elementwise(f"gpumlp_{act}_backward")]))
            self.edge(dh, dz, "backward")
            upstream = dz


def _title(m, B):
    acts = ", ".join(dict.fromkeys(m.activations)) or "no hidden layer"
    return (f"MLP {m.sizes} ({acts}; {m.loss}; λ = {m.weight_decay:g}; {'bias' if m.bias else 'no bias'}; "
            f"{m.dtype.name}), batch of {B}")


def graph(model, batch_size=None):
    """The computational graph of ``model`` (a ``gpumlp.MLP``) for batches of ``batch_size`` rows
    (None: shapes say "B"). See the module docstring."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    for attribute in ("sizes", "activations", "loss", "bias", "weight_decay", "dtype", "optimizer"):
        if not hasattr(model, attribute):
            raise TypeError(f"graph needs a gpumlp.MLP, got {type(model).__name__}")
    return _Builder(model, None if batch_size is None else int(batch_size)).build()


# ------------------------------------------------------------------------------ Graph and its outputs
@dataclass(frozen=True)
class Graph:
    """The graph: ``nodes`` (``Node``), ``edges`` (``Edge``) and a ``title``; see the module docstring."""

    nodes: tuple
    edges: tuple
    title: str

    def node(self, id):
        for n in self.nodes:
            if n.id == id:
                return n
        raise KeyError(id)

    def to_dot(self):
        """Graphviz DOT text (UTF-8): the same nodes, edges and columns as the SVG."""
        out = [f"digraph {_dot_id('mlp')} {{",
               (f"  graph [rankdir=LR, newrank=true, nodesep=0.3, ranksep=0.35, fontname=\"monospace\", "
                f"labelloc=t, label={_dot_id(self.title)}];"),
               '  node [fontname="monospace", fontsize=11];',
               '  edge [fontname="monospace", arrowsize=0.7];']
        for n in self.nodes:
            out.append(f"  {_dot_id(n.id)} [{_dot_attrs(_dot_style(n))}];")
        for e in self.edges:
            out.append(f"  {_dot_id(e.tail)} -> {_dot_id(e.head)} [{_dot_attrs(_DOT_EDGE[e.kind])}];")
        for col in sorted({n.col for n in self.nodes}):  # the layout's columns as Graphviz ranks
            ids = " ".join(_dot_id(n.id) + ";" for n in sorted(self.nodes, key=lambda n: n.row) if n.col == col)
            out.append(f"  {{rank=same; {ids}}}")
        out.append("}")
        return "\n".join(out) + "\n"

    def layout(self):
        """The pixel geometry that the SVG and the PNG draw (a ``Layout``)."""
        return _layout(self)

    def to_svg(self):
        """An SVG document (UTF-8 text), laid out here: ``<g class="node KIND" id=...>`` per node and
        ``<g class="edge KIND">`` per edge, each with a ``<title>``."""
        return _svg(self)

    def _repr_svg_(self):  # Jupyter draws the graph inline
        return self.to_svg()

    def to_png(self, path=None, dpi=100):
        """A PNG of the same drawing through matplotlib; written to ``path`` when given. Returns the bytes."""
        data = _png(self, dpi)
        if path is not None:
            _write(path, data)
        return data

    def save(self, path, format=None):
        """Write the graph to ``path`` as "dot", "svg" or "png" (``format``, else from the suffix:
        .dot/.gv, .svg, .png), atomically."""
        fmt = format or _format_of(path)
        if fmt not in ("dot", "svg", "png"):
            raise ValueError(f"unknown graph format {fmt!r}; use dot, svg or png")
        data = self.to_png() if fmt == "png" else (self.to_dot() if fmt == "dot" else self.to_svg()).encode()
        _write(path, data)
        return fmt


def _format_of(path):
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    formats = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}
    if suffix not in formats:
        raise ValueError(f"cannot tell the graph format from {os.fspath(path)!r}: name a .dot, .gv, .svg or "
                         f".png file, or give the format")
    return formats[suffix]


def _write(path, data):
    atomic_write(path, lambda f: f.write(data))


# ------------------------------------------------------------------------------ DOT
_DOT_EDGE = {
    "forward": {"class": "forward"},
    "backward": {"class": "backward", "style": "dashed", "color": GRADIENT_COLOR, "constraint": "false"},
    "gradient": {"class": "gradient", "style": "dotted", "arrowhead": "none", "color": "gray50",
                 "constraint": "false"},
}


def _dot_style(n):
    label = "\\n".join(_dot_escape(t) for t in n.text)
    if n.kind == "operator":
        style = {"shape": "circle", "label": _dot_escape(n.label), "xlabel": "\\n".join(map(_dot_escape, n.lines)),
                 "fixedsize": "false"}
    elif n.kind == "gradient":
        style = {"shape": "box", "style": "dashed,filled", "color": GRADIENT_COLOR, "fontcolor": GRADIENT_COLOR,
                 "fillcolor": GRADIENT_FILL, "label": label}
    else:
        style = {"shape": "box", "style": "filled", "fillcolor": VARIABLE_FILL, "label": label}
    style["class"] = n.kind
    if n.computed_by:
        style["tooltip"] = "\\n".join(_dot_escape(t) for t in _lines(n.computed_by))
    return style


def _dot_escape(text):
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dot_id(text):
    return '"' + _dot_escape(text) + '"'


def _dot_attrs(attrs):
    # values are escaped already (labels keep their \n line breaks), so they are quoted as they are
    return ", ".join(f'{k}="{v}"' for k, v in attrs.items())


# ------------------------------------------------------------------------------ layout (SVG, PNG)
FONT = 12  # px, monospace: a character is 0.6 em wide
CAPTION = 10
CHAR = 0.6
LINE = 16
PAD = 8
HGAP, VGAP, MARGIN = 26, 40, 16
CHAIN_ROW = 2


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a graph: per node its shape's centre and size (cx, cy, w, h), the box of its
    caption (x0, y0, x1, y1; operators only), per edge a polyline from the tail's shape to the head's,
    and the drawing's width and height."""

    shapes: dict
    captions: dict
    paths: tuple
    width: float
    height: float


def _shape_size(n):
    if n.kind == "operator":
        r = max(15.0, CHAR * FONT * len(n.label) / 2 + 7)
        return 2 * r, 2 * r
    width = max(len(t) for t in n.text) * CHAR * FONT + 2 * PAD
    return max(width, 44.0), len(n.text) * LINE + PAD


def _caption_size(n):
    if n.kind != "operator" or not n.lines:
        return 0.0, 0.0
    return max(len(t) for t in n.lines) * CHAR * CAPTION, len(n.lines) * (CAPTION + 2) + 3


def _captions_above(g):
    """Operators with an input from below (y into the loss) carry their caption above the circle."""
    rows = {n.id: n.row for n in g.nodes}
    return {e.head for e in g.edges if rows[e.tail] > rows[e.head] and e.kind == "forward"}


def _layout(g):
    size = {n.id: _shape_size(n) for n in g.nodes}
    cap = {n.id: _caption_size(n) for n in g.nodes}
    above = _captions_above(g)
    cols, rows = sorted({n.col for n in g.nodes}), sorted({n.row for n in g.nodes})
    x, cx = MARGIN, {}
    for c in range(cols[0], cols[-1] + 1):
        w = max((max(size[n.id][0], cap[n.id][0]) for n in g.nodes if n.col == c), default=0.0)
        cx[c] = x + w / 2
        x += w + HGAP
    y, cy_of = MARGIN + LINE + 10, {}  # below the title
    for r in range(rows[0], rows[-1] + 1):
        members = [n for n in g.nodes if n.row == r]
        if not members:
            continue
        cap_up = max((cap[n.id][1] for n in members if n.id in above), default=0.0)
        cap_down = max((cap[n.id][1] for n in members if n.id not in above), default=0.0)
        tallest = max(size[n.id][1] for n in members)
        for n in members:
            # The forward chain is centred on one line; the other rows hang from their top, so that an
            # edge leaving a node's top or bottom clears every node beside it.
            cy_of[n.id] = y + cap_up + (tallest / 2 if r == CHAIN_ROW else size[n.id][1] / 2)
        y += cap_up + tallest + cap_down + VGAP
    shapes = {n.id: (cx[n.col], cy_of[n.id], *size[n.id]) for n in g.nodes}
    captions = {}
    for n in g.nodes:
        w, h = cap[n.id]
        if h:
            x0, top = shapes[n.id][0] - w / 2, shapes[n.id][1] - shapes[n.id][3] / 2
            y0 = top - h if n.id in above else top + shapes[n.id][3]
            captions[n.id] = (x0, y0, x0 + w, y0 + h)
    kinds = {n.id: n.kind for n in g.nodes}
    rows_of = {n.id: n.row for n in g.nodes}
    paths = tuple(_route(shapes[e.tail], kinds[e.tail], rows_of[e.tail], shapes[e.head], kinds[e.head],
                         rows_of[e.head]) for e in g.edges)
    return Layout(shapes, captions, paths, x - HGAP + MARGIN, y - VGAP + MARGIN)


def _route(a, kind_a, row_a, b, kind_b, row_b):
    """The polyline of one edge. Straight from shape to shape, except the parameters' edges up into the
    regulariser (row 1 to row 0): up from the parameter's top, then along the regulariser's centre line
    into its left side, so that they pass over the nodes of row 1 instead of through them."""
    if row_a == 1 and row_b == 0:
        start = (a[0], a[1] - a[3] / 2)
        return (start, (a[0], b[1]), _boundary(b, kind_b, (a[0], b[1])))
    return (_boundary(a, kind_a, b[:2]), _boundary(b, kind_b, a[:2]))


def _boundary(geom, kind, towards):
    """The point where the segment from the shape's centre towards ``towards`` leaves the shape."""
    cx, cy, w, h = geom
    dx, dy = towards[0] - cx, towards[1] - cy
    if dx == dy == 0:
        return cx, cy
    if kind == "operator":
        d = (dx * dx + dy * dy) ** 0.5
        return cx + dx * w / 2 / d, cy + dy * w / 2 / d
    t = min((w / 2) / abs(dx) if dx else float("inf"), (h / 2) / abs(dy) if dy else float("inf"))
    return cx + dx * t, cy + dy * t


# ------------------------------------------------------------------------------ SVG
_STROKE = {"forward": "#222", "backward": GRADIENT_COLOR, "gradient": "#888"}


def _svg(g):
    lay = _layout(g)
    esc = html.escape
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" height="{lay.height:.0f}" '
            f'viewBox="0 0 {lay.width:.1f} {lay.height:.1f}" '
            f'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="{FONT}">'),
           f"<title>{esc(g.title)}</title>",
           "<defs>",
           *(f'<marker id="arrow-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             f'orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="{_STROKE[k]}"/></marker>'
             for k in ("forward", "backward")),
           "</defs>",
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text class="title" x="{MARGIN}" y="{MARGIN + FONT}" font-weight="bold">{esc(g.title)}</text>']
    for e, path in zip(g.edges, lay.paths):
        style = {"forward": 'marker-end="url(#arrow-forward)"',
                 "backward": 'stroke-dasharray="6 4" marker-end="url(#arrow-backward)"',
                 "gradient": 'stroke-dasharray="2 3"'}[e.kind]
        d = " L ".join(f"{x:.1f},{y:.1f}" for x, y in path)
        out.append(f'<g class="edge {e.kind}"><title>{esc(e.tail)}-&gt;{esc(e.head)}</title>'
                   f'<path d="M {d}" fill="none" stroke="{_STROKE[e.kind]}" stroke-width="1.2" {style}/></g>')
    for n in g.nodes:
        cx, cy, w, h = lay.shapes[n.id]
        parts = [f'<g class="node {n.kind}" id="{esc(_svg_id(n.id))}"><title>{esc(n.id)}</title>']
        if n.computed_by:
            parts.append(f"<desc>{esc(chr(10).join(_lines(n.computed_by)))}</desc>")
        if n.kind == "operator":
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{w / 2:.1f}" fill="white" stroke="#222"/>')
            parts.append(_svg_text([n.label], cx, cy + 0.35 * FONT, FONT, "#222"))
            if n.id in lay.captions:
                y0 = lay.captions[n.id][1]
                parts.append(_svg_text(n.lines, cx, y0 + CAPTION, CAPTION, "#555", step=CAPTION + 2, css="caption"))
        else:
            gradient = n.kind == "gradient"
            dash = ' stroke-dasharray="5 3"' if gradient else ""
            stroke, fill = (GRADIENT_COLOR, GRADIENT_FILL) if gradient else ("#222", VARIABLE_FILL)
            parts.append(f'<rect x="{cx - w / 2:.1f}" y="{cy - h / 2:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'rx="3" fill="{fill}" stroke="{stroke}"{dash}/>')
            parts.append(_svg_text(n.text, cx, cy - h / 2 + PAD / 2 + FONT, FONT, stroke, bold_first=True))
        parts.append("</g>")
        out.append("".join(parts))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_id(node_id):
    return "node-" + re.sub(r"[^A-Za-z0-9_-]", "_", node_id)


def _svg_text(lines, x, y, size, color, step=LINE, bold_first=False, css=None):
    esc = html.escape
    spans = []
    for i, t in enumerate(lines):
        weight = ' font-weight="bold"' if bold_first and i == 0 else ""
        spans.append(f'<tspan x="{x:.1f}" y="{y + i * step:.1f}"{weight}>{esc(str(t))}</tspan>')
    klass = f' class="{css}"' if css else ""
    return f'<text{klass} text-anchor="middle" font-size="{size}" fill="{color}">{"".join(spans)}</text>'


# ------------------------------------------------------------------------------ PNG (matplotlib)
def _png(g, dpi):
    try:
        import matplotlib
    except ImportError:
        raise ImportError('a PNG of the graph needs matplotlib, which is not installed: pip install "gpumlp[plot]" '
                          "(or write SVG or DOT instead, e.g. graph.save('graph.svg'); Graphviz renders the DOT: "
                          "dot -Tpng graph.dot -o graph.png)") from None
    import io as _io

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch, Rectangle

    lay = _layout(g)
    fig = Figure(figsize=(lay.width / dpi, lay.height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, lay.width)
    ax.set_ylim(lay.height, 0)
    ax.axis("off")
    pt = 72.0 / dpi  # font sizes in points for sizes given in pixels
    mono = {"family": "monospace"}
    ax.text(MARGIN, MARGIN + FONT, g.title, fontsize=FONT * pt, fontweight="bold", va="baseline", **mono)
    for e, path in zip(g.edges, lay.paths):
        color = _STROKE[e.kind]
        style = {"forward": "solid", "backward": (0, (6, 4)), "gradient": (0, (2, 3))}[e.kind]
        xs, ys = zip(*path)
        ax.plot(xs[:-1], ys[:-1], color=color, linestyle=style, linewidth=1.2)  # all but the last segment
        ax.add_patch(FancyArrowPatch(path[-2], path[-1], arrowstyle="-" if e.kind == "gradient" else "-|>",
                                     mutation_scale=10, color=color, linestyle=style, linewidth=1.2,
                                     shrinkA=0, shrinkB=0))
    for n in g.nodes:
        cx, cy, w, h = lay.shapes[n.id]
        if n.kind == "operator":
            ax.add_patch(Circle((cx, cy), w / 2, facecolor="white", edgecolor="#222", linewidth=1.0, zorder=2))
            ax.text(cx, cy, n.label, ha="center", va="center", fontsize=FONT * pt, zorder=3, **mono)
            if n.id in lay.captions:
                y0 = lay.captions[n.id][1]
                for i, t in enumerate(n.lines):
                    ax.text(cx, y0 + CAPTION + i * (CAPTION + 2), t, ha="center", va="baseline",
                            fontsize=CAPTION * pt, color="#555", **mono)
            continue
        gradient = n.kind == "gradient"
        color = GRADIENT_COLOR if gradient else "#222"
        ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, facecolor=GRADIENT_FILL if gradient else VARIABLE_FILL,
                               edgecolor=color, linestyle=(0, (5, 3)) if gradient else "solid", linewidth=1.0,
                               zorder=2))
        for i, t in enumerate(n.text):
            ax.text(cx, cy - h / 2 + PAD / 2 + FONT + i * LINE, t, ha="center", va="baseline", fontsize=FONT * pt,
                    color=color, fontweight="bold" if i == 0 else "normal", zorder=3, **mono)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
