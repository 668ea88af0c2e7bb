"""What each generated clip shows and how people would describe it (no pixels here).

A ``VideoPlan`` is everything needed to draw one clip and to write its captions. It is sampled from a
``numpy.random.Generator`` seeded by ``(seed, index)`` (see ``vidret.data.synthetic``), so a clip can be
re-made on its own and the result does not depend on how the work was spread over processes.

Geometry is in frame fractions: an object state is ``(x, y, s)`` = centre column, centre row (0 = top) and
side length of its bounding box, all divided by the frame size. Time ``t`` runs from 0 (first frame) to 1
(last frame).

Vocabulary: 6 colours x 3 shapes x 6 motions. Three colour-shape pairs (``HELD_OUT``) never appear in the
train, val or test splits; every ``ood`` clip shows at least one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "grows", "shrinks")
HELD_OUT: tuple[tuple[str, str], ...] = (("red", "triangle"), ("green", "circle"), ("blue", "square"))
IN_DIST: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)

KINDS: tuple[str, ...] = ("one_object", "two_objects", "two_events")
KIND_WEIGHTS = (0.3, 0.4, 0.3)
ORDERS: tuple[str, ...] = ("then_it", "then_other", "then_appears")
ORDER_WEIGHTS = (0.4, 0.4, 0.2)
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes")
_T = TypeVar("_T")

# Frame-fraction extents: centres stay in [LO, HI] so an object of the largest size stays inside the frame.
LO, HI, JITTER = 0.2, 0.8, 0.05
SIZE_RANGE = (0.2, 0.25)  # base side length, about a quarter to a fifth of the frame
GROW_FROM, GROW_TO = 0.6, 1.35  # size multipliers for "grows" (reversed for "shrinks")
MIN_GAP = 0.25  # wanted centre distance between two objects on screen together

# (third person, -ing) pairs; the first is the canonical wording used in the csv caption.
_VERBS: dict[str, tuple[tuple[str, str], ...]] = {
    "left": (
        ("moves left", "moving left"),
        ("slides to the left", "sliding to the left"),
        ("goes left", "going left"),
        ("travels to the left", "travelling to the left"),
        ("heads left", "heading left"),
    ),
    "right": (
        ("moves right", "moving right"),
        ("slides to the right", "sliding to the right"),
        ("goes right", "going right"),
        ("travels to the right", "travelling to the right"),
        ("heads right", "heading right"),
    ),
    "up": (
        ("moves up", "moving up"),
        ("rises", "rising"),
        ("goes upward", "going upward"),
        ("floats up", "floating up"),
        ("travels to the top", "travelling to the top"),
    ),
    "down": (
        ("moves down", "moving down"),
        ("falls", "falling"),
        ("drops down", "dropping down"),
        ("goes downward", "going downward"),
        ("sinks to the bottom", "sinking to the bottom"),
    ),
    "grows": (
        ("grows", "growing"),
        ("gets bigger", "getting bigger"),
        ("expands", "expanding"),
        ("becomes larger", "becoming larger"),
    ),
    "shrinks": (
        ("shrinks", "shrinking"),
        ("gets smaller", "getting smaller"),
        ("contracts", "contracting"),
        ("becomes smaller", "becoming smaller"),
    ),
    "appears": (("appears", "appearing"), ("shows up", "showing up"), ("pops up", "popping up")),
}
_NOUNS: dict[str, tuple[str, ...]] = {
    "square": ("square", "box", "block"),
    "circle": ("circle", "ball", "disc"),
    "triangle": ("triangle", "triangle shape"),
}
# Templates by kind; {a}/{b} are noun phrases, {va}/{vb} verbs, {ia}/{ib} -ing forms, {c2} the second clause.
_ONE = ("{a} {va}", "{a} is {ia}", "there is {a} {ia}", "a video of {a} {ia}", "we see {a} {ia}")
_TWO = (
    "{a} {va} and {b} {vb}",
    "{a} {va} while {b} {vb}",
    "{a} is {ia} and {b} is {ib}",
    "there is {a} {ia} and {b} {ib}",
    "{a} {va} as {b} {vb}",
    "we see {a} {ia} and {b} {ib}",
)
_SEQ = (
    "{a} {va}, then {c2}",
    "{a} {va} and then {c2}",
    "first {a} {va}, then {c2}",
    "{a} is {ia}, then {c2}",
    "{a} {va}; then {c2}",
)


@dataclass(frozen=True)
class Content:
    """What a caption says: ``items`` are ``(colour, shape, motion)`` in the order the caption names them.

    ``then_it`` items describe one object twice; ``then_appears`` ends with motion ``"appears"``.
    """

    kind: str
    order: str
    items: tuple[tuple[str, str, str], ...]

    def reversed(self) -> Content | None:
        """The same two events in the opposite order (a twin a bag-of-frames model cannot tell apart)."""
        if self.order not in ("then_it", "then_other"):
            return None
        return Content(self.kind, self.order, self.items[::-1])


@dataclass(frozen=True)
class Segment:
    """Linear move from ``start`` to ``end`` (each ``(x, y, s)``) while ``t0 <= t < t1`` (``t1 == 1``
    closed)."""

    t0: float
    t1: float
    start: tuple[float, float, float]
    end: tuple[float, float, float]


@dataclass(frozen=True)
class ObjectPlan:
    colour: str
    shape: str
    motions: tuple[str, ...]
    segments: tuple[Segment, ...]

    def state_at(self, t: float) -> tuple[float, float, float] | None:
        """``(x, y, s)`` at clip time ``t`` in [0, 1], or None while the object is not visible."""
        for seg in self.segments:
            if seg.t0 <= t < seg.t1 or (t == seg.t1 == 1.0):
                u = (t - seg.t0) / (seg.t1 - seg.t0)
                (x0, y0, s0), (x1, y1, s1) = seg.start, seg.end
                return (x0 + (x1 - x0) * u, y0 + (y1 - y0) * u, s0 + (s1 - s0) * u)
        return None


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUNDS
    rgb: tuple[int, int, int]  # base colour (greyish, so it never reads as an object colour)
    rgb2: tuple[int, int, int]  # second stripe colour (stripes only)
    amplitude: float  # noise standard deviation in grey levels (noise only)
    period: float  # stripe period as a fraction of the frame (stripes only)
    angle: float  # stripe direction in radians (stripes only)
    seed: int  # noise texture seed (noise only)


@dataclass(frozen=True)
class VideoPlan:
    index: int
    video_id: str
    split: str
    content: Content
    objects: tuple[ObjectPlan, ...]
    background: Background
    captions: tuple[str, ...]

    def describe(self) -> dict[str, object]:
        """JSON-ready record for the ``videos`` list of MSRVTT_data.json."""
        return {
            "video_id": self.video_id,
            "id": self.index,
            "split": self.split,
            "kind": self.content.kind,
            "order": self.content.order,
            "objects": [
                {"colour": o.colour, "shape": o.shape, "motions": list(o.motions)} for o in self.objects
            ],
            "background": self.background.kind,
        }


def _choice(rng: np.random.Generator, options: tuple[_T, ...], p: tuple[float, ...] | None = None) -> _T:
    return options[int(rng.choice(len(options), p=p))]


def sample_kind(rng: np.random.Generator) -> str:
    return _choice(rng, KINDS, KIND_WEIGHTS)


def sample_content(rng: np.random.Generator, kind: str, split: str) -> Content:
    """Draw a caption's content. ``ood`` content shows a held-out pair; other splits never do."""
    n_obj = 1 if kind == "one_object" else 2
    order = "" if kind != "two_events" else _choice(rng, ORDERS, ORDER_WEIGHTS)
    if order == "then_it":
        n_obj = 1
    pairs: list[tuple[str, str]] = []
    held_slot = int(rng.integers(n_obj)) if split == "ood" else -1
    for slot in range(n_obj):
        pool = HELD_OUT if slot == held_slot else (ALL_PAIRS if split == "ood" else IN_DIST)
        pool = tuple(p for p in pool if p not in pairs)
        pairs.append(_choice(rng, pool))
    if kind == "one_object":
        return Content(kind, order, ((*pairs[0], _choice(rng, MOTIONS)),))
    if kind == "two_objects":
        items = sorted(
            ((*p, _choice(rng, MOTIONS)) for p in pairs),
            key=lambda it: (COLOURS.index(it[0]), SHAPES.index(it[1])),
        )
        return Content(kind, order, tuple(items))
    if order == "then_it":
        m1, m2 = (MOTIONS[int(i)] for i in rng.choice(len(MOTIONS), size=2, replace=False))
        return Content(kind, order, ((*pairs[0], m1), (*pairs[0], m2)))
    m2 = "appears" if order == "then_appears" else _choice(rng, MOTIONS)
    return Content(kind, order, ((*pairs[0], _choice(rng, MOTIONS)), (*pairs[1], m2)))


_AXIS = {"left": 0, "right": 0, "up": 1, "down": 1, "grows": 2, "shrinks": 2}


def _path(rng: np.random.Generator, motions: tuple[str, ...], base: float) -> list[list[float]]:
    """States ``[x, y, s]`` before and after each motion. A coordinate keeps the value the first motion
    that changes it starts from, so consecutive motions chain (left then up starts bottom-right)."""
    lo, hi = LO + rng.uniform(0, JITTER), HI - rng.uniform(0, JITTER)
    starts_ends = {
        "left": (hi, lo),
        "right": (lo, hi),
        "up": (hi, lo),
        "down": (lo, hi),
        "grows": (base * GROW_FROM, base * GROW_TO),
        "shrinks": (base * GROW_TO, base * GROW_FROM),
    }
    states = [[0.0, 0.0, 0.0] for _ in range(len(motions) + 1)]
    for axis in range(3):
        moving = [m for m in motions if _AXIS[m] == axis]
        value = starts_ends[moving[0]][0] if moving else base if axis == 2 else float(rng.uniform(LO, HI))
        for i, state in enumerate(states):
            if i > 0 and _AXIS[motions[i - 1]] == axis:
                value = starts_ends[motions[i - 1]][1]
            state[axis] = value
    return states


def _track(
    rng: np.random.Generator, colour: str, shape: str, motions: tuple[str, ...], times: tuple[float, ...]
) -> ObjectPlan:
    """An object doing ``motions`` one after another over the time breakpoints ``times``."""
    base = float(rng.uniform(*SIZE_RANGE))
    segs: tuple[Segment, ...]
    if motions == ("appears",):  # appears and stays still
        x, y = (float(v) for v in rng.uniform(LO, HI, size=2))
        segs = (Segment(times[0], times[1], (x, y, base), (x, y, base)),)
    else:
        states = _path(rng, motions, base)
        segs = tuple(
            Segment(times[i], times[i + 1], _xys(states[i]), _xys(states[i + 1])) for i in range(len(motions))
        )
    return ObjectPlan(colour, shape, motions, segs)


def _xys(state: list[float]) -> tuple[float, float, float]:
    return (state[0], state[1], state[2])


def _min_distance(a: ObjectPlan, b: ObjectPlan) -> float:
    """Smallest centre distance over the times both objects are visible (inf if never together)."""
    best = float("inf")
    for t in np.linspace(0.0, 1.0, 11):
        sa, sb = a.state_at(float(t)), b.state_at(float(t))
        if sa is not None and sb is not None:
            best = min(best, float(np.hypot(sa[0] - sb[0], sa[1] - sb[1])))
    return best


def layout(rng: np.random.Generator, content: Content, tries: int = 20) -> tuple[ObjectPlan, ...]:
    """Place and time the objects of ``content``; two visible objects are kept apart when possible."""
    (c1, s1, m1), *rest = content.items
    if content.kind == "one_object":
        return (_track(rng, c1, s1, (m1,), (0.0, 1.0)),)
    if content.order == "then_it":
        return (_track(rng, c1, s1, (m1, rest[0][2]), (0.0, 0.5, 1.0)),)
    c2, s2, m2 = rest[0]
    span_a, span_b = {
        "": ((0.0, 1.0), (0.0, 1.0)),
        "then_other": ((0.0, 0.5), (0.5, 1.0)),
        "then_appears": ((0.0, 1.0), (0.5, 1.0)),
    }[content.order]
    a = _track(rng, c1, s1, (m1,), span_a)
    best: tuple[float, ObjectPlan] | None = None
    for _ in range(tries):
        b = _track(rng, c2, s2, (m2,), span_b)
        d = _min_distance(a, b)
        if best is None or d > best[0]:
            best = (d, b)
        if d >= MIN_GAP:
            break
    assert best is not None
    return (a, best[1])


def sample_background(rng: np.random.Generator) -> Background:
    kind = _choice(rng, BACKGROUNDS)
    level = rng.uniform(30, 120)
    r, g, b = (int(np.clip(level + rng.uniform(-12, 12), 0, 255)) for _ in range(3))
    delta = rng.uniform(25, 60) * (1 if level < 75 else -1)
    r2, g2, b2 = (int(np.clip(v + delta, 0, 255)) for v in (r, g, b))
    return Background(
        kind,
        (r, g, b),
        (r2, g2, b2),
        amplitude=float(rng.uniform(10, 28)),
        period=float(rng.uniform(0.1, 0.25)),
        angle=float(rng.uniform(0, np.pi)),
        seed=int(rng.integers(2**31)),
    )


def _np(colour: str, shape: str, noun: str | None = None) -> str:
    return f"a {colour} {noun or shape}"


def _render(content: Content, template: str, pick: Callable[[tuple[Any, ...]], Any]) -> str:
    """Fill ``template`` for ``content``; ``pick`` chooses among synonyms (first option = canonical)."""
    (c1, s1, m1), *rest = content.items
    v1 = pick(_VERBS[m1])
    fields = {"a": _np(c1, s1, pick(_NOUNS[s1])), "va": v1[0], "ia": v1[1]}
    if rest:
        c2, s2, m2 = rest[0]
        v2 = pick(_VERBS[m2])
        fields |= {"b": _np(c2, s2, pick(_NOUNS[s2])), "vb": v2[0], "ib": v2[1]}
        if content.order == "then_it":
            subject = pick(("it", f"the {pick(_NOUNS[s1])}"))
            fields["c2"] = f"{subject} {v2[0]}"
        else:
            fields["c2"] = f"{fields['b']} {v2[0]}"
    return template.format(**fields)


def _templates(content: Content) -> tuple[str, ...]:
    return {"one_object": _ONE, "two_objects": _TWO, "two_events": _SEQ}[content.kind]


def canonical_caption(content: Content) -> str:
    """The caption written to the split csv files: first template, first synonym everywhere."""
    return _render(content, _templates(content)[0], lambda options: options[0])


def captions(rng: np.random.Generator, content: Content, tries: int = 40) -> tuple[str, ...]:
    """2-5 distinct paraphrases; the first is ``canonical_caption(content)``."""
    want = int(rng.integers(2, 6))
    out = [canonical_caption(content)]
    templates = _templates(content)

    def pick(options: tuple[Any, ...]) -> Any:
        return options[int(rng.integers(len(options)))]

    for _ in range(tries):
        if len(out) >= want:
            break
        said = content
        if content.kind == "two_objects" and rng.integers(2):  # either object may be named first
            said = Content(content.kind, content.order, content.items[::-1])
        text = _render(said, pick(templates), pick)
        if text not in out:
            out.append(text)
    return tuple(out)
