"""Strict numerics for the whole suite: float64 and no silent rank promotion.

The library itself never touches JAX's global configuration; the tests opt in here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


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


__all__ = ["tree_allclose", "correlated_cov", "jnp"]
