"""Ray job entrypoint: the select stage (its upstream stages must have finished).

ray job submit --address http://HEAD:8265 --working-dir . -- \\
    python jobs/stage_select.py --config configs/demo.yaml
Safe to submit again: finished stages are skipped, interrupted ones resume.
"""

import sys

from dtl_ray.jobs import entrypoint

if __name__ == "__main__":
    sys.exit(entrypoint(sys.argv[1:], stages=["select"]))
