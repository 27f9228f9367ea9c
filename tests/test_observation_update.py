"""The measurement update: joint vs independent, posterior collapse, missing data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj

from .conftest import correlated_cov


def _series(rng, T, m, missing=0.0):
    zs = rng.normal(scale=1.5, size=(T, m))
    zs[rng.random((T, m)) < missing] = np.nan
    return zs


def _assert_results_equal(a, b, *, atol):
    for name in ("log_likelihoods", "means", "covs", "predicted_means", "predicted_covs"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=atol)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=0, atol=atol)


# --- joint with a diagonal covariance == independent sequential updates -------------------


@pytest.mark.parametrize(
    "dynamics",
    [dj.OU(0.2, 0.9, discretisation="exact"), dj.OUAccel(0.3, 0.8, 0.6, 0.4)],
    ids=["OU", "OUAccel"],
)
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_joint_with_diagonal_cov_equals_independent(dynamics, missing):
    rng = np.random.default_rng(3)
    T, m = 60, 4
    loadings = np.array([1.0, 0.7, -1.2, 0.4])
    variances = np.array([0.5, 1.3, 2.0, 0.8])
    dts = rng.uniform(0.05, 0.8, size=T)
    zs = _series(rng, T, m, missing)
    n = dynamics.state_dim
    joint = dj.KalmanModel(dynamics, dj.Observation(loadings, variances, "joint"), 0.1, 1.0)
    indep = dj.KalmanModel(dynamics, dj.Observation(loadings, variances, "independent"), 0.1, 1.0)
    res_joint = dj.filter(joint, zs, dts)
    res_indep = dj.filter(indep, zs, dts)
    assert res_joint.means.shape == (T, n)
    _assert_results_equal(res_joint, res_indep, atol=1e-12)


# --- posterior collapse: independent updates are over-confident ----------------------------


@pytest.mark.parametrize("rho", [0.6, 0.7, 0.8])
def test_vector_update_less_confident(rho):
    loadings = np.array([1.0, 0.9, 1.1, 0.8])
    sigmas = np.array([1.0, 1.2, 0.9, 1.5])
    R = correlated_cov(sigmas, rho)
    theta, sigma, dt, P0 = 0.1, 0.5, 0.2, 2.0
    dynamics = dj.OU(theta, sigma)
    z = np.array([[0.4, 0.9, -0.2, 0.6]])

    joint = dj.filter(dj.KalmanModel(dynamics, dj.Observation(loadings, R), 0.0, P0), z, dt)
    indep = dj.filter(
        dj.KalmanModel(dynamics, dj.Observation(loadings, R, "independent"), 0.0, P0), z, dt
    )
    # The predicted variance both updates start from.
    P_pred = np.exp(-2 * theta * dt) * P0 + sigma**2 * dt
    np.testing.assert_allclose(joint.predicted_covs[0, 0, 0], P_pred, rtol=1e-14)

    # Information form: joint adds a^T R^-1 a; independent adds sum_k a_k^2 / R_kk.
    var_joint = 1.0 / (1.0 / P_pred + loadings @ np.linalg.solve(R, loadings))
    var_indep = 1.0 / (1.0 / P_pred + np.sum(loadings**2 / np.diag(R)))
    np.testing.assert_allclose(joint.drift_var[0], var_joint, rtol=1e-13)
    np.testing.assert_allclose(indep.drift_var[0], var_indep, rtol=1e-13)

    # Correlated features carry less information than independent ones would.
    assert float(joint.drift_var[0]) > float(indep.drift_var[0])
    # and not marginally: at rho >= 0.6 the honest variance is > 20% wider (1.4x at 0.6).
    assert float(joint.drift_var[0]) > 1.2 * float(indep.drift_var[0])


@pytest.mark.parametrize("m", [2, 5])
def test_vector_update_equicorrelated_closed_form(m):
    # m equal features (loading 1, noise s^2, correlation rho): 1^T R^-1 1 = m / (s^2 (1 +
    # (m - 1) rho)), so the joint update is worth 1 + (m - 1) rho times fewer independent
    # features and its variance grows with rho; the independent one ignores rho.
    s2, P0, dt = 1.7, 1.0, 0.5
    dynamics = dj.OU(0.0, 0.6)
    P_pred = P0 + 0.36 * dt
    z = np.linspace(-0.5, 0.5, m)[None]
    var_joint, var_indep = [], []
    for rho in (0.0, 0.6, 0.7, 0.8):
        R = correlated_cov(np.full(m, np.sqrt(s2)), rho)
        for update, out in (("joint", var_joint), ("independent", var_indep)):
            model = dj.KalmanModel(dynamics, dj.Observation(np.ones(m), R, update), 0.0, P0)
            out.append(float(dj.filter(model, z, dt).drift_var[0]))
        expected = 1.0 / (1.0 / P_pred + m / (s2 * (1.0 + (m - 1) * rho)))
        np.testing.assert_allclose(var_joint[-1], expected, rtol=1e-13)
    np.testing.assert_allclose(var_indep, 1.0 / (1.0 / P_pred + m / s2), rtol=1e-13)
    assert var_joint[0] == pytest.approx(var_indep[0], rel=1e-13)  # rho = 0: the same
    assert np.all(np.diff(var_joint) > 0)


def test_independent_update_equals_chained_scalar_updates():
    # m sequential scalar updates, each with R_kk, done by hand.
    loadings = np.array([1.0, -0.6, 1.4])
    R = correlated_cov([0.8, 1.1, 0.6], 0.5)
    z = np.array([0.3, -0.4, 1.1])
    P0, dt, theta, sigma = 1.5, 0.3, 0.4, 0.7
    res = dj.filter(
        dj.KalmanModel(dj.OU(theta, sigma), dj.Observation(loadings, R, "independent"), 0.2, P0),
        z[None],
        dt,
    )
    mean = np.exp(-theta * dt) * 0.2
    var = np.exp(-2 * theta * dt) * P0 + sigma**2 * dt
    ll = 0.0
    for k in range(3):
        s = loadings[k] ** 2 * var + R[k, k]
        innov = z[k] - loadings[k] * mean
        ll += -0.5 * (np.log(2 * np.pi * s) + innov**2 / s)
        gain = var * loadings[k] / s
        mean, var = mean + gain * innov, (1 - gain * loadings[k]) * var
    np.testing.assert_allclose(res.drift[0], mean, rtol=1e-13)
    np.testing.assert_allclose(res.drift_var[0], var, rtol=1e-13)
    np.testing.assert_allclose(res.log_likelihood, ll, rtol=1e-13)


# --- missing data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dynamics, update",
    [(dj.OU(0.3, 1.1), "joint"), (dj.OUAccel(0.5, 0.7, 0.9, 0.4), "independent")],
    ids=["OU-joint", "OUAccel-independent"],
)
def test_all_nan_step_is_a_pure_prediction(dynamics, update):
    rng = np.random.default_rng(8)
    T, m, k = 30, 3, 11
    R = correlated_cov([0.9, 1.2, 0.7], 0.6)
    model = dj.KalmanModel(dynamics, dj.Observation([1.0, 0.8, 1.3], R, update), 0.0, 1.0)
    dts = rng.uniform(0.1, 0.6, size=T)
    zs = _series(rng, T, m)
    zs[k] = np.nan
    res = dj.filter(model, zs, dts)

    # Exact: with nothing observed the gain is exactly 0 (masked rows), so the update adds
    # exact zeros and multiplies by an exact identity.
    assert float(res.log_likelihoods[k]) == 0.0
    np.testing.assert_array_equal(res.means[k], res.predicted_means[k])
    np.testing.assert_array_equal(res.covs[k], res.predicted_covs[k])
    assert np.all(np.isfinite(np.asarray(res.means)))
    assert np.isfinite(float(res.log_likelihood))

    # Dropping the update: filter up to k-1, predict by hand over dt_k, restart from there.
    head = dj.filter(model, zs[:k], dts[:k])
    F, Q = (np.asarray(a) for a in dynamics.transition(dts[k]))
    mean_k = F @ np.asarray(head.means[-1])
    cov_k = F @ np.asarray(head.covs[-1]) @ F.T + Q
    np.testing.assert_allclose(res.means[k], mean_k, rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.covs[k], cov_k, rtol=0, atol=1e-13)
    tail = dj.filter(
        dj.KalmanModel(dynamics, model.observation, mean_k, cov_k), zs[k + 1 :], dts[k + 1 :]
    )
    np.testing.assert_allclose(res.means[k + 1 :], tail.means, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.covs[k + 1 :], tail.covs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        res.log_likelihood, head.log_likelihood + tail.log_likelihood, rtol=0, atol=1e-12
    )


def test_nan_step_equals_removing_it_and_merging_dt():
    # With the exact discretisation two predictions compose into one over dt_k + dt_{k+1}
    # (test_dynamics.py::test_exact_is_a_semigroup), so a series with step k missing
    # equals the series without step k.
    rng = np.random.default_rng(9)
    T, k = 25, 7
    model = dj.KalmanModel(dj.OU(0.3, 1.1, "exact"), dj.Observation.scalar(0.8), 0.3, 1.2)
    dts = rng.uniform(0.1, 0.6, size=T)
    zs = rng.normal(size=T)
    zs[k] = np.nan
    res = dj.filter(model, zs, dts)
    keep = np.arange(T) != k
    dts_merged = dts.copy()
    dts_merged[k + 1] += dts[k]
    dropped = dj.filter(model, zs[keep], dts_merged[keep])
    np.testing.assert_allclose(res.log_likelihood, dropped.log_likelihood, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.means[keep], dropped.means, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.covs[keep], dropped.covs, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "dynamics", [dj.OU(0.4, 0.9), dj.OUAccel(0.4, 0.9, 0.7, 0.3)], ids=["OU", "OUAccel"]
)
@pytest.mark.parametrize("update", ["joint", "independent"])
@pytest.mark.parametrize("observed", [[0, 2], [1, 2, 3]])
def test_partial_nan_equals_update_on_observed_subvector(dynamics, update, observed):
    rng = np.random.default_rng(21)
    T, m, k = 12, 4, 6
    loadings = np.array([1.0, 0.6, -0.9, 1.4])
    R = np.array(
        [[1.0, 0.6, 0.3, 0.2], [0.6, 1.5, 0.5, -0.1], [0.3, 0.5, 0.8, 0.2], [0.2, -0.1, 0.2, 2.0]]
    )
    dts = rng.uniform(0.1, 0.5, size=T)
    zs = _series(rng, T, m)
    missing = [i for i in range(m) if i not in observed]
    zs[k, missing] = np.nan
    model = dj.KalmanModel(dynamics, dj.Observation(loadings, R, update), 0.0, 1.0)
    res = dj.filter(model, zs, dts)

    # Step k alone, from the posterior at k-1, with only the observed sub-model.
    sub_obs = dj.Observation(loadings[observed], R[np.ix_(observed, observed)], update)
    sub = dj.KalmanModel(dynamics, sub_obs, res.means[k - 1], res.covs[k - 1])
    step = dj.filter(sub, zs[k : k + 1, observed], dts[k])
    np.testing.assert_allclose(res.means[k], step.means[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.covs[k], step.covs[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(res.log_likelihoods[k], step.log_likelihood, rtol=0, atol=1e-13)
    # The missing components still get a (NaN) innovation; the observed ones are real.
    assert np.all(np.isnan(np.asarray(res.innovations[k, missing])))
    np.testing.assert_allclose(
        res.innovations[k, observed], step.innovations[0], rtol=0, atol=1e-13
    )


def test_partial_nan_log_likelihood_is_the_marginal_density():
    # log p(z_obs) under N(H_o m, H_o P H_o^T + R_oo), computed directly.
    loadings = np.array([1.0, 0.5, 1.5])
    R = correlated_cov([1.0, 0.7, 1.3], 0.7)
    P0, dt = 0.9, 0.4
    model = dj.KalmanModel(dj.OU(0.0, 1.0), dj.Observation(loadings, R), 0.25, P0)
    z = np.array([[0.7, np.nan, -0.3]])
    res = dj.filter(model, z, dt)
    o = [0, 2]
    P = P0 + dt
    S = np.outer(loadings[o], loadings[o]) * P + R[np.ix_(o, o)]
    r = z[0, o] - loadings[o] * 0.25
    expected = -0.5 * (2 * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + r @ np.linalg.solve(S, r))
    np.testing.assert_allclose(res.log_likelihood, expected, rtol=1e-13)


def test_nan_is_missing_under_jit_and_grad():
    zs = np.array([0.5, np.nan, 1.0, np.nan, -0.2])

    def loglik(theta):
        model = dj.KalmanModel(dj.OU(theta, 0.8), dj.Observation.scalar(1.0), 0.0, 1.0)
        return dj.filter(model, zs, 0.3).log_likelihood

    value, grad = jax.jit(jax.value_and_grad(loglik))(0.5)
    assert np.isfinite(float(value)) and np.isfinite(float(grad))
    observed = dj.filter(
        dj.KalmanModel(dj.OU(0.5, 0.8), dj.Observation.scalar(1.0), 0.0, 1.0), zs, 0.3
    )
    np.testing.assert_allclose(value, observed.log_likelihood, rtol=1e-14)
    assert float(jnp.sum(observed.log_likelihoods == 0.0)) == 2
