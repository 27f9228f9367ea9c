"""Several features of a scalar drift reduced exactly to one observation per step
(``_filters/reduction.py``): the scalar IMM cycle fed the reduction equals the general m-feature
cycle (values, log-likelihoods, gradients), with missing features and irregular steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj
from drift_jax._filters.imm import imm_filter
from drift_jax._filters.reduction import reduce_to_scalar
from drift_jax._simulation.synthetic import default_feature_cov, default_loadings

from .conftest import correlated_cov


def _data(update, missing=(0.1, 0.3, 0.0, 0.5), extended=False):
    obs = dj.Observation(default_loadings(), default_feature_cov(), update=update)
    imm = dj.seed_imm(obs, extended=extended)
    paths = dj.simulate(
        imm, jax.random.key(3), 1, 400, 0.5, missing_prob=missing, jump_mean=[0, 0, -30.0]
    )
    zs = paths.features[0].at[7].set(jnp.nan)  # a step with nothing observed
    return imm, zs


@pytest.mark.parametrize(
    ("update", "irregular", "extended"),
    [
        ("joint", False, False),
        ("independent", True, False),
        ("joint", True, True),
        ("independent", False, True),
    ],
)
def test_reduced_equals_general_cycle(update, irregular, extended):
    """Scalar members: the scalar cycle on y_t; [mu, mu_dot] members: the general cycle
    on y_t through H = [1, 0] with noise r_t."""
    imm, zs = _data(update, extended=extended)
    dt = jnp.linspace(0.2, 0.9, zs.shape[0]) if irregular else 0.5
    fast = imm_filter(imm, zs, dt)
    general = imm_filter(imm, zs, dt, scalar_path=False)
    np.testing.assert_allclose(fast.log_likelihood, general.log_likelihood, rtol=1e-13)
    np.testing.assert_allclose(fast.log_likelihoods, general.log_likelihoods, atol=1e-11)
    np.testing.assert_allclose(fast.regime_probs, general.regime_probs, atol=1e-12)
    np.testing.assert_allclose(fast.means, general.means, atol=1e-11)
    np.testing.assert_allclose(fast.covs, general.covs, rtol=1e-11)
    assert float(fast.log_likelihoods[7]) == 0.0


def test_reduced_gradients_equal_general():
    imm, zs = _data("joint")

    def loss(model, scalar_path):
        return imm_filter(model, zs, 0.5, scalar_path=scalar_path).log_likelihood

    g_fast = jax.grad(loss)(imm, True)
    g_general = jax.grad(loss)(imm, False)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_general), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_reduction_by_hand():
    """y = a^T R^-1 z / c, r = 1/c, and log g = log N(z; 0, R) - log N(y; 0, 1/c)."""
    a = np.array([1.0, 0.5, 2.0])
    R = correlated_cov([1.0, 2.0, 3.0], 0.4)
    z = np.array([[0.3, -1.0, 2.0], [np.nan, 0.5, 1.0], [np.nan] * 3])
    y, r, log_g = reduce_to_scalar(dj.Observation(a, R), jnp.asarray(z))
    Ri = np.linalg.inv(R)
    c = a @ Ri @ a
    np.testing.assert_allclose(y[0], a @ Ri @ z[0] / c, rtol=1e-13)
    np.testing.assert_allclose(r[0], 1 / c, rtol=1e-13)

    def lognorm(x, S):
        S = np.atleast_2d(S)
        x = np.atleast_1d(x)
        return -0.5 * (
            x.size * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + x @ np.linalg.solve(S, x)
        )

    np.testing.assert_allclose(log_g[0], lognorm(z[0], R) - lognorm(y[0], 1 / c), rtol=1e-12)
    # Row 1: features 1 and 2 only, their sub-block of R.
    sub = np.ix_([1, 2], [1, 2])
    Ri2 = np.linalg.inv(R[sub])
    c2 = a[1:] @ Ri2 @ a[1:]
    np.testing.assert_allclose(y[1], a[1:] @ Ri2 @ z[1, 1:] / c2, rtol=1e-13)
    np.testing.assert_allclose(
        log_g[1], lognorm(z[1, 1:], R[sub]) - lognorm(y[1], 1 / c2), rtol=1e-12
    )
    assert np.isnan(y[2]) and float(log_g[2]) == 0.0


def test_zero_loading_features_only():
    """Observed features whose loadings are 0 carry no drift information: y is NaN (pure
    prediction) and the step's whole likelihood is log N(z; 0, R_obs)."""
    obs = dj.Observation([0.0, 1.0], [[2.0, 0.5], [0.5, 1.0]])
    y, r, log_g = reduce_to_scalar(obs, jnp.array([[0.7, jnp.nan]]))
    assert np.isnan(y[0])
    np.testing.assert_allclose(log_g[0], -0.5 * (np.log(2 * np.pi * 2.0) + 0.49 / 2.0))
    imm = dj.seed_imm(obs)
    zs = jnp.array([[0.7, jnp.nan], [0.1, 0.4]])
    fast, general = imm_filter(imm, zs, 0.5), imm_filter(imm, zs, 0.5, scalar_path=False)
    np.testing.assert_allclose(fast.log_likelihoods, general.log_likelihoods, rtol=1e-13)
    np.testing.assert_allclose(fast.regime_probs, general.regime_probs, atol=1e-14)
