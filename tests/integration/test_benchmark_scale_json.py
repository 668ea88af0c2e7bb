"""``benchmarks/scale.py`` in its quick mode prints exactly one JSON object on stdout (a file of its own: see
``benchmark_helpers.py``)."""

from __future__ import annotations

import pytest
from benchmark_helpers import check_quick_mode


@pytest.mark.slow
def test_scale_benchmark_stdout_is_one_json_object() -> None:
    check_quick_mode("scale.py")
