"""Ray job entrypoint: `dtl-ray run` on the cluster, with the same arguments.

ray job submit --address http://HEAD:8265 --working-dir . -- \\
    python jobs/run.py configs/demo.yaml [--set key=value ...] [--stages score,select]
Safe to submit again: finished stages are skipped, interrupted ones resume.
"""

import sys

from dtl_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
