"""Every benchmark in its quick mode prints exactly one JSON object on stdout (its log lines go to stderr).

``python benchmarks/X.py | python -m json.tool`` must work: a Ray raylet warning ("N PYTHON worker processes
have been started ...") used to land on stdout before the object (see ``vidret.console.logs``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_helpers import ELSEWHERE, MODULES, OWN_FILE, QUICK, ROOT, check_quick_mode


def test_every_benchmark_has_a_quick_mode_here() -> None:
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - MODULES
    assert sorted(scripts) == sorted({*QUICK, *ELSEWHERE})
    here = Path(__file__).parent
    missing = [s for s in OWN_FILE if not (here / f"test_benchmark_{Path(s).stem}_json.py").is_file()]
    assert missing == [], f"no test file runs these quick modes: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(set(QUICK) - set(OWN_FILE)))
def test_benchmark_stdout_is_one_json_object(script: str) -> None:
    check_quick_mode(script)
