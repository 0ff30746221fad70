"""The benchmark code runs (tiny shapes), so that it cannot rot between the runs that time it.
Nothing here checks a timing."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumlp import bench

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_json(capsys):
    assert bench.main(["--smoke", "--json", "--task", "both"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["environment"]["numpy"]
    rows = {(r["task"], r["implementation"]): r for r in out["rows"]}
    for task in ("train", "infer"):
        mine, floor = rows[(task, "gpumlp (numpy)")], rows[(task, "floor (numpy)")]
        assert math.isfinite(mine["samples_per_s"]) and mine["samples_per_s"] > 0
        assert mine["time_vs_floor"] > 0 and floor["time_vs_floor"] is None
        assert (mine["speedup_vs_torch"] is None) == ((task, "torch (torch, cpu)") not in rows)


def test_bench_smoke_table(capsys):
    assert bench.main(["--smoke", "--no-torch", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "gpumlp (numpy)" in text and "floor (numpy)" in text and "samples/s" in text
    assert "torch (torch" not in text


def test_bench_usage_errors(capsys):
    assert bench.main(["--shapes", "XL"]) == 2
    assert "unknown shape" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "tpu"])
    assert e.value.code == 2


def test_pytest_benchmark_suite_runs_in_smoke_mode():
    env = dict(os.environ, GPUMLP_BENCH_SMOKE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "--benchmark-disable", "-p",
                        "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


def test_compare_cpu_summary_arithmetic():
    spec = importlib.util.spec_from_file_location("compare_cpu", ROOT / "benchmarks" / "compare_cpu.py")
    cc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc)
    ep = lambda *s: [{"seconds": t, "foreign_load": f} for t, f in s]  # noqa: E731
    results = [
        {"impl": "gpumlp", "shape": "S", "epochs": ep((1.0, 0.0), (3.0, 0.5), (1.2, 0.01))},
        {"impl": "torch", "shape": "S", "epochs": ep((2.0, 0.0), (2.2, 0.0), (9.0, 0.9))},
        {"impl": "floor-numpy", "shape": "S", "epochs": ep((0.8, 0.0), (0.8, 0.0), (0.8, 0.0))},
    ]
    s = cc.summarise(results, quiet=0.05)["S"]
    assert s["gpumlp"]["median_s"] == 1.2 and s["gpumlp"]["quiet_median_s"] == 1.1
    assert s["gpumlp"]["median_vs_torch"] == pytest.approx(1.2 / 2.2)
    assert s["gpumlp"]["quiet_median_vs_floor-numpy"] == pytest.approx(1.1 / 0.8)
    assert "S: B=256" in cc.format_summary({"S": s})


def test_compare_lbfgs_runs_in_smoke_mode(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy.optimize")
    out = tmp_path / "lbfgs.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_lbfgs.py"), "--rounds", "2", "--fits", "1",
                        "--datasets", "iris,diabetes", "--max-iter", "5", "--json", str(out)],
                       capture_output=True, encoding="utf-8", timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8"))  # its ÷ and ·, any locale
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    for name in ("iris", "diabetes"):
        ours, theirs = summary[name]["gpumlp"], summary[name]["sklearn"]
        assert ours["fits"] == theirs["fits"] == 2 and ours["n_iter"] == theirs["n_iter"] == 5
        assert ours["median_vs_sklearn"] == pytest.approx(ours["median_s"] / theirs["median_s"])
        assert ours["paired_vs_sklearn"] > 0
    assert "iris" in r.stdout and "÷sklearn" in r.stdout
