"""Which loop the scalar IMM filter traces: one for one series, one for a batch.

``_filters/imm_scalar.py`` has two loops of the same arithmetic (equal to rounding): the
vector loop is fastest on one series (few kernels a step), the loop unrolled over the
regimes is fastest under ``vmap`` (a batch of paths, instruments or chunks). The choice is
made where it is known: ``run_filter`` (whether its inputs are batched; a static argument
of the compiled filter) and ``dj.Chunked`` (its chunks are a batch). It is trace-time
Python state, read while the filter is traced; a trace outside any choice (e.g. a
backward pass traced after the forward returned) takes the unrolled loop.
"""

from __future__ import annotations

import contextlib
import threading

_LOOP = threading.local()


@contextlib.contextmanager
def scalar_loop(kind: str):
    """Which loop ``scalar_imm_filter`` traces within: ``"vector"`` for one series,
    ``"unrolled"`` (the default) for a batch. Set by ``run_filter`` (from whether its inputs
    are batched by a ``vmap``; a static argument of the compiled filter, so each choice is
    its own compilation) and by ``dj.Chunked`` for its chunks."""
    before = getattr(_LOOP, "kind", "unrolled")
    _LOOP.kind = kind
    try:
        yield
    finally:
        _LOOP.kind = before


def loop_kind() -> str:
    """The loop chosen for the filter being traced now (``"unrolled"`` by default)."""
    return getattr(_LOOP, "kind", "unrolled")
