"""A fixed torch CPU thread count for the evaluation driver, so its float sums do not depend on the machine's
core count (``eval.threads``; 0 keeps torch's default)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (unless 0); the previous count is restored."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
