"""Frame thumbnails of a few videos of a split, for the HTML report (decoded small, straight from storage)."""

from __future__ import annotations

import numpy as np

from vidret.config import Config
from vidret.data.annotations.manifest import read_manifest
from vidret.data.video import DecodeError, decode_video
from vidret.storage import Storage, join

THUMB_FRAMES = 4
THUMB_SIZE = 96


def thumbnails_for(cfg: Config, storage: Storage, split: str, video_ids: list[str]) -> dict[str, np.ndarray]:
    """{video_id: uint8 (f, THUMB_SIZE, THUMB_SIZE, 3)} for the ids found in the split's manifest.

    A video that cannot be decoded is left out (the report shows a "no thumbnail" box for it).
    """
    table = read_manifest(join(cfg.data.manifest, f"{split}.parquet"), storage)
    rows = {r["video_id"]: r for r in table.select(["video_id", "video_uri", "start", "end"]).to_pylist()}
    out: dict[str, np.ndarray] = {}
    for vid in video_ids:
        row = rows.get(vid)
        if row is None:
            continue
        try:
            frames, mask = decode_video(
                storage.read_bytes(row["video_uri"]),
                max_frames=THUMB_FRAMES,
                framerate=cfg.data.framerate,
                size=THUMB_SIZE,
                start=row["start"],
                end=row["end"],
                decoder=cfg.data.decoder,
                uri=row["video_uri"],
            )
        except (DecodeError, OSError):
            continue
        out[vid] = frames[mask.astype(bool)]
    return out
