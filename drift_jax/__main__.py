"""``python -m drift_jax``: the same command line as ``drift-jax`` (``drift_jax._cli``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
