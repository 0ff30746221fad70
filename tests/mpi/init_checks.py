"""distributed.init in one process (MPI as a singleton): which engine "auto" and "nccl" give here,
and "auto" where NCCL is usable (the probe and the engine stood in). Prints one JSON line."""
import json

import nccl_standin
from gpumlp import distributed

out = {}
comm = distributed.init("auto")
out.update(auto=comm.engine, size=comm.size, rank=comm.rank, repr=repr(comm))
try:
    distributed.init("nccl")
except RuntimeError as exc:
    out["nccl_error"] = str(exc)
distributed._nccl_usable = lambda: (True, "stand-in")
distributed.NCCLCommunicator = lambda world, MPI: nccl_standin.StandInNCCLCommunicator(
    world, MPI, nccl=nccl_standin.StandInNccl, cupy=nccl_standin.StandInCupy(1))
out["auto_where_nccl_works"] = distributed.init("auto").engine
print(json.dumps(out))
