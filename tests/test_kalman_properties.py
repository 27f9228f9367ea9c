"""Property-based tests (hypothesis): for random valid models and data the filter's
log-likelihood is finite, its covariances stay symmetric positive definite, an update
never widens the posterior, and float32 agrees with float64 to a stated tolerance."""

import equinox as eqx
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import drift_jax as dj

T = 25

# Each structure compiles once; hypothesis then varies the values only.
STRUCTURES = [
    ("OU", "euler", 1, "joint"),
    ("OUAccel", "exact", 3, "joint"),
    ("OUAccel", "euler", 2, "independent"),
]
IDS = ["-".join(map(str, s)) for s in STRUCTURES]

# float32 vs float64, stated tolerance. Rounding in a Kalman update is amplified by how much
# the update shrinks the variance, kappa = max_t P_pred[0,0] / P_post[0,0] (the filter's
# conditioning), so every relative error below must be <= F32_FACTOR * eps_32 * kappa
# (measured worst case over random models: ~3 eps_32 kappa). Relative errors are taken
# against the scale of each quantity: the log-likelihood against 1 + sum_t |ll_t| (its
# terms have either sign), the drift against |drift| + its posterior sd, the variance
# against itself.
F32_FACTOR = 20.0
EPS_32 = float(np.finfo(np.float32).eps)

params = st.fixed_dictionaries(
    {
        "theta": st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
        "sigma": st.floats(0.05, 2.0),
        "theta_a": st.floats(0.0, 2.0),
        "sigma_a": st.floats(0.05, 1.0),
        "loading_scale": st.floats(0.3, 2.0),
        "noise_scale": st.floats(0.1, 2.0),
        "rho": st.floats(-0.4, 0.9),
        "init_var": st.floats(0.01, 10.0),
        # theta dt <= 1: beyond it the euler F = 1 - theta dt turns negative (an
        # oscillating, possibly explosive recursion), which is no model of a drift.
        "dt_max": st.floats(0.02, 0.5),
        "missing": st.floats(0.0, 0.5),
        "seed": st.integers(0, 2**31 - 1),
    }
)


@eqx.filter_jit
def _transitions(dynamics, dts):
    return jax.vmap(dynamics.transition)(dts)


def _simulate(model, dts, rng):
    """A path of the model itself: ``x_t = F_t x_{t-1} + w_t``, ``z_t = H x_t + eps_t``."""
    Fs, Qs = (np.asarray(a, np.float64) for a in _transitions(model.dynamics, dts))
    n, m = model.state_dim, model.num_features
    H = np.zeros((m, n))
    H[:, 0] = np.asarray(model.observation.loadings, np.float64)
    R = np.asarray(model.observation.cov, np.float64)
    x = rng.multivariate_normal(np.asarray(model.init_mean), np.asarray(model.init_cov))
    zs = []
    for F, Q in zip(Fs, Qs, strict=True):
        x = F @ x + rng.multivariate_normal(np.zeros(n), Q)
        zs.append(H @ x + rng.multivariate_normal(np.zeros(m), R))
    return np.array(zs)


def _model(structure, p, dtype):
    """A random valid model in ``dtype`` (the same values for every dtype)."""
    kind, discretisation, m, update = structure
    rng = np.random.default_rng(p["seed"])
    c = lambda x: np.asarray(x, dtype=dtype)
    if kind == "OU":
        dynamics = dj.OU(c(p["theta"]), c(p["sigma"]), discretisation)
    else:
        dynamics = dj.OUAccel(
            c(p["theta"]), c(p["sigma"]), c(p["theta_a"]), c(p["sigma_a"]), discretisation
        )
    n = dynamics.state_dim
    loadings = p["loading_scale"] * rng.uniform(0.5, 1.5, m) * rng.choice([-1.0, 1.0], m)
    scales = p["noise_scale"] * rng.uniform(0.5, 1.5, m)
    # Equicorrelation is positive definite for -1/(m-1) < rho < 1.
    rho = max(p["rho"], -0.9 / (m - 1)) if m > 1 else 0.0
    corr = np.full((m, m), rho) + (1.0 - rho) * np.eye(m)
    R = corr * np.outer(scales, scales)
    obs = dj.Observation(c(loadings), c(R), update)
    return dj.KalmanModel(dynamics, obs, c(rng.normal(size=n)), c(p["init_var"] * np.eye(n)))


def _build(structure, p, dtype, simulate=False):
    """Model, data and step lengths; the data are drawn from the (float64) model itself
    (``simulate``) or arbitrary, and are the same for every dtype."""
    m = structure[2]
    rng = np.random.default_rng(p["seed"] + 1)
    dts = rng.uniform(0.01, p["dt_max"], size=T)
    if simulate:
        zs = _simulate(_model(structure, p, np.float64), dts, rng)
    else:
        zs = rng.normal(scale=3.0, size=(T, m))
    zs[rng.random((T, m)) < p["missing"]] = np.nan
    return _model(structure, p, dtype), zs.astype(dtype), dts.astype(dtype)


@pytest.mark.parametrize("structure", STRUCTURES, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(p=params)
def test_log_likelihood_finite_and_covariances_spd(structure, p):
    model, zs, dts = _build(structure, p, np.float64)
    res = dj.filter(model, zs, dts)
    assert np.isfinite(float(res.log_likelihood))
    lls = np.asarray(res.log_likelihoods)
    assert np.all(np.isfinite(lls))
    assert np.all(lls[np.all(np.isnan(zs), axis=1)] == 0.0)  # nothing observed adds 0
    for covs in (np.asarray(res.covs), np.asarray(res.predicted_covs)):
        assert np.array_equal(covs, np.swapaxes(covs, -1, -2))  # exactly symmetric
        assert np.all(np.linalg.eigvalsh(covs) > 0)
    assert np.all(np.isfinite(np.asarray(res.means)))
    # An update never widens the posterior: P_pred - P_post is positive semi-definite.
    gap = np.linalg.eigvalsh(np.asarray(res.predicted_covs) - np.asarray(res.covs))
    scale = np.max(np.abs(np.asarray(res.predicted_covs)), axis=(-1, -2))
    assert np.all(gap >= -1e-12 * scale[:, None])


@pytest.mark.parametrize("structure", STRUCTURES, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(p=params)
def test_float32_agrees_with_float64(structure, p):
    # Data from the model itself: the regime where the filter's numbers mean something.
    model32, zs32, dts32 = _build(structure, p, np.float32, simulate=True)
    model64, zs64, dts64 = _build(structure, p, np.float64, simulate=True)
    r32 = dj.filter(model32, zs32, dts32)
    r64 = dj.filter(model64, zs64, dts64)
    assert r32.log_likelihood.dtype == np.float32
    assert r32.means.dtype == np.float32 and r32.covs.dtype == np.float32
    assert r64.log_likelihood.dtype == np.float64

    kappa = np.max(np.asarray(r64.predicted_covs)[:, 0, 0] / np.asarray(r64.drift_var))
    tol = F32_FACTOR * EPS_32 * kappa

    ll32, ll64 = float(r32.log_likelihood), float(r64.log_likelihood)
    assert np.isfinite(ll32)
    magnitude = 1 + np.sum(np.abs(np.asarray(r64.log_likelihoods)))
    assert abs(ll32 - ll64) / magnitude <= tol
    drift64 = np.asarray(r64.drift)
    scale = np.abs(drift64) + np.sqrt(np.asarray(r64.drift_var))
    drift_err = np.abs(np.asarray(r32.drift, np.float64) - drift64) / scale
    assert np.max(drift_err) <= tol
    var_err = np.abs(np.asarray(r32.drift_var, np.float64) / np.asarray(r64.drift_var) - 1)
    assert np.max(var_err) <= tol
    assert np.all(np.linalg.eigvalsh(np.asarray(r32.covs, np.float64)) > 0)


@settings(max_examples=25, deadline=None)
@given(p=params)
def test_joint_equals_independent_for_diagonal_noise(p):
    p = dict(p, rho=0.0)
    joint, zs, dts = _build(("OUAccel", "exact", 3, "joint"), p, np.float64)
    indep, _, _ = _build(("OUAccel", "exact", 3, "independent"), p, np.float64)
    a, b = dj.filter(joint, zs, dts), dj.filter(indep, zs, dts)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-11, atol=1e-10)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(a.covs, b.covs, rtol=1e-9, atol=1e-12)
