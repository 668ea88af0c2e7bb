"""Ray job entrypoint, submitted as:

ray job submit --working-dir . -- python jobs/check.py --manifest s3://b/manifest/test.parquet
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["check", *sys.argv[1:]], own_process=True))
