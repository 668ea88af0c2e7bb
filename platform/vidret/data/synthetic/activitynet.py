"""An ActivityNet-shaped generated corpus (``vidret synth --layout activitynet``): long videos, paragraphs.

ActivityNet Captions (paragraph retrieval; ``configs/activitynet.yaml``: 64 frames, 64 words) pairs videos
of minutes at their upload frame rate with a paragraph of 3-8 timestamped sentences. This generator writes
the same shapes, readable by the ``activitynet`` reader of :mod:`vidret.data.annotations.formats`::

    videos/v_<11 chars>.mp4    H.264 (yuv420p) mp4, 16:9 (``synth.size`` is the short side, e.g. 360 ->
                               640x360), 85-100 % of ``synth.seconds`` long, at ``synth.fps`` (e.g. 30)
    anns/train.json            {video_id: {"duration", "timestamps": [[start, end], ...], "sentences": [...]}}
    anns/val_1.json            the same for val_1 (ActivityNet's val_1, the usual test split)
    summary.json               counts and settings (also returned); written last: marks a complete corpus

Each video is a sequence of 3-8 events, one per sentence: a coloured shape moving one way across a slowly
panning, textured background. Segments cover the video in order and overlap slightly, as ActivityNet's do;
the background changes at each event so that the encoder's scene-cut detection places keyframes there.
Encoding uses x264's ``veryfast`` preset with B-frames, a 5 s maximum GOP and scene-cut keyframes: the GOP
structure of an uploaded video (not the 1 s GOP of ``vidret prepare``'s output), so decoding sampled frames
from it costs what it costs on the real corpus. x264 runs single-threaded, so the same settings give the
same bytes.

Splits: ``val_1`` is a third of the videos, rounded (at least one), ``train`` the rest (at least one), by a
seeded permutation: ActivityNet's val_1 is about half the size of its train split.
Frames are rendered and encoded one at a time: a worker's memory does not grow with the video's length.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import string
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from vidret.config import SynthConfig
from vidret.storage import Storage, join

GENERATOR_VERSION = "2"  # 2: val_1 is round(videos / 3), was videos // 3
SPLIT_FILES: dict[str, str] = {"train": "train.json", "val_1": "val_1.json"}
MIN_EVENTS, MAX_EVENTS = 3, 8
MIN_SECONDS = 2.0 * MAX_EVENTS  # room for every event to last a couple of seconds
ASPECT = 16 / 9
# x264 like an uploaded video: B-frames, scene-cut keyframes, GOP of at most 5 s (set from fps), one thread.
ENCODER_OPTIONS: dict[str, str] = {"preset": "veryfast", "crf": "23", "bframes": "3", "threads": "1"}
GOP_SECONDS = 5
PAN_PIXELS, PAN_PERIOD_S = 96, 20.0  # a slow sideways camera pan: every frame differs, as in real footage

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 45),
    "purple": (150, 60, 205),
    "white": (240, 240, 240),
    "orange": (240, 140, 30),
}
SHAPES = ("square", "circle", "bar")
MOTIONS: dict[str, tuple[float, float, float, float, str]] = {  # x0, y0, x1, y1 (fractions), phrase
    "right": (0.1, 0.5, 0.9, 0.5, "moves from the left to the right"),
    "left": (0.9, 0.5, 0.1, 0.5, "moves from the right to the left"),
    "down": (0.5, 0.15, 0.5, 0.85, "falls from the top to the bottom"),
    "up": (0.5, 0.85, 0.5, 0.15, "rises from the bottom to the top"),
    "diagonal": (0.1, 0.15, 0.9, 0.85, "slides across the screen diagonally"),
    "still": (0.5, 0.5, 0.5, 0.5, "stays in the middle of the screen"),
}
OPENERS = ("A", "Then a", "Next, a", "After that, a", "Later a", "Finally, a")


@dataclass(frozen=True)
class Event:
    """One sentence of a paragraph: what moves, and when (seconds)."""

    start: float
    end: float
    colour: str
    shape: str
    motion: str
    background: tuple[int, int, int]

    def sentence(self, position: int, count: int) -> str:
        """The caption of this event, worded by its place in the paragraph (first, middle, last)."""
        if position == 0:
            opener = OPENERS[0]
        else:
            opener = OPENERS[-1] if position == count - 1 else OPENERS[(position - 1) % 4 + 1]
        if self.colour[0] in "aeiou":
            opener += "n"
        return f"{opener} {self.colour} {self.shape} {MOTIONS[self.motion][4]}."


@dataclass(frozen=True)
class LongVideoPlan:
    """What one generated video shows, its id and its split."""

    video_id: str
    split: str
    duration: float
    events: tuple[Event, ...]
    texture_seed: int

    def annotation(self) -> dict[str, object]:
        """The video's ActivityNet entry: duration, timestamps, sentences (later ones with a leading space, as
        in the released files)."""
        n = len(self.events)
        return {
            "duration": self.duration,
            "timestamps": [[e.start, e.end] for e in self.events],
            "sentences": [("" if i == 0 else " ") + e.sentence(i, n) for i, e in enumerate(self.events)],
        }


def frame_size(short_side: int) -> tuple[int, int]:
    """``(width, height)`` of a 16:9 video whose short side is ``short_side`` (width rounded to even)."""
    return round(short_side * ASPECT / 2) * 2, short_side


def _video_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "v_" + "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))


def _events(rng: np.random.Generator, duration: float) -> tuple[Event, ...]:
    """3-8 events covering ``[0, duration]`` in order, each overlapping the next by up to 1 s."""
    count = int(rng.integers(MIN_EVENTS, MAX_EVENTS + 1))
    shares = rng.uniform(0.5, 1.5, count)  # events last between a third and three times each other
    bounds = np.concatenate([[0.0], np.cumsum(shares) / shares.sum()]) * duration
    out = []
    for i in range(count):
        start = max(0.0, bounds[i] - float(rng.uniform(0.0, 1.0)) * (i > 0))
        end = float(bounds[i + 1])
        out.append(
            Event(
                start=round(float(start), 2),
                end=round(end, 2),
                colour=str(rng.choice(list(COLOURS))),
                shape=str(rng.choice(SHAPES)),
                motion=str(rng.choice(list(MOTIONS))),
                background=tuple(int(c) for c in rng.integers(30, 200, 3)),  # type: ignore[arg-type]
            )
        )
    return tuple(out)


def plan_activitynet(seed: int, videos: int, seconds: float) -> list[LongVideoPlan]:
    """Every video's plan in index order; deterministic for the arguments."""
    if videos < len(SPLIT_FILES):
        raise ValueError(
            f"synth.videos: expected an integer >= {len(SPLIT_FILES)} (one per split), got {videos}"
        )
    if seconds < MIN_SECONDS:
        raise ValueError(
            f"synth.seconds: the activitynet layout needs videos of at least {MIN_SECONDS:g} s "
            f"({MAX_EVENTS} events of a couple of seconds), got {seconds:g}"
        )
    val = min(videos - 1, max(1, round(videos / 3)))
    order = np.random.default_rng([seed, videos, 7]).permutation(videos)
    val_indices = {int(i) for i in order[:val]}
    plans, seen = [], set()
    for index in range(videos):
        rng = np.random.default_rng([seed, index, 11])
        vid = _video_id(rng)
        while vid in seen:  # 64^11 ids: a clash is all but impossible, but ids must be unique
            vid = _video_id(rng)
        seen.add(vid)
        # durations vary around ``seconds`` as real uploads do; the frame count follows the duration
        duration = round(float(seconds * rng.uniform(0.85, 1.0)), 2)
        plans.append(
            LongVideoPlan(
                video_id=vid,
                split="val_1" if index in val_indices else "train",
                duration=duration,
                events=_events(rng, duration),
                texture_seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    return plans


# -- pixels ------------------------------------------------------------------------------------------------
def _texture(seed: int, width: int, height: int) -> np.ndarray:
    """A static luminance texture ``(H, W, 1)`` in [-1, 1]: smooth blobs plus fine grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, (height // 40 + 2, width // 40 + 2)).astype(np.float32)
    yy = np.linspace(0, coarse.shape[0] - 1.001, height)
    xx = np.linspace(0, coarse.shape[1] - 1.001, width)
    smooth = coarse[yy.astype(int)][:, xx.astype(int)]
    grain = rng.normal(0.0, 0.3, (height, width)).astype(np.float32)
    texture_HW: np.ndarray = np.clip((smooth + grain) / 2.5, -1, 1)
    return texture_HW[..., None]


def _backgrounds(plan: LongVideoPlan, width: int, height: int) -> list[np.ndarray]:
    """One textured background per event, ``PAN_PIXELS`` wider than the frame (the camera pans over it)."""
    texture = _texture(plan.texture_seed, width + PAN_PIXELS, height)
    return [
        np.clip(np.asarray(e.background, np.float32) + 40.0 * texture, 0, 255).astype(np.uint8)
        for e in plan.events
    ]


def _draw(frame: np.ndarray, event: Event, t: float) -> None:
    """Draw ``event``'s shape at time ``t`` (seconds) in place, touching only its bounding box."""
    height, width, _ = frame.shape
    x0, y0, x1, y1, _ = MOTIONS[event.motion]
    u = 0.0 if event.end <= event.start else min(1.0, max(0.0, (t - event.start) / (event.end - event.start)))
    cx, cy = (x0 + (x1 - x0) * u) * width, (y0 + (y1 - y0) * u) * height
    half = height * 0.12
    hx = half * (2.5 if event.shape == "bar" else 1.0)
    top, bottom = int(max(0, cy - half)), int(min(height, cy + half))
    left, right = int(max(0, cx - hx)), int(min(width, cx + hx))
    if top >= bottom or left >= right:
        return
    box = frame[top:bottom, left:right]
    if event.shape == "circle":
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32) + 0.5
        box[(yy - cy) ** 2 + (xx - cx) ** 2 <= half * half] = COLOURS[event.colour]
    else:
        box[:] = COLOURS[event.colour]


def _frames(plan: LongVideoPlan, width: int, height: int, fps: int) -> Iterator[np.ndarray]:
    """The video's RGB frames ``(H, W, 3)`` one at a time."""
    backgrounds = _backgrounds(plan, width, height)
    frame = np.empty((height, width, 3), np.uint8)
    current = 0
    for k in range(round(plan.duration * fps)):
        t = k / fps
        while current + 1 < len(plan.events) and t >= plan.events[current + 1].start:
            current += 1
        pan = int(PAN_PIXELS * (0.5 + 0.5 * np.sin(2 * np.pi * t / PAN_PERIOD_S)))
        frame[:] = backgrounds[current][:, pan : pan + width]
        _draw(frame, plan.events[current], t)
        yield frame


def encode_long_video(plan: LongVideoPlan, short_side: int, fps: int) -> bytes:
    """H.264 mp4 bytes of ``plan`` (module docstring: 16:9, B-frames, scene-cut keyframes, GOP <= 5 s)."""
    import av

    width, height = frame_size(short_side)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {**ENCODER_OPTIONS, "g": str(GOP_SECONDS * fps), "keyint_min": str(fps)}
        for k, rgb in enumerate(_frames(plan, width, height, fps)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def _encode_one(plan: LongVideoPlan, short_side: int, fps: int) -> bytes:
    return encode_long_video(plan, short_side, fps)


def _encoded(plans: list[LongVideoPlan], cfg: SynthConfig) -> Iterator[tuple[LongVideoPlan, bytes]]:
    if cfg.workers == 1 or len(plans) == 1:
        for plan in plans:
            yield plan, encode_long_video(plan, cfg.size, cfg.fps)
        return
    ctx = multiprocessing.get_context("spawn")  # the caller may hold threads (Ray, moto)
    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(plans)), mp_context=ctx) as pool:
        futures = [pool.submit(_encode_one, p, cfg.size, cfg.fps) for p in plans]
        for plan, future in zip(plans, futures, strict=True):
            yield plan, future.result()


# -- the corpus -------------------------------------------------------------------------------------------
def annotation_files(plans: list[LongVideoPlan]) -> dict[str, str]:
    """``{file name: JSON text}`` of the annotation files, one per split."""
    return {
        name: json.dumps({p.video_id: p.annotation() for p in plans if p.split == split}) + "\n"
        for split, name in SPLIT_FILES.items()
    }


def generate_activitynet(
    cfg: SynthConfig,
    storage: Storage,
    out: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, object]:
    """Write the corpus for ``cfg`` under ``out`` (default ``cfg.out``) and return its summary.

    ``cfg.size`` is the short side (>= 360 for ActivityNet's shapes), ``cfg.seconds`` the longest duration
    (videos last 85-100 % of it), ``cfg.fps`` the frame rate (30 as uploaded). Every file goes through
    ``storage`` (atomic writes); ``summary.json`` is written last. ``progress(done, total)`` after each video.
    """
    root = cfg.out if out is None else out
    plans = plan_activitynet(cfg.seed, cfg.videos, cfg.seconds)
    storage.makedirs(join(root, "videos"))
    storage.makedirs(join(root, "anns"))
    total_bytes = 0
    for done, (plan, blob) in enumerate(_encoded(plans, cfg), start=1):
        storage.write_bytes(join(root, "videos", f"{plan.video_id}.mp4"), blob)
        total_bytes += len(blob)
        if progress is not None:
            progress(done, len(plans))
    for name, text in annotation_files(plans).items():
        storage.write_text(join(root, "anns", name), text)
    width, height = frame_size(cfg.size)
    sentences = [len(p.events) for p in plans]
    summary: dict[str, object] = {
        "layout": "activitynet",
        "generator_version": GENERATOR_VERSION,
        "out": root,
        "videos": len(plans),
        "splits": {s: sum(p.split == s for p in plans) for s in SPLIT_FILES},
        "width": width,
        "height": height,
        "fps": cfg.fps,
        "seconds": cfg.seconds,
        "video_seconds": round(sum(p.duration for p in plans), 2),
        "sentences_per_video": [min(sentences), max(sentences)],
        "bytes": total_bytes,
        "seed": cfg.seed,
        "encoder": {**ENCODER_OPTIONS, "max_gop_s": GOP_SECONDS},
    }
    storage.write_text(join(root, "summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary
