"""Ray job entrypoint:
`ray job submit --working-dir . -- python jobs/serve.py --config configs/X.yaml
--index s3://b/index --host 0.0.0.0 --detach`.
"""

import sys

from vidret.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]], own_process=True))
