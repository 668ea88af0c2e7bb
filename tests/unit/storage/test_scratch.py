"""Scratch folders: a SIGKILLed process's folder is removed by the next one made; live or recent ones stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vidret.storage.scratch import make_scratch_dir, scratch_dir, sweep_stale

CHILD = """
import os, sys, time
from vidret.storage.scratch import make_scratch_dir
path = make_scratch_dir("ckpt")
open(os.path.join(path, "state.pt"), "wb").write(b"x" * 1024)
print(path, flush=True)
time.sleep(600)
"""


@pytest.fixture
def tmpdir_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _killed_childs_folder(root: Path) -> tuple[Path, int]:
    """A real process that makes a scratch folder, writes into it and is SIGKILLed."""
    env = {**os.environ, "TMPDIR": str(root)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    path = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    return path, child.pid


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (old, old))


def test_a_killed_process_folder_is_removed_by_the_next_scratch_folder(tmpdir_root: Path) -> None:
    dead, pid = _killed_childs_folder(tmpdir_root)
    assert dead.is_dir() and dead.parent == tmpdir_root and dead.name.startswith(f"vidret-ckpt-{pid}-")
    assert (dead / "state.pt").stat().st_size == 1024  # SIGKILL ran no cleanup
    _age(dead, 3600)
    new = Path(make_scratch_dir("ckpt"))
    assert not dead.exists()
    assert new.is_dir() and new.name.startswith(f"vidret-ckpt-{os.getpid()}-")


def test_live_recent_and_foreign_folders_stay(tmpdir_root: Path) -> None:
    recent, _ = _killed_childs_folder(tmpdir_root)  # dead owner, but written to just now
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = tmpdir_root / f"vidret-tb-{sleeper.pid}-abc"
        live.mkdir()
        mine = Path(make_scratch_dir("tune"))
        other = tmpdir_root / "vidret-test-ports"  # not a scratch folder's name
        other.mkdir()
        for p in (live, mine, other):
            _age(p, 3600)
        assert sweep_stale() == []
        assert all(p.is_dir() for p in (recent, live, mine, other))
        _age(recent, 3600)
        assert sweep_stale() == [str(recent)]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_scratch_dir_is_removed_on_an_exception(tmpdir_root: Path) -> None:
    with pytest.raises(RuntimeError), scratch_dir("ckpt") as path:
        (Path(path) / "f").write_bytes(b"1")
        raise RuntimeError("upload failed")
    assert not Path(path).exists()
    with pytest.raises(ValueError, match="lower-case letters"):
        make_scratch_dir("../x")
