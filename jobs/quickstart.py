"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/quickstart.py --config configs/synthetic.yaml
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["quickstart", *sys.argv[1:]], own_process=True))
