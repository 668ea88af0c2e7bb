"""Accounting for videos that cannot be used: classify failures, enforce ``data.max_bad_fraction``, summarise.

Pure Python (no Ray): the Ray adapter (:mod:`vidret.data.pipeline`) collects failures from its tasks and
calls these functions on the driver, and the decode stage calls :func:`enforce_budget` to fail fast.

A failure is a dict ``{"video_id", "video_uri", "reason", "detail"}``; ``reason`` is one of the decoder's
reasons (:data:`vidret.data.video.REASONS`: ``missing``, ``no_video_stream``, ``unsupported_codec``,
``unsupported_container``, ``no_duration``, ``corrupt``, ``timeout``) or ``read_error`` (storage failed
after its retries) or ``invalid_row`` (the manifest row cannot be sampled, e.g. ``end < start``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from vidret.data.video.types import REASONS, DecodeError
from vidret.storage import StorageError

FAILURE_REASONS: tuple[str, ...] = (*REASONS, "read_error", "invalid_row")
_LISTED = 50  # failures spelled out in an error message; the summary file lists all of them


class TooManyBadVideosError(ValueError):
    """More videos failed than ``data.max_bad_fraction`` allows. ``bad`` maps each failed URI to its reason;
    the message lists them (the first 50)."""

    def __init__(
        self, bad: Mapping[str, str], total: int, max_bad_fraction: float, what: str = "decode"
    ) -> None:
        self.bad, self.total, self.max_bad_fraction, self.what = dict(bad), total, max_bad_fraction, what
        listing = "; ".join(f"{uri} ({reason})" for uri, reason in sorted(self.bad.items())[:_LISTED])
        more = f"; ... and {len(self.bad) - _LISTED} more" if len(self.bad) > _LISTED else ""
        super().__init__(
            f"{len(self.bad)} of {total} videos failed to {what}, more than data.max_bad_fraction="
            f"{max_bad_fraction:g} allows ({bad_budget(total, max_bad_fraction)}): {listing}{more}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # crosses Ray task boundaries intact
        return (TooManyBadVideosError, (self.bad, self.total, self.max_bad_fraction, self.what))


def bad_budget(total: int, max_bad_fraction: float) -> int:
    """The largest number of bad videos out of ``total`` that stays within ``max_bad_fraction``."""
    if total < 0 or not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(
            f"expected total >= 0 and max_bad_fraction in [0, 1], got {total}, {max_bad_fraction}"
        )
    return math.floor(total * max_bad_fraction + 1e-9)


def enforce_budget(bad: Mapping[str, str], total: int, max_bad_fraction: float, what: str = "decode") -> None:
    """Raise :class:`TooManyBadVideosError` when ``len(bad)`` (distinct URIs) exceeds the budget."""
    if len(bad) > bad_budget(total, max_bad_fraction):
        raise TooManyBadVideosError(bad, total, max_bad_fraction, what)


def classify(exc: BaseException) -> tuple[str, str]:
    """``(reason, detail)`` of an exception raised while reading or decoding one video.

    Only the expected failure types are classified; anything else is a bug or an infrastructure failure
    and raises ``TypeError`` (the caller re-raises the original).
    """
    if isinstance(exc, DecodeError):
        return exc.reason, exc.detail or str(exc)
    if isinstance(exc, FileNotFoundError):  # StorageNotFoundError included
        return "missing", str(exc)
    if isinstance(exc, StorageError):
        return "read_error", str(exc)
    if isinstance(exc, ValueError):
        return "invalid_row", str(exc)
    raise TypeError(f"cannot classify {type(exc).__name__} as a video failure") from exc


def summarise(
    failures: Sequence[Mapping[str, Any]], total: int, max_bad_fraction: float, **extra: Any
) -> dict[str, Any]:
    """The check summary: counts, failures by reason (every reason present, zeros included), the list.

    ``total`` counts manifest rows; ``bad`` counts distinct failed URIs (rows sharing a file count once).
    """
    by_reason = Counter(dict.fromkeys(FAILURE_REASONS, 0))
    by_reason.update(str(f["reason"]) for f in failures)
    bad_uris = {str(f["video_uri"]) for f in failures}
    return {
        **extra,
        "total": total,
        "ok": total - len(failures),
        "failed": len(failures),
        "bad_videos": len(bad_uris),
        "bad_fraction": len(bad_uris) / total if total else 0.0,
        "max_bad_fraction": max_bad_fraction,
        "within_budget": len(bad_uris) <= bad_budget(total, max_bad_fraction),
        "by_reason": dict(by_reason),
        "examples": _examples(failures),
        "failures": sorted(
            (dict(f) for f in failures), key=lambda f: (str(f["video_uri"]), str(f["video_id"]))
        ),
    }


def _examples(failures: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """One failure per reason (the first by URI): ``{reason: {"video_uri", "detail"}}``."""
    out: dict[str, dict[str, str]] = {}
    for f in sorted(failures, key=lambda f: str(f["video_uri"])):
        out.setdefault(str(f["reason"]), {"video_uri": str(f["video_uri"]), "detail": str(f["detail"])})
    return out


def verdict_lines(summary: Mapping[str, Any], where: str) -> list[str]:
    """What ``vidret check`` prints last: one line per failure reason with an example file, then the verdict,
    e.g. ``2 of 8 videos failed (25% > max_bad_fraction 1%): corrupt 1, no_video_stream 1 - details in X``."""
    reasons = {r: n for r, n in summary["by_reason"].items() if n}
    lines = []
    for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        example = summary["examples"][reason]
        lines.append(f"  {reason}: {n}, e.g. {example['video_uri']} ({example['detail'][:160]})")
    bad, total, limit = summary["bad_videos"], summary["total"], summary["max_bad_fraction"]
    if not bad:
        return [f"all {total} videos decoded - details in {where}"]
    sign = "<=" if summary["within_budget"] else ">"
    grouped = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    lines.append(
        f"{bad} of {total} videos failed ({summary['bad_fraction']:.0%} {sign} max_bad_fraction "
        f"{limit:.0%}): {grouped} - details in {where}"
    )
    return lines
