"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/manifest.py --dataset msrvtt --anno URI ...
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["manifest", *sys.argv[1:]], own_process=True))
