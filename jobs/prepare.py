"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/prepare.py --config configs/msrvtt.yaml
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prepare", *sys.argv[1:]], own_process=True))
