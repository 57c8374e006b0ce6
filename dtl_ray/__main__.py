"""`python -m dtl_ray ...` is the `dtl-ray` command (what submitted jobs run on a cluster)."""

import sys

from dtl_ray.cli import main

sys.exit(main())
