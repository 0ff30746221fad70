"""Agreement and failure scenarios under mpiexec (tests/test_distributed.py).

    mpiexec -n 2 python tests/mpi/scenarios.py SCENARIO OUTDIR [ARG]

Scenarios that catch what they provoke write OUTDIR/SCENARIO-RANK.json (one record per sub-case,
with the exception's type and message on this rank). The others end the job on purpose and are
judged by the job's exit status and output.
"""
import json
import sys
from pathlib import Path

import numpy as np

import dp_cases
import gpumlp
from gpumlp import distributed


def attempt(record, label, fn):
    try:
        fn()
        record.append({"case": label, "type": None, "message": ""})
    except Exception as exc:  # noqa: BLE001 - the scenario records what each rank raised
        record.append({"case": label, "type": type(exc).__name__, "message": str(exc),
                       "value_error": isinstance(exc, ValueError),
                       "collective": distributed.is_collective(exc)})


def mismatch(comm, out):
    """Data or settings that differ on rank 1: every rank must raise, and the job must go on."""
    r = comm.rank
    X, y, _ = dp_cases.full_data("sgd")
    record = []

    def fit(X=X, y=y, sizes=(dp_cases.D, 8, dp_cases.Q), lr=0.1, batch_size=16, **kw):
        gpumlp.MLP(sizes, backend="numpy", dtype="float64", seed=0).fit(X, y, epochs=1, batch_size=batch_size, lr=lr,
                                                                        comm=comm, **kw)

    changed = X.copy()
    changed[17, 3] += 1e-9
    attempt(record, "one value", lambda: fit(X=changed if r == 1 else X))
    attempt(record, "fewer rows", lambda: fit(X=X[:40] if r == 1 else X, y=y[:40] if r == 1 else y))
    attempt(record, "labels", lambda: fit(y=np.roll(y, 1) if r == 1 else y))
    attempt(record, "weights", lambda: fit(sample_weight=np.where(np.arange(len(y)) == 5, 1.0 + (r == 1), 1.0)))
    attempt(record, "learning rate", lambda: fit(lr=0.2 if r == 1 else 0.1))
    attempt(record, "architecture", lambda: fit(sizes=(dp_cases.D, 9 if r == 1 else 8, dp_cases.Q)))
    attempt(record, "invalid on one rank", lambda: fit(y=np.where(np.arange(len(y)) == 3, 7, y) if r == 1 else y))
    attempt(record, "validation data", lambda: fit(validation_data=(X[:10] + r, y[:10])))
    attempt(record, "sharded weights on one rank",
            lambda: fit(sharded=True, sample_weight=np.ones(len(y)) if r else None))
    attempt(record, "sharded batch below ranks", lambda: fit(sharded=True, batch_size=1))
    attempt(record, "still usable", lambda: fit())
    (out / f"mismatch-{r}.json").write_text(json.dumps(record))


def decisions(comm, out):
    """Decisions every rank must take alike: a stop asked by one rank's callback, divergence."""
    r = comm.rank
    X, y, _ = dp_cases.full_data("sgd")
    record = []
    m = gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", dtype="float64", seed=r, momentum=0.9)
    m.fit(X, y, epochs=6, batch_size=16, lr=0.1, comm=comm, callbacks=lambda model, rec: r == 1 and rec["epoch"] == 2)
    record.append({"case": "callback stop", "epochs": m.epochs_, "stop_reason": m.stop_reason_,
                   "digest": dp_cases.theta_digest(m)})
    m = gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", dtype="float64", seed=r, momentum=0.9)
    m.fit(X, y, epochs=1, batch_size=16, lr=0.1, comm=comm)
    before = dp_cases.theta_digest(m)
    with np.errstate(all="ignore"):
        attempt(record, "divergence", lambda: m.fit(X * 1e150, y, epochs=3, batch_size=16, lr=1e10, comm=comm))
    record[-1].update(digest_before=before, digest_after=dp_cases.theta_digest(m), epochs=m.epochs_)
    (out / f"decisions-{r}.json").write_text(json.dumps(record))


def callback_raises(comm, out):
    """Rank 1's callback raises in epoch 2 and nobody catches it: the job must end with its message."""
    X, y, _ = dp_cases.full_data("sgd")

    def cb(model, record):
        if comm.rank == 1 and record["epoch"] == 2:
            raise RuntimeError("the callback of rank 1 gave up")

    gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", seed=0).fit(X, y, epochs=50, comm=comm, callbacks=cb)
    print("NOT REACHED", flush=True)


def raise_outside(comm, out):
    """Rank 1 fails in the user's code before fit while rank 0 is in fit's first collective."""
    X, y, _ = dp_cases.full_data("sgd")
    if comm.rank == 1:
        raise RuntimeError("rank 1 failed before training")
    gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", seed=0).fit(X, y, epochs=50, comm=comm)
    print("NOT REACHED", flush=True)


def raise_inside(comm, out):
    """Rank 1 fails inside an epoch (between two all-reduces): the trainer must end the job."""
    from gpumlp.step import Step

    X, y, _ = dp_cases.full_data("sgd")
    if comm.rank == 1:
        original, calls = Step.apply, []

        def apply(self, optimizer, lr):
            calls.append(1)
            if len(calls) == 5:
                raise KeyError("rank 1 broke in step 5")
            return original(self, optimizer, lr)
        Step.apply = apply
    gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", seed=0, momentum=0.9).fit(X, y, epochs=50, comm=comm)
    print("NOT REACHED", flush=True)


def checkpoint(comm, out, phase):
    """first: 4 epochs, saved by rank 0 after epoch 2; resume: every rank loads it, 2 more epochs."""
    X, y, w = dp_cases.full_data("nesterov-weighted")
    args = dict(batch_size=16, lr=0.1, sample_weight=w, early_stopping=True, validation_fraction=0.25,
                n_iter_no_change=50)
    path = out / "checkpoint.npz"
    if phase == "first":
        m = gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), backend="numpy", dtype="float64", seed=comm.rank,
                       optimizer="adam", bias=True, lr_schedule=gpumlp.schedules.Cosine(T_max=4))

        def save_at_2(model, record):
            if record["epoch"] == 2:
                distributed.save(model, str(path), comm)

        m.fit(X, y, epochs=4, callbacks=save_at_2, comm=comm, **args)
    else:
        m = gpumlp.load(str(path), backend="numpy")
        m.fit(X, y, epochs=2, comm=comm, **args)
    np.save(out / f"checkpoint-{phase}-{comm.rank}.npy", m.theta)


def nccl_devices(comm, out):
    """The NCCL engine's device choice through the stand-in: one GPU for all ranks, too few GPUs."""
    import nccl_standin

    record = []
    attempt(record, "one GPU for every rank", lambda: nccl_standin.communicator(devices=1, same_bus=True))
    attempt(record, "fewer GPUs than ranks", lambda: nccl_standin.communicator(devices=comm.size - 1))
    nccl_standin.CALLS.clear()
    c = nccl_standin.communicator(devices=comm.size)
    record.append({"case": "bootstrap", "device": c.device, "calls": nccl_standin.CALLS})
    (out / f"nccl_devices-{comm.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    name, out = sys.argv[1], Path(sys.argv[2])
    comm = distributed.init("mpi")
    globals()[name](comm, out, *sys.argv[3:])
