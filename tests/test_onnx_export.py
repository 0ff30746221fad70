"""gpumlp.to_onnx (issue 15): every exported graph passes onnx's full check and runs in onnxruntime with
our predictions: labels identical to predict, probabilities and predictions within 1e-5 (float32) or
1e-10 (float64) as max|onnx − ours| / max|ours|, batches of 1 and of thousands through the same file.

The tolerances: float32 graphs multiply in onnxruntime's MLAS, ours in OpenBLAS (another order of the
sums) and onnxruntime's float32 Tanh, Sigmoid, Exp, Gelu are within a few ulps (~1e-7 relative), so
1e-5 leaves two orders of magnitude for depth; float64 gets 1e-10 (the same holds at ~1e-15, and the
one kernel that did not, onnxruntime's float64 Gelu at ~4e-10, is why float64 composes GELU)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import gpumlp
from ci import needed
from gpumlp import onnx_export
from gpumlp.data import MeanImputer, Scaler


onnx = needed("onnx")
ort = needed("onnxruntime")

TOL = {"float32": 1e-5, "float64": 1e-10}
BATCH = 3000


def session(model):
    """An onnxruntime session of a ModelProto or a file, on the CPU, with onnxruntime's default optimisations."""
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def run(model, X):
    s = session(model)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"X": X})))


def rel_error(got, ours):
    ours = np.asarray(ours, np.float64)
    return np.abs(np.asarray(got, np.float64) - ours).max() / np.abs(ours).max()


def data(n, d, dtype, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, d)) * 2).astype(dtype)


def trained(sizes, loss="cross_entropy", dtype="float32", **kw):
    """A model trained a few epochs on data it can fit (weights away from their initial values)."""
    m = gpumlp.MLP(sizes, loss=loss, dtype=dtype, backend="numpy", seed=3, **kw)
    X = data(200, sizes[0], dtype, seed=1)
    q = sizes[-1]
    if loss == "cross_entropy":
        y = np.argmax(X[:, :q] if sizes[0] >= q else np.tile(X, q)[:, :q], axis=1)
    elif loss == "binary_cross_entropy":
        y = (X[:, :q] > 0).astype(float)
    elif loss == "poisson":
        y = np.exp(0.3 * X[:, :q])
    else:
        y = X[:, :q] * 3 + 1
    m.fit(X, y if q > 1 or loss == "cross_entropy" else y[:, 0], epochs=3, lr=0.05, batch_size=32)
    return m


def check_classifier(out, labels, proba, dtype):
    """onnxruntime's labels are ours, except on a row whose two largest probabilities lie within the
    probabilities' tolerance of each other: there either is right, and which one wins depends on the
    last bits of the GEMMs (another BLAS kernel, e.g. OPENBLAS_CORETYPE=Haswell, flips a float32 tie)."""
    assert list(out) == ["label", "probabilities"]
    differ = np.flatnonzero(np.asarray(out["label"]) != np.asarray(labels))
    if differ.size:
        top2 = np.sort(np.asarray(proba, np.float64)[differ], axis=1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0] <= 4 * TOL[dtype] * np.abs(proba).max()).all(), \
            f"labels differ on rows {differ[:10].tolist()}, which are not ties within rounding"
        assert differ.size <= max(1, labels.shape[0] // 1000)
    assert out["label"].dtype == labels.dtype if labels.dtype.kind != "U" else out["label"].dtype == object
    assert out["probabilities"].dtype == np.dtype(dtype) and out["probabilities"].shape == proba.shape
    assert rel_error(out["probabilities"], proba) <= TOL[dtype]


# ------------------------------------------------------------------------------ every activation
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opset", [None, 17])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("hidden", [(9,), (9, 8, 7)], ids=["1 hidden", "3 hidden"])
@pytest.mark.parametrize("activation", sorted(gpumlp.ACTIVATIONS))
def test_every_activation_at_any_depth_gives_our_labels_and_probabilities(activation, hidden, bias, opset, dtype,
                                                                          tmp_path):
    m = trained((6, *hidden, 4), activation=activation, bias=bias, dtype=dtype)
    path = str(tmp_path / "m.onnx")
    proto = gpumlp.to_onnx(m, path, dtype=dtype, opset=opset)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert proto.SerializeToString() == open(path, "rb").read()
    for n in (1, BATCH):  # one file, one session: the batch dimension is symbolic
        X = data(n, 6, dtype, seed=n)
        check_classifier(run(path, X), m.predict(X), m.predict_proba(X), dtype)


def test_the_activations_are_exported_as_the_issue_says():
    """GELU: ONNX's Gelu(tanh) in float32 at opset 20, composed before it and in float64; float64 has no
    LeakyRelu or Softplus node (onnxruntime has no float64 kernel for them) and no Gelu (its float64 kernel
    is ~4e-10 off)."""
    def ops(activation, dtype, opset=None):
        m = gpumlp.MLP((3, 4, 2), activation=activation, backend="numpy", dtype=dtype, seed=0)
        return {n.op_type for n in gpumlp.to_onnx(m, dtype=dtype, opset=opset).graph.node}

    assert "Gelu" in ops("gelu", "float32") and "Gelu" in ops("gelu", "float32", 21)
    assert "Gelu" not in ops("gelu", "float32", 19) and "Tanh" in ops("gelu", "float32", 19)
    assert "Gelu" not in ops("gelu", "float64") and "Tanh" in ops("gelu", "float64")
    assert "LeakyRelu" in ops("leaky_relu", "float32") and "LeakyRelu" not in ops("leaky_relu", "float64")
    assert "Softplus" in ops("softplus", "float32") and "Softplus" not in ops("softplus", "float64")
    assert ops("identity", "float32") == {"Gemm", "ArgMax", "Softmax"}


def test_float64_softplus_and_its_log1p_hold_in_the_tails():
    """max(z, 0) + log1p(e^−|z|) composed from Log: exact where log(1 + u) would lose u (z = −40: e^z ≈ 4e-18,
    1 + u == 1), so a softplus layer of large |z| is still ours to 1e-10 (of the layer's own values)."""
    m = gpumlp.MLP((1, 1, 1), activation="softplus", loss="squared", bias=False, backend="numpy", dtype="float64")
    m.set_weights([np.array([[1.0]]), np.array([[1.0]])])
    z = np.array([[-745.0], [-40.0], [-1e-9], [0.0], [1e-12], [3.0], [40.0], [700.0]])
    got = run(gpumlp.to_onnx(m, dtype="float64"), z)["predictions"]
    ours = m.predict(z)
    np.testing.assert_allclose(got, ours, rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------ every kind of model
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_logistic_unit_gives_labels_and_the_two_probabilities(dtype):
    m = trained((5, 8, 1), loss="binary_cross_entropy", dtype=dtype, bias=True)
    proto = gpumlp.to_onnx(m, dtype=dtype)
    for n in (1, BATCH):
        X = data(n, 5, dtype, seed=n)
        p = m.predict_proba(X)[:, 0]
        out = run(proto, X)
        check_classifier(out, m.predict(X), np.stack([1 - p, p], axis=1), dtype)
        assert out["label"].shape == (n,) and out["label"].dtype == np.int64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_multilabel_targets_give_an_indicator_matrix(dtype):
    m = trained((5, 8, 3), loss="binary_cross_entropy", dtype=dtype)
    X = data(BATCH, 5, dtype)
    out = run(gpumlp.to_onnx(m, dtype=dtype), X)
    assert out["label"].shape == (BATCH, 3) and set(np.unique(out["label"])) == {0, 1}
    check_classifier(out, m.predict(X), m.predict_proba(X), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss,q", [("squared", 1), ("squared", 3), ("poisson", 1), ("poisson", 2)])
def test_regressors_give_predictions_in_the_targets_units(loss, q, dtype):
    m = trained((4, 6, q), loss=loss, dtype=dtype, bias=True)
    proto = gpumlp.to_onnx(m, dtype=dtype)
    assert [o.name for o in proto.graph.output] == ["predictions"]
    for n in (1, BATCH):
        X = data(n, 4, dtype, seed=n)
        out, ours = run(proto, X)["predictions"], m.predict(X)
        assert out.shape == ours.shape == ((n,) if q == 1 else (n, q)) and out.dtype == np.dtype(dtype)
        assert rel_error(out, ours) <= TOL[dtype]
    if loss == "poisson":
        assert "Exp" in {node.op_type for node in proto.graph.node}


def test_a_float32_model_exported_as_float64_computes_what_a_float64_copy_of_it_does():
    m32 = trained((6, 9, 4), activation="tanh", bias=True)
    m64 = gpumlp.MLP((6, 9, 4), activation="tanh", bias=True, backend="numpy", dtype="float64")
    m64.set_weights(m32.get_weights(), m32.get_biases())
    X = data(BATCH, 6, np.float64)
    check_classifier(run(gpumlp.to_onnx(m32, dtype="float64"), X), m64.predict(X), m64.predict_proba(X), "float64")


# ------------------------------------------------------------------------------ the graph's interface
def test_one_input_with_a_symbolic_batch_and_the_outputs_in_order():
    proto = gpumlp.to_onnx(trained((6, 9, 4)))
    (x,) = proto.graph.input
    dims = x.type.tensor_type.shape.dim
    assert x.name == "X" and x.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and not dims[0].HasField("dim_value") and dims[1].dim_value == 6
    out = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert list(out) == ["label", "probabilities"]
    assert out["label"].elem_type == onnx.TensorProto.INT64 and len(out["label"].shape.dim) == 1
    assert [d.dim_param or d.dim_value for d in out["probabilities"].shape.dim] == [dims[0].dim_param, 4]
    assert [i.name for i in proto.graph.initializer if i.name.startswith("W")] == ["W1", "W2"]


def test_the_default_opset_and_ir_version_and_any_opset_from_13():
    m = trained((6, 9, 4), activation="gelu")
    proto = gpumlp.to_onnx(m)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", onnx_export.DEFAULT_OPSET)] == [("", 20)]
    assert proto.ir_version == 9  # the oldest IR of opset 20: what onnxruntime 1.17 and later accept
    X = data(50, 6, np.float32)
    for opset in (13, 17, 19, 21, onnx.defs.onnx_opset_version()):
        p = gpumlp.to_onnx(m, opset=opset)
        assert p.opset_import[0].version == opset
        onnx.checker.check_model(p, full_check=True)
        if opset <= 21:  # onnxruntime releases load up to their own newest opset
            np.testing.assert_array_equal(run(p, X)["label"], m.predict(X))


def test_the_metadata_of_a_bare_model():
    m = trained((6, 9, 4), activation=["relu"])
    meta = {p.key: p.value for p in gpumlp.to_onnx(m).metadata_props}
    assert meta == {"gpumlp_version": gpumlp.__version__, "loss": "cross_entropy", "sizes": "[6, 9, 4]",
                    "activations": '["relu"]', "classes": "[0, 1, 2, 3]"}


# ------------------------------------------------------------------------------ pipelines
def pipeline(classes=None, loss="cross_entropy", dtype="float32", target=False, impute=True, q=3):
    rng = np.random.default_rng(5)
    X = rng.normal(loc=[10, -3, 0, 100], scale=[2, 0.5, 1, 30], size=(300, 4))
    m = gpumlp.MLP((4, 10, q), loss=loss, activation="tanh", bias=True, backend="numpy", dtype=dtype, seed=0)
    scaler = Scaler("standard").fit(X)
    xs = scaler.transform(X, np.float64)
    if loss == "cross_entropy":
        m.fit(xs, np.argmax(xs[:, :q], axis=1), epochs=5, lr=0.1)
    else:
        m.fit(xs, xs[:, :q] * 2 + 1, epochs=5, lr=0.05)
    t = Scaler("standard").fit(rng.normal(loc=50, scale=7, size=(20, q))) if target else None
    return gpumlp.Pipeline(m, scaler=scaler, classes=classes, imputer=MeanImputer().fit(X) if impute else None,
                           target_scaler=t, feature_names=["a", "b", "c", "d"] if impute else None), X


def raw(X, n, seed=0, missing=True):
    rng = np.random.default_rng(seed)
    x = X[rng.integers(0, len(X), n)] + rng.normal(size=(n, X.shape[1])) * 0.1
    if missing:
        x[rng.random(x.shape) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("classes", [None, [3, 7, 11], ["ant", "bee", "cicada"], [0.5, 1.5, 2.5]],
                         ids=["indices", "int", "text", "float"])
def test_a_pipeline_imputes_scales_and_names_its_labels_inside_the_graph(classes, dtype, tmp_path):
    p, X = pipeline(classes, dtype=dtype)
    path = str(tmp_path / "p.onnx")
    p.to_onnx(path, dtype=dtype)
    op_types = {n.op_type for n in onnx.load(path).graph.node}
    assert {"IsNaN", "Where", "Sub", "Div"} <= op_types and ("Gather" in op_types) == (classes is not None)
    for n in (1, BATCH):
        x = raw(X, n, seed=n)
        out = run(path, x.astype(dtype))
        labels = p.predict(x.astype(dtype))
        check_classifier(out, labels, p.predict_proba(x.astype(dtype)), dtype)
        if classes is not None and n == BATCH:
            assert set(out["label"].tolist()) == set(classes)  # the class values themselves, e.g. 3, 7, 11
    meta = {m.key: m.value for m in onnx.load(path).metadata_props}
    assert json.loads(meta["classes"]) == (classes or [0, 1, 2])
    assert json.loads(meta["feature_names"]) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("q", [1, 2])
def test_a_regression_pipeline_undoes_its_target_scaling_inside_the_graph(q, dtype):
    p, X = pipeline(loss="squared", target=True, dtype=dtype, q=q, impute=False)
    proto = gpumlp.to_onnx(p, dtype=dtype)
    for n in (1, BATCH):
        x = raw(X, n, seed=n, missing=False).astype(dtype)
        out, ours = run(proto, x)["predictions"], p.predict(x)
        assert out.shape == ours.shape and rel_error(out, ours) <= TOL[dtype]
        assert np.abs(ours).mean() > 10  # the targets' units (offset 50), not the standardised outputs


def test_a_pipeline_of_a_binary_unit_and_with_max_scaling():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 255, size=(200, 5))
    m = gpumlp.MLP((5, 6, 1), loss="binary_cross_entropy", backend="numpy", seed=0)
    p = gpumlp.Pipeline(m, scaler=Scaler("max").fit(X))
    proto = p.to_onnx()
    names = {i.name for i in proto.graph.initializer}
    assert "scaler_scale" in names and "scaler_offset" not in names  # max scaling: offset 0, a division alone
    x = X[:BATCH].astype(np.float32)
    prob = p.predict_proba(x)[:, 0]
    check_classifier(run(proto, x), p.predict(x), np.stack([1 - prob, prob], axis=1), "float32")


def test_a_pipeline_saved_by_gpumlp_train_carries_its_names_digest_and_text_labels(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["width,height,weight,kind"]
    X = rng.normal(size=(150, 3)) + np.repeat(np.arange(3), 50)[:, None]
    kinds = np.array(["owl", "cat", "dog"])[np.repeat(np.arange(3), 50)]
    for x, k in zip(X, kinds):
        cells = ["" if rng.random() < 0.05 else f"{v:.4f}" for v in x]
        rows.append(",".join(cells + [k]))
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    r = subprocess.run([sys.executable, "-m", "gpumlp", "train", "--data", str(tmp_path / "t.csv"), "--missing",
                        "impute", "--epochs", "5", "--hidden", "8", "--save", str(tmp_path / "m.npz"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    p = gpumlp.load(str(tmp_path / "m.npz"))
    proto = gpumlp.to_onnx(p)
    meta = {m.key: m.value for m in proto.metadata_props}
    assert json.loads(meta["feature_names"]) == ["width", "height", "weight"] and meta["label_name"] == "kind"
    assert json.loads(meta["classes"]) == ["cat", "dog", "owl"]
    digest = p.named_steps["mlp"].training_config_["data_digest"]
    assert meta["data_digest"] == digest and len(digest) == 32
    x = X.astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    out = run(proto, x)
    np.testing.assert_array_equal(out["label"].astype(str), p.predict(x))
    assert rel_error(out["probabilities"], p.predict_proba(x)) <= TOL["float32"]


# ------------------------------------------------------------------------------ refusals
def test_bad_arguments_are_refused_naming_the_problem(tmp_path):
    m = gpumlp.MLP((3, 4, 2), backend="numpy", seed=0)
    with pytest.raises(TypeError, match="gpumlp.MLP or a gpumlp.Pipeline, got str"):
        gpumlp.to_onnx("model.npz")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        m.to_onnx(dtype="float16")
    with pytest.raises(TypeError, match="dtype must be"):
        m.to_onnx(dtype="single precision")
    for bad in (12, 0, onnx.defs.onnx_opset_version() + 1):
        with pytest.raises(ValueError, match=f"opset must be from 13 to .*got {bad}"):
            m.to_onnx(opset=bad)
    for bad in ("20", 20.0, True):
        with pytest.raises(TypeError, match="opset must be an integer"):
            m.to_onnx(opset=bad)
    assert not list(tmp_path.iterdir())


def test_values_beyond_float32_are_refused_for_a_float32_file():
    m = gpumlp.MLP((2, 3, 2), backend="numpy", dtype="float64", seed=0)
    m.set_layers({0: np.full((3, 2), 1e300)})
    with pytest.raises(ValueError, match="W1 has values that are not finite in float32.*dtype='float64'"):
        m.to_onnx()
    assert m.to_onnx(dtype="float64") is not None


def test_a_target_scaling_on_outputs_that_are_not_the_targets_is_refused():
    # a Pipeline refuses such a scaler when it is built; the export keeps its own check for any other way in
    m = gpumlp.MLP((2, 3, 1), loss="poisson", backend="numpy", seed=0)
    with pytest.raises(ValueError, match="squared loss"):
        gpumlp.Pipeline(m, target_scaler=Scaler("standard", offset=[1.0], scale=[2.0]))


def test_without_onnx_an_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError, as where it is absent
    with pytest.raises(ImportError, match=r'pip install "gpumlp\[onnx\]"'):
        gpumlp.to_onnx(gpumlp.MLP((2, 3, 2), backend="numpy"))


def test_import_gpumlp_does_not_import_onnx():
    code = "import sys, gpumlp; gpumlp.MLP((2, 3, 2), backend='numpy'); print('onnx' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False"], r.stderr
