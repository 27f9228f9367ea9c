"""Bad input gets a clear error that names the argument, its value and what is allowed;
one test per case. NaN in the observations is missing data, never an error."""

import re

import equinox as eqx
import jax
import numpy as np
import pytest
from jaxtyping import TypeCheckError

import drift_jax as dj


def _model(m=1, dynamics=None):
    dynamics = dj.OU(0.2, 1.0) if dynamics is None else dynamics
    return dj.KalmanModel(dynamics, dj.Observation(np.ones(m), np.eye(m)), 0.0, 1.0)


# --- dynamics -------------------------------------------------------------------------------


def test_negative_theta():
    with pytest.raises(ValueError, match=r"`theta` must be finite and >= 0; got theta=-0\.5"):
        dj.OU(-0.5, 1.0)


def test_nan_theta():
    with pytest.raises(ValueError, match=r"`theta` must be finite and >= 0; got theta=nan"):
        dj.OU(np.nan, 1.0)


def test_infinite_theta():
    with pytest.raises(ValueError, match=r"`theta` must be finite and >= 0; got theta=inf"):
        dj.OU(np.inf, 1.0)


def test_negative_sigma():
    with pytest.raises(ValueError, match=r"`sigma` must be finite and >= 0; got sigma=-1\.0"):
        dj.OU(0.1, -1.0)


def test_nonfinite_sigma():
    with pytest.raises(ValueError, match=r"`sigma` must be finite and >= 0; got sigma=inf"):
        dj.OU(0.1, np.inf)


def test_negative_theta_accel():
    with pytest.raises(
        ValueError, match=r"`theta_accel` must be finite and >= 0; got theta_accel=-0\.3"
    ):
        dj.OUAccel(0.1, 1.0, -0.3, 0.5)


def test_nonfinite_sigma_accel():
    with pytest.raises(
        ValueError, match=r"`sigma_accel` must be finite and >= 0; got sigma_accel=nan"
    ):
        dj.OUAccel(0.1, 1.0, 0.3, np.nan)


# Shape errors: the suite runs with jaxtyping's import hook, whose shape annotations reject
# the argument (naming it) before the library's own ValueError would; without the hook
# (production) the ValueError is what a user sees. Either names the argument.
SHAPE_ERRORS = (ValueError, TypeCheckError)


def test_non_scalar_theta():
    with pytest.raises(
        SHAPE_ERRORS, match=r"`theta` must be a scalar, got an array of shape|parameter 'theta'"
    ):
        dj.OU(np.array([0.1, 0.2]), 1.0)


def test_unknown_discretisation():
    with pytest.raises(
        ValueError,
        match=re.escape("`discretisation` must be one of ('euler', 'exact'), got 'eular'"),
    ):
        dj.OU(0.1, 1.0, discretisation="eular")


def test_unknown_discretisation_extended():
    with pytest.raises(
        ValueError,
        match=re.escape("`discretisation` must be one of ('euler', 'exact'), got 'matrix'"),
    ):
        dj.OUAccel(0.1, 1.0, 0.2, 0.3, discretisation="matrix")


# --- observation ----------------------------------------------------------------------------


def test_nonfinite_noise_variance():
    with pytest.raises(ValueError, match=r"`cov` must be finite; got cov=\[\[1\.0, nan\]"):
        dj.Observation([1.0, 1.0], [[1.0, np.nan], [np.nan, 1.0]])


def test_negative_noise_variance():
    with pytest.raises(
        ValueError, match=r"`cov` must be positive definite .*got cov=\[\[-2\.0\]\]"
    ):
        dj.Observation.scalar(-2.0)


def test_covariance_not_symmetric():
    with pytest.raises(
        ValueError, match=r"`cov` must be symmetric .*got cov=\[\[1\.0, 0\.5\], \[0\.2, 1\.0\]\]"
    ):
        dj.Observation([1.0, 1.0], [[1.0, 0.5], [0.2, 1.0]])


def test_covariance_not_positive_definite():
    # Symmetric, but the correlation exceeds 1: one negative eigenvalue (-0.5).
    with pytest.raises(
        ValueError,
        match=r"`cov` must be positive definite \(all eigenvalues > 0\); "
        r"got cov=\[\[1\.0, 1\.5\], \[1\.5, 1\.0\]\] with eigenvalues \[-0\.(5|49999)",
    ):
        dj.Observation([1.0, 1.0], [[1.0, 1.5], [1.5, 1.0]])


def test_loadings_and_covariance_sizes_differ():
    with pytest.raises(
        ValueError,
        match=r"`cov` must have shape \[m, m\] = \[3, 3\] to match `loadings` of size 3, "
        r"got shape \(2, 2\)",
    ):
        dj.Observation([1.0, 0.5, 0.2], np.eye(2))


def test_nonfinite_loadings():
    with pytest.raises(ValueError, match=r"`loadings` must be finite; got loadings="):
        dj.Observation([1.0, np.inf], np.eye(2))


def test_unknown_update_mode():
    with pytest.raises(
        ValueError,
        match=re.escape("`update` must be one of ('joint', 'independent'), got 'jiont'"),
    ):
        dj.Observation([1.0, 1.0], np.eye(2), update="jiont")


# --- model ----------------------------------------------------------------------------------


def test_nonfinite_initial_variance():
    with pytest.raises(ValueError, match=r"`init_cov` must be finite; got init_cov=\[\[inf\]\]"):
        dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(1.0), 0.0, np.inf)


def test_initial_covariance_not_positive_definite():
    with pytest.raises(ValueError, match=r"`init_cov` must be positive definite"):
        dj.KalmanModel(
            dj.OUAccel(0.1, 1.0, 0.2, 0.3), dj.Observation.scalar(1.0), 0.0, [1.0, -1.0]
        )


def test_initial_mean_wrong_shape():
    with pytest.raises(ValueError, match=r"`init_mean` must be a scalar or have shape \[2\]"):
        dj.KalmanModel(dj.OUAccel(0.1, 1.0, 0.2, 0.3), dj.Observation.scalar(1.0), [0.0, 0.0, 0.0])


# --- the series -----------------------------------------------------------------------------


def test_dt_zero_is_an_update_without_prediction():
    # equal timestamps (issue 15): dt = 0 is allowed; tests/test_tick_feeds.py checks it
    # equals the stacked vector update. A negative dt stays an error.
    res = dj.filter(_model(), np.ones(4), 0.0)
    assert np.all(np.isfinite(np.asarray(res.drift))) and float(res.log_likelihood) < 0
    with pytest.raises(
        ValueError,
        match=r"`dt` must be finite and >= 0 "
        r"\(seconds; .*\); got dt=-0\.5",
    ):
        dj.filter(_model(), np.ones(4), -0.5)


def test_dt_negative_in_series():
    with pytest.raises(
        ValueError,
        match=r"`dt` must be finite and >= 0 "
        r"\(seconds; .*\); got dt=.*\(bad: \[-0\.1\]\)",
    ):
        dj.filter(_model(), np.ones(4), np.array([0.1, 0.2, -0.1, 0.3]))


def test_dt_nan():
    with pytest.raises(
        ValueError,
        match=r"`dt` must be finite and >= 0 "
        r"\(seconds; .*\); got dt=nan",
    ):
        dj.filter(_model(), np.ones(4), np.nan)


def test_dt_infinite():
    with pytest.raises(
        ValueError,
        match=r"`dt` must be finite and >= 0 "
        r"\(seconds; .*\); got dt=.*\(bad: \[inf\]\)",
    ):
        dj.filter(_model(), np.ones(3), np.array([0.1, np.inf, 0.2]))


def test_dt_wrong_length():
    with pytest.raises(
        SHAPE_ERRORS, match=r"`dt` must be a scalar or have shape \[T\] = \[4\]|parameter 'dt'"
    ):
        dj.filter(_model(), np.ones(4), np.full(3, 0.1))


def test_observations_plus_inf():
    zs = np.array([0.1, np.inf, 0.3])
    with pytest.raises(
        ValueError, match=r"`zs` must not contain \+-inf .*found inf at indices \[\[1, 0\]\]"
    ):
        dj.filter(_model(), zs, 0.1)


def test_observations_minus_inf():
    zs = np.array([[0.1, 0.2], [0.3, -np.inf]])
    with pytest.raises(
        ValueError, match=r"`zs` must not contain \+-inf .*found inf at indices \[\[1, 1\]\]"
    ):
        dj.filter(_model(m=2), zs, 0.1)


def test_observations_of_wrong_width():
    with pytest.raises(
        ValueError,
        match=r"`zs` must have shape \[T\] or \[T, m\] with m=2 features .*got shape \(5, 3\)",
    ):
        dj.filter(_model(m=2), np.ones((5, 3)), 0.1)


def test_one_feature_series_for_a_multi_feature_model():
    with pytest.raises(ValueError, match=r"`zs` has shape \(5,\) .* m=3 features"):
        dj.filter(_model(m=3), np.ones(5), 0.1)


def test_empty_series():
    with pytest.raises(ValueError, match=r"`zs` must hold at least one time step, got T=0"):
        dj.filter(_model(), np.ones(0), 0.1)


def test_unknown_filter_method():
    with pytest.raises(
        ValueError, match=r"`method` must be 'sequential', 'parallel' or 'chunked', got 'fast'"
    ):
        dj.filter(_model(), np.ones(3), 0.1, method="fast")


def test_model_of_wrong_type():
    with pytest.raises(ValueError, match=r"`model` must be a dj.KalmanModel or dj.IMMModel"):
        dj.filter(dj.OU(0.1, 1.0), np.ones(3), 0.1)


# --- traced values: eqx.error_if ----------------------------------------------------------


def _traced_loglik(theta, dt, zs):
    model = dj.KalmanModel(dj.OU(theta, 1.0), dj.Observation.scalar(1.0), 0.0, 1.0)
    return dj.filter(model, zs, dt).log_likelihood


def test_traced_negative_theta_under_jit():
    with pytest.raises(RuntimeError, match=r"`theta` must be finite and >= 0"):
        jax.jit(_traced_loglik)(-0.1, 0.1, np.ones(3)).block_until_ready()


def test_traced_negative_dt_under_filter_jit():
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`dt` must be finite and >= 0"):
        eqx.filter_jit(_traced_loglik)(0.1, np.array([0.1, -0.1, 0.1]), np.ones(3))


def test_traced_infinite_observation_under_jit():
    with pytest.raises(RuntimeError, match=r"`zs` must not contain \+-inf"):
        jax.jit(_traced_loglik)(0.1, 0.1, np.array([0.0, -np.inf, 1.0])).block_until_ready()


def test_traced_covariance_not_positive_definite_under_jit():
    def loglik(R):
        model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation([1.0, 1.0], R), 0.0, 1.0)
        return dj.filter(model, np.ones((3, 2)), 0.1).log_likelihood

    with pytest.raises(RuntimeError, match=r"`cov` must be symmetric positive definite"):
        jax.jit(loglik)(np.array([[1.0, 1.5], [1.5, 1.0]])).block_until_ready()


def test_traced_valid_input_runs_under_jit():
    # The checks cost nothing when the values are fine: same number as eager.
    value = jax.jit(_traced_loglik)(0.1, 0.1, np.ones(3))
    np.testing.assert_allclose(value, _traced_loglik(0.1, 0.1, np.ones(3)), rtol=1e-14)


# --- NaN is missing data ----------------------------------------------------------------


def test_nan_in_observations_is_not_an_error():
    zs = np.array([[0.3, np.nan], [np.nan, np.nan], [0.1, -0.4]])
    res = dj.filter(_model(m=2), zs, 0.2)
    assert np.isfinite(float(res.log_likelihood))
    assert np.all(np.isfinite(np.asarray(res.means)))
    assert np.all(np.isfinite(np.asarray(res.covs)))
    assert float(res.log_likelihoods[1]) == 0.0
