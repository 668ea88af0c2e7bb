"""The test clusters' worker-port blocks (``ray_cluster.claim_port_block``): aligned, claimed exclusively
across processes, stale claims taken over. No Ray starts here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray_cluster
from ray_cluster import claim_port_block, release_port_block


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private claims folder and a range of four 100-port blocks (the real ones stay untouched)."""
    monkeypatch.setattr(ray_cluster, "PORT_CLAIMS", tmp_path / "claims")
    monkeypatch.setattr(ray_cluster, "PORT_LOW", 24000)
    monkeypatch.setattr(ray_cluster, "PORT_HIGH", 24400)
    return tmp_path / "claims"


def test_blocks_are_aligned_disjoint_and_released(claims: Path) -> None:
    got = [claim_port_block(100) for _ in range(3)]
    assert len(set(got)) == 3
    assert all((b - 24000) % 100 == 0 and 24000 <= b < 24400 for b in got)
    assert {p.name for p in claims.iterdir()} == {f"{b}-100" for b in got}
    assert all((claims / f"{b}-100").read_text() == str(os.getpid()) for b in got)
    release_port_block(got[0], 100)
    assert not (claims / f"{got[0]}-100").exists()


def test_a_block_claimed_by_a_live_process_is_never_handed_out(claims: Path) -> None:
    claims.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for start in (24000, 24100, 24200):
            (claims / f"{start}-100").write_text(str(holder.pid))
        assert claim_port_block(100) == 24300
        with pytest.raises(RuntimeError, match="no unclaimed free block of 100 ports"):
            claim_port_block(100)
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_whose_process_is_gone_is_taken_over(claims: Path) -> None:
    claims.mkdir()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    for start in (24000, 24100, 24200, 24300):
        (claims / f"{start}-100").write_text(gone.stdout.strip())
    block = claim_port_block(100)
    assert (claims / f"{block}-100").read_text() == str(os.getpid())
