"""``python -m flux_async``: the ``flux-async`` command line."""

import sys

from flux_async.cli import main

if __name__ == "__main__":
    sys.exit(main())
