"""Gradients of the log-likelihood against central finite differences (float64), and the
filter under jit and vmap (over paths and over parameters) against a Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj

T = 30
RNG = np.random.default_rng(1234)
DTS = RNG.uniform(0.1, 0.8, size=T)
ZS = RNG.normal(scale=1.5, size=(T, 3))
ZS[RNG.random((T, 3)) < 0.15] = np.nan
ZS[7] = np.nan

LOADINGS = np.array([1.0, 0.7, -0.4])
R_TRIL = np.array([0.9, 0.5, 1.2, 0.2, -0.3, 0.8])  # lower-triangular entries of R


def _cov(tril):
    """Symmetric ``R`` from its lower-triangular entries (row-major)."""
    idx = np.tril_indices(3)
    R = jnp.zeros((3, 3), dtype=tril.dtype).at[idx].set(tril)
    return R + R.T - jnp.diag(jnp.diag(R))


def _central_difference(f, x, h):
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h * max(1.0, abs(x[i]))
        g[i] = (f(x + e) - f(x - e)) / (2 * e[i])
    return g


def _check_gradient(loglik, x, *, h=1e-5, rtol=1e-6, unused=()):
    f = jax.jit(loglik)
    grad = np.asarray(jax.jit(jax.grad(loglik))(jnp.asarray(x)))
    fd = _central_difference(lambda y: float(f(jnp.asarray(y))), x, h)
    assert np.all(np.isfinite(grad))
    used = np.setdiff1d(np.arange(grad.size), unused)
    assert np.all(np.abs(grad[used]) > 1e-3)  # every parameter matters: a real comparison
    np.testing.assert_allclose(grad[used], fd[used], rtol=rtol, atol=0)
    # Parameters the likelihood does not depend on: zero up to rounding.
    np.testing.assert_allclose(grad[list(unused)], 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fd[list(unused)], 0.0, rtol=0, atol=1e-8)
    return grad


@pytest.mark.parametrize("discretisation", ["euler", "exact"])
def test_gradient_ou_parameters(discretisation):
    def loglik(p):
        model = dj.KalmanModel(
            dj.OU(p[0], p[1], discretisation), dj.Observation(LOADINGS, _cov(R_TRIL)), 0.1, 1.0
        )
        return dj.filter(model, ZS, DTS).log_likelihood

    _check_gradient(loglik, [0.4, 0.9])


def test_gradient_ouaccel_loadings_and_covariance():
    # All parameters of an extended-state model at once: theta, sigma, theta_a, sigma_a,
    # the loadings and R's free entries (through dj.Observation(loadings, cov)). The exact
    # (matrix-exponential) transition's own derivative is checked against finite
    # differences in test_dynamics.py; the chain rule does the rest.
    def loglik(p):
        dynamics = dj.OUAccel(p[0], p[1], p[2], p[3])
        obs = dj.Observation(p[4:7], _cov(p[7:]))
        return dj.filter(dj.KalmanModel(dynamics, obs, 0.1, [1.0, 0.5]), ZS, DTS).log_likelihood

    _check_gradient(loglik, np.concatenate([[0.4, 0.9, 0.8, 0.6], LOADINGS, R_TRIL]))


def test_gradient_loadings_and_covariance_independent_updates():
    def loglik(p):
        obs = dj.Observation(p[:3], _cov(p[3:]), "independent")
        model = dj.KalmanModel(dj.OU(0.4, 0.9), obs, 0.1, 1.0)
        return dj.filter(model, ZS, DTS).log_likelihood

    # The independent updates ignore the off-diagonal entries R_10, R_20, R_21.
    _check_gradient(loglik, np.concatenate([LOADINGS, R_TRIL]), unused=(4, 6, 7))


def test_gradient_at_theta_zero_matches_one_sided_difference():
    # theta >= 0, so at the random-walk boundary compare with the second-order one-sided
    # difference (-3 f(0) + 4 f(h) - f(2h)) / (2h).
    def loglik(theta):
        model = dj.KalmanModel(dj.OU(theta, 0.9, "exact"), dj.Observation.scalar(1.3), 0.1, 1.0)
        return dj.filter(model, ZS[:, 0], DTS).log_likelihood

    f = jax.jit(loglik)
    grad = float(jax.jit(jax.grad(loglik))(0.0))
    h = 1e-5
    fd = (-3 * float(f(0.0)) + 4 * float(f(h)) - float(f(2 * h))) / (2 * h)
    assert np.isfinite(grad)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


# --- jit and vmap -------------------------------------------------------------------------


def _scalar_model(theta):
    return dj.KalmanModel(dj.OU(theta, 0.9), dj.Observation.scalar(1.3), 0.1, 1.0)


def test_jit_equals_eager():
    model = _scalar_model(0.4)
    eager = dj.filter(model, ZS[:, 0], DTS)
    jitted = jax.jit(dj.filter)(model, ZS[:, 0], DTS)
    for name in ("log_likelihood", "means", "covs", "log_likelihoods"):
        np.testing.assert_allclose(getattr(jitted, name), getattr(eager, name), rtol=1e-13)


def test_vmap_over_paths_equals_loop():
    paths = np.random.default_rng(5).normal(size=(6, T))
    paths[2, 4] = np.nan
    model = _scalar_model(0.4)
    batched = jax.jit(jax.vmap(lambda z: dj.filter(model, z, DTS)))(paths)
    assert batched.means.shape == (6, T, 1)
    for b in range(6):
        single = dj.filter(model, paths[b], DTS)
        np.testing.assert_allclose(batched.log_likelihood[b], single.log_likelihood, rtol=1e-13)
        np.testing.assert_allclose(batched.drift[b], single.drift, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batched.drift_var[b], single.drift_var, rtol=1e-12)


def test_vmap_over_parameters_equals_loop():
    # A function that builds the model from theta, vmapped over theta: values and gradients.
    thetas = jnp.array([0.0, 0.05, 0.4, 1.5])

    def loglik(theta):
        return dj.filter(_scalar_model(theta), ZS[:, 0], DTS).log_likelihood

    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loglik)))(thetas)
    one = jax.jit(jax.value_and_grad(loglik))
    loop = [tuple(map(float, one(t))) for t in thetas]
    np.testing.assert_allclose(values, [v for v, _ in loop], rtol=1e-13)
    np.testing.assert_allclose(grads, [g for _, g in loop], rtol=1e-12)
    # Eager, model by model, gives the same values.
    eager = [
        float(dj.filter(_scalar_model(float(t)), ZS[:, 0], DTS).log_likelihood) for t in thetas
    ]
    np.testing.assert_allclose(values, eager, rtol=1e-13)
    assert len(set(np.round(np.asarray(values), 6))) == 4  # the parameters really differ
