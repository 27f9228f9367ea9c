"""Differentiability and numerical robustness of the IMM log-likelihood.

Gradients with respect to every parameter (theta and sigma per regime, ``Pi`` through
row-softmax logits, the observation covariance through its Cholesky factor) against
central finite differences in float64; exact zeros in ``Pi`` / ``init_probs``; a 1e8
outlier; a step with nothing observed.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import drift_jax as dj

QUIET, TRENDING, CRISIS = 0, 1, 2


def _central_differences(f, x, rel=1e-5):
    """``df/dx`` by central differences with step ``rel * max(1, |x_i|)``."""
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in range(x.size):
        h = rel * max(1.0, abs(x[i]))
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (float(f(x + e)) - float(f(x - e))) / (2.0 * h)
    return g


def _assert_gradient_matches(loss, params, rtol=1e-6):
    flat, unravel = ravel_pytree(params)
    # One compilation serves the gradient and the finite differences' evaluations.
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: loss(unravel(x))))
    g = np.asarray(value_and_grad(flat)[1])
    fd = _central_differences(lambda x: value_and_grad(x)[0], flat)
    scale = max(1.0, float(np.max(np.abs(fd))))
    err = np.abs(g - fd)
    assert np.all(np.isfinite(g))
    assert np.all(err <= rtol * np.maximum(np.abs(fd), 1e-2 * scale)), (g, fd, err)
    return g


def _loss_builder(zs, dt, extended):
    m = 1 if zs.ndim == 1 else zs.shape[1]
    loadings = np.linspace(1.0, 0.7, m)

    def loss(p):
        M = p["theta"].shape[0]
        if extended:
            dyn = tuple(
                dj.OUAccel(p["theta"][j], p["sigma"][j], 0.4, 0.3 + 0.2 * j) for j in range(M)
            )
        else:
            dyn = tuple(dj.OU(p["theta"][j], p["sigma"][j]) for j in range(M))
        L = jnp.tril(p["chol"])
        obs = dj.Observation(loadings, L @ L.T)
        Pi = jax.nn.softmax(p["logits"], axis=1)
        imm = dj.IMMModel(dyn, obs, Pi, [0.5, 0.3, 0.2], 0.1, 1.5)
        return dj.filter(imm, zs, dt).log_likelihood

    return loss


@pytest.mark.parametrize("extended", [False, True], ids=["scalar", "extended"])
def test_log_likelihood_gradient_matches_finite_differences(extended):
    rng = np.random.default_rng(0)
    T, m = 25, 2
    drift = np.concatenate([np.zeros(10), np.linspace(0.0, -8.0, 15)])
    zs = drift[:, None] + rng.normal(size=(T, m)) * 0.8
    zs[3, 1] = np.nan  # a partly observed step
    zs[7] = np.nan  # nothing observed
    dt = rng.uniform(0.2, 0.8, size=T)
    params = {
        "theta": np.array([0.10, 0.02, 0.005]),
        "sigma": np.array([0.3, 1.0, 5.0]),
        "logits": np.log(np.array([[0.95, 0.04, 0.01], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]]))
        + rng.normal(size=(3, 3)) * 0.1,
        "chol": np.array([[0.9, 0.0], [0.4, 0.7]]),
    }
    g = _assert_gradient_matches(_loss_builder(zs, dt, extended), params)
    # Every parameter matters: the only gradient entry that is exactly zero is the one
    # above the diagonal of the Cholesky factor, which the model never reads.
    assert g.size == 3 + 3 + 9 + 4 and np.sum(g == 0.0) == 1


def _imm_with(Pi, p0, R=1.0, theta=(0.1, 0.02, 0.005), sigma=(0.3, 1.0, 5.0)):
    dyn = tuple(dj.OU(t, s) for t, s in zip(theta, sigma, strict=True))
    return dj.IMMModel(dyn, dj.Observation.scalar(R), Pi, p0, 0.0, 1.0)


ZERO_CASES = {
    # Quiet never jumps straight to Crisis; Crisis has no weight at the start.
    "zero-entry-and-init": (
        [[0.95, 0.05, 0.0], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]],
        [0.7, 0.3, 0.0],
    ),
    # Crisis is unreachable: its column is 0 and it starts at 0 (log-weight -inf forever).
    "unreachable-regime": (
        [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]],
        [0.5, 0.5, 0.0],
    ),
    # A one-hot start with an absorbing regime.
    "absorbing": (
        [[1.0, 0.0, 0.0], [0.05, 0.90, 0.05], [0.0, 0.1, 0.9]],
        [1.0, 0.0, 0.0],
    ),
}


def _loss_and_result(params, zs):
    dyn = tuple(dj.OU(params["theta"][j], params["sigma"][j]) for j in range(3))
    obs = dj.Observation.scalar(params["R"])
    imm = dj.IMMModel(dyn, obs, params["Pi"], params["p0"], 0.0, 1.0)
    res = dj.filter(imm, zs, 0.5)
    return res.log_likelihood, res


_value_and_grad = eqx.filter_jit(jax.value_and_grad(_loss_and_result, has_aux=True))
SEED_PARAMS = {
    "R": np.array(1.3),
    "theta": np.array([0.1, 0.02, 0.005]),
    "sigma": np.array([0.3, 1.0, 5.0]),
}


def _assert_all_finite(ll, res, grads):
    assert np.isfinite(float(ll))
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)), grads
    for field in ("regime_probs", "predicted_regime_probs", "means", "covs", "log_likelihoods"):
        assert np.all(np.isfinite(np.asarray(getattr(res, field)))), field
    np.testing.assert_allclose(np.sum(res.regime_probs, axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("case", list(ZERO_CASES))
def test_exact_zeros_give_no_nan_in_values_or_gradients(case):
    Pi0, p00 = (np.array(a) for a in ZERO_CASES[case])
    zs = np.concatenate([np.zeros(5), np.full(5, -12.0), [np.nan], np.zeros(3)])
    params = {**SEED_PARAMS, "Pi": Pi0, "p0": p00}
    (ll, res), g = _value_and_grad(params, zs)
    _assert_all_finite(ll, res, g)
    if case == "unreachable-regime":
        np.testing.assert_array_equal(res.regime_probs[:, CRISIS], 0.0)
    # The gradient along a row-stochastic direction that leaves the zero entries at 0
    # matches central differences.
    direction = np.zeros((3, 3))
    direction[1, 0], direction[1, 1] = 1.0, -1.0
    f = lambda e: float(_value_and_grad({**params, "Pi": Pi0 + e * direction}, zs)[0][0])
    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    np.testing.assert_allclose(float(np.sum(g["Pi"] * direction)), fd, rtol=1e-6)
    if case == "zero-entry-and-init":
        # Moving weight onto the zero entry Pi[Quiet, Crisis]: the derivative is one-sided
        # there; a second-order forward difference agrees with the gradient.
        direction = np.zeros((3, 3))
        direction[0, 2], direction[0, 0] = 1.0, -1.0
        f = lambda e: float(_value_and_grad({**params, "Pi": Pi0 + e * direction}, zs)[0][0])
        h = 1e-5
        fd = (-3.0 * f(0.0) + 4.0 * f(h) - f(2.0 * h)) / (2.0 * h)
        np.testing.assert_allclose(float(np.sum(g["Pi"] * direction)), fd, rtol=1e-6)


def test_huge_outlier_keeps_probabilities_ordered_by_fit():
    """A 1e8 bps/s observation: every member's likelihood underflows, yet the weights stay
    finite, sum to 1, and are ordered by the member's predictive spread (Crisis, whose
    predictive variance is largest, explains the outlier best); the value and the
    gradient stay finite. The ordering of the members whose probabilities underflow to 0
    is kept in the log-weights."""
    imm = dj.seed_imm(dj.Observation.scalar(1.3))
    zs = np.concatenate([np.random.default_rng(5).normal(size=13) * 0.5, [1e8]])
    params = {**SEED_PARAMS, "Pi": np.asarray(imm.transition), "p0": np.asarray(imm.init_probs)}
    (ll, res), g = _value_and_grad(params, zs)
    _assert_all_finite(ll, res, g)
    p = np.asarray(res.regime_probs[-1])
    assert p[CRISIS] == 1.0 and np.argmax(p) == CRISIS
    assert float(res.log_likelihoods[-1]) < -1e12

    est = dj.IMMDriftEstimator(imm)
    for z in zs:
        est = est.update_observation(z, 0.5)
    log_w = np.asarray(est.state.log_probs)
    assert np.all(np.isfinite(log_w))
    assert log_w[CRISIS] > log_w[TRENDING] > log_w[QUIET]
    np.testing.assert_allclose(est.regime_probabilities(), p, rtol=1e-12)


def test_outlier_explained_equally_well_by_two_members_keeps_the_sum_at_one():
    """Two members that are the same in every respect (dynamics, and equal columns of
    ``Pi``, so equal mixed priors) and a 1e8 outlier: their log-likelihoods are ~-4e14,
    where one ulp is 0.06. The weights must still sum to 1 to rounding and split evenly
    (found by the property test; the Bayes step used to subtract the full log-sum from
    each ~-4e14 term, which left these weights at 0.5028 each, summing to 1.0057)."""
    crisis = dj.OU(0.005, 5.0)
    Pi = [[0.9, 0.05, 0.05], [0.1, 0.45, 0.45], [0.2, 0.4, 0.4]]
    imm = dj.IMMModel((dj.OU(0.1, 0.3), crisis, crisis), dj.Observation.scalar(1.0), Pi)
    res = dj.filter(imm, np.concatenate([np.zeros(5), [1e8]]), 0.5)
    p = np.asarray(res.regime_probs)
    assert float(res.log_likelihoods[-1]) < -1e14
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    # Exact: members 1 and 2 are the same computation on the same inputs in one compiled
    # program. (No tolerance would do: one ulp of their ~-4e14 log-likelihoods is 0.06.)
    np.testing.assert_array_equal(p[:, 1], p[:, 2])
    np.testing.assert_array_equal(p[-1], [0.0, 0.5, 0.5])


@pytest.mark.parametrize("m", [1, 3])
def test_step_with_nothing_observed_is_a_pure_prediction(m):
    rng = np.random.default_rng(3)
    T = 12
    zs = rng.normal(size=(T, m)) * 2.0
    zs[4] = np.nan
    zs[9] = np.nan
    if m > 1:
        zs[6, 0] = np.nan  # partly observed: a normal (smaller) update
    obs = dj.Observation(np.ones(m), np.eye(m) * 1.5)
    res = dj.filter(dj.seed_imm(obs), zs, 0.5)
    Pi = np.asarray(dj.seed_imm().transition)
    for t in (4, 9):
        assert float(res.log_likelihoods[t]) == 0.0
        np.testing.assert_allclose(
            res.regime_probs[t], res.predicted_regime_probs[t], rtol=1e-14, atol=0
        )
        np.testing.assert_allclose(
            res.predicted_regime_probs[t], np.asarray(res.regime_probs[t - 1]) @ Pi, rtol=1e-13
        )
    assert np.all(np.asarray(res.log_likelihoods)[[0, 1, 2, 3, 5, 6, 7, 8, 10, 11]] != 0.0)
    np.testing.assert_allclose(
        res.log_likelihood, np.sum(np.asarray(res.log_likelihoods)), rtol=1e-14
    )


@pytest.mark.parametrize(("m", "scalar_path"), [(1, True), (4, True), (4, False)])
def test_gradient_finite_after_a_regime_probability_underflows(m, scalar_path):
    """An absorbing regime (Pi[1, 0] = 0) and data that favour it: P(regime 0) underflows
    to 0 within ~50 steps. The gradient stays finite (it was NaN: d(x/c)/dc = -x/c^2 with
    c^2 underflowed) and equals the gradient over the same data in float64 to the end."""
    from drift_jax._filters.imm import imm_filter

    obs = dj.Observation.scalar(1.0) if m == 1 else dj.Observation(np.ones(4), np.eye(4))
    imm = dj.IMMModel(
        (dj.OU(0.1, 0.3), dj.OU(0.01, 5.0)), obs, [[0.98, 0.02], [0.0, 1.0]], [0.5, 0.5]
    )
    rng = np.random.default_rng(0)
    zs = np.cumsum(rng.normal(0, 3, 200))[:, None] + rng.normal(0, 1, (200, m))
    # One compiled program (the filter's outputs come with the gradient) for both series.
    run = jax.jit(
        jax.grad(
            lambda mdl, z: (lambda r: (r.log_likelihood, r))(
                imm_filter(mdl, z, 0.5, scalar_path=scalar_path)
            ),
            has_aux=True,
        )
    )
    grad, res = run(imm, zs)
    assert float(res.regime_probs[-1, 0]) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(grad))
    # Once regime 0 is gone the remaining steps only see regime 1: sigma_0's gradient
    # comes from the first steps alone, so it equals the gradient over a prefix (the
    # first 60 steps, then missing observations, which add no likelihood terms).
    prefix = np.where(np.arange(200)[:, None] < 60, zs, np.nan)
    short, res_short = run(imm, prefix)
    np.testing.assert_allclose(
        res_short.log_likelihood, np.sum(np.asarray(res.log_likelihoods)[:60]), rtol=1e-12
    )
    np.testing.assert_allclose(grad.dynamics[0].sigma, short.dynamics[0].sigma, rtol=1e-6)
