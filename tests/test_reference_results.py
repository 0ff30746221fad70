"""The numbers do not move when the code does: training runs and model files recorded on main before
the split into model, step and trainer (``tests/reference/``), replayed with today's code.

Every comparison is exact (``assert_array_equal``): the refactoring kept the order of every
floating-point operation, so nothing is allowed even a rounding difference. A change that alters the
numbers on purpose must re-record the references (see ``tests/reference/cases.py``) and say why.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpumlp

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import cases  # noqa: E402
import files  # noqa: E402

HERE = Path(__file__).parent / "reference"
RESULTS = np.load(HERE / "results.npz")
CONTINUED = np.load(HERE / "files_continued.npz")


@pytest.mark.parametrize("dtype", cases.DTYPES)
@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_training_gives_main_s_numbers(name, dtype):
    got = cases.record(cases.CASES[name](dtype))
    prefix = f"{name}/{dtype}/"
    want = {k[len(prefix):]: RESULTS[k] for k in RESULTS.files if k.startswith(prefix)}
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name} {dtype}: {key}")


def test_a_command_line_file_from_main_resumes_to_main_s_weights(tmp_path):
    f = tmp_path / "m.npz"
    shutil.copy(HERE / "cli_main.npz", f)
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    subprocess.run([sys.executable, "-m", "gpumlp", *files.CLI_RESUME, "--resume", str(f), "--save", str(f),
                    "--backend", "numpy"], check=True, env=env, capture_output=True)
    # a command-line file loads as the Pipeline of its model and preprocessing; the weights are the model's
    mlp = gpumlp.load(f, backend="numpy").named_steps["mlp"]
    np.testing.assert_array_equal(mlp.get_weights()[0].ravel(), CONTINUED["cli_main"])


def test_an_adam_checkpoint_from_main_continues_to_main_s_weights():
    m = files.adam_continue(gpumlp.load(HERE / "adam_mid.npz", backend="numpy"))
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in m.get_weights()]), CONTINUED["adam_mid"])


def test_a_mid_fit_early_stopping_checkpoint_from_main_continues_exactly():
    m = files.es_continue(gpumlp.load(HERE / "es_mid.npz", backend="numpy"), 9)
    np.testing.assert_array_equal(np.concatenate([w.ravel() for w in m.get_weights()]), CONTINUED["es_mid"])
