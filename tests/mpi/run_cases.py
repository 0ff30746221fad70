"""Run data-parallel cases under mpiexec and write each rank's results (tests/test_distributed.py).

    mpiexec -n 3 python tests/mpi/run_cases.py OUTDIR [--engine mpi|standin] CASE [CASE ...]

For every case, every rank writes OUTDIR/CASE-RANK.npz (dp_cases.result) and, for sharded cases, the
ids of the examples each of its gradient phases saw (``steps``: epoch, then the ids). The
model of every rank but 0 is seeded differently: rank 0's state must reach them all.
"""
import sys
from pathlib import Path

import numpy as np

import dp_cases
from gpumlp import distributed
from gpumlp.step import Step


def record_steps():
    """Patch Step.gradients to log (epoch, ids of the rows) of every gradient phase of this rank."""
    seen = []
    original = Step.gradients

    def gradients(self, x, y, w=None):
        ids = np.rint(np.asarray(self.model.array_backend.to_host(x[:, 0])) / dp_cases.ID_SCALE).astype(np.int64)
        seen.append((self.model.epochs_, ids))
        return original(self, x, y, w)

    Step.gradients = gradients
    return seen


def main(argv):
    out, argv = Path(argv[0]), argv[1:]
    engine = "mpi"
    if argv[:1] == ["--engine"]:
        engine, argv = argv[1], argv[2:]
    if engine == "standin":
        import nccl_standin

        comm = nccl_standin.communicator()
    else:
        comm = distributed.init(engine)
    seen = record_steps()
    for name in argv:
        seen.clear()
        model, res = dp_cases.run(name, comm, comm.rank, comm.size, seed=0 if comm.rank == 0 else 100 + comm.rank)
        epochs = np.array([e for e, _ in seen], np.int64)
        lengths = np.array([len(ids) for _, ids in seen], np.int64)
        flat = np.concatenate([ids for _, ids in seen]) if seen else np.zeros(0, np.int64)
        np.savez(out / f"{name}-{comm.rank}.npz", step_epochs=epochs, step_lengths=lengths, step_ids=flat,
                 **{k: np.asarray(v) for k, v in res.items()})
    comm.barrier()


if __name__ == "__main__":
    main(sys.argv[1:])
