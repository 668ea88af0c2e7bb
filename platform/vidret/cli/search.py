"""The search commands: ``index``, ``search`` and ``serve``."""

from __future__ import annotations

import argparse
import sys

from vidret.cli.common import Handler, flags, load, print_json
from vidret.preflight import preflight


def cmd_index(args: argparse.Namespace) -> int:
    cfg = load(args)
    preflight("index", cfg, checkpoint=args.checkpoint, manifest=args.manifest, out=args.out)
    from vidret.search.build import run_index

    summary = run_index(cfg, args.checkpoint, args.manifest, args.out, split=args.split)
    print_json(summary)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    cfg = load(args, flags(args, {"prefilter_m": "search.prefilter_m"}))
    preflight("search", cfg, index=args.index, checkpoint=args.checkpoint)
    from vidret.search.query import SearchEngine

    engine = SearchEngine.open(args.index, cfg, args.checkpoint)
    print_json(engine.search(args.query, args.k, args.rerank))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    cfg = load(args, flags(args, {"host": "search.host", "port": "search.port"}))
    preflight("serve", cfg, index=args.index, checkpoint=args.checkpoint)
    from vidret.runtime import ensure_ray
    from vidret.search.service import start_service, stop_service

    ensure_ray(cfg.run)
    url = start_service(cfg, args.index, args.checkpoint)
    print(f"vidret serve: {args.index} at {url}", file=sys.stderr, flush=True)
    if args.detach:
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_service()
    return 0


SEARCH_HANDLERS: dict[str, Handler] = {
    "index": cmd_index,
    "search": cmd_search,
    "serve": cmd_serve,
}
