"""Files made to hurt the process that reads them: model files for ``gpumlp.load`` and data files for
the loaders must be refused quickly, in bounded memory, with an error naming the file.

Each file is read in a child process with a memory limit (RLIMIT_AS, on Linux) and a timeout, so
that a loader that hangs (a FIFO) or exhausts memory (a zip bomb) fails its test instead of taking
the test run down with it. Bombs are a few hundred KiB on disk and expand to 256 MiB, twice the
child's headroom.
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import zipfile
from io import BytesIO

import numpy as np
import pytest
from numpy.lib import format as npy

import gpumlp
from gpumlp import io

HEADROOM = 128 * 2**20  # memory the child may allocate beyond what it holds after its imports
BOMB = 256 * 2**20      # what a bomb expands to
# Refusing is a few checks on headers: well under a second anywhere. The bound is generous so that
# a loaded CI machine does not fail it; a loader that reads a bomb takes far longer (or dies).
QUICK_S = 2.0

CHILD = r"""
import json, sys, time
import gpumlp, gpumlp.data, gpumlp.io, gpumlp.mlp, gpumlp.optim, gpumlp.schedules, gpumlp.functions
try:
    import resource
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[3]), vm + int(sys.argv[3])))
except (ImportError, OSError, StopIteration, ValueError):
    pass  # not Linux: no memory limit, the timeout still holds
loader = {"model": lambda p: gpumlp.load(p, backend="numpy"), "data": gpumlp.data.load,
          "idx": gpumlp.data.read_idx}[sys.argv[2]]
start = time.perf_counter()
try:
    loader(sys.argv[1])
    outcome = {"error": None}
except BaseException as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)[:3000], "value_error": isinstance(exc, ValueError)}
outcome["seconds"] = time.perf_counter() - start
print(json.dumps(outcome))
"""


def read_in_child(path, loader="model", timeout=30):
    """The outcome of loading ``path`` in a child with HEADROOM bytes of memory to spare."""
    # The child gets this process's environment as it is, BLAS thread settings included (none are set
    # here): the limit is taken after its imports, so OpenBLAS's threads and their stacks are already
    # in VmSize, and loading makes no product large enough to start them.
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(path), loader, str(HEADROOM)],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path} did not finish in {timeout} s")
    assert done.returncode == 0, f"the child died reading {path}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_refused(path, *words, loader="model", error="ModelFileError"):
    outcome = read_in_child(path, loader)
    assert outcome["error"] == error, outcome
    assert outcome["value_error"], outcome
    assert str(path) in outcome["message"], outcome
    for word in words:
        assert word in outcome["message"], (word, outcome)
    assert outcome["seconds"] < QUICK_S, outcome
    return outcome["message"]


# ---------------------------------------------------------------------------------- building files
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small saved model: its meta and arrays, to be reassembled into hostile archives."""
    path = tmp_path_factory.mktemp("good") / "m.npz"
    m = gpumlp.MLP((4, 3, 2), seed=0, backend="numpy", momentum=0.9)
    m.fit(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2, epochs=1, batch_size=10, lr=0.1)
    m.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return path, json.loads(arrays.pop("meta").tobytes()), arrays


def npy_bytes(array):
    buf = BytesIO()
    npy.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_header(shape, descr):
    """An .npy header alone (version 1.0), as NumPy writes it, for data the test streams after it."""
    buf = BytesIO()
    npy.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_archive(path, members, compression=zipfile.ZIP_STORED):
    """A zip of ``members`` (name -> bytes, or a callable writing to the member's stream)."""
    with zipfile.ZipFile(path, "w", compression, compresslevel=1 if compression == zipfile.ZIP_DEFLATED else None) \
            as zf:
        for name, content in members:
            if callable(content):
                with zf.open(name, "w") as stream:
                    content(stream)
            else:
                zf.writestr(name, content)
    return path


def model_members(meta, arrays):
    return [("meta.npy", npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8)))] + \
        [(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]


def zeros_after(header, nbytes):
    """A member writer: ``header`` then ``nbytes`` zero bytes, a MiB at a time."""
    def write(stream):
        stream.write(header)
        left = nbytes
        while left:
            stream.write(bytes(min(left, 2**20)))
            left -= min(left, 2**20)
    return write


def meta_with(meta, **changes):
    return dict(meta, **changes)


# ---------------------------------------------------------------------------------- the harness
def test_the_child_loads_a_good_model_within_its_memory_limit(good):
    """The control: the limits the other tests run under do not stop an ordinary model file."""
    outcome = read_in_child(good[0])
    assert outcome["error"] is None, outcome


# ---------------------------------------------------------------------------------- not a regular file
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    assert_refused(fifo, "FIFO", "not a model file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero (a Unix device)")
def test_a_device_is_refused_directly_or_through_a_link(tmp_path):
    assert_refused("/dev/zero", "device")
    link = tmp_path / "model.npz"
    link.symlink_to("/dev/zero")
    assert_refused(link, "device")


# ---------------------------------------------------------------------------------- the archive's members
def test_an_archive_with_thousands_of_members_is_refused_before_they_are_listed(tmp_path, good):
    _, meta, arrays = good
    members = model_members(meta, arrays) + [(f"pad{i}.npy", b"") for i in range(5000)]
    assert_refused(write_archive(tmp_path / "m.npz", members), "at most 16")


def test_a_member_held_twice_is_refused(tmp_path, good):
    _, meta, arrays = good
    members = model_members(meta, arrays)
    members.append(("theta.npy", npy_bytes(np.zeros_like(arrays["theta"]))))
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_archive(tmp_path / "m.npz", members)
    assert_refused(path, "more than once", "theta.npy")


def test_an_unknown_member_is_refused_before_it_is_read(tmp_path, good):
    """A deflated text member expanding to 256 MiB: refused by its name, never decompressed."""
    _, meta, arrays = good
    members = model_members(meta, arrays) + [("notes.txt", zeros_after(b"", BOMB))]
    path = write_archive(tmp_path / "m.npz", members, zipfile.ZIP_DEFLATED)
    assert_refused(path, "unexpected entries", "notes.txt")


def test_a_member_with_data_beyond_its_header_is_refused(tmp_path, good):
    _, meta, arrays = good
    members = [(name, content + bytes(64) if name == "theta.npy" else content)
               for name, content in model_members(meta, arrays)]
    assert_refused(write_archive(tmp_path / "m.npz", members), "'theta'", "holds", "its header implies")


def test_a_deflated_member_that_expands_a_thousandfold_is_refused_unread(tmp_path, good):
    """theta of 64M float32 zeros, as the meta's sizes imply: honest headers, 256 MiB of zeros."""
    _, meta, _ = good
    sizes = [2**13, 2**13, 1]
    n = 2**26 + 2**13
    meta = meta_with(meta, sizes=sizes, bias=False, optimizer={"name": "sgd", "t": 0, "momentum": 0.0,
                                                                "nesterov": False})
    members = [("meta.npy", npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))),
               ("theta.npy", zeros_after(npy_header((n,), "<f4"), 4 * n))]
    path = write_archive(tmp_path / "m.npz", members, zipfile.ZIP_DEFLATED)
    assert_refused(path, "'theta'", "zip bomb")


def test_a_member_that_expands_past_its_promised_size_is_refused(tmp_path, good):
    """The zip header promises theta's true size; the deflate stream goes on for 256 MiB more. The
    reader stops where the header says and the archive's checksum then fails."""
    _, meta, arrays = good
    theta = npy_bytes(arrays["theta"])
    members = model_members(meta, {k: v for k, v in arrays.items() if k != "theta"})
    members.append(("theta.npy", zeros_after(theta, BOMB)))
    path = write_archive(tmp_path / "m.npz", members, zipfile.ZIP_DEFLATED)
    _promise_size(path, "theta.npy", len(theta))
    message = assert_refused(path, "'theta'", "damaged")
    assert "BadZipFile" not in message and "CRC" not in message  # our words, not zipfile's


def _promise_size(path, name, size):
    """Rewrite the member's uncompressed size in the central directory, where zipfile reads it."""
    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x01\x02")
    while start != -1:
        (name_len,) = struct.unpack_from("<H", raw, start + 28)
        if bytes(raw[start + 46:start + 46 + name_len]) == name.encode():
            struct.pack_into("<I", raw, start + 24, size)
            path.write_bytes(bytes(raw))
            return
        start = raw.find(b"PK\x01\x02", start + 4)
    raise AssertionError(f"no central directory entry for {name}")


def test_a_member_compressed_with_bzip2_is_refused(tmp_path, good):
    """bzip2 and lzma decompress without an output bound in zipfile; gpumlp never writes them."""
    _, meta, arrays = good
    path = write_archive(tmp_path / "m.npz", model_members(meta, arrays), zipfile.ZIP_BZIP2)
    assert_refused(path, "compression method")


# ---------------------------------------------------------------------------------- .npy headers
def test_a_theta_header_claiming_a_trillion_floats_is_refused_before_its_data(tmp_path, good):
    _, meta, arrays = good
    members = model_members(meta, {k: v for k, v in arrays.items() if k != "theta"})
    members.append(("theta.npy", npy_header((10**12,), "<f4") + bytes(64)))
    assert_refused(write_archive(tmp_path / "m.npz", members), f"'theta' must have shape ({arrays['theta'].size},)")


def test_headers_must_match_the_shapes_and_dtypes_meta_implies(tmp_path, good):
    _, meta, arrays = good
    n = arrays["theta"].size
    cases = {"optimizer.velocity": (np.zeros(7, np.float32), f"'optimizer.velocity' must have shape ({n},)"),
             "best_theta": (np.zeros(n, np.int64), "'best_theta' must hold floats"),
             "theta": (np.zeros((n, 1), np.float32), f"'theta' must have shape ({n},)"),
             "scaling.offset": (np.zeros(3), "'scaling.offset' must be (4,) floats")}
    for name, (array, words) in cases.items():
        members = model_members(meta, dict(arrays, **{name: array}))
        assert_refused(write_archive(tmp_path / f"{name}.npz", members), words)


def test_sizes_whose_parameter_count_is_absurd_are_refused(tmp_path, good):
    """The theta header agrees with the meta, so only the count itself can refuse it."""
    _, meta, _ = good
    n = 10**12 + 10**6
    members = [("meta.npy", npy_bytes(np.frombuffer(json.dumps(meta_with(meta, sizes=[10**6, 10**6, 1],
                                                                          bias=False)).encode(), np.uint8))),
               ("theta.npy", npy_header((n,), "<f4") + bytes(64))]
    assert_refused(write_archive(tmp_path / "m.npz", members), "parameters")


# ---------------------------------------------------------------------------------- the metadata
def write_meta(path, good, text):
    _, _, arrays = good
    members = [("meta.npy", npy_bytes(np.frombuffer(text.encode() if isinstance(text, str) else text, np.uint8)))]
    members += [(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]
    return write_archive(path, members)


@pytest.mark.parametrize("nbytes, compression, words", [
    (BOMB, zipfile.ZIP_DEFLATED, "refused as a zip bomb"),  # 256 MiB of zeros in 1 MiB
    (17 * 2**20, zipfile.ZIP_STORED, "model settings take at most"),  # honestly 17 MiB
])
def test_oversized_meta_is_refused_unread(tmp_path, good, nbytes, compression, words):
    _, _, arrays = good
    members = [("meta.npy", zeros_after(npy_header((nbytes,), "|u1"), nbytes))]
    members += [(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]
    assert_refused(write_archive(tmp_path / "m.npz", members, compression), "'meta'", words)


@pytest.mark.parametrize("nesting", ["[" * 100_000 + "]" * 100_000,
                                     '{"training": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001])
def test_deeply_nested_meta_is_refused_without_recursion(tmp_path, good, nesting):
    assert_refused(write_meta(tmp_path / "m.npz", good, nesting), "nests more than")


def test_brackets_inside_strings_are_not_nesting(tmp_path, good):
    """A string full of brackets (and escaped quotes) in meta is text, not depth: the file loads."""
    _, meta, _ = good
    text = json.dumps(meta_with(meta, training={"note": '[[[[{{{{\\"' * 1000}))
    outcome = read_in_child(write_meta(tmp_path / "m.npz", good, text))
    assert outcome["error"] is None, outcome


@pytest.mark.parametrize("key, value, words", [
    ("weight_decay", "1" + "0" * 400, "more than 39 digits"),  # math.isfinite: OverflowError
    ("weight_decay", "9" * 5000, "more than 39 digits"),       # json: beyond Python's int digit limit
    ("epochs", str(10**30), "beyond a 64-bit integer"),
    ("optimizer", json.dumps({"name": "sgd", "t": 10**25, "momentum": 0.9, "nesterov": False}),
     "beyond a 64-bit integer"),
    ("rng_state", json.dumps({"bit_generator": "PCG64", "state": {"state": 9 * 10**38, "inc": 1}, "has_uint32": 0,
                              "uinteger": 0}), "rng_state"),  # beyond 2**128: OverflowError in NumPy
])
def test_numbers_that_overflow_are_refused(tmp_path, good, key, value, words):
    _, meta, _ = good
    text = json.dumps(meta_with(meta, **{key: "VALUE"})).replace('"VALUE"', value)
    assert_refused(write_meta(tmp_path / "m.npz", good, text), words)


def test_a_long_string_of_digits_is_text_not_a_number(tmp_path, good):
    _, meta, _ = good
    text = json.dumps(meta_with(meta, training={"digest": "7" * 64}))
    outcome = read_in_child(write_meta(tmp_path / "m.npz", good, text))
    assert outcome["error"] is None, outcome


# ---------------------------------------------------------------------------------- data files
def test_data_files_that_are_fifos_are_refused(tmp_path):
    for name in ("train.csv", "train.npz", "train-images-idx3-ubyte"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        assert_refused(fifo, "FIFO", loader="data", error="ValueError")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero (a Unix device)")
def test_an_idx_file_that_is_a_device_is_refused():
    assert_refused("/dev/zero", "device", loader="idx", error="ValueError")


def test_a_gzipped_idx_file_is_decompressed_no_further_than_its_header_implies(tmp_path):
    """The header promises 10x10 bytes; the gzip stream goes on for 256 MiB."""
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as g:
        zeros_after(bytes([0, 0, 8, 2]) + struct.pack(">2I", 10, 10), BOMB)(g)
    assert_refused(path, "more than", "bytes after the header", loader="idx", error="ValueError")


def test_an_idx_header_claiming_more_than_gzip_can_hold_is_refused(tmp_path):
    """No deflate stream expands more than 1032-fold: a 40-byte file cannot hold 2**40 bytes."""
    path = tmp_path / "lie-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 2]) + struct.pack(">2I", 2**20, 2**20)))
    assert_refused(path, "cannot expand to that much", loader="idx", error="ValueError")


def test_io_model_file_error_is_a_value_error():
    assert issubclass(io.ModelFileError, ValueError)
