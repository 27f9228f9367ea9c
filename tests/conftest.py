"""Strict numerics for the whole suite: float64 and no silent rank promotion.

The library itself never touches JAX's global configuration; the tests opt in here.
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Most of the suite's time is XLA compiling programs. A program compiled once is kept on
# disk and reused by the other test worker, by later test modules (which drop the
# in-memory programs, see below) and by the commands the tests start (the environment
# variables reach them): ~56% of the compilations of a run from an empty cache are found
# there. The key is the program, the JAX version and the compiler's settings, so a
# program loaded from the cache is the one the compiler would build: the same numbers.
# It lives in the checkout (ignored by git), so a second run reuses it as well. No size
# limit: with one, JAX lists the whole directory on every write (jax/_src/lru_cache.py),
# quadratic in the number of programs.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic per test."""
    state = {"key": jax.random.key(0)}

    def _getkey():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey


def tree_allclose(x, y, *, rtol=1e-9, atol=1e-12) -> bool:
    """True when two pytrees have the same structure and allclose leaves."""
    xs, tx = jax.tree.flatten(x)
    ys, ty = jax.tree.flatten(y)
    if tx != ty:
        return False
    return all(
        np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, equal_nan=True)
        for a, b in zip(xs, ys, strict=True)
    )


@pytest.fixture
def allclose_tree():
    return tree_allclose


def correlated_cov(sigmas, rho: float) -> np.ndarray:
    """Covariance with equal correlation ``rho`` between every pair of features."""
    s = np.asarray(sigmas, dtype=float)
    corr = np.full((s.size, s.size), rho) + (1.0 - rho) * np.eye(s.size)
    return corr * np.outer(s, s)


def ou_features(seed, T, dt, theta, sigma, R, m=1) -> np.ndarray:
    """A scalar OU drift (Euler: F = exp(-theta dt), Q = sigma^2 dt, started at 0) seen
    through ``m`` features with independent N(0, R) noise: ``[T]`` for m = 1, else ``[T, m]``."""
    rng = np.random.default_rng(seed)
    a, sd = np.exp(-theta * dt), sigma * np.sqrt(dt)
    mu, x = np.empty(T), 0.0
    for t in range(T):
        x = a * x + sd * rng.normal()
        mu[t] = x
    noise = rng.normal(size=(T, m)) * np.sqrt(R)
    return (mu[:, None] + noise)[:, 0] if m == 1 else mu[:, None] + noise


def sarimax_ou(zs, P0):
    """statsmodels' SARIMAX(1, 0, 0) + measurement error for our scalar OU Kalman model.

    phi = exp(-theta dt), sigma2 = sigma^2 dt, measurement variance R. Its prior is for the
    first observation, ours is before a predict step: a leading missing observation with
    the known prior N(0, P0) makes the two likelihoods the same function of the parameters.
    statsmodels' covariance-convergence shortcut is turned off (``tolerance = 0``).
    """
    import statsmodels.api as sm

    y = np.concatenate([[np.nan], zs])
    mod = sm.tsa.SARIMAX(
        y,
        order=(1, 0, 0),
        measurement_error=True,
        trend="n",
        initialization="known",
        initial_state=np.zeros(1),
        initial_state_cov=np.eye(1) * P0,
    )
    mod.ssm.tolerance = 0.0
    assert mod.param_names == ["ar.L1", "var.measurement_error", "sigma2"]
    return mod


__all__ = ["tree_allclose", "correlated_cov", "jnp", "ou_features", "sarimax_ou"]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs and traces after each test module.

    A test worker compiles hundreds of programs over the suite; kept for the whole run
    they grow its memory until XLA's compiler failed (an abort and a segmentation fault in
    `backend_compile_and_load`, seen with two workers on a 2-core, 24 GiB machine). Tests
    that share a compiled function do so within a module.
    """
    yield
    jax.clear_caches()
    import gc

    gc.collect()
