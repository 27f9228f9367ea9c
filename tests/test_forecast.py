"""dj.forecast: closed forms, the filter's own prediction, Monte Carlo from the simulator,
gradients, the streaming estimators and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

import drift_jax as dj

R2 = np.array([[4.0, 1.5], [1.5, 3.0]])
EXACT_MEMBERS = (dj.OU(0.5, 0.5, "exact"), dj.OU(0.1, 2.0, "exact"), dj.OU(0.02, 5.0, "exact"))
RATES = np.array([[-0.3, 0.2, 0.1], [0.4, -0.6, 0.2], [0.1, 0.3, -0.4]])


def ou_closed_form(m, P, theta, sigma, h):
    """The scalar OU's moments ``h`` ahead and of its integral (module docstring)."""
    if theta == 0.0:
        cov = P * h + sigma**2 * h**2 / 2
        return m + 0 * h, P + sigma**2 * h, m * h, P * h**2 + sigma**2 * h**3 / 3, cov
    a = np.exp(-theta * h)
    b = (1 - a) / theta
    var = P * a**2 + sigma**2 * (1 - a**2) / (2 * theta)
    int_var = P * b**2 + sigma**2 / theta**2 * (h - 2 * b + (1 - a**2) / (2 * theta))
    cov = P * a * b + sigma**2 / theta * (b - (1 - a**2) / (2 * theta))
    return m * a, var, m * b, int_var, cov


@pytest.mark.parametrize("theta", [0.3, 0.0])
def test_scalar_ou_against_closed_forms(theta):
    sigma, m, P = 1.3, 2.0, 0.7
    model = dj.KalmanModel(dj.OU(theta, sigma), dj.Observation.scalar(1.0))
    state = dj.KalmanState(jnp.array([m]), jnp.array([[P]]))
    h = np.array([0.0, 0.5, 5.0, 20.0])
    fc = dj.forecast(model, state, h)
    mean, var, integrated, int_var, cov = ou_closed_form(m, P, theta, sigma, h)
    np.testing.assert_allclose(fc.drift, mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fc.drift_var, var, rtol=1e-12)
    np.testing.assert_allclose(fc.integrated_drift, integrated, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fc.integrated_drift_var, int_var, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(fc.drift_integrated_cov, cov, rtol=1e-11, atol=1e-14)
    np.testing.assert_array_equal(fc.regime_probs, 1.0)  # one regime, set to 1
    np.testing.assert_array_equal(fc.p_crisis, 0.0)
    # theta -> 0 is continuous (no 0/0): the theta = 0 forms to first order in theta
    if theta == 0.0:
        near = dj.forecast(dj.KalmanModel(dj.OU(1e-9, sigma), model.observation), state, h)
        np.testing.assert_allclose(near.integrated_drift, fc.integrated_drift, rtol=1e-7)
        np.testing.assert_allclose(near.integrated_drift_var, fc.integrated_drift_var, rtol=1e-7)


def _fine_grid(A, N, m0, P0, h, steps):
    """``(x, I)`` on a fine grid: ``x`` by its exact transition (Van Loan), ``I`` by the
    trapezoid rule (second order: the error falls 16x for 4x the steps)."""
    n, dt = len(m0), h / steps
    F = sl.expm(A * dt)
    E = sl.expm(np.block([[-A, N], [np.zeros_like(A), A.T]]) * dt)
    Qd = F @ E[:n, n:]
    T = np.zeros((n + 1, n + 1))
    T[:n, :n], T[n, n] = F, 1.0
    T[n, :n] = dt / 2 * (np.eye(n)[0] + F[0])
    L = np.zeros((n + 1, n))
    L[:n, :n], L[n] = np.eye(n), dt / 2 * np.eye(n)[0]
    W = L @ (0.5 * (Qd + Qd.T)) @ L.T
    mean, cov = np.concatenate([m0, [0.0]]), np.zeros((n + 1, n + 1))
    cov[:n, :n] = P0
    for _ in range(steps):
        mean, cov = T @ mean, T @ cov @ T.T + W
    return mean, cov


def test_extended_state_against_a_fine_grid():
    dyn = dj.OUAccel(0.2, 1.1, 0.7, 0.6)  # the forecast uses the continuous law
    A = np.array(dyn.drift_matrix())
    N = np.diag([1.1**2, 0.6**2])
    m0, P0 = np.array([2.0, -0.5]), np.array([[0.7, 0.1], [0.1, 0.3]])
    model = dj.KalmanModel(dyn, dj.Observation.scalar(1.0))
    fc = dj.forecast(model, dj.KalmanState(jnp.asarray(m0), jnp.asarray(P0)), [0.5, 5.0])
    for i, h in enumerate([0.5, 5.0]):
        mean, cov = _fine_grid(A, N, m0, P0, h, 2000)
        np.testing.assert_allclose(fc.means[i], mean[:2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fc.covs[i], cov[:2, :2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fc.integrated_drift[i], mean[2], rtol=1e-6)
        np.testing.assert_allclose(fc.integrated_drift_var[i], cov[2, 2], rtol=1e-6)
        np.testing.assert_allclose(fc.drift_integrated_cov[i], cov[0, 2], rtol=1e-6)


@functools.cache
def _imm_models():
    obs = dj.Observation([1.0, 0.6], R2)
    names = dict(regime_names=dj.REGIME_NAMES)
    scalar = dj.IMMModel(EXACT_MEMBERS, obs, dj.SEED_TRANSITION, **names)
    # [mu, mu_dot] with a scalar member embedded (its mu_dot held at 0)
    members = (
        EXACT_MEMBERS[0],
        dj.OUAccel(0.1, 2.0, 0.5, 0.5, "exact"),
        dj.OUAccel(0.02, 5.0, 0.3, 1.0, "exact"),
    )
    extended = dj.IMMModel(members, obs, dj.SEED_TRANSITION, **names)
    rates = dj.IMMModel(EXACT_MEMBERS, obs, rates=RATES, **names)
    return scalar, extended, rates


def _data(T=30, seed=0):
    rng = np.random.default_rng(seed)
    zs = rng.normal(-5.0, 3.0, (T, 2))
    zs[4] = np.nan
    return zs


def test_one_cycle_ahead_is_the_filters_prediction():
    """A per-cycle IMM forecast one cycle ahead is the filter's own prediction (mixing,
    then each member's exact transition): the moments after one more step with nothing
    observed (the series' last step). A horizon inside a cycle sees that cycle's switch:
    P(regime) = w Pi^k with k = ceil(h / cycle)."""
    scalar, extended, _ = _imm_models()
    zs, dt = _data(), 0.1
    zs[-1] = np.nan
    h = np.array([dt, 0.0, 0.05, 0.15, 1.1, 3.05])
    powers = [1, 0, 1, 2, 11, 31]
    for model in (scalar, extended):
        res = dj.filter(model, zs, dt)
        fc = dj.forecast(model, res, h, step=-2, cycle_seconds=dt)
        np.testing.assert_allclose(fc.means[0], res.means[-1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fc.covs[0], res.covs[-1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(fc.regime_probs[0], res.regime_probs[-1], rtol=0, atol=1e-13)
        w = np.asarray(res.regime_probs[-2])
        for i, k in enumerate(powers):
            want = w @ np.linalg.matrix_power(dj.SEED_TRANSITION, k)
            np.testing.assert_allclose(fc.regime_probs[i], want, rtol=0, atol=1e-13)
        np.testing.assert_allclose(fc.drift[1], res.drift[-2], rtol=0, atol=1e-13)
        np.testing.assert_allclose(fc.drift_var[1], res.drift_var[-2], rtol=0, atol=1e-13)
        assert float(fc.integrated_drift[1]) == 0.0


@functools.cache
def _rates_result():
    _, _, rates = _imm_models()
    return dj.filter(rates, _data(), 0.2)


def test_continuous_time_regime_probs_are_expm():
    _, _, rates = _imm_models()
    res = _rates_result()
    h = np.array([1.0, 5.0])
    fc = dj.forecast(rates, res, h)
    w = np.asarray(res.regime_probs[-1])
    for i, hk in enumerate(h):
        np.testing.assert_allclose(fc.regime_probs[i], w @ sl.expm(RATES * hk), rtol=0, atol=1e-13)


def _moment_z_scores(x, mean, var):
    """z-scores of the sample mean and variance of ``x`` against ``mean`` and ``var``."""
    n = x.shape[0]
    z_mean = (x.mean() - mean) / (x.std() / np.sqrt(n))
    centred = x - x.mean()
    se_var = np.sqrt(np.mean(centred**4) - np.mean(centred**2) ** 2) / np.sqrt(n)
    return float(z_mean), float((x.var() - var) / se_var)


@pytest.mark.parametrize("chain", ["rates", "per-cycle"])
def test_imm_forecast_against_monte_carlo_from_the_simulator(chain):
    """From a state the simulator can start in (one Gaussian, regime probabilities p0),
    paths drawn by dj.simulate at a fine step match the forecast's moments within 5
    standard errors. The simulator holds each step's regime over the step and sums the
    drift over the grid, which differs from the continuous law by O(dt) = O(0.02): far
    below the Monte Carlo error. A per-cycle chain is drawn at its cycle (exact on the
    grid) and its integrated drift, a sum over cycles there, is not compared."""
    p0, m0, P0 = np.array([0.2, 0.5, 0.3]), 3.0, 2.0
    obs, n_paths = dj.Observation.scalar(1.0), 20_000
    if chain == "rates":
        model = dj.IMMModel(
            EXACT_MEMBERS, obs, rates=RATES, init_probs=p0, init_mean=m0, init_cov=P0
        )
        dt, steps, cycle = 0.02, [50, 125, 250], None
    else:
        Pi = dj.SEED_TRANSITION
        model = dj.IMMModel(EXACT_MEMBERS, obs, Pi, init_probs=p0, init_mean=m0, init_cov=P0)
        dt, steps, cycle = 0.1, [10, 25, 50], 0.1
    paths = dj.simulate(model, jax.random.key(1), n_paths, steps[-1], dt)
    state = dj.IMMState(jnp.log(p0), jnp.full((3, 1), m0), jnp.full((3, 1, 1), P0))
    h = np.array(steps) * dt
    fc = dj.forecast(model, state, h, cycle_seconds=cycle)
    mu = np.asarray(paths.drift)
    integral = np.cumsum(mu * dt, axis=1)
    worst = 0.0
    for i, k in enumerate(steps):
        z = list(_moment_z_scores(mu[:, k - 1], fc.drift[i], fc.drift_var[i]))
        if chain == "rates":
            z += _moment_z_scores(
                integral[:, k - 1], fc.integrated_drift[i], fc.integrated_drift_var[i]
            )
        share = np.array([np.mean(paths.regimes[:, k - 1] == j) for j in range(3)])
        z += list((share - fc.regime_probs[i]) / np.sqrt(share * (1 - share) / n_paths))
        worst = max(worst, float(np.max(np.abs(z))))
    print(f"{chain}: largest |z| over the horizons {worst:.2f}")
    assert worst < 5.0, worst
    # the forecast moves: a test with power (the drift decays, the variance grows)
    assert float(fc.drift[-1]) < 0.8 * m0 and float(fc.drift_var[-1]) > 2 * P0


def test_gradients_match_central_differences():
    _, _, rates = _imm_models()
    res = _rates_result()
    state = dj.IMMState(jnp.log(res.regime_probs[-1]), res.model_means[-1], res.model_covs[-1])
    obs = rates.observation

    def outputs(x):
        Q = jnp.array([[-x[2] - 0.1, x[2], 0.1], [0.4, -0.6, 0.2], [0.1, x[3], -0.1 - x[3]]])
        members = (dj.OU(x[0], 0.5, "exact"), dj.OU(0.1, x[1], "exact"), EXACT_MEMBERS[2])
        h = jnp.stack([jnp.ones_like(x[4]), x[4]])
        fc = dj.forecast(dj.IMMModel(members, obs, rates=Q), state, h)
        return jnp.concatenate([fc.integrated_drift, fc.drift_var, fc.p_crisis, fc.drift])

    x0 = jnp.array([0.5, 2.0, 0.2, 0.3, 5.0])
    jac = jax.jacrev(outputs)(x0)
    # expm rounds to ~1e-14 (its Pade branch depends on the norm): a wider step
    f, eps = jax.jit(outputs), 1e-4
    fd = np.stack(
        [(f(x0.at[i].add(eps)) - f(x0.at[i].add(-eps))) / (2 * eps) for i in range(5)], 1
    )
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-9)
    assert np.max(np.abs(fd[:, :4])) > 1e-2
    # d/dh E[int_0^h mu] = E[mu_h], through the horizon
    np.testing.assert_allclose(jac[1, 4], f(x0)[7], rtol=1e-10)


def test_streaming_estimators_and_every_step():
    _, _, rates = _imm_models()
    res, zs = _rates_result(), _data()
    est = dj.IMMDriftEstimator(rates)
    for z in zs:
        est = est.update_observation(z, 0.2)
    a = est.forecast([1.0, 5.0])
    b = dj.forecast(rates, res, [1.0, 5.0])
    np.testing.assert_allclose(a.drift, b.drift, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.integrated_drift_var, b.integrated_drift_var, rtol=1e-12)
    every = dj.forecast(rates, res, [1.0, 5.0], step="all")
    assert every.drift.shape == (30, 2) and every.regime_probs.shape == (30, 2, 3)
    at5 = dj.forecast(rates, res, [1.0, 5.0], step=5)
    np.testing.assert_allclose(every.drift[5], at5.drift, rtol=0, atol=1e-13)
    np.testing.assert_allclose(every.integrated_drift_var[5], at5.integrated_drift_var, rtol=1e-12)
    kalman = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(4.0))
    est = dj.KalmanDriftEstimator(kalman).update_observation(-30.0, dt=0.5)
    m, P = float(est.drift_rate_per_sec()), float(est.drift_variance())
    fc = est.forecast(5.0)
    want = ou_closed_form(m, P, 0.1, 1.0, 5.0)
    got = [fc.drift, fc.drift_var, fc.integrated_drift, fc.integrated_drift_var]
    np.testing.assert_allclose(got, want[:4], rtol=1e-12)


def test_bad_input_is_named():
    scalar, _, rates = _imm_models()
    res = _rates_result()
    with pytest.raises(ValueError, match=r"`horizons` must be finite and >= 0 \(seconds ahead\)"):
        dj.forecast(rates, res, [1.0, -2.0])
    with pytest.raises(ValueError, match=r"`horizons` must be finite"):
        dj.forecast(rates, res, np.inf)
    with pytest.raises(ValueError, match="`cycle_seconds` is required to forecast an IMM"):
        dj.forecast(scalar, res, 1.0)
    with pytest.raises(ValueError, match="`cycle_seconds` must be finite and > 0"):
        dj.forecast(scalar, res, 1.0, cycle_seconds=0.0)
    with pytest.raises(TypeError, match="`result_or_state` must be a dj.filter"):
        dj.forecast(rates, "state", 1.0)
    with pytest.raises(ValueError, match=r"`step` must be an index in \[-30, 30\)"):
        dj.forecast(rates, res, 1.0, step=30)
    kalman = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(4.0))
    with pytest.raises(
        ValueError, match="holds 3 regime\\(s\\) of state size 1, but the model has M=1"
    ):
        dj.forecast(kalman, res, 1.0)
