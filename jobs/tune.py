"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/tune.py --config configs/X.yaml [overrides]
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["tune", *sys.argv[1:]], own_process=True))
