"""Ray job entrypoint:
`ray job submit --working-dir . -- python jobs/index.py --config configs/X.yaml --checkpoint URI
--manifest URI --out s3://b/index`.
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["index", *sys.argv[1:]], own_process=True))
