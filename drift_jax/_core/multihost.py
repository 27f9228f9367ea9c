"""Running in several processes (``jax.distributed``): which paths are this process's,
and the per-path results of every process gathered back in path order.

A program launched as N processes (one per host or GPU; ``dj.distributed.initialize``)
runs the same Python in each. Batch work (``dj.simulate``, ``dj.monte_carlo``, the
market-making backtest, ``dj.fit_batch``) splits every chunk of ``count`` paths into N
contiguous blocks of ``ceil(count / N)``: process ``p`` computes block ``p`` on its own
devices (path ``i`` still from ``fold_in(key, i)``), and every process then receives all
blocks (``multihost_utils.process_allgather``), so each returns the same report. Per-path
numbers do not depend on N; pooled figures are summed on the host in path order.

With one process (the usual case) every function here is the identity and costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

import equinox as eqx
import jax
import numpy as np


class ProcessGroupError(RuntimeError):
    """Another process of a ``jax.distributed`` run failed or left while this one waited
    to exchange results with it."""


_STATE = threading.local()


def process_count() -> int:
    """The processes that share batch work (1 inside ``process_local()``)."""
    return 1 if getattr(_STATE, "local", False) else jax.process_count()


def _process_index() -> int:
    return 0 if getattr(_STATE, "local", False) else jax.process_index()


def is_main_process() -> bool:
    """Process 0 writes files and draws progress bars; the others stay quiet."""
    return jax.process_index() == 0


@contextlib.contextmanager
def process_local():
    """Within it, batch work is this process's alone: a caller that has already split the
    paths across processes (``dj.monte_carlo`` sampling its block from a simulator) must
    not have them split again."""
    before = getattr(_STATE, "local", False)
    _STATE.local = True
    try:
        yield
    finally:
        _STATE.local = before


class Share(NamedTuple):
    """This process's part of paths ``start .. start + count - 1``.

    ``block`` paths per process (the last blocks may hold fewer real paths, ``counts``);
    ``first`` / ``size``: the paths this process computes. A process with no real path
    computes path ``start`` once (thrown away) so that every process exchanges arrays of
    one shape.
    """

    first: int
    size: int
    block: int
    counts: tuple[int, ...]

    @property
    def own(self) -> int:
        return self.counts[_process_index()]


def share(start: int, count: int) -> Share:
    procs, me = process_count(), _process_index()
    block = -(-count // procs)
    counts = tuple(max(0, min(block, count - p * block)) for p in range(procs))
    if counts[me] == 0:
        return Share(start, 1, block, counts)
    return Share(start + me * block, counts[me], block, counts)


def gather(tree, sh: Share, what: str):
    """Every process's ``[block, ...]`` leaves joined into ``[count, ...]`` in path order
    (host NumPy arrays). Leaves are this process's block, padded to ``block`` rows."""
    if process_count() == 1:
        return _join(_map_arrays(lambda x: np.asarray(x)[None], tree), sh.counts)
    return _join(_allgather(tree, what), sh.counts)


def gather_prefix(tree, sh: Share, rows: int, what: str):
    """As ``gather`` for leaves that hold only the first ``rows`` paths of each block."""
    counts = tuple(min(rows, c) for c in sh.counts)
    if process_count() == 1:
        return _join(_map_arrays(lambda x: np.asarray(x)[None], tree), counts)
    return _join(_allgather(tree, what), counts)


def all_true(flag: bool, what: str) -> bool:
    """``flag`` of every process, and-ed (every process then takes the same branch)."""
    if process_count() == 1:
        return bool(flag)
    return bool(np.all(_allgather(np.asarray(bool(flag)), what)))


def _map_arrays(f, tree):
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree.map(f, arrays), static)


def _join(tree, counts):
    """``[P, block, ...]`` leaves -> the first ``counts[p]`` rows of each block, joined."""

    def join(x):
        return np.concatenate([x[p, :c] for p, c in enumerate(counts)], axis=0)

    return _map_arrays(join, tree)


def _allgather(tree, what: str):
    from jax.experimental import multihost_utils

    arrays, static = eqx.partition(tree, eqx.is_array)
    arrays = jax.tree.map(np.asarray, arrays)
    if not jax.tree.leaves(arrays):
        return tree
    try:
        out = multihost_utils.process_allgather(arrays, tiled=False)
    except Exception as err:  # gloo / NCCL report a dead peer as a generic runtime error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProcessGroupError(
            f"{what}: process {jax.process_index()} of {jax.process_count()} could not "
            "exchange results with the other processes; one of them has probably failed "
            f"or been stopped (see its log for the first error). Cause: {first}"
        ) from err
    return eqx.combine(jax.tree.map(np.asarray, out), static)
