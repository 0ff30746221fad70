"""A CuPy fit for the GPU-marked tests (tests/test_distributed.py), in one process or under mpiexec:

    mpiexec -n 2 python tests/mpi/gpu_fit.py OUTDIR OPTIMIZER     # each rank writes OUTDIR/RANK.npy
"""
import sys

import numpy as np

import dp_cases
import gpumlp
from gpumlp import distributed


def cupy_fit(comm, optimizer="sgd"):
    X, y, w = dp_cases.full_data("nesterov-weighted")
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    m = gpumlp.MLP((dp_cases.D, 8, dp_cases.Q), activation="tanh", dtype="float64", backend="cupy", seed=0,
                   bias=True, weight_decay=0.01, optimizer=optimizer, **extra)
    return m.fit(X, y, epochs=3, batch_size=16, lr=0.1, sample_weight=w, comm=comm)


if __name__ == "__main__":
    comm = distributed.init("nccl")
    np.save(f"{sys.argv[1]}/{comm.rank}.npy", cupy_fit(comm, sys.argv[2]).theta.get())
