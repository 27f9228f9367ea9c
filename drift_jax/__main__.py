"""``python -m drift_jax``: the same command line as ``drift-jax`` (``drift_jax._io.cli``)."""

import sys

from ._io.cli import main

if __name__ == "__main__":
    sys.exit(main())
