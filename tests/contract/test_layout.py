"""The repository layout keeps Python's stdlib `platform` importable (see docs/stack-notes.md §6)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_platform_folder_has_no_init() -> None:
    assert (ROOT / "platform" / "vidret" / "__init__.py").is_file()
    assert not (ROOT / "platform" / "__init__.py").exists(), "platform/__init__.py shadows stdlib platform"


def test_stdlib_platform_and_uuid_import_from_repo_root() -> None:
    code = "import platform, uuid; assert platform.system(); print(uuid.uuid4().version, platform.system())"
    for argv in ([sys.executable, "-c", code], [sys.executable, "-m", "vidret", "--help"]):
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "4"


def test_namespace_platform_dir_does_not_win_over_stdlib() -> None:
    """With cwd on sys.path, `import platform` must still be the stdlib module, not the folder."""
    code = "import sys; sys.path.insert(0, '.'); import platform; print(platform.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("platform.py")
