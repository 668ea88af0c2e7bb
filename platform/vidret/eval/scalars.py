"""The training run's logged scalars, read back from its TensorBoard event files for the report's curves.

Training writes ``<run.out>/tensorboard/<stage>/events.out.tfevents.*`` (tags ``<stage>/<name>``, e.g.
``discrimination/loss``, ``discrimination/val_model_t2v_R1``, ``discrimination/val_ema_t2v_R1``). The files
are TFRecord streams: per record a little-endian uint64 length, a uint32 CRC, the serialized ``Event`` and a
uint32 CRC. A resumed run appends a new file; later files win for a step logged twice.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from vidret.storage import is_remote, join

STAGES = ("discrimination", "generation")
CURVES = ("loss", "val_model_t2v_R1", "val_ema_t2v_R1")


def _records(data: bytes) -> Iterator[bytes]:
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):  # a record cut short by a crash: stop at the last complete one
            return
        yield data[start:end]
        pos = end + 4


def read_event_file(path: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalar summaries in one event file."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for raw in _records(path.read_bytes()):
        event = event_pb2.Event.FromString(raw)
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return out


def training_curves(run_out: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{stage: {curve: [(step, value), ...]}} for the stages and ``CURVES`` logged under ``run_out``.

    Remote runs write no event files (training logs them only for local ``run.out``): returns {}.
    """
    if is_remote(run_out):
        return {}
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for stage in STAGES:
        folder = Path(join(run_out, "tensorboard", stage))
        merged: dict[str, dict[int, float]] = {}
        for path in sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []:
            for tag, points in read_event_file(path).items():
                merged.setdefault(tag, {}).update(points)
        curves = {
            name: sorted(merged[f"{stage}/{name}"].items()) for name in CURVES if f"{stage}/{name}" in merged
        }
        if curves:
            out[stage] = curves
    return out
