"""benchmarks/compare_predict.py runs (a tiny shape and batch, one round), so that it cannot rot between the
runs that time it. Nothing here checks a timing."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ci import needed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_predict.py"


def test_compare_predict_runs_every_library_in_smoke_mode(tmp_path):
    for module in ("onnx", "onnxruntime", "sklearn", "torch"):  # all in the test extra: CI fails without one
        needed(module)
    out = tmp_path / "predict.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "2", "--shapes", "6-8-3", "--batch", "300",
                        "--calls", "5", "--samples", "2", "--json", str(out)], capture_output=True, encoding="utf-8",
                       timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads(out.read_text())
    rows = saved["summary"]["6-8-3"]
    for measure in ("latency", "throughput"):
        assert set(rows[measure]) == {"gpumlp", "onnxruntime", "sklearn", "torch"}
        for lib, row in rows[measure].items():
            assert row["samples"] == 4 and row["median_s"] > 0  # 2 rounds × 2 samples
        g = rows[measure]["gpumlp"]
        assert g["time_vs_onnxruntime"] == pytest.approx(g["median_s"] / rows[measure]["onnxruntime"]["median_s"])
        assert g["paired_time_vs_sklearn"] > 0
    # the same weights in every library: every label of the large batch equal to gpumlp's
    assert [r["labels_equal_gpumlp"] for r in saved["results"]] == [300] * 8
    assert set(saved["goals"]["6-8-3"]) == {"throughput_vs_onnxruntime", "throughput_goal_met", "latency_vs_sklearn",
                                           "latency_goal_met"}
    assert "6-8-3, float32" in r.stdout and "goals (" in r.stdout and " CPUs · Python " in r.stdout  # the machine named


def test_compare_predict_summary_arithmetic():
    spec = importlib.util.spec_from_file_location("compare_predict", SCRIPT)
    cp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cp)
    s = lambda *xs: [{"seconds": t, "foreign_load": f} for t, f in xs]  # noqa: E731
    results = [
        {"lib": "gpumlp", "shape": "S", "batch": 100, "round": 0, "latency": s((2.0, 0.0)), "throughput": s((1.0, 0.0))},
        {"lib": "onnxruntime", "shape": "S", "batch": 100, "round": 0, "latency": s((1.0, 0.0)),
         "throughput": s((2.0, 0.5))},
        {"lib": "gpumlp", "shape": "S", "batch": 100, "round": 1, "latency": s((4.0, 0.0)), "throughput": s((3.0, 0.0))},
        {"lib": "onnxruntime", "shape": "S", "batch": 100, "round": 1, "latency": s((1.0, 0.0)),
         "throughput": s((1.0, 0.0))},
    ]
    summary = cp.summarise(results)
    thr = summary["S"]["throughput"]
    assert thr["gpumlp"]["median_s"] == 2.0 and thr["gpumlp"]["rows_per_s"] == 50.0
    assert thr["onnxruntime"]["quiet_median_s"] == 1.0 and thr["onnxruntime"]["quiet_samples"] == 1
    assert thr["gpumlp"]["paired_time_vs_onnxruntime"] == pytest.approx((0.5 + 3.0) / 2)
    assert summary["S"]["latency"]["gpumlp"]["time_vs_onnxruntime"] == 3.0
    g = cp.goals(summary)["S"]
    assert g["throughput_vs_onnxruntime"] == pytest.approx(1 / 1.75) and g["throughput_goal_met"] is False
    assert g["latency_vs_sklearn"] is None and g["latency_goal_met"] is None
