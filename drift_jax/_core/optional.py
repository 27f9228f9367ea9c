"""Dependencies imported tolerantly, so ``import drift_jax`` works on a bare JAX image.

pandas is a declared dependency (tables, CSV / Parquet, reports). On an accelerator image
that has JAX but not pandas, the filters, the simulator and the fitting loop still import
and run; the functions that build tables raise a clear ImportError when called.
"""

from __future__ import annotations


class _Missing:
    def __init__(self, name: str, install: str):
        self._name, self._install = name, install

    def __getattr__(self, attr):
        raise ImportError(
            f"this drift_jax function needs {self._name}, which is not installed: "
            f"`pip install {self._install}`."
        )


def optional_pandas():
    """``pandas``, or a stand-in whose every attribute raises a clear ImportError."""
    try:
        import pandas
    except ImportError:
        return _Missing("pandas", "pandas")
    return pandas
