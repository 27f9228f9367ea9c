"""The Monte Carlo work measured by ``bench_montecarlo.py`` and ``bench_gpu.py``.

``simulate_and_filter``: one compiled function that draws ``B`` paths with ``dj.simulator``
(regimes, drift, features, returns) and runs the IMM filter over each, returning per-path
log-likelihood and mean squared drift error: the Monte Carlo inner loop without the
metrics' bookkeeping. The path indices are sharded across the devices given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import drift_jax as dj
from drift_jax._sharding import shard_leading
from drift_jax._simulate import _sample_paths
from drift_jax._synthetic import default_feature_cov, default_loadings

DT = 0.5


def models(dtype) -> dict:
    """The two benchmarked IMMs: scalar (1 feature) and 4 correlated features (joint)."""
    scalar = dj.seed_imm(dj.Observation.scalar(jnp.asarray(4.0, dtype)), dtype=dtype)
    obs4 = dj.Observation(
        jnp.asarray(default_loadings(), dtype), jnp.asarray(default_feature_cov(), dtype)
    )
    return {"scalar IMM (m=1)": scalar, "IMM, 4 features (joint)": dj.seed_imm(obs4, dtype=dtype)}


def simulator(model, T: int):
    return dj.simulator(
        model, T, DT, return_vol=[1.0, 1.5, 4.0], jump_mean=[0.0, 0.0, -30.0], jump_std=5.0
    )


def simulate_and_filter(sim, key):
    """``run(path_ids) -> (log-likelihood [B], mean squared error [B])``, compiled."""

    @jax.jit
    def run(ids):
        paths = _sample_paths(sim, key, ids)
        res = jax.vmap(lambda z: dj.filter(sim.model, z, DT, checkpoint=False))(paths.features)
        err = res.drift - paths.drift
        return res.log_likelihood, jnp.mean(err * err, axis=-1)

    return run


def path_ids(B: int, devices) -> jax.Array:
    ids, _ = shard_leading(jnp.arange(B, dtype=jnp.uint32), list(devices))
    return ids


def check_finite(out) -> None:
    ll, mse = (np.asarray(x) for x in out)
    if not (np.all(np.isfinite(ll)) and np.all(np.isfinite(mse))):
        raise RuntimeError("non-finite Monte Carlo output")
