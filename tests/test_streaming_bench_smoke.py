"""benchmarks/streaming.py runs (tiny files, one round, every part: the speed table's three contenders, the
0.25x/1x/4x-budget files and the larger-than-memory run at a tiny size), so that it cannot rot between
the runs that time it. Nothing here checks a timing."""
import json
import os
import subprocess
import sys
from pathlib import Path

from ci import needed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "streaming.py"


def test_streaming_benchmark_runs_every_part_in_smoke_mode(tmp_path):
    needed("pyarrow")  # the Parquet contender: in the test extra, so CI fails without it
    out = tmp_path / "streaming.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--rows", "3000", "--epochs", "1",
                        "--budget", "32MiB", "--huge", "6MiB", "--json", str(out)], capture_output=True,
                       encoding="utf-8", timeout=600, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["budget"] == 32 * 2**20 and saved["net"] == "64-128-10" and saved["batch"] == 32
    assert sorted(res["kind"] for res in saved["speed"]) == ["memory", "npy", "parquet"]
    for res in saved["speed"]:
        assert res["rows"] == 3000 and len(res["epoch_s"]) == 1 and res["samples_per_s"] > 0
        assert res["peak_bytes"] > 2**20
    row_bytes = 64 * 4 + 8
    assert [(s["factor"], s["rows"]) for s in saved["scaling"]] == [
        (f, int(f * 32 * 2**20 // row_bytes)) for f in (0.25, 1, 4)]
    huge = saved["huge"]
    assert huge["rows"] == 6 * 2**20 // (1024 * 4 + 8) and huge["file_bytes"] == huge["rows"] * (1024 * 4 + 8)
    assert saved["tiny"]["rows"] == 1000
    for words in ("one BLAS thread, budget 32 MiB", "parquet", "npy file 4x budget", "huge npy file"):
        assert words in r.stdout
