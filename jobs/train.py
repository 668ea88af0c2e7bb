"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/train.py --config configs/X.yaml [overrides]
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]], own_process=True))
