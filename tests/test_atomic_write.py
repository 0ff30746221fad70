"""Saving over a file keeps its permission bits, and a killed save's temporary is removed by the next
save to the same place, never anyone else's file (gpumlp.io.atomic_write)."""
import os
import re
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import io

posix_only = pytest.mark.skipif(os.name != "posix", reason="permission bits and SIGKILL are POSIX")
ROOT = Path(__file__).resolve().parent.parent


def small_model(seed=0):
    return gpumlp.MLP((3, 4, 2), backend="numpy", seed=seed)


def temporaries(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def leftover(directory, target, pid, hexpart="0123abcd", content=b"half a model"):
    path = Path(directory) / f".{target}.{pid}.{hexpart}.tmp"
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------- permission bits
@posix_only
@pytest.mark.parametrize("bits", [0o600, 0o640, 0o604, 0o444, 0o755], ids=oct)
def test_saving_over_a_file_keeps_its_permission_bits(tmp_path, bits):
    path = tmp_path / "m.npz"
    small_model().save(path)
    os.chmod(path, bits)
    old = os.umask(0o077)  # a umask that would give 0o600 to a new file: the target's bits win
    try:
        small_model(1).save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == bits
    np.testing.assert_array_equal(gpumlp.load(path).theta, small_model(1).theta)
    assert temporaries(tmp_path) == []


@posix_only
def test_a_private_target_is_never_readable_by_others_while_it_is_written(tmp_path):
    """The temporary is 0o600 while the data go in, whatever the umask; the bits come at the end."""
    path = tmp_path / "secret.npz"
    small_model().save(path)
    os.chmod(path, 0o600)
    seen = []

    def write(f):
        f.write(b"data")
        f.flush()
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        seen.append(stat.S_IMODE(tmp.stat().st_mode))

    old = os.umask(0)
    try:
        io.atomic_write(path, write)
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"data"


@posix_only
def test_a_new_file_gets_the_umask_and_set_id_bits_are_not_carried_over(tmp_path):
    path = tmp_path / "m.npz"
    old = os.umask(0o027)
    try:
        small_model().save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.chmod(path, 0o4750)  # setuid on a data file: not copied to the new file
        small_model().save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750


# ---------------------------------------------------------------------------------- a killed save
CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import gpumlp

    real_savez = np.savez

    def savez_then_hang(f, **arrays):  # the archive is written, the rename never comes
        real_savez(f, **arrays)
        f.flush()
        print("written", flush=True)
        time.sleep(120)

    np.savez = savez_then_hang
    gpumlp.MLP((3, 4, 2), backend="numpy", seed=5).save(sys.argv[1])
""")


@posix_only
def test_a_save_killed_with_sigkill_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "m.npz"
    small_model().save(path)
    before = path.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)  # a hang fails the test, not the run
        assert ready, "the child never wrote the archive"
        assert child.stdout.readline() == b"written\n", "the child failed before it was killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    (name,) = temporaries(tmp_path)
    assert re.fullmatch(rf"\.m\.npz\.{child.pid}\.[0-9a-f]{{8}}\.tmp", name)
    assert path.read_bytes() == before  # the target is whole: the old file

    small_model(2).save(path)  # the next save to the same place cleans up
    assert temporaries(tmp_path) == []
    np.testing.assert_array_equal(gpumlp.load(path).theta, small_model(2).theta)


# ---------------------------------------------------------------------------------- only ours
@posix_only
def test_only_stale_temporaries_of_the_same_target_are_removed(tmp_path):
    gone = dead_pid()
    stale = leftover(tmp_path, "m.npz", gone)
    old_one = leftover(tmp_path, "m.npz", os.getppid(), "ffffffff")  # a live pid, but hours old
    os.utime(old_one, (time.time() - 2 * io.STALE_AFTER,) * 2)
    keep = [
        leftover(tmp_path, "m.npz", os.getpid(), "00000001"),  # ours, being written (fresh, pid alive)
        leftover(tmp_path, "m.npz", os.getppid(), "00000002"),  # another live process's save
        leftover(tmp_path, "other.npz", gone),  # another target's
        leftover(tmp_path, "m.npz.bak", gone),  # another target whose name starts alike
        leftover(tmp_path, "m.npz", gone, "0123abc"),  # not our pattern: 7 hex digits
        leftover(tmp_path, "m.npz", gone, "0123ABCD"),  # not our pattern: upper case
        tmp_path / ".m.npz.tmp",
        tmp_path / f"m.npz.{gone}.0123abcd.tmp",  # no leading dot
        tmp_path / f".m.npz.{gone}.probe.tmp",  # gpumlp train's probe, not a save's temporary
    ]
    for p in keep[-3:]:
        p.write_bytes(b"someone else's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"a link's target")
    link = tmp_path / f".m.npz.{gone}.aaaaaaaa.tmp"
    link.symlink_to(elsewhere)
    directory = tmp_path / f".m.npz.{gone}.bbbbbbbb.tmp"
    directory.mkdir()

    small_model().save(tmp_path / "m.npz")
    assert not stale.exists() and not old_one.exists()
    for p in keep + [link, directory]:
        assert os.path.lexists(p), p.name
    assert elsewhere.read_bytes() == b"a link's target"


@posix_only
def test_another_users_temporary_is_left_alone(tmp_path, monkeypatch):
    stale = leftover(tmp_path, "m.npz", dead_pid())
    monkeypatch.setattr(io.os, "geteuid", lambda: os.getuid() + 1)  # as if the file were another user's
    assert io.remove_stale_temporaries(str(tmp_path), "m.npz") == []
    assert stale.exists()
    monkeypatch.undo()
    assert io.remove_stale_temporaries(str(tmp_path), "m.npz") == [str(stale)]


@posix_only
def test_predictions_written_by_the_command_line_clean_up_too(tmp_path):
    """atomic_write is the one writer: gpumlp predict --output goes through it as well."""
    out = tmp_path / "labels.csv"
    stale = leftover(tmp_path, "labels.csv", dead_pid())
    io.atomic_write(out, lambda f: f.write(b"1\n2\n"))
    assert not stale.exists() and out.read_bytes() == b"1\n2\n"


@posix_only
def test_cleanup_never_fails_a_save(tmp_path, monkeypatch):
    stale = leftover(tmp_path, "m.npz", dead_pid())

    def refuse(path, *a, **kw):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(io.os, "unlink", refuse)
    small_model().save(tmp_path / "m.npz")
    monkeypatch.undo()
    assert stale.exists() and gpumlp.load(tmp_path / "m.npz").sizes == (3, 4, 2)
