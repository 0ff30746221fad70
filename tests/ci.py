"""What a test needs from the machine, and CI's rule for it: where $CI is set (``.ci/run`` sets it), a
missing tool or test-extra module fails the test instead of skipping it, since CI installs them all."""
from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needed(module):
    """The test extra's ``module``, imported: skipped where it is absent, except in CI, where it fails."""
    if in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module)
