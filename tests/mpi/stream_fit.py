"""Sharded streamed training on the ranks of an MPI job (tests/test_distributed.py): each rank records
which chunks of the file it read, and rank r writes what it found to OUT/stream-r.json."""
import json
import sys

import numpy as np

import gpumlp
from gpumlp import distributed
from gpumlp.data import prepare_stream, stream

path, out = sys.argv[1], sys.argv[2]
comm = distributed.init("mpi")
src = stream(path, chunk_rows=None if path.endswith(".parquet") else 500)
read = set()
original = src.source.read


def recording(chunk, *args, **kw):
    read.add(chunk.index)
    return original(chunk, *args, **kw)


src.source.read = recording
prep = prepare_stream(src, test_size=0.2, validation_split=0.1, seed=3, comm=comm)
model = gpumlp.MLP([src.n_features, 32, len(prep.classes)], seed=0, optimizer="adam")
model.fit(prep.train, None, epochs=8, batch_size=64, lr=0.005, comm=comm, sharded=True,
          validation_data=(prep.X_val, prep.y_val))
accuracy = gpumlp.streamed.score(model, prep.test, comm=comm)
json.dump({"read": sorted(read), "chunks": len(src.source.chunks), "counts": prep.statistics.counts.tolist(),
           "digest": prep.digest, "offset": prep.scaler.offset.tolist(), "scale": prep.scaler.scale.tolist(),
           "accuracy": accuracy, "samples_seen": model.samples_seen_,
           "theta": float(np.asarray(model.theta, np.float64).sum())},
          open(f"{out}/stream-{comm.rank}.json", "w", encoding="utf-8"))
