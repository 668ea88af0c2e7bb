"""What each subcommand is for (help, description, example) and its flags: data, read by cli/main.py."""

from __future__ import annotations

from argparse import BooleanOptionalAction
from typing import Any

# name: (one-line help, description, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": (
        "generate the captioned synthetic video corpus",
        "Render short captioned clips (moving shapes) and write their train/val/test/ood manifests.",
        "vidret synth --out runs/synthetic/corpus --videos 200",
    ),
    "manifest": (
        "read a dataset's annotation files into a Parquet manifest",
        "Read MSR-VTT, MSVD, ActivityNet, DiDeMo, LSMDC or custom annotations into <split>.parquet.",
        "vidret manifest --dataset msrvtt --anno data/msrvtt --videos s3://b/videos --split test",
    ),
    "check": (
        "decode every video of a manifest on Ray and report failures",
        "Decode every video once (Ray Data) and end with a verdict; details go to a JSON file.",
        "vidret check --manifest runs/synthetic/corpus/manifest/test.parquet",
    ),
    "prepare": (
        "transcode a corpus to retrieval-ready H.264 files + new manifests",
        "Re-encode videos (data.prepare_fps, data.prepare_short_side) and write manifests pointing at them.",
        "vidret prepare --config configs/msrvtt.yaml --out s3://b/prepared --split test",
    ),
    "train": (
        "train a stage (discrimination or generation) on Ray Train",
        "Stage 1 (discrimination) trains the encoders; stage 2 (generation) trains the denoisers on "
        "cached features.",
        "vidret train --config configs/synthetic.yaml --stage discrimination train.epochs=2",
    ),
    "evaluate": (
        "evaluate exported weights: metrics, re-ranking, HTML report",
        "Retrieval metrics of eval.splits with and without diffusion re-ranking, and the HTML report.",
        "vidret evaluate --config configs/synthetic.yaml eval.splits=[test,ood]",
    ),
    "tune": (
        "Ray Tune sweep of inference or training parameters on the val split",
        "Sweep re-ranking parameters (kind inference) or the stage-2 learning rate (kind training).",
        "vidret tune --config configs/synthetic.yaml --kind inference tune.num_samples=8",
    ),
    "quickstart": (
        "the whole pipeline on the embedded default (generated corpus)",
        "Generate a corpus, train both stages, evaluate and write the report: the demo in one command.",
        "vidret quickstart --out runs/demo",
    ),
    "compare": (
        "compare evaluated runs: metrics, paired intervals, config diff, HTML",
        "Side-by-side metrics of evaluated runs, paired bootstrap intervals of their differences (same "
        "queries), the config diff and an HTML page.",
        "vidret compare runs/a runs/b --out runs/compare",
    ),
    "index": (
        "encode a library of videos into a search index (Ray Data)",
        "Decode and encode every video of a manifest with exported weights into a search index (features, "
        "ANN prefilter, thumbnails); re-running adds only new videos.",
        "vidret index --checkpoint runs/demo/checkpoints/generation --manifest videos.csv --out s3://b/index",
    ),
    "search": (
        "search an index for a text query; prints JSON",
        "ANN prefilter, exact WTI scores and diffusion re-ranking of one text query against an index.",
        'vidret search "a red circle moves left" --index s3://b/index --k 5',
    ),
    "serve": (
        "serve an index over HTTP with Ray Serve (web page, /search, /thumb)",
        "Deploy the search engine of an index on Ray Serve: a web page, a JSON /search endpoint and "
        "thumbnails, autoscaled replicas.",
        "vidret serve --index s3://b/index --port 8000",
    ),
}
_JSON = (
    "--json",
    {
        "action": "store_true",
        "help": "print the whole summary as JSON on stdout (nothing else goes there) instead of the table, "
        "verdicts and paths",
    },
)
OWN_ARGS = {"compare", "search"}
"""Commands that declare --config themselves and take no positional KEY=VALUE overrides (their positional
arguments are run folders or the query)."""
FLAGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "synth": [
        ("--out", {"metavar": "URI", "help": "output folder or s3://bucket/prefix (synth.out)"}),
        ("--videos", {"type": int, "metavar": "N", "help": "number of clips (synth.videos)"}),
        ("--seed", {"type": int, "help": "random seed of the corpus (synth.seed)"}),
        ("--size", {"type": int, "metavar": "PX", "help": "frame width and height, even (synth.size)"}),
        ("--seconds", {"type": float, "help": "clip length in seconds (synth.seconds)"}),
        ("--fps", {"type": int, "help": "frames per second of the clips (synth.fps)"}),
        ("--workers", {"type": int, "help": "local encoding processes (synth.workers)"}),
        (
            "--layout",
            {
                "choices": ["synthetic", "activitynet"],
                "default": "synthetic",
                "help": "synthetic: short MSR-VTT-style clips; activitynet: long videos (--size is the short "
                "side, e.g. 360, --fps e.g. 30, --seconds e.g. 120) with train.json/val_1.json paragraphs",
            },
        ),
        ("--quiet", {"action": "store_true", "help": "no progress lines"}),
    ],
    "manifest": [
        (
            "--dataset",
            {
                "choices": ["msrvtt", "msvd", "activitynet", "didemo", "lsmdc", "custom", "synthetic"],
                "help": "annotation format (data.dataset)",
            },
        ),
        (
            "--anno",
            {"required": True, "metavar": "PATH_OR_URI", "help": "annotation folder (or file, custom)"},
        ),
        ("--videos", {"required": True, "metavar": "URI", "help": "folder or prefix holding the videos"}),
        ("--split", {"required": True, "help": "split name, e.g. train, val, test"}),
        (
            "--out",
            {
                "metavar": "URI",
                "help": "manifest file (default <data.manifest>/<split>.parquet, else "
                "<run.out>/manifest/<split>.parquet); the report (<out>.report.json) and the resolved config "
                "(<out>.config.yaml) go next to it",
            },
        ),
        ("--no-check-videos", {"action": "store_true", "help": "do not list the videos folder"}),
        (
            "--on-duplicate",
            {
                "choices": ["error", "keep-first"],
                "dest": "on_duplicate",
                "help": "one video_id naming two different videos: fail naming both rows (default) or keep "
                "the first",
            },
        ),
    ],
    "check": [
        ("--manifest", {"required": True, "metavar": "URI", "help": "the manifest (.parquet) to decode"}),
        ("--out", {"metavar": "URI", "help": "summary JSON (default <manifest>.check.json)"}),
    ],
    "prepare": [
        ("--out", {"metavar": "URI", "help": "output folder or prefix (data.prepare_out)"}),
        ("--split", {"action": "append", "help": "split to prepare (repeatable; default: all)"}),
        ("--fps", {"type": float, "help": "frame rate of the prepared files (data.prepare_fps)"}),
        (
            "--short-side",
            {
                "type": int,
                "dest": "short_side",
                "help": "short side in pixels, even (data.prepare_short_side)",
            },
        ),
    ],
    "train": [
        ("--stage", {"choices": ["discrimination", "generation"], "help": "stage to run (train.stage)"}),
        _JSON,
    ],
    "evaluate": [
        ("--checkpoint", {"metavar": "URI", "help": "exported weights (default: the run's latest stage)"}),
        _JSON,
    ],
    "tune": [
        ("--kind", {"choices": ["inference", "training"], "help": "what to sweep (tune.kind)"}),
        ("--checkpoint", {"metavar": "URI", "help": "exported weights (default: the run's)"}),
        _JSON,
    ],
    "quickstart": [
        ("--out", {"metavar": "DIR", "help": "run folder (default: run.out of the config)"}),
        _JSON,
    ],
    "compare": [
        (
            "runs",
            {"nargs": "+", "metavar": "RUN", "help": "run folders (run.out, local or s3://), first = A"},
        ),
        ("--out", {"default": "runs/compare", "metavar": "URI", "help": "where compare.{json,html} go"}),
        ("--config", {"metavar": "FILE", "help": "YAML config (storage settings, eval.bootstrap_*)"}),
    ],
    "index": [
        ("--checkpoint", {"required": True, "metavar": "URI", "help": "exported weights (stage 1 or 2)"}),
        ("--manifest", {"required": True, "metavar": "URI", "help": "Parquet manifest or .csv/.jsonl table"}),
        ("--out", {"required": True, "metavar": "URI", "help": "index folder or s3:// prefix"}),
        ("--split", {"help": "only this split of a Parquet manifest (default: every row)"}),
    ],
    "search": [
        ("query", {"help": "the text to search for"}),
        ("--index", {"required": True, "metavar": "URI", "help": "the index folder or s3:// prefix"}),
        ("--k", {"type": int, "help": "results (default search.k)"}),
        (
            "--prefilter-m",
            {"type": int, "dest": "prefilter_m", "help": "ANN candidates (search.prefilter_m)"},
        ),
        ("--rerank", {"action": BooleanOptionalAction, "default": None, "help": "diffusion re-rank"}),
        ("--checkpoint", {"metavar": "URI", "help": "weights (default: those the index was built with)"}),
        ("--config", {"metavar": "FILE", "help": "YAML config (storage, search)"}),
        (
            "--set",
            {
                "dest": "overrides",
                "action": "append",
                "default": [],
                "metavar": "KEY=VALUE",
                "help": "dotted config override, repeatable (e.g. --set search.ef=512)",
            },
        ),
    ],
    "serve": [
        ("--index", {"required": True, "metavar": "URI", "help": "the index folder or s3:// prefix"}),
        ("--host", {"help": "address to bind (search.host, default 127.0.0.1)"}),
        ("--port", {"type": int, "help": "port (search.port)"}),
        ("--checkpoint", {"metavar": "URI", "help": "weights (default: those the index was built with)"}),
        ("--detach", {"action": "store_true", "help": "deploy and return (the app keeps running on Ray)"}),
    ],
}
