"""The Monte Carlo work measured by ``bench_montecarlo.py`` and ``bench_gpu.py``.

``simulate_and_filter``: one compiled function that draws ``B`` paths with ``dj.simulator``
(regimes, drift, features, returns) and runs the IMM filter over each, returning per-path
log-likelihood and mean squared drift error: the Monte Carlo inner loop without the
metrics' bookkeeping. Public API only: ``PathSimulator.sample(..., devices=...)`` traced
inside ``jax.jit`` splits the path indices across the devices (its ``device_put`` becomes a
sharding constraint), and ``out_shardings`` keeps each device's results where they were
computed, so the program is the same as one fed sharded path indices (same collectives,
same numbers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import drift_jax as dj

DT = 0.5


def models(dtype) -> dict:
    """The two benchmarked IMMs: scalar (1 feature) and 4 correlated features (joint)."""
    scalar = dj.seed_imm(dj.Observation.scalar(jnp.asarray(4.0, dtype)), dtype=dtype)
    obs4 = dj.scenarios.default_observation(dtype=dtype)
    return {"scalar IMM (m=1)": scalar, "IMM, 4 features (joint)": dj.seed_imm(obs4, dtype=dtype)}


def simulator(model, T: int):
    return dj.simulator(
        model, T, DT, return_vol=[1.0, 1.5, 4.0], jump_mean=[0.0, 0.0, -30.0], jump_std=5.0
    )


def simulate_and_filter(sim, B: int, devices):
    """``run(key) -> (log-likelihood [B], mean squared error [B])``, compiled, its ``B``
    paths split across ``devices`` (``B`` a multiple of their number)."""
    devices = list(devices)
    if B % len(devices):
        raise ValueError(f"B={B} must be a multiple of the {len(devices)} devices")
    by_path = NamedSharding(Mesh(np.asarray(devices), ("paths",)), PartitionSpec("paths"))

    def run(key):
        paths = sim.sample(key, 0, B, devices=devices)
        res = jax.vmap(lambda z: dj.filter(sim.model, z, DT, checkpoint=False))(paths.features)
        err = res.drift - paths.drift
        return res.log_likelihood, jnp.mean(err * err, axis=-1)

    return jax.jit(run, out_shardings=by_path)


def check_finite(out) -> None:
    ll, mse = (np.asarray(x) for x in out)
    if not (np.all(np.isfinite(ll)) and np.all(np.isfinite(mse))):
        raise RuntimeError("non-finite Monte Carlo output")
