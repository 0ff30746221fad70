"""Data-parallel training (gpumlp.distributed, gpumlp.data_parallel).

The multi-process tests start real jobs, ``mpiexec -n 2`` and ``-n 3`` (mpich from PyPI, in the
test extra), from here with a timeout that kills the whole job, so that a hang fails a test instead
of CI. Every job writes each rank's results; the comparisons are made here, against the single
process computed in this process:

    N ranks == one process          every replicated case of tests/mpi/dp_cases.py (each optimizer,
                                    sample and class weights, bias, squared loss, shards of different
                                    sizes and empty ones, a batch smaller than the number of ranks,
                                    a batch of zero weight, early stopping, the adaptive and cosine
                                    schedules, validation scores), both dtypes
    replicas                        θ's digest after every epoch, equal on every rank
    sharded                         every example exactly once per epoch; the result equals one
                                    process stepping through the union of the ranks' chunks
    agreement                       mismatched data or settings fail on every rank; one rank raising
                                    (in a callback, in the user's code, inside an epoch) ends the job
    checkpoints, NCCL stand-in, the command line

Tolerances (relative to the largest parameter, after 4+ epochs): float64 1e-10, float32 1e-4. A step
over P shards computes the same sums as one process in another association (partial sums per rank,
scaled by its share, then added across ranks), a few ulp per step; training amplifies them mildly
over epochs (measured here: about 1e-15 in float64 and 2e-7 in float32 after 4 epochs), so the
bounds leave several orders of magnitude of room while still catching any real error (a miscounted
shard, λθ added twice, a wrong share: all 1e-3 or more). Plain SGD: the data-parallel step is
gradients() then apply(), the single process folds the update into the GEMM; its N-rank result is
held to the same bounds against the one-rank data-parallel run (the same two-phase arithmetic), and
that run against the folded one separately.
"""
import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import data_parallel as dp
from gpumlp import distributed
from ci import in_ci, mpiexec as _mpiexec

ROOT = Path(__file__).resolve().parents[1]
MPI_DIR = Path(__file__).parent / "mpi"
sys.path.insert(0, str(MPI_DIR))
import dp_cases  # noqa: E402

TIMEOUT = 120  # seconds for one job; each takes 1-3 s here
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
REPLICATED = [c for c in dp_cases.CASES if not dp_cases.settings(c)[2].get("sharded")]
SHARDED = [c for c in dp_cases.CASES if dp_cases.settings(c)[2].get("sharded")]


# ---------------------------------------------------------------------------------- running jobs


def mpirun(n, *argv, timeout=TIMEOUT, cwd=None):
    """(returncode, stdout, stderr) of ``mpiexec -n n python argv...``; a job that outlives
    ``timeout`` is killed with all its processes and fails the test."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(MPI_DIR), os.environ.get("PYTHONPATH", "")]),
               GPUMLP_BACKEND="numpy", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [_mpiexec(), "-n", str(n), sys.executable, *map(str, argv)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(cmd[1:4])} {argv} hung: killed after {timeout} s\n{out[-2000:]}\n{err[-3000:]}")
    return p.returncode, out, err


def run_ok(n, *argv, **kw):
    rc, out, err = mpirun(n, *argv, **kw)
    assert rc == 0, f"exit status {rc}\n{out[-3000:]}\n{err[-5000:]}"
    return out, err


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def ranks(request, tmp_path_factory):
    """Every case of dp_cases run once on n ranks: (n, {case: [rank 0's result, rank 1's, ...]})."""
    n = request.param
    out = tmp_path_factory.mktemp(f"cases{n}")
    run_ok(n, MPI_DIR / "run_cases.py", out, *dp_cases.CASES)
    return n, {c: [dict(np.load(out / f"{c}-{r}.npz")) for r in range(n)] for c in dp_cases.CASES}


@functools.lru_cache(maxsize=None)
def single(name):
    """One process: the ordinary fit (comm=None)."""
    return dp_cases.run(name)[1]


@functools.lru_cache(maxsize=None)
def one_rank(name):
    """One process through the data-parallel trainer (the two-phase step)."""
    return dp_cases.run(name, distributed.SingleProcess())[1]


def relative(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


def dtype_of(name):
    return dp_cases.settings(name)[0]["dtype"]


# ---------------------------------------------------------------------------------- N ranks == 1
@pytest.mark.parametrize("name", REPLICATED)
def test_n_ranks_equal_one_process(ranks, name):
    n, results = ranks
    res = results[name]
    tol = TOLERANCE[dtype_of(name)]
    foldable = dp_cases.model(name).optimizer.foldable
    reference = one_rank(name) if foldable else single(name)
    for r in res:  # replicas: the same bits on every rank
        np.testing.assert_array_equal(r["theta"], res[0]["theta"])
    assert relative(res[0]["theta"], reference["theta"]) < tol
    assert relative(res[0]["loss_curve"], reference["loss_curve"]) < tol
    assert int(res[0]["epochs"]) == reference["epochs"] and str(res[0]["stop_reason"]) == reference["stop_reason"]
    assert int(res[0]["best_epoch"]) == reference["best_epoch"]
    np.testing.assert_array_equal(res[0]["lr"], reference["lr"])  # the schedule decided alike
    assert int(res[0]["samples_seen"]) == reference["samples_seen"]
    for key in ("val_score", "val_loss", "score"):
        np.testing.assert_allclose(res[0][key], reference[key], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", REPLICATED)
def test_replicas_are_bit_identical_after_every_epoch(ranks, name):
    n, results = ranks
    digests = [r["digests"] for r in results[name]]
    assert len(digests[0]) == int(results[name][0]["epochs"])
    for d in digests[1:]:
        np.testing.assert_array_equal(d, digests[0])
    assert len(set(digests[0])) == len(digests[0])  # and θ moved every epoch


def test_the_cases_cover_what_they_claim():
    """The shards of the cases are of different sizes and some are empty, for 2 and 3 ranks."""
    for size in (2, 3):
        plan = dp.replicated_plan(np.arange(dp_cases.N), 16, size, 0)
        assert len(set(plan.sizes[0])) > 1 or size == 2
        assert (plan.sizes == 0).any()
        assert (dp.replicated_plan(np.arange(13), 2, 3, 0).sizes[:, 2] == 0).all()  # batch-below-ranks
    assert {"sgd", "adam-class-weight", "adamw", "nesterov-weighted"} <= set(REPLICATED)


@pytest.mark.parametrize("name", [c for c in REPLICATED if not dp_cases.model(c).optimizer.foldable])
def test_one_rank_is_the_single_process_trainer_to_the_bit(name):
    """On one rank the data-parallel trainer does the single process's arithmetic exactly (every
    optimizer but plain SGD, whose fused step is the subject of the next test)."""
    a, b = single(name), one_rank(name)
    for key in ("theta", "loss_curve", "val_score", "val_loss", "score", "lr", "digests"):
        np.testing.assert_array_equal(a[key], b[key])
    assert (a["epochs"], a["stop_reason"]) == (b["epochs"], b["stop_reason"])


@pytest.mark.parametrize("dtype, bound", [("float64", 1e-12), ("float32", 1e-5)])
def test_plain_sgd_two_phases_against_the_fused_step(dtype, bound):
    """Plain SGD in data-parallel mode is θ − η(g + λθ) in two passes; one process folds it into the
    GEMM, W ← (1 − ηλ)W − η dᵀa. The two round differently, by a few ulp per step: after 4 epochs
    (16 steps) they differ by about 1e-16 (float64) / 1e-7 (float32), relative."""
    X, y, _ = dp_cases.full_data("sgd")
    runs = []
    for comm in (None, distributed.SingleProcess()):
        m = gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), activation="tanh", dtype=dtype, backend="numpy", seed=0,
                       weight_decay=0.01, bias=True)
        runs.append(m.fit(X, y, epochs=4, batch_size=16, lr=0.1, comm=comm).theta)
    assert relative(runs[1], runs[0]) < bound


# ---------------------------------------------------------------------------------- sharded data
def _steps(res):
    """[(epoch, ids of one gradient phase)] of one rank's sharded run."""
    bounds = np.concatenate(([0], np.cumsum(res["step_lengths"])))
    return [(int(e), res["step_ids"][bounds[i]:bounds[i + 1]]) for i, e in enumerate(res["step_epochs"])]


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_mode_sees_every_example_once_per_epoch(ranks, name):
    """Every example of every part once per epoch (with early stopping: every example of every part
    but its held-out fraction), each rank its own part, in chunks of its share of the batch."""
    n, results = ranks
    fit = dp_cases.settings(name)[1]
    N = len(dp_cases.full_data(name)[0])
    epochs = int(results[name][0]["epochs"])
    share = dp.split_sizes(fit["batch_size"], n)
    held = [math.ceil(fit["validation_fraction"] * (hi - lo)) if fit.get("early_stopping") else 0
            for lo, hi in dp_cases.parts(N, n)]
    first = None
    for e in range(epochs):
        seen = []
        for r, res in enumerate(results[name]):
            lo, hi = dp_cases.parts(N, n)[r]
            mine = [ids for ep, ids in _steps(res) if ep == e]
            assert all(len(ids) == share[r] for ids in mine[:-1]) and 0 < len(mine[-1]) <= share[r]
            chunks = np.concatenate(mine)
            assert ((chunks >= lo) & (chunks < hi)).all() and len(chunks) == hi - lo - held[r]  # its own part
            seen.append(chunks)
        seen = np.sort(np.concatenate(seen))
        assert len(np.unique(seen)) == len(seen) == N - sum(held)
        first = seen if first is None else first
        np.testing.assert_array_equal(seen, first)  # the same examples every epoch
        if not fit.get("early_stopping"):
            np.testing.assert_array_equal(seen, np.arange(N))
    assert int(results[name][0]["samples_seen"]) == epochs * (N - sum(held))


def test_sharded_early_stopping_decides_alike_from_the_global_validation_score(ranks):
    n, results = ranks
    res = results["sharded-early-stopping"]
    for r in res:
        for key in ("theta", "val_score", "val_loss", "digests"):
            np.testing.assert_array_equal(r[key], res[0][key])
    assert str(res[0]["stop_reason"]) == "plateau" and int(res[0]["epochs"]) < 12
    assert int(res[0]["best_epoch"]) == int(np.argmax(res[0]["val_score"])) + 1
    assert np.isfinite(res[0]["val_score"]).all() and len(set(res[0]["val_score"])) > 1


@pytest.mark.parametrize("name", [c for c in SHARDED if not dp_cases.settings(c)[1].get("early_stopping")])
def test_sharded_mode_equals_one_process_over_the_union_of_chunks(ranks, name):
    """The documented equivalent order: one process holding every part takes, as batch k of an
    epoch, the union of every rank's k-th chunk (two-phase steps, as the ranks do)."""
    n, results = ranks
    model_kw, fit, _ = dp_cases.settings(name)
    X, y, w = dp_cases.full_data(name)
    if fit.get("class_weight") == "balanced":
        from gpumlp.data import class_sample_weights

        cw = class_sample_weights("balanced", y, dp_cases.Q)
        w = cw if w is None else w * cw
    m = dp_cases.model(name, seed=0)
    per_rank = [_steps(r) for r in results[name]]
    losses = []
    for e in range(int(results[name][0]["epochs"])):
        chunks = [[ids for ep, ids in s if ep == e] for s in per_rank]
        total = 0.0
        for k in range(max(map(len, chunks))):
            ids = np.concatenate([c[k] for c in chunks if k < len(c)])
            x, yy, ww = m.to_device(X[ids], y[ids], None if w is None else w[ids])
            step = gpumlp.Step(m, len(ids))
            total += float(step.gradients(x, yy, ww)) * len(ids)
            step.apply(m.optimizer, fit["lr"])
        losses.append(total / len(X))
    res = results[name][0]
    assert relative(res["theta"], m.theta) < TOLERANCE[model_kw["dtype"]]
    assert relative(res["loss_curve"], losses) < TOLERANCE[model_kw["dtype"]]
    for r in results[name]:
        np.testing.assert_array_equal(r["theta"], res["theta"])
        np.testing.assert_array_equal(r["digests"], res["digests"])


@pytest.mark.parametrize("name", [c for c in SHARDED if dp_cases.settings(c)[1].get("validation")])
def test_sharded_scores_and_losses_are_over_all_parts(ranks, name):
    """The last epoch's training score, validation loss and score, from the parts, equal those of
    the final parameters on the whole data (accuracy, or R² averaged over outputs)."""
    n, results = ranks
    res = results[name][0]
    m = dp_cases.model(name)
    m.theta[...] = res["theta"]
    X, y, kw = dp_cases.fit_arguments(name, sharded_part=False)
    Xv, yv, *wv = kw["validation_data"]
    wv = wv[0] if wv else None
    w = kw.get("sample_weight")
    if kw.get("class_weight") == "balanced":
        from gpumlp.data import class_sample_weights

        w = class_sample_weights("balanced", y, dp_cases.Q)
    assert res["score"][-1] == pytest.approx(m.score(X, y, w), rel=1e-12)
    assert res["val_score"][-1] == pytest.approx(m.score(Xv, yv, wv), rel=1e-12)
    assert res["val_loss"][-1] == pytest.approx(m.objective(Xv, yv, wv), rel=1e-12)


# ---------------------------------------------------------------------------------- the NCCL engine
def test_the_nccl_engine_through_a_stand_in_gives_the_mpi_engines_bits(ranks, tmp_path):
    """The NCCL engine's code paths (unique id by MPI broadcast, one device per local rank, the
    collectives' pointers, counts, types and stream) with NCCL and the device stood in by host
    memory reduced through MPI: a fit through them must give the MPI engine's bits."""
    n, results = ranks
    cases = ["nesterov-weighted", "float32-adam", "sharded"]
    run_ok(n, MPI_DIR / "run_cases.py", tmp_path, "--engine", "standin", *cases)
    for c in cases:
        for r in range(n):
            np.testing.assert_array_equal(np.load(tmp_path / f"{c}-{r}.npz")["theta"], results[c][r]["theta"])


def test_the_nccl_engine_picks_one_gpu_per_process_and_bootstraps_over_mpi(tmp_path):
    run_ok(3, MPI_DIR / "scenarios.py", "nccl_devices", tmp_path)
    records = [json.loads((tmp_path / f"nccl_devices-{r}.json").read_text()) for r in range(3)]
    for r, rec in enumerate(records):
        shared, few, boot = rec
        assert shared["type"] == "RuntimeError" and "would share the GPU" in shared["message"] and shared["collective"]
        assert few["collective"] and "needs one GPU per process" in few["message"]
        assert few["type"] == ("RuntimeError" if r == 2 else "RankError")  # rank 2 has no GPU of its own
        assert boot["device"] == r
        calls = boot["calls"]
        assert ["use", r] in calls
        assert (["get_unique_id"] in calls) == (r == 0)  # only rank 0 makes the id ...
        init = [c for c in calls if c[0] == "init"]
        assert len(init) == 1 and init[0][1] == 3 and init[0][3] == r
    uids = [[c for c in rec[2]["calls"] if c[0] == "init"][0][2] for rec in records]
    assert uids[0] == uids[1] == uids[2] and len(uids[0]) == 128  # ... and every rank gets it by MPI


def test_init_chooses_the_engine(tmp_path):
    """In one process (MPI as a singleton): "auto" is MPI without a GPU, NCCL where it is usable;
    "nccl" without a GPU is a clear error."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(MPI_DIR)]))
    _mpiexec()
    r = subprocess.run([sys.executable, MPI_DIR / "init_checks.py"], capture_output=True, text=True, timeout=TIMEOUT,
                       env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["size"] == 1 and out["rank"] == 0
    if not gpumlp.backend.cupy_status()[0]:
        assert out["auto"] == "mpi"
        assert "NCCL cannot run here" in out["nccl_error"] and "nccl-cuda1" in out["nccl_error"]
    assert out["auto_where_nccl_works"] == "nccl"


def test_init_without_mpi4py_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"gpumlp\[mpi\]"):
        distributed.init("mpi")
    with pytest.raises(ValueError, match="engine must be one of"):
        distributed.init("gloo")
    assert not distributed.engines(probe=False)["mpi"].available


def test_engines_report_what_runs_here():
    e = distributed.engines()
    assert set(e) == {"mpi", "nccl"}
    if gpumlp.backend.cupy_status()[0] is False:
        assert not e["nccl"].available and e["nccl"].detail
    _mpiexec()
    assert e["mpi"].available and "mpi4py" in e["mpi"].detail


# ---------------------------------------------------------------------------------- agreement, failures
def test_mismatched_data_or_settings_fail_on_every_rank(tmp_path):
    run_ok(2, MPI_DIR / "scenarios.py", "mismatch", tmp_path)
    records = [json.loads((tmp_path / f"mismatch-{r}.json").read_text()) for r in range(2)]
    expect = {"one value": "training data differ", "fewer rows": "(40, 6)", "labels": "y is",
              "weights": "w is", "learning rate": "lr is 0.1 on rank 0, 0.2 on rank 1",
              "architecture": "model.sizes is (6, 8, 3)", "invalid on one rank": "labels must lie in [0, 3)",
              "validation data": "validation data differ", "sharded weights on one rank": "fit(sample_weight)",
              "sharded batch below ranks": "batch_size >= the number of ranks"}
    for rec in records:
        got = {e["case"]: e for e in rec}
        for case, text in expect.items():
            assert got[case]["value_error"] and got[case]["collective"], (case, got[case])
            assert text in got[case]["message"], (case, got[case]["message"])
        assert got["still usable"]["type"] is None  # the job goes on after agreed errors
    assert records[0][6]["type"] == "RankValueError" and records[0][6]["message"].startswith("rank 1 failed")
    assert records[1][6]["type"] == "ValueError"  # rank 1 raises its own


def test_decisions_are_taken_alike_on_every_rank(tmp_path):
    """A stop asked by one rank's callback stops all; divergence is raised on every rank, with the
    single process's message, and restores the same θ."""
    run_ok(2, MPI_DIR / "scenarios.py", "decisions", tmp_path)
    a, b = (json.loads((tmp_path / f"decisions-{r}.json").read_text()) for r in range(2))
    assert a[0] == b[0] and a[0]["epochs"] == 2 and a[0]["stop_reason"] == "callback"
    X, y, _ = dp_cases.full_data("sgd")
    m = gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", dtype="float64", seed=0, momentum=0.9)
    m.fit(X, y, epochs=1, batch_size=16, lr=0.1)
    with np.errstate(all="ignore"), pytest.raises(gpumlp.DivergenceError) as single_error:
        m.fit(X * 1e150, y, epochs=3, batch_size=16, lr=1e10)
    for d in (a[1], b[1]):
        assert d["type"] == "DivergenceError" and d["collective"]
        assert d["message"] == str(single_error.value)
        assert d["digest_after"] == d["digest_before"] == a[1]["digest_before"] and d["epochs"] == 1


@pytest.mark.parametrize("scenario, message", [
    ("callback_raises", "the callback of rank 1 gave up"),  # agreed at the epoch's end
    ("raise_outside", "rank 1 failed before training"),  # the user's code: the excepthook aborts
    ("raise_inside", "rank 1 broke in step 5"),  # inside an epoch: the trainer aborts
])
def test_one_rank_raising_ends_the_job_with_its_message(tmp_path, scenario, message):
    rc, out, err = mpirun(2, MPI_DIR / "scenarios.py", scenario, tmp_path, timeout=60)
    assert rc != 0
    assert message in err
    assert "NOT REACHED" not in out


# ---------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_resumes_on_the_same_ranks_to_the_same_bits_and_loads_in_one_process(tmp_path):
    run_ok(2, MPI_DIR / "scenarios.py", "checkpoint", tmp_path, "first")
    run_ok(2, MPI_DIR / "scenarios.py", "checkpoint", tmp_path, "resume")
    first = [np.load(tmp_path / f"checkpoint-first-{r}.npy") for r in range(2)]
    resumed = [np.load(tmp_path / f"checkpoint-resume-{r}.npy") for r in range(2)]
    for t in first[1:] + resumed:
        np.testing.assert_array_equal(t, first[0])
    m = gpumlp.load(tmp_path / "checkpoint.npz", backend="numpy")  # one process loads rank 0's file
    assert m.epochs_ == 2 and m.monitor_.open and m.optimizer.t > 0
    X, y, w = dp_cases.full_data("nesterov-weighted")
    m.fit(X, y, epochs=2, batch_size=16, lr=0.1, sample_weight=w, early_stopping=True, validation_fraction=0.25,
          n_iter_no_change=50)
    assert relative(m.theta, first[0]) < 1e-10  # and continues it, to rounding


# ---------------------------------------------------------------------------------- the command line
def test_the_command_line_under_two_ranks(tmp_path):
    """Rank 0 alone prints and writes; the result is the single process's."""
    args = ["-m", "gpumlp", "train", "--epochs", "3", "--dtype", "float64", "--json", "--backend", "numpy",
            "--progress", "lines", "--checkpoint-every", "2"]
    out, err = run_ok(2, *args, "--distributed", "auto", "--save", "two.npz", "--plot", "two.png", cwd=tmp_path)
    lines = out.strip().splitlines()
    assert sum(line.startswith("{") for line in lines) == 1 and lines[-1].startswith("{")
    assert sum(line.startswith("epoch 1/3") for line in lines) == 1 and sum("test accuracy" in x for x in lines) == 1
    assert err.strip() == ""
    two = json.loads(lines[-1])
    assert two["ranks"] == 2 and two["distributed"] == "mpi"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, *args, "--save", "one.npz"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=TIMEOUT, env=env)
    assert r.returncode == 0, r.stderr
    one = json.loads(r.stdout.strip().splitlines()[-1])
    assert two["test_accuracy"] == one["test_accuracy"] and two["epochs"] == 3
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-10)
    a, b = (gpumlp.load(tmp_path / f, backend="numpy").named_steps["mlp"] for f in ("two.npz", "one.npz"))
    assert relative(a.theta, b.theta) < 1e-10  # momentum SGD: the same two-phase arithmetic
    assert (tmp_path / "two.png").stat().st_size > 0


def test_ctrl_c_ends_a_distributed_run_at_once(tmp_path):
    """SIGINT to mpiexec (Ctrl-C) reaches the ranks between two all-reduces at different moments: the
    job must end (MPI_Abort), not leave a rank waiting for another that has stopped."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", GPUMLP_BACKEND="numpy")
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "gpumlp", "train", "--distributed", "mpi", "--epochs",
           "100000", "--progress", "lines"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                         start_new_session=True)
    try:
        for line in p.stdout:  # wait until training runs
            if line.startswith("epoch") and line.split()[1].startswith("3/"):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("the interrupted job did not end")
    assert p.returncode != 0 and "interrupted" in err


def test_the_command_line_reports_one_error_for_the_job(tmp_path):
    rc, out, err = mpirun(2, "-m", "gpumlp", "train", "--epochs", "1", "--distributed", "mpi", "--data",
                          str(tmp_path / "missing.csv"), cwd=tmp_path)
    assert rc != 0 and out.strip() == ""
    assert err.count("gpumlp train: error") == 1 and "missing.csv" in err
    rc, out, err = mpirun(2, "-m", "gpumlp", "train", "--epochs", "1", "--distributed", "nccl", cwd=tmp_path)
    if not gpumlp.backend.cupy_status()[0]:
        assert rc != 0 and "NCCL cannot run here" in err


def test_the_readme_example_runs_on_two_ranks(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Training on several processes or GPUs"):]
    example = re.search(r"^```python\n(.*?)\n```", section, flags=re.S | re.M).group(1)
    (tmp_path / "train.py").write_text(example, encoding="utf-8")
    out, _ = run_ok(2, tmp_path / "train.py", cwd=tmp_path)
    assert out.strip().startswith("2 ranks (mpi): accuracy") and len(out.strip().splitlines()) == 1
    assert gpumlp.load(tmp_path / "model.npz", backend="numpy").epochs_ == 10


def test_gpumlp_info_lists_the_engines():
    r = subprocess.run([sys.executable, "-m", "gpumlp", "info", "--json"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(info["distributed"]) == {"mpi", "nccl"}
    assert all({"available", "detail"} <= set(e) for e in info["distributed"].values())
    r = subprocess.run([sys.executable, "-m", "gpumlp", "info"], capture_output=True, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "distributed mpi:" in r.stdout and "distributed nccl:" in r.stdout


# ---------------------------------------------------------------------------------- plans and pieces
@pytest.mark.parametrize("n, B, P", [(49, 16, 3), (13, 2, 3), (5, 16, 4), (100, 7, 2), (64, 16, 4), (1, 3, 3)])
def test_a_replicated_plan_splits_every_batch_into_shards_and_keeps_every_row(n, B, P):
    rng = np.random.default_rng(n)
    order, w = rng.permutation(n), rng.uniform(0, 1, n)
    plans = [dp.replicated_plan(order, B, P, r, w) for r in range(P)]
    sizes = plans[0].sizes
    np.testing.assert_array_equal(sizes.sum(axis=1), np.minimum(B, n - np.arange(0, n, B)))
    assert (sizes.max(axis=1) - sizes.min(axis=1) <= 1).all()
    np.testing.assert_allclose(plans[0].shares.sum(axis=1), 1.0, rtol=1e-15)
    # the shards of step k, rank after rank, are batch k of the single process, in its order
    pos = [np.concatenate(([0], np.cumsum(p.sizes[:, r]))) for r, p in enumerate(plans)]
    for k in range(sizes.shape[0]):
        batch = np.concatenate([p.order[pos[r][k]:pos[r][k + 1]] for r, p in enumerate(plans)])
        np.testing.assert_array_equal(batch, order[k * B:(k + 1) * B])
        share = [w[p.order[pos[r][k]:pos[r][k + 1]]].sum() for r, p in enumerate(plans)]
        np.testing.assert_allclose(plans[0].shares[k], np.array(share) / sum(share), rtol=1e-12)
    assert all(p.chunk == sizes[0, r] for r, p in enumerate(plans))


def test_a_batch_of_zero_weight_gives_its_share_to_the_first_shard_with_rows():
    plan = dp.replicated_plan(np.arange(7), 4, 3, 0, np.array([0, 0, 0, 0, 1, 1, 1.0]))
    np.testing.assert_array_equal(plan.shares[0], [1, 0, 0])  # its J is then s, as in one process
    plan = dp.replicated_plan(np.arange(3), 1, 3, 0, np.zeros(3))
    np.testing.assert_array_equal(plan.shares[:, 0], [1, 1, 1])  # each step one row, all on rank 0


def test_a_sharded_plan_takes_chunks_until_the_largest_part_is_done():
    plan = dp.sharded_plan([10, 3, 7], 6, 1)  # shares 2, 2, 2 rows
    assert plan.sizes.shape == (5, 3) and plan.chunk == 2
    np.testing.assert_array_equal(plan.sizes.sum(axis=0), [10, 3, 7])
    np.testing.assert_array_equal(plan.sizes[:, 1], [2, 1, 0, 0, 0])
    np.testing.assert_array_equal(plan.batches, [6, 5, 4, 3, 2])
    with pytest.raises(ValueError, match="batch_size >= the number of ranks"):
        dp.sharded_plan([4, 4, 4], 2, 0)


@pytest.mark.parametrize("source", ["gathered", "resident", "streamed", "sparse"])
def test_batch_sources_take_a_ranks_subset_of_the_rows(source):
    """A rank's order holds only its shards' rows: every source yields exactly those, in chunks (the
    GPU's with NumPy as the device, the streamed one with tests/test_stream.py's CuPy stand-in)."""
    from types import SimpleNamespace

    from gpumlp.batches import GatheredBatches, ResidentBatches, StreamedBatches

    x = np.arange(40.0).reshape(20, 2).astype(np.float32)
    y, w = np.arange(20), np.linspace(1, 2, 20)
    order = np.random.default_rng(0).permutation(20)[:7]
    if source == "streamed":
        from test_stream import FakeCupy

        cp = FakeCupy()
        cp.take = np.take
        src = StreamedBatches(SimpleNamespace(xp=cp, asarray=np.asarray), x, y, w)
    elif source == "resident":
        src = ResidentBatches(SimpleNamespace(xp=np, asarray=np.asarray), x, y, w)
    elif source == "sparse":
        sp = pytest.importorskip("scipy.sparse", reason="SciPy is not installed")
        from gpumlp.batches import SparseBatches

        src = SparseBatches(SimpleNamespace(xp=np, asarray=np.asarray), sp.csr_matrix(x), y, w)
    else:
        src = GatheredBatches(np, x, y, w)
    got = [(b[0].toarray() if hasattr(b[0], "toarray") else np.array(b[0]), b[1], b[2]) for b in src.epoch(order, 3)]
    assert [len(b[1]) for b in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x[order])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y[order])
    np.testing.assert_array_equal(np.concatenate([b[2] for b in got]), w[order])


def test_digests_see_every_value_and_sample_large_arrays(monkeypatch):
    a = np.arange(600.0).reshape(100, 6)
    b = a.copy()
    b[57, 2] += 1e-12
    assert distributed.digest(a) == distributed.digest(a.copy()) != distributed.digest(b)
    assert distributed.digest(a) != distributed.digest(a.astype(np.float32)) != distributed.digest(a.reshape(50, 12))
    assert distributed.digest(None, a) != distributed.digest(a, None)
    monkeypatch.setattr(distributed, "DIGEST_BYTES", 48 * 10)  # 10 of the 100 rows: 0, 11, ..., 99
    c = a.copy()
    c[0, 0] += 1
    assert distributed.digest(c) != distributed.digest(a)
    c = a.copy()
    c[99, 5] += 1
    assert distributed.digest(c) != distributed.digest(a)


def test_partial_fit_runs_data_parallel_too():
    """DataParallelTrainer.partial_fit: on one rank, the single process's partial_fit to the bit."""
    X, y, w = dp_cases.full_data("nesterov-weighted")
    a, b = (gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", dtype="float64", seed=0, momentum=0.9,
                       lr_schedule="adaptive") for _ in range(2))
    for _ in range(3):
        a.partial_fit(X, y, batch_size=16, lr=0.1, sample_weight=w)
        trainer = dp.DataParallelTrainer(b, distributed.SingleProcess(), batch_size=16, lr=0.1, shuffle=False)
        trainer.partial_fit(X, y, sample_weight=w)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.loss_curve_ == b.loss_curve_ and a.epochs_ == b.epochs_ == 3


def test_the_data_parallel_benchmark_runs(capsys):
    """gpumlp bench --ranks (tiny shapes): one MPI job per rank count; no timing is checked."""
    from gpumlp import bench

    _mpiexec()
    assert bench.main(["--ranks", "2", "--smoke", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["ranks"]: r for r in out["measured"]}
    assert set(rows) == {1, 2} and rows[2]["gradient_bytes"] == rows[1]["gradient_bytes"] > 0
    assert rows[2]["step_s"] > 0 and 0 <= rows[2]["allreduce_share"] and rows[1]["allreduce_share"] == 0
    assert rows[2]["speedup_vs_fused"] > 0 and rows[1]["fused_s"] > 0
    paper = bench.paper_scaling(bench.SHAPES["M"], 8, next(iter(bench.LINKS)))
    assert paper["gradient_bytes"] == (784 * 1024 + 1024 * 10) * 4
    assert 0 < paper["weak_efficiency"] < 1 and paper["allreduce_s"] > 0
    assert bench.paper_scaling(bench.SHAPES["M"], 1, next(iter(bench.LINKS)))["strong_speedup"] == 1
    assert bench.main(["--ranks", "two"]) == 2


def test_make_trainer_and_fit_arguments():
    X, y, _ = dp_cases.full_data("sgd")
    m = gpumlp.MLP((dp_cases.D, 4, dp_cases.Q), backend="numpy")
    with pytest.raises(ValueError, match="sharded=True needs comm"):
        m.fit(X, y, sharded=True)
    with pytest.raises(TypeError, match="communicator"):
        m.fit(X, y, comm="mpi")
    assert type(dp.make_trainer(m)) is gpumlp.Trainer
    assert isinstance(dp.make_trainer(m, distributed.SingleProcess()), dp.DataParallelTrainer)


def test_the_nccl_engine_refuses_a_model_it_cannot_train():
    class Stub(distributed.NCCLCommunicator):
        def __init__(self):
            self.rank, self.size, self.device = 0, 1, 0

    assert "backend='cupy'" in Stub().model_problem(gpumlp.MLP((2, 2), backend="numpy"))


def test_the_mpi_engine_stages_device_arrays_through_pinned_memory_unless_cuda_aware(monkeypatch):
    monkeypatch.setenv(distributed.CUDA_AWARE_VAR, "1")
    assert distributed.mpi_cuda_aware() is True
    monkeypatch.setenv(distributed.CUDA_AWARE_VAR, "0")
    assert distributed.mpi_cuda_aware() is False
    monkeypatch.delenv(distributed.CUDA_AWARE_VAR)
    assert distributed.mpi_cuda_aware() in (True, False)  # the library's answer (mpich from PyPI: False)


class _StagingCupy:
    """Just what MPICommunicator's pinned staging uses, logging each copy, event and free: the
    pinned -> device copy (``set``) is asynchronous on a real GPU, reading the pinned buffer after the
    call returned, until the event recorded after it."""

    def __init__(self):
        import types
        import weakref

        self.log = log = []
        names = iter(range(10**6))

        class Pinned(bytearray):  # CuPy's PinnedMemoryPointer: freed back to the pool when dropped
            pass

        def alloc_pinned_memory(n):
            mem = Pinned(n)
            mem.name = f"m{next(names)}"
            weakref.finalize(mem, log.append, ("free", mem.name))
            return mem

        class Event:
            def __init__(self, disable_timing=False):
                self.name = f"e{next(names)}"

            def record(self, stream):
                log.append(("record", self.name, stream.name))

            def synchronize(self):
                log.append(("host_wait", self.name))

        class Stream:
            def __init__(self, name):
                self.name = name

            def wait_event(self, event):
                log.append(("wait", self.name, event.name))

            def synchronize(self):
                log.append(("stream_sync", self.name))

        self.streams = {name: Stream(name) for name in ("s0", "s1")}
        self.current = self.streams["s0"]
        self.cuda = types.SimpleNamespace(alloc_pinned_memory=alloc_pinned_memory, Event=Event,
                                          get_current_stream=lambda: self.current)

    def array(self, values):
        log = self.log

        class DeviceArray(np.ndarray):
            def get(self, out=None, stream=None):
                out[...] = np.asarray(self)
                log.append(("get", stream.name))

            def set(self, host, stream=None):
                base = host
                while isinstance(base, (np.ndarray, memoryview)):
                    base = base.base if isinstance(base, np.ndarray) else base.obj
                log.append(("set", base.name, stream.name))
                np.asarray(self)[...] = host

        DeviceArray.__module__ = "cupy._core.core"  # backend.is_device_array
        return np.array(values, np.float64).view(DeviceArray)


def test_pinned_staging_buffers_outlive_the_copies_that_read_them(monkeypatch):
    """MPI without CUDA support: device -> pinned, MPI on the host, pinned -> device (asynchronous).
    Every buffer the cache drops must have finished its last pinned -> device copy (a host wait on the
    event recorded after it), and a buffer reused on another stream is overwritten only after it."""
    cp = _StagingCupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)  # what backend.array_module(buf) hands back
    one_rank = type("Comm", (), {"Get_rank": lambda self: 0, "Get_size": lambda self: 1})()
    comm = distributed.MPICommunicator(one_rank, None, cuda_aware=False)
    double = lambda host: host.__imul__(2)  # noqa: E731 - the "collective" on the host buffer
    for n in (1, 2, 3, 4, 5, 6, 2):  # more sizes than the cache holds, and a reuse
        buf = cp.array(np.arange(n))
        comm._device_call(buf, double)
        np.testing.assert_array_equal(np.asarray(buf), 2 * np.arange(n))
    cp.current = cp.streams["s1"]
    comm._device_call(cp.array([1.0, 2.0]), double)  # the size-2 buffer again, on another stream

    log = cp.log
    frees = [(i, e[1]) for i, e in enumerate(log) if e[0] == "free"]
    assert len(frees) == 4  # the first four buffers, when the fifth size came
    for at, mem in frees:
        last_set = max(i for i, e in enumerate(log[:at]) if e[:2] == ("set", mem))
        event = log[last_set + 1]
        assert event[0] == "record", "the pinned -> device copy is followed by its event"
        assert ("host_wait", event[1]) in log[last_set + 1:at], f"{mem} freed while its copy may still read it"
    reuse = max(i for i, e in enumerate(log) if e == ("get", "s1"))
    recorded = [e[1] for e in log[:reuse] if e[0] == "record" and e[2] == "s0"]
    assert ("wait", "s1", recorded[-1]) in log[:reuse]  # the size-2 buffer's last copy, on s0


# ---------------------------------------------------------------------------------- on a GPU
def _engines_or_skip(*names):
    """Skip, with the reason, unless each engine named can run here (a GPU image may well lack
    mpi4py, an MPI library or NCCL's wheel: that says nothing about the GPU path)."""
    engines = distributed.engines()
    for name in names:
        if not engines[name].available:
            pytest.skip(f"the {name} engine cannot run here: {engines[name].detail}")


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["nccl", "mpi"])
def test_gpu_one_rank_through_an_engine_equals_the_single_process(engine):
    """One rank on a real device: the NCCL engine (a communicator of one GPU) and the MPI engine
    give the single-process CuPy fit. Both need mpi4py and an MPI library (NCCL is bootstrapped over
    MPI), NCCL its wheel too."""
    _engines_or_skip("mpi", engine)
    from gpu_fit import cupy_fit

    ref = cupy_fit(None).theta.get()
    assert relative(cupy_fit(distributed.init(engine)).theta.get(), ref) < 1e-12, engine


@pytest.mark.gpu
def test_gpu_pinned_staging_round_trips_on_any_stream():
    """The MPI engine's staging for an MPI without CUDA support (device -> pinned, the collective on
    the host, pinned -> device, asynchronous), on real CuPy objects and without MPI: a one-rank
    communicator with the collective replaced by a host operation. More sizes than the cache holds
    (buffers freed after their last copy), and a reuse from a second, non-blocking stream."""
    cupy = gpumlp.get_backend("cupy").xp
    one_rank = type("Comm", (), {"Get_rank": lambda self: 0, "Get_size": lambda self: 1})()
    comm = distributed.MPICommunicator(one_rank, None, cuda_aware=False)
    triple = lambda host: host.__imul__(3)  # noqa: E731
    for n in (10, 1, 2, 3, 4, 5, 1 << 20, 10):
        buf = cupy.arange(n, dtype=cupy.float64)
        comm._device_call(buf, triple)
        np.testing.assert_array_equal(buf.get(), 3 * np.arange(n))
    side = cupy.cuda.Stream(non_blocking=True)
    with side:
        buf = cupy.arange(10, dtype=cupy.float64)
        comm._device_call(buf, triple)
        side.synchronize()
        np.testing.assert_array_equal(buf.get(), 3 * np.arange(10))


@pytest.mark.gpu
def test_gpu_two_ranks_through_nccl(tmp_path):
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    _engines_or_skip("mpi", "nccl")
    from gpu_fit import cupy_fit

    run_ok(2, MPI_DIR / "gpu_fit.py", tmp_path, "adam")
    a, b = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    np.testing.assert_array_equal(a, b)
    assert relative(a, cupy_fit(None, "adam").theta.get()) < 1e-10


# ---------------------------------------------------------------------------------- streamed, sharded
def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        if in_ci():
            pytest.fail("CI must run the Parquet tests, but pyarrow (in the test extra) is missing")
        pytest.skip("pyarrow is needed (pip install -e '.[test]')")
    return pyarrow, pyarrow.parquet


def _one_process_stream(path):
    from gpumlp.data import prepare_stream, stream

    src = stream(path, chunk_rows=None if str(path).endswith(".parquet") else 500)
    prep = prepare_stream(src, test_size=0.2, validation_split=0.1, seed=3)
    model = gpumlp.MLP([src.n_features, 32, len(prep.classes)], seed=0, optimizer="adam")
    model.fit(prep.train, None, epochs=8, batch_size=64, lr=0.005, validation_data=(prep.X_val, prep.y_val))
    return prep, gpumlp.streamed.score(model, prep.test)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_sharded_streaming_reads_only_each_ranks_chunks_and_matches_one_process(tmp_path, fmt):
    """Issue 16: under MPI each rank reads only its own chunks (every P-th), the statistics pass is
    combined over the ranks (the same counts, digest and scaler as one process's pass over the whole
    file), and the result is within 0.01 test accuracy of the one-process streamed run. (A CSV's
    chunks are found by one scan of its record breaks, on each rank, before any is parsed.)"""
    rng = np.random.default_rng(5)
    n, d = 6000, 8
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, d) + rng.normal(size=d) * 5
    y = ((X - X.mean(0)) / X.std(0) @ rng.normal(size=(d, 3))).argmax(axis=1)
    names = [f"x{j}" for j in range(d)] + ["label"]
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", fmt="%.9g", header=",".join(names), comments="")
    else:
        pa, pq = _pyarrow()
        pq.write_table(pa.table(dict(zip(names, [*X.T, y]))), path, row_group_size=500)
    run_ok(2, MPI_DIR / "stream_fit.py", path, tmp_path)
    ranks = [json.loads((tmp_path / f"stream-{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    chunks = ranks[0]["chunks"]
    assert chunks == 12
    for r, got in enumerate(ranks):
        assert got["read"] == list(range(r, chunks, 2)), "a rank read chunks that are not its own"
    prep, accuracy = _one_process_stream(path)
    for got in ranks:
        assert got["counts"] == prep.statistics.counts.tolist() and got["digest"] == prep.digest
        # the moments merged over the ranks, against one pass: the same up to rounding (float64)
        assert np.allclose(got["offset"], prep.scaler.offset, rtol=1e-12, atol=1e-12 * np.abs(prep.scaler.scale))
        assert np.allclose(got["scale"], prep.scaler.scale, rtol=1e-12)
        assert got["samples_seen"] == 8 * prep.n_train
    assert ranks[0]["theta"] == ranks[1]["theta"] and ranks[0]["accuracy"] == ranks[1]["accuracy"]
    assert accuracy > 0.9 and abs(ranks[0]["accuracy"] - accuracy) <= 0.01
