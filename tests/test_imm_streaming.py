"""The streaming ``IMMDriftEstimator``: step by step it is ``dj.filter``; saved and restored
it continues bit for bit; its vector update is the filter with the equivalent observation
model; its risk outputs are the specification's formulas."""

import jax
import numpy as np
import pytest

import drift_jax as dj

from .conftest import correlated_cov

TOL = 1e-12


def _series(rng, T, m):
    drift = np.concatenate([np.zeros(T // 2), np.linspace(0.0, -12.0, T - T // 2)])
    zs = drift[:, None] + rng.normal(size=(T, m)) * 1.5
    zs[3] = np.nan  # nothing observed
    if m > 1:
        zs[5, 0] = np.nan  # partly observed
    return zs


@pytest.mark.parametrize("extended", [False, True], ids=["scalar", "extended"])
def test_streaming_equals_filter_step_by_step(extended):
    rng = np.random.default_rng(0)
    T, m = 16, 2
    obs = dj.Observation([1.0, 0.8], correlated_cov([1.0, 1.4], 0.7))
    imm = dj.seed_imm(obs, extended=extended)
    zs = _series(rng, T, m)
    dts = rng.uniform(0.1, 1.0, size=T)
    res = dj.filter(imm, zs, dts)
    cum_ll = np.cumsum(np.asarray(res.log_likelihoods))

    est = dj.IMMDriftEstimator(imm)
    np.testing.assert_allclose(est.regime_probabilities(), imm.init_probs, rtol=TOL)
    for t in range(T):
        est = est.update_observation(zs[t], dts[t])
        np.testing.assert_allclose(est.drift_rate_per_sec(), res.drift[t], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(est.drift_variance(), res.drift_var[t], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(
            est.regime_probabilities(), res.regime_probs[t], rtol=TOL, atol=TOL
        )
        np.testing.assert_allclose(est.model_drifts(), res.model_drifts[t], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(est.log_likelihood, cum_ll[t], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(est.p_crisis(), res.p_crisis[t], rtol=TOL, atol=TOL)
    assert int(est.num_updates) == T
    np.testing.assert_allclose(est.log_likelihood, res.log_likelihood, rtol=TOL)


def test_predict_is_an_update_with_nothing_observed():
    imm = dj.seed_imm(dj.Observation.scalar(2.0))
    est = dj.IMMDriftEstimator(imm).update_observation(-6.0, 0.5)
    pred, nan = est.predict(0.7), est.update_observation(np.nan, 0.7)
    # Exact: predict is update_observation with NaN (one compiled step, same inputs).
    np.testing.assert_array_equal(pred.state.log_probs, nan.state.log_probs)
    np.testing.assert_array_equal(pred.state.means, nan.state.means)
    assert float(pred.log_likelihood) == float(est.log_likelihood)
    Pi = np.asarray(imm.transition)
    np.testing.assert_allclose(
        pred.regime_probabilities(), np.asarray(est.regime_probabilities()) @ Pi, rtol=1e-14
    )


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_load_gives_a_bit_identical_continuation(tmp_path):
    rng = np.random.default_rng(1)
    T = 20
    zs = _series(rng, T, 1)[:, 0]
    dts = rng.uniform(0.1, 1.0, size=T)
    imm = dj.seed_imm(dj.Observation.scalar(2.5), extended=True)
    est = dj.IMMDriftEstimator(imm)
    for t in range(T // 2):
        est = est.update_observation(zs[t], dts[t])
    path = tmp_path / "imm.eqx"
    est.save(path)
    # Any model of the same structure gives the shape; the saved values replace its own.
    template = dj.seed_imm(dj.Observation.scalar(9.0), extended=True, init_mean=3.0)
    loaded = dj.IMMDriftEstimator.load(path, template)
    _leaves_equal(loaded, est)
    a, b = est, loaded
    for t in range(T // 2, T):
        a = a.update_observation(zs[t], dts[t])
        b = b.update_observation(zs[t], dts[t])
        assert float(a.drift_rate_per_sec()) == float(b.drift_rate_per_sec())
        assert float(a.drift_variance()) == float(b.drift_variance())
        assert np.array_equal(np.asarray(a.regime_probabilities()), b.regime_probabilities())
        assert float(a.log_likelihood) == float(b.log_likelihood)
    _leaves_equal(a, b)
    assert int(b.num_updates) == T


CORR = np.array(
    [[1.0, 0.8, 0.7, 0.6], [0.8, 1.0, 0.75, 0.65], [0.7, 0.75, 1.0, 0.7], [0.6, 0.65, 0.7, 1.0]]
)
R4 = CORR * np.outer([1.0, 1.2, 0.8, 1.5], [1.0, 1.2, 0.8, 1.5])
ALPHA = np.array([1.0, 0.9, 1.1, 0.8])


@pytest.mark.parametrize("update", ["joint", "independent"])
def test_update_vector_equals_filter_with_the_equivalent_observation(update):
    rng = np.random.default_rng(2)
    T = 12
    zs = _series(rng, T, 4) * ALPHA[None, :]
    dt = 0.5
    res = dj.filter(dj.seed_imm(dj.Observation(ALPHA, R4, update=update)), zs, dt)
    # The estimator's own observation model is a scalar one; update_vector replaces it.
    est = dj.IMMDriftEstimator(dj.seed_imm(dj.Observation.scalar(1.0)))
    for t in range(T):
        est = est.update_vector(zs[t], ALPHA, R4, dt, update=update)
        np.testing.assert_allclose(est.drift_rate_per_sec(), res.drift[t], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(est.drift_variance(), res.drift_var[t], rtol=TOL, atol=TOL)
        np.testing.assert_allclose(
            est.regime_probabilities(), res.regime_probs[t], rtol=TOL, atol=TOL
        )
    np.testing.assert_allclose(est.log_likelihood, res.log_likelihood, rtol=TOL)


def test_is_crisis_and_sigma_effective():
    imm = dj.seed_imm(dj.Observation.scalar(4.0))
    zs = [0.2, -0.5, 0.1, -9.0, -12.0, -14.0, -15.0, -14.5, -1.0, 0.5]
    res = dj.filter(imm, zs, 0.5)
    est = dj.IMMDriftEstimator(imm)
    seen = set()
    for t, z in enumerate(zs):
        est = est.update_observation(z, 0.5)
        p = float(est.regime_probabilities()[2])
        assert float(est.p_crisis()) == p
        assert bool(est.is_crisis()) == (p > 0.3)
        assert bool(est.is_crisis(threshold=0.9)) == (p > 0.9)
        seen.add(bool(est.is_crisis()))
        sig = 10.0 * (1.0 + 2.0 * p)
        np.testing.assert_allclose(est.sigma_effective(10.0), sig, rtol=1e-15)
        np.testing.assert_allclose(est.sigma_effective(10.0, 2.0), sig, rtol=1e-15)
        np.testing.assert_allclose(est.sigma_effective(10.0, 0.5), 10.0 * (1 + 0.5 * p))
        np.testing.assert_allclose(dj.sigma_effective(10.0, p, 2.0), sig, rtol=1e-15)
        np.testing.assert_allclose(res.sigma_effective(10.0, 2.0)[t], sig, rtol=1e-12)
    assert seen == {True, False}  # the series crosses the 0.3 alert both ways
    # The specification's example: crisis_amplifier 2 and P(Crisis) = 0.5 doubles sigma.
    assert float(dj.sigma_effective(10.0, 0.5, 2.0)) == 20.0
    np.testing.assert_array_equal(res.p_crisis, res.regime_probs[:, 2])


# --- bad input to the streaming interface ---------------------------------------------------


@pytest.fixture(scope="module")
def est():
    return dj.IMMDriftEstimator(dj.seed_imm(dj.Observation.scalar(1.0)))


def test_estimator_needs_an_imm_model():
    # A ValueError naming `model`; under the suite's runtime type checking
    # (--jaxtyping-packages) the annotation catches it first, as a TypeError naming it.
    kalman = dj.KalmanModel(dj.OU(0.1, 0.3), dj.Observation.scalar(1.0))
    with pytest.raises((ValueError, TypeError), match="model"):
        dj.IMMDriftEstimator(kalman)


def test_observation_of_the_wrong_size(est):
    with pytest.raises(ValueError, match="z"):
        est.update_observation([1.0, 2.0], 0.5)


def test_infinite_observation(est):
    with pytest.raises(ValueError, match="z"):
        est.update_observation(np.inf, 0.5)


def test_non_positive_dt(est):
    with pytest.raises(ValueError, match="dt"):
        est.update_observation(1.0, -0.5)


def test_r_mat_not_positive_definite(est):
    with pytest.raises(ValueError, match="r_mat"):
        est.update_vector([1.0, 2.0], [1.0, 1.0], [[1.0, 2.0], [2.0, 1.0]], 0.5)


def test_r_mat_wrong_shape(est):
    with pytest.raises(ValueError, match="r_mat"):
        est.update_vector([1.0, 2.0], [1.0, 1.0], np.eye(3), 0.5)


def test_unknown_update_mode(est):
    with pytest.raises(ValueError, match="update"):
        est.update_vector([1.0, 2.0], [1.0, 1.0], np.eye(2), 0.5, update="sequential")


def test_is_crisis_threshold_outside_unit_interval(est):
    with pytest.raises(ValueError, match="threshold"):
        est.is_crisis(threshold=1.5)
