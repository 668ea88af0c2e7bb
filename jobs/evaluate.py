"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/evaluate.py --config configs/X.yaml`."""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]], own_process=True))
