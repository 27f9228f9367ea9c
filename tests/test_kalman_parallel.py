"""The parallel-in-time filter (associative scan) equals the sequential one in float64."""

import numpy as np
import pytest

import drift_jax as dj

from .conftest import correlated_cov

T = 40

# Each case compiles both filters (the associative scan is slow to compile), so the cases
# are chosen to cover scalar / extended, joint / independent, scalar / per-step dt between
# them; every case has partial and whole-row NaNs.
CASES = [
    # dynamics, loadings, update, per-step dt
    (dj.OU(0.3, 1.1), [1.0], "joint", True),
    (dj.OUAccel(0.0, 0.8, 0.5, 0.4), [1.0, 0.6], "independent", False),
    (dj.OUAccel(0.2, 0.6, 1.1, 0.3, discretisation="exact"), [1.0, -0.5, 1.2], "joint", True),
]
IDS = ["OU-euler-m1-joint", "OUAccel-euler-m2-indep-const-dt", "OUAccel-exact-m3-joint"]


def _case(dynamics, loadings, update, irregular, seed=0):
    rng = np.random.default_rng(seed)
    m = len(loadings)
    R = correlated_cov(np.linspace(0.7, 1.4, m), 0.6)
    model = dj.KalmanModel(
        dynamics,
        dj.Observation(loadings, R, update),
        0.2,
        np.diag([1.5, 0.4][: dynamics.state_dim]),
    )
    zs = rng.normal(scale=2.0, size=(T, m))
    zs[rng.random((T, m)) < 0.2] = np.nan  # partial rows
    zs[[5, 6, 17]] = np.nan  # whole rows: pure predictions
    dt = rng.uniform(0.05, 1.5, size=T) if irregular else 0.35
    return model, (zs if m > 1 else zs[:, 0]), dt


@pytest.mark.parametrize("dynamics, loadings, update, irregular", CASES, ids=IDS)
def test_parallel_equals_sequential(dynamics, loadings, update, irregular):
    model, zs, dt = _case(dynamics, loadings, update, irregular)
    seq = dj.filter(model, zs, dt)
    par = dj.filter(model, zs, dt, method="parallel")
    assert abs(float(par.log_likelihood) - float(seq.log_likelihood)) < 1e-9
    np.testing.assert_allclose(par.log_likelihoods, seq.log_likelihoods, rtol=0, atol=1e-10)
    np.testing.assert_allclose(par.means, seq.means, rtol=0, atol=1e-9)
    np.testing.assert_allclose(par.covs, seq.covs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(par.predicted_means, seq.predicted_means, rtol=0, atol=1e-9)
    np.testing.assert_allclose(par.predicted_covs, seq.predicted_covs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(par.innovations, seq.innovations, rtol=0, atol=1e-9)
    # The missing steps add exactly nothing in both.
    assert np.all(np.asarray(par.log_likelihoods)[[5, 6, 17]] == 0.0)


def test_parallel_single_step():
    model, zs, dt = _case(*CASES[0])
    one_seq = dj.filter(model, zs[:1], dt[:1])
    one_par = dj.filter(model, zs[:1], dt[:1], method="parallel")
    np.testing.assert_allclose(one_par.log_likelihood, one_seq.log_likelihood, rtol=1e-14)
    np.testing.assert_allclose(one_par.means, one_seq.means, rtol=1e-14)
    np.testing.assert_allclose(one_par.covs, one_seq.covs, rtol=1e-14)


def test_parallel_equals_sequential_on_a_long_series():
    rng = np.random.default_rng(2)
    T_long = 1000
    model = dj.KalmanModel(dj.OU(0.3, 1.1), dj.Observation.scalar(0.8), 0.2, 1.5)
    zs = rng.normal(scale=2.0, size=T_long)
    zs[rng.random(T_long) < 0.1] = np.nan
    dts = rng.uniform(0.05, 1.5, size=T_long)
    seq = dj.filter(model, zs, dts)
    par = dj.filter(model, zs, dts, method="parallel")
    assert abs(float(par.log_likelihood) - float(seq.log_likelihood)) < 1e-9
    np.testing.assert_allclose(par.means, seq.means, rtol=0, atol=1e-9)
    np.testing.assert_allclose(par.covs, seq.covs, rtol=0, atol=1e-9)
