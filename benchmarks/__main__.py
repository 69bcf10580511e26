"""``python -m benchmarks``: run every scenario and print one table."""

import sys

from benchmarks.run import main

sys.exit(main())
