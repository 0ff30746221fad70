"""A stand-in for NCCL and CuPy's device API, so that the NCCL engine's code paths (the MPI
bootstrap, the device choice, the collectives' calls) run under mpiexec on a machine without a GPU.

The stand-in "device" memory is host memory: its NCCL collectives read the buffer at the pointer
they are given and reduce it with MPI, so a fit through it must give the MPI engine's bits. Every
call is logged in ``CALLS`` for the tests to inspect.
"""
import ctypes

import numpy as np
from mpi4py import MPI

from gpumlp import distributed

CALLS = []
_CTYPES = {7: ctypes.c_float, 8: ctypes.c_double, 4: ctypes.c_int64}  # ncclFloat32, ncclFloat64, ncclInt64


def _array(ptr, count, dtype):
    return np.ctypeslib.as_array((_CTYPES[dtype] * count).from_address(ptr))


class _NcclCommunicator:
    def __init__(self, ndev, uid, rank):
        CALLS.append(("init", ndev, tuple(uid), rank))

    def allReduce(self, send, recv, count, dtype, op, stream):
        assert send == recv and op == StandInNccl.NCCL_SUM
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, _array(recv, count, dtype), op=MPI.SUM)
        CALLS.append(("allReduce", count, dtype, stream))

    def bcast(self, buf, count, dtype, root, stream):
        MPI.COMM_WORLD.Bcast(_array(buf, count, dtype), root=root)
        CALLS.append(("bcast", count, dtype, root, stream))


class StandInNccl:
    """cupy.cuda.nccl's names that the engine uses, with NCCL's enum values."""

    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64, NCCL_SUM = 7, 8, 4, 0
    NcclCommunicator = _NcclCommunicator

    @staticmethod
    def get_unique_id():
        CALLS.append(("get_unique_id",))
        return tuple(int(v) for v in np.random.default_rng().integers(-128, 128, 128))


class StandInCupy:
    """cupy.cuda's device API as the engine uses it: ``devices`` GPUs, bus ids by index (or one for all)."""

    def __init__(self, devices=2, same_bus=False):
        outer = self

        class Device:
            def __init__(self, index=None):
                self.id = outer.current if index is None else index
                self.pci_bus_id = "0000:01:00.0" if same_bus else f"0000:{self.id + 1:02x}:00.0"

            def use(self):
                outer.current = self.id
                CALLS.append(("use", self.id))

        class Stream:
            ptr = 0xC0FFEE

        class cuda:
            runtime = type("runtime", (), {"getDeviceCount": staticmethod(lambda: devices)})
            get_current_stream = staticmethod(lambda: Stream())

        cuda.Device = Device
        self.cuda, self.current = cuda, 0


class StandInNCCLCommunicator(distributed.NCCLCommunicator):
    """The NCCL engine with host arrays standing in for device arrays."""

    def _on_device(self, buf):
        return isinstance(buf, np.ndarray)

    def _pointer(self, buf):
        return buf.ctypes.data

    def model_problem(self, model):
        return None


def communicator(devices=None, same_bus=False):
    """The stand-in engine over COMM_WORLD, with ``devices`` GPUs on the node (default: one per rank)."""
    devices = MPI.COMM_WORLD.Get_size() if devices is None else devices
    return StandInNCCLCommunicator(MPI.COMM_WORLD, MPI, nccl=StandInNccl, cupy=StandInCupy(devices, same_bus))
