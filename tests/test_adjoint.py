"""The hand-assembled adjoint of the sequential Kalman scan (``_filters/adjoint.py``) gives the
same derivatives as JAX's own differentiation of the plain scan (``checkpoint=False``)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj


def _four_feature_model():
    cov = [[1, 0.7, 0.6, 0], [0.7, 2, 0.65, 0], [0.6, 0.65, 1.5, 0], [0, 0, 0, 3]]
    obs = dj.Observation([1.0, 0.8, 1.2, 0.5], cov)
    return dj.KalmanModel(dj.OUAccel(0.1, 0.5, 0.2, 0.3), obs, 0.3, [1.0, 0.5])


def _data(T=120, m=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(T, m))
    z[3, m - 1] = np.nan
    z[7] = np.nan
    return jnp.asarray(z), jnp.asarray(rng.uniform(0.1, 1.0, T))


def _loss(model, zs, dt, checkpoint):
    # Every output of the filter enters, so every cotangent path of the adjoint is used.
    r = dj.filter(model, zs, dt, checkpoint=checkpoint)
    return (
        r.log_likelihood
        + 0.01 * jnp.sum(r.drift**2)
        + jnp.sum(r.covs)
        + 0.1 * jnp.sum(r.predicted_means)
        + jnp.sum(r.predicted_covs)
        + jnp.sum(jnp.nan_to_num(r.innovations))
    )


@pytest.mark.parametrize("scalar_dt", [True, False])
def test_adjoint_gradients_equal_autodiff(scalar_dt):
    model = _four_feature_model()
    zs, dts = _data()
    dt = jnp.asarray(0.4) if scalar_dt else dts
    # Cotangents of the model's parameters, the data and the step lengths, from one
    # backward pass per method (one compilation each).
    grad = eqx.filter_grad(lambda args, checkpoint: _loss(*args, checkpoint))
    g_adj = grad((model, zs, dt), True)
    g_ref = grad((model, zs, dt), False)
    leaves_adj, leaves_ref = jax.tree.leaves(g_adj), jax.tree.leaves(g_ref)
    assert len(leaves_adj) == len(jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))) + 2
    for a, b in zip(leaves_adj, leaves_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def test_adjoint_under_vmap_and_reverse_over_reverse():
    rng = np.random.default_rng(1)
    batch = jnp.asarray(rng.normal(size=(5, 80)))
    model = dj.KalmanModel(dj.OU(0.05, 0.5), dj.Observation.scalar(1.0), 0.0, 1.0)

    def total(m, checkpoint):
        f = lambda z: dj.filter(m, z, 0.1, checkpoint=checkpoint).log_likelihood
        return jnp.sum(jax.vmap(f)(batch))

    g_adj = jax.grad(total)(model, True)
    g_ref = jax.grad(total)(model, False)
    for a, b in zip(jax.tree.leaves(g_adj), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11)

    def ll(theta, checkpoint):
        m = dj.KalmanModel(dj.OU(theta, 0.5), dj.Observation.scalar(1.0), 0.0, 1.0)
        return dj.filter(m, batch[0], 0.1, checkpoint=checkpoint).log_likelihood

    # Reverse over reverse through the adjoint equals the plain scan's Hessian.
    h_adj = jax.jacrev(jax.grad(ll))(0.05, True)
    h_ref = jax.hessian(ll)(0.05, False)
    np.testing.assert_allclose(h_adj, h_ref, rtol=1e-10)


def test_forward_mode_needs_the_plain_scan():
    """Forward mode (jvp, jax.hessian) is not defined through the custom adjoint; the plain
    scan (checkpoint=False) supports it."""
    zs, _ = _data(T=30, m=1)
    f = lambda th, ck: (
        dj.filter(
            dj.KalmanModel(dj.OU(th, 0.5), dj.Observation.scalar(1.0)),
            zs[:, 0],
            0.1,
            checkpoint=ck,
        ).log_likelihood
    )
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda th: f(th, True), (0.05,), (1.0,))
    _, tangent = jax.jvp(lambda th: f(th, False), (0.05,), (1.0,))
    np.testing.assert_allclose(tangent, jax.grad(f)(0.05, True), rtol=1e-10)
