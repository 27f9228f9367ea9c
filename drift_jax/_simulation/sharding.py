"""Run a function over a batch of paths split across every device JAX sees.

The batch (leading axis) is padded to a multiple of the device count, placed with a
``NamedSharding`` over a one-axis mesh ``("paths",)`` and handed to ``jit``; XLA then runs
each device's share of the paths where it lies. Each path's numbers do not depend on the
device count: the computation is per path (``vmap``) and nothing is reduced across paths
inside. (``jax.shard_map`` is not used: a ``lax.scan`` whose initial carry is a constant
does not vary across devices there, and the filters start from constants.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._core import multihost, validate as v


def resolve_devices(devices) -> list:
    """``None`` -> every device of the default backend that this process drives; an int ->
    that many; else a list. (In a ``jax.distributed`` run each process computes its share
    of the paths on its own devices: ``_core/multihost.py``.)"""
    all_devices = jax.local_devices()
    if devices is None:
        return list(all_devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(all_devices):
            raise ValueError(
                f"`devices` must be between 1 and the {len(all_devices)} available "
                f"device(s) of this process, got devices={devices}."
            )
        return list(all_devices[:devices])
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must name at least one device, got an empty list.")
    return devices


def padded_size(count: int, num_devices: int) -> int:
    """The next multiple of ``num_devices``, and at least 2 paths per device: XLA compiles
    a batch of one path as other code (the batch axis dropped) whose transcendental
    functions differ in the last bits, so a path alone would not match the same path in
    a batch of several."""
    return max(-(-count // num_devices), 2) * num_devices


def shard_leading(tree, devices: list, size: int | None = None):
    """Pad every leaf's leading axis to ``size`` (default: the next multiple of
    ``len(devices)``) and shard it; returns the sharded tree and the true count."""
    nd = len(devices)
    leaves = jax.tree.leaves(tree)
    count = leaves[0].shape[0]
    size = padded_size(count if size is None else max(size, count), nd)

    def pad(x):
        x = jnp.asarray(x)
        if size == count:
            return x
        # Repeat the last row: padding with real data keeps every padded path finite.
        extra = jnp.broadcast_to(x[-1:], (size - count, *x.shape[1:]))
        return jnp.concatenate([x, extra], axis=0)

    tree = jax.tree.map(pad, tree)
    if nd == 1:
        return jax.device_put(tree, devices[0]), count
    mesh = Mesh(np.asarray(devices), ("paths",))
    sharding = NamedSharding(mesh, PartitionSpec("paths"))
    return jax.device_put(tree, sharding), count


def unpad(tree, count: int):
    return jax.tree.map(lambda x: x[:count], tree)


def sample_in_chunks(sample, start, count, chunk_size, devices) -> list:
    """Outputs of ``sample(path_ids)`` for paths ``start .. start + count - 1``, at most
    ``chunk_size`` per call, each call's ids split across ``devices`` (padding removed).

    ``sample`` maps a sharded ``[k]`` uint32 array of path indices to a pytree with a
    leading path axis; every path depends only on its index, so the chunk size and the
    device count do not change the numbers. In a run of several processes each computes
    its block of every chunk and all of them receive the whole chunk.
    """
    count = v.positive_int("n_paths", count)
    start = v.nonnegative_int("start", start)
    chunk = count if chunk_size is None else v.positive_int("chunk_size", chunk_size)
    devs = resolve_devices(devices)
    parts = []
    for lo in range(0, count, chunk):
        n_chunk = min(chunk, count - lo)
        if multihost.process_count() == 1:
            idx = jnp.arange(start + lo, start + lo + n_chunk, dtype=jnp.uint32)
            sharded, n = shard_leading(idx, devs)
            parts.append(unpad(sample(sharded), n))
            continue
        sh = multihost.share(start + lo, n_chunk)
        idx = jnp.arange(sh.first, sh.first + sh.size, dtype=jnp.uint32)
        sharded, _ = shard_leading(idx, devs, size=sh.block)
        mine = jax.device_get(unpad(sample(sharded), sh.block))
        whole = multihost.gather(mine, sh, "sampling paths")
        parts.append(jax.tree.map(jnp.asarray, whole))
    return parts
