"""The CLI: help lists subcommands; bad input gives one clear line and a non-zero exit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vidret.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors and --help
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for cmd in ("synth",):
        assert cmd in out


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "vidret"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0
    assert "synth" in proc.stdout


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_negative_videos(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(["synth", "--out", str(tmp_path / "c"), "--videos", "-5"], capsys)
    _assert_one_line_error(code, err, "synth.videos", "-5")


def test_unknown_config_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("synth:\n  vidoes: 3\n")
    code, _, err = _run(["synth", "--config", str(cfg), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, str(cfg), "synth.vidoes")


def test_malformed_s3_uri(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["synth", "--out", "s3:///no-bucket", "--videos", "4"], capsys)
    _assert_one_line_error(code, err, "s3:///no-bucket")


def test_non_writable_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a file as parent: not writable even for root
    code, _, err = _run(["synth", "--out", str(blocker / "corpus"), "--videos", "4", "--quiet"], capsys)
    _assert_one_line_error(code, err, str(blocker))


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["synth", "--videos", "many"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--videos" in err


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vidret", "--debug", "synth", "--videos", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def _custom_corpus(tmp_path: Path) -> tuple[Path, Path]:
    videos = tmp_path / "videos"
    for name in ("sample.mp4", "sample.avi", "a/clip.mp4"):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"")
    table = tmp_path / "anns.csv"
    table.write_text(
        "video,caption,video_id\nsample.mp4,one,\nsample.avi,two,\na/clip.mp4,three,sample.mp4\n"
    )
    return table, videos


def test_manifest_collision_fails_naming_both_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    table, videos = _custom_corpus(tmp_path)
    argv = ["manifest", "--dataset", "custom", "--anno", str(table), "--videos", str(videos), "--split", "s"]
    code, _, err = _run([*argv, f"run.out={tmp_path / 'run'}"], capsys)
    _assert_one_line_error(code, err, "sample.mp4", f"{table}:row 2", f"{table}:row 4", "--on-duplicate")
    assert not (tmp_path / "run" / "manifest").exists()


def test_manifest_defaults_next_to_the_run_with_report_and_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    table, videos = _custom_corpus(tmp_path)
    argv = ["manifest", "--dataset", "custom", "--anno", str(table), "--videos", str(videos), "--split", "s"]
    code, out, err = _run([*argv, "--on-duplicate", "keep-first", f"run.out={tmp_path / 'run'}"], capsys)
    assert code == 0, err
    manifest = tmp_path / "run" / "manifest" / "s.parquet"
    assert json.loads(out)["manifest"] == str(manifest)
    assert manifest.is_file()
    assert "2 rows" in err
    assert "0 duplicate rows merged, 1 dropped" in err
    report = json.loads(Path(f"{manifest}.report.json").read_text())
    assert [d["where"] for d in report["duplicate_ids"]] == [f"{table}:row 4"]
    assert "on_duplicate: keep-first" in Path(f"{manifest}.config.yaml").read_text()
