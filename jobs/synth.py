"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/synth.py --config configs/synthetic.yaml
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["synth", *sys.argv[1:]], own_process=True))
