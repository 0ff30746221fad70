"""Data-parallel step time: N MPI ranks against one process, and the all-reduce's share of the step.

    python benchmarks/data_parallel.py                          # S and M, 1 and 2 ranks, 9 rounds
    python benchmarks/data_parallel.py --ranks 1,2,4 --rounds 15 --out benchmarks/results/dp-mymachine

The cases are ``gpumlp.bench``'s (``parallel_case``: the step ``DataParallelTrainer`` runs, one
rank's shard of the global batch: gradients, share, all-reduce, update; and the all-reduce of the
gradient alone), each rank count in its own MPI job, every rank pinned to cores // N BLAS threads so
that N ranks use no more of the machine than one process. A timed call starts on every rank at
once (a barrier) and counts as long as its slowest rank; the median over rounds is reported. One
process is timed in both forms: the fused plain-SGD step of ``fit`` and the two-phase step that data
parallelism needs. The second table is on paper: NCCL's ring all-reduce over NVLink and InfiniBand
for the same gradient sizes, with the assumptions in ``gpumlp.bench.LINKS``.

With --out, the table goes to OUT.txt and the JSON (environment, measured rows, paper rows) to
OUT.json. Timings never go into unit tests; this script is run by hand.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

from gpumlp import bench


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="rank counts (default 1,2)")
    p.add_argument("--shapes", default="S,M", help="shapes of gpumlp.bench.SHAPES (default S,M)")
    p.add_argument("--rounds", type=int, default=9, help="timed calls per case (default 9)")
    p.add_argument("--threads", type=int, default=None, help="BLAS threads per rank (default: cores // ranks)")
    p.add_argument("--out", default=None, help="write OUT.txt (the table) and OUT.json")
    args = p.parse_args(argv)
    common = ["--ranks", args.ranks, "--shapes", args.shapes, "--rounds", str(args.rounds)]
    common += ["--threads", str(args.threads)] if args.threads else []
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench.main(common + ["--json"])
    if rc != 0:
        return rc
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    env = result["environment"]
    text = (f"gpumlp {env['gpumlp']} · numpy {env['numpy']} · {env['cpu']} ({env['cpu_count']} CPUs)\n"
            + bench.format_parallel(result["measured"], result["paper"]))
    print(text)
    if args.out:
        with open(args.out + ".txt", "w") as f:
            f.write(text + "\n")
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
