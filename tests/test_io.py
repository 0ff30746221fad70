"""Model files: round trip, exact resumption, atomic writes, no pickle, and precise errors for bad files."""
import json
import os

import numpy as np
import pytest

import gpumlp
from gpumlp import io
from gpumlp.data import Scaler, load_digits


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    scaler = Scaler("standard").fit(X[:1400])
    return scaler.transform(X[:1400]), y[:1400], scaler


def trained(digits, **kw):
    X, y, _ = digits
    settings = dict(seed=1, momentum=0.9, backend="numpy", weight_decay=1e-4)
    settings.update(kw)
    m = gpumlp.MLP((64, 16, 10), **settings)
    return m.fit(X, y, epochs=2, batch_size=50, lr=0.05)


def write_raw(path, meta, arrays):
    """An archive written the way io.save writes one, with whatever meta and arrays the test wants."""
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def read_raw(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays.pop("meta").tobytes()), arrays


# ---------------------------------------------------------------------------------- round trip
def test_a_numpy_integer_seed_saves_and_loads(tmp_path):
    """The seed goes into the JSON meta: a NumPy integer (e.g. drawn from an RNG) must not break save."""
    m = gpumlp.MLP((4, 3, 2), seed=np.int64(7), backend="numpy")
    m.save(tmp_path / "m.npz")
    m2 = gpumlp.load(tmp_path / "m.npz", backend="numpy")
    assert m2.seed == 7 and type(m2.seed) is int
    np.testing.assert_array_equal(m2.theta, gpumlp.MLP((4, 3, 2), seed=7, backend="numpy").theta)


@pytest.mark.parametrize("kw", [{}, {"optimizer": "adam", "momentum": 0.0, "bias": True, "dtype": "float64",
                                     "activation": "tanh", "lr_schedule": "adaptive"}])
def test_round_trip_keeps_everything(tmp_path, digits, kw):
    m = trained(digits, **kw)
    path = tmp_path / "m.npz"
    io.save(m, path, scaler=digits[2], classes=np.arange(10), training={"lr": 0.05})
    m2 = gpumlp.load(path, backend="numpy", model_only=True)  # the MLP itself (load gives the Pipeline)
    assert (m2.sizes, m2.activation, m2.loss, m2.weight_decay, m2.bias, m2.dtype, m2.seed) == \
           (m.sizes, m.activation, m.loss, m.weight_decay, m.bias, m.dtype, m.seed)
    assert m2.optimizer.name == m.optimizer.name and m2.optimizer.t == m.optimizer.t
    assert m2.epochs_ == 2 and m2.loss_curve_ == m.loss_curve_
    np.testing.assert_array_equal(m2.theta, m.theta)
    for k, v in m.optimizer.state_arrays().items():
        np.testing.assert_array_equal(m2.optimizer.state_arrays()[k], v)
    np.testing.assert_array_equal(m2.scaler_.offset, digits[2].offset)
    np.testing.assert_array_equal(m2.scaler_.scale, digits[2].scale)
    assert m2.scaler_.kind == "standard"
    assert m2.classes_.tolist() == list(range(10))
    assert m2.training_config_ == {"lr": 0.05}
    assert m2.rng.bit_generator.state == m.rng.bit_generator.state
    # saving the loaded model again carries the scaler and classes along (attributes set by load)
    m2.save(tmp_path / "again.npz")
    assert gpumlp.load(tmp_path / "again.npz", model_only=True).scaler_.kind == "standard"


def test_model_without_extras_and_path_is_exact(tmp_path, digits):
    m = trained(digits)
    path = tmp_path / "model.bin"  # no ".npz" appended
    m.save(path)
    assert os.listdir(tmp_path) == ["model.bin"]
    m2 = gpumlp.load(str(path))
    assert m2.scaler_ is None and m2.classes_ is None and m2.training_config_ is None


@pytest.mark.parametrize("optimizer", [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                       {"optimizer": "adam", "momentum": 0.0}, {"momentum": 0.0}])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, digits, optimizer):
    X, y, _ = digits
    kw = dict(seed=5, backend="numpy", weight_decay=1e-3, lr_schedule="exponential", **optimizer)
    kw["lr_schedule"] = gpumlp.schedules.make_schedule("exponential", gamma=0.8)
    straight = gpumlp.MLP((64, 16, 10), **kw).fit(X, y, epochs=4, batch_size=64, lr=0.05)
    first = gpumlp.MLP((64, 16, 10), **kw).fit(X, y, epochs=2, batch_size=64, lr=0.05)
    first.save(tmp_path / "half.npz")
    resumed = gpumlp.load(tmp_path / "half.npz", backend="numpy").fit(X, y, epochs=2, batch_size=64, lr=0.05)
    assert resumed.theta.tobytes() == straight.theta.tobytes()
    assert resumed.loss_curve_ == straight.loss_curve_
    assert resumed.epochs_ == 4


# ---------------------------------------------------------------------------------- atomic writes
def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, digits, monkeypatch):
    m = trained(digits)
    path = tmp_path / "m.npz"
    m.save(path)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_respects_umask_like_open(tmp_path, digits):
    m = trained(digits)
    old = os.umask(0o022)
    try:
        m.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644


def test_save_argument_errors(tmp_path, digits):
    with pytest.raises(TypeError, match="model must be a gpumlp.MLP"):
        io.save("not a model", tmp_path / "x.npz")
    with pytest.raises(TypeError, match="path must be"):
        io.save(trained(digits), 3)
    with pytest.raises(ValueError, match="scaler is not fitted"):
        io.save(trained(digits), tmp_path / "x.npz", scaler=Scaler("standard"))
    with pytest.raises(ValueError, match="must be \\(10,\\) numbers"):
        io.save(trained(digits), tmp_path / "x.npz", classes=np.arange(3))
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------- no pickle
class _Boom:
    """Unpickling it makes the directory ``marker``: the evidence that a load ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_loading_never_unpickles(tmp_path, digits):
    # in this test's own directory, not a fixed /tmp path that another user or run may hold
    marker = tmp_path / "pickle-ran"
    path = tmp_path / "evil.npz"
    m = trained(digits)
    m.save(path)
    meta, arrays = read_raw(path)
    arrays["theta"] = np.array([_Boom(marker)], dtype=object)
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)  # pickles theta
    with pytest.raises(ValueError, match="'theta' cannot be read without pickle"):
        gpumlp.load(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # the control: unpickled, this theta does run its code
        z["theta"]
    assert marker.is_dir()


# ---------------------------------------------------------------------------------- bad files
def test_missing_file_directory_and_non_archives(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        gpumlp.load(tmp_path / "absent.npz")
    with pytest.raises(io.ModelFileError, match="is a directory"):
        gpumlp.load(tmp_path)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not an .npz archive"):
        gpumlp.load(tmp_path / "text.npz")
    with pytest.raises(TypeError, match="path must be"):
        gpumlp.load(None)


def test_truncated_file(tmp_path, digits):
    path = tmp_path / "m.npz"
    trained(digits).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="m.npz"):
        gpumlp.load(path)


def _set(key, value):
    def mutate(meta, arrays):
        meta[key] = value
    return mutate


def _del(key):
    def mutate(meta, arrays):
        del meta[key]
    return mutate


def _array(key, value):
    def mutate(meta, arrays):
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays)
    return mutate


BAD_FILES = [
    (_set("format_version", 99), r"model format 99 by a newer gpumlp"),
    (_set("format_version", "1"), r"meta\['format_version'\] must be an integer"),
    (_del("sizes"), r"meta has no 'sizes' entry"),
    (_set("sizes", [64, 0, 10]), r"meta\['sizes'\] must be a list of at least 2 positive integers"),
    (_set("sizes", [64]), r"meta\['sizes'\]"),
    (_set("activation", "swish"), r"meta\['activation'\] must be one of"),
    (_set("activation", ["relu", "relu"]), r"a list of 1 of them"),
    (_set("loss", "hinge"), r"meta\['loss'\]"),
    (_set("weight_decay", -1), r"meta\['weight_decay'\] must be a finite number >= 0"),
    (_set("bias", 1), r"meta\['bias'\] must be true or false"),
    (_set("dtype", "float16"), r"meta\['dtype'\]"),
    (_set("seed", 1.5), r"meta\['seed'\] must be an integer or null"),
    (_set("optimizer", {"name": "rmsprop", "t": 0}), r"meta\['optimizer'\] must be an object with a 'name'"),
    (_set("optimizer", {"name": "sgd", "t": -1, "momentum": 0.9, "nesterov": False}), r"step count"),
    (_set("optimizer", {"name": "sgd", "t": 3, "momentum": 1.5, "nesterov": False}),
     r"meta\['optimizer'\] has invalid settings: momentum"),
    (_set("epochs", -2), r"meta\['epochs'\] must be an integer >= 0"),
    (_set("loss_curve", ["a"]), r"meta\['loss_curve'\] must be a list of numbers"),
    (_set("rng_state", {"bit_generator": "MT19937"}), r"meta\['rng_state'\] must be a NumPy PCG64 state"),
    (_set("preprocessing", {"scaling": "log", "classes": False}), r"meta\['preprocessing'\]"),
    (_set("lr_schedule", {"name": "wavy"}), r"meta\['lr_schedule'\] must be a learning-rate schedule"),
    (_set("history", {"loss": ["x"]}), r"meta\['history'\]"),
    (_set("monitor", {"open": True}), r"meta\['monitor'\] must be null or the early-stopping state: .*an object with the keys"),
    (_set("monitor", {"mode": "loss", "patience": 0, "tol": 1e-4, "incremental": False, "split": False,
                      "validation_fraction": None, "open": True, "best": None, "best_epoch": None, "count": 0,
                      "split_seed": None}), r"meta\['monitor'\] .*'patience' is wrong"),
    (_array("theta", None), r"no 'theta' entry"),
    (_array("theta", lambda a: a["theta"][:-1]), r"'theta' must have shape \(1184,\)"),
    (_array("theta", lambda a: a["theta"].astype(np.int32)), r"'theta' must hold floats"),
    (_array("theta", lambda a: np.where(np.arange(a["theta"].size) == 7, np.nan, a["theta"])),
     r"'theta' contains NaN or infinity"),
    (_array("theta", lambda a: np.where(np.arange(a["theta"].size) == 7, 1e39, a["theta"].astype(np.float64))),
     r"'theta' has values beyond the range of the model's dtype float32"),
    (_array("optimizer.velocity", None), r"taken 56 steps but its state optimizer.velocity is missing"),
    (_array("optimizer.velocity", lambda a: a["theta"][:10]), r"'optimizer.velocity' must have shape"),
    (_array("optimizer.m", lambda a: a["theta"]), r"unexpected entry 'optimizer.m' for the sgd optimizer"),
    (_array("extra", lambda a: np.zeros(3)), r"unexpected entries \['extra'\]"),
    (_array("scaling.scale", lambda a: np.zeros(64)), r"'scaling.scale' must be > 0"),
    (_array("scaling.offset", lambda a: np.zeros(3)), r"'scaling.offset' must be \(64,\) floats"),
    (_array("scaling.offset", None), r"no 'scaling.offset' entry"),
    (_array("classes", lambda a: np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8])), r"strictly increasing"),
    (_array("classes", None), r"no 'classes' entry"),
]


@pytest.mark.parametrize("mutate, message", BAD_FILES)
def test_bad_files_say_exactly_what_is_wrong(tmp_path, digits, mutate, message):
    path = tmp_path / "m.npz"
    io.save(trained(digits), path, scaler=digits[2], classes=np.arange(10))
    meta, arrays = read_raw(path)
    mutate(meta, arrays)
    write_raw(path, meta, arrays)
    with pytest.raises(io.ModelFileError, match=message) as exc:
        gpumlp.load(path)
    assert str(path) in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_meta_that_is_not_json(tmp_path, digits):
    path = tmp_path / "m.npz"
    trained(digits).save(path)
    _, arrays = read_raw(path)
    np.savez(path, meta=np.frombuffer(b"{not json", np.uint8), **arrays)
    with pytest.raises(io.ModelFileError, match="'meta' is not valid UTF-8 JSON"):
        gpumlp.load(path)
    np.savez(path, **arrays)
    with pytest.raises(io.ModelFileError, match="no 'meta' entry"):
        gpumlp.load(path)
    np.savez(path, meta=np.zeros(3), **arrays)
    with pytest.raises(io.ModelFileError, match="'meta' must be 1-D uint8"):
        gpumlp.load(path)
    np.savez(path, meta=np.frombuffer(b"[1, 2]", np.uint8), **arrays)
    with pytest.raises(io.ModelFileError, match="must be a JSON object"):
        gpumlp.load(path)
