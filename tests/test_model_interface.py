"""The drift-model interface (issue 10, item 1): ``dj.AbstractDriftModel``.

``KalmanModel`` and ``IMMModel`` implement it; a Kalman model is the one-regime case
(regime probabilities ``[1.0]``, no crisis regime: ``crisis_index == -1``, ``P(Crisis) =
0``), and its filter result and streaming estimator have the IMM's interface. A third
model class that implements the interface goes through the filter, the losses and the
simulator, and the checks name the abstract base."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj

OBS = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]])
KALMAN = dj.KalmanModel(dj.OUAccel(0.3, 0.9, 0.5, 0.4), OBS, 0.1, 1.5)
IMM = dj.seed_imm(OBS)
ZS = np.random.default_rng(2).normal(size=(12, 2))
ZS[3, 0] = np.nan


def test_both_models_implement_the_interface():
    for model in (KALMAN, IMM):
        assert isinstance(model, dj.AbstractDriftModel)
        M = model.num_regimes
        assert len(model.regime_names) == M == len(model.regime_dynamics)
        assert model.transition_matrix().shape == (M, M)
        assert model.initial_regime_probs.shape == (M,)
        Fs, Qs = model.transitions(0.5)
        assert len(Fs) == len(Qs) == M
        assert all(F.shape == (model.state_dim, model.state_dim) for F in Fs)
        Ft, _ = model.stacked_transitions(jnp.full((3,), 0.5))
        np.testing.assert_array_equal(Ft[0][1], Fs[0])
        assert model.num_features == 2 and model.dtype == jnp.float64
        probs = model.state_regime_probs(model.initial_state())
        np.testing.assert_allclose(probs, model.initial_regime_probs, rtol=1e-15)
    assert KALMAN.kind == "kalman" and IMM.kind == "imm"
    assert (IMM.num_regimes, IMM.crisis_index, IMM.state_dim) == (3, 2, 1)
    assert IMM.regime_names == ("Quiet", "Trending", "Crisis")


def test_kalman_is_the_one_regime_case():
    assert KALMAN.num_regimes == 1 and KALMAN.regime_names == ("Kalman",)
    assert KALMAN.crisis_index == -1  # as dj.Paths.crisis_index: no crisis regime
    np.testing.assert_array_equal(KALMAN.transition_matrix(), [[1.0]])
    np.testing.assert_array_equal(KALMAN.initial_regime_probs, [1.0])
    (F,), (Q,) = KALMAN.transitions(0.5)
    F0, Q0 = KALMAN.dynamics.transition(0.5)
    np.testing.assert_array_equal(F, F0)
    np.testing.assert_array_equal(Q, Q0)
    assert KALMAN.initial_prior_fields() == ("init_mean", "init_cov")
    assert IMM.initial_prior_fields() == ("init_probs", "init_mean", "init_cov")


def test_results_have_one_interface():
    kal, imm = dj.filter(KALMAN, ZS, 0.5), dj.filter(IMM, ZS, 0.5)
    for res, model in ((kal, KALMAN), (imm, IMM)):
        assert isinstance(res, dj.AbstractFilterResult)
        assert res.regime_probs.shape == (12, model.num_regimes)
        assert res.crisis_index == model.crisis_index
    # The single model: probability 1, P(Crisis) = 0, sigma_effective = sigma.
    np.testing.assert_array_equal(kal.regime_probs, np.ones((12, 1)))
    np.testing.assert_array_equal(kal.predicted_regime_probs, np.ones((12, 1)))
    np.testing.assert_array_equal(kal.p_crisis, np.zeros(12))
    np.testing.assert_array_equal(
        kal.sigma_effective(10.0, crisis_amplifier=2.0), np.full(12, 10.0)
    )
    np.testing.assert_array_equal(imm.p_crisis, imm.regime_probs[:, 2])
    np.testing.assert_allclose(imm.sigma_effective(10.0, 2.0), 10.0 * (1 + 2 * imm.p_crisis))
    # A batch of results keeps its leading axis.
    batch = jax.vmap(lambda z: dj.filter(KALMAN, z, 0.5))(np.stack([ZS, ZS]))
    assert batch.regime_probs.shape == (2, 12, 1) and batch.p_crisis.shape == (2, 12)


def test_kalman_estimator_has_the_imm_estimators_interface():
    est = dj.KalmanDriftEstimator(KALMAN)
    res = dj.filter(KALMAN, ZS, 0.5)
    for t in range(3):
        est = est.update_observation(ZS[t], 0.5)
        np.testing.assert_array_equal(est.regime_probabilities(), [1.0])
        assert float(est.p_crisis()) == 0.0 and not bool(est.is_crisis())
        assert not bool(est.is_crisis(threshold=0.0))
        assert float(est.sigma_effective(10.0)) == 10.0
        assert float(est.sigma_effective(10.0, crisis_amplifier=5.0)) == 10.0
        np.testing.assert_allclose(est.drift_rate_per_sec(), res.drift[t], rtol=1e-12)
        np.testing.assert_allclose(est.drift_variance(), res.drift_var[t], rtol=1e-12)
    imm = dj.IMMDriftEstimator(IMM).update_observation(ZS[0], 0.5)
    for name in ("regime_probabilities", "p_crisis", "is_crisis", "sigma_effective"):
        assert callable(getattr(est, name)) and callable(getattr(imm, name))
    assert imm.regime_probabilities().shape == (3,)


def test_the_abstract_base_cannot_be_instantiated_and_is_named_in_errors():
    with pytest.raises(TypeError):
        dj.AbstractDriftModel()
    for run in (
        lambda: dj.filter("imm", ZS, 0.5),
        lambda: dj.feature_nll(dj.OU(0.1, 1.0), ZS, 0.5),
        lambda: dj.simulate(None, jax.random.key(0), 1, 3, 0.5),
    ):
        with pytest.raises((ValueError, TypeError), match=r"dj\.AbstractDriftModel"):
            run()


class _Toy(dj.AbstractDriftModel):
    """A third model kind for the interface: a Kalman model seen through a wrapper, with a
    regime name and a default adjoint of its own (the plain scan)."""

    inner: dj.KalmanModel
    kind: ClassVar[str] = "toy"

    @property
    def observation(self):
        return self.inner.observation

    @property
    def init_mean(self):
        return self.inner.init_mean

    @property
    def init_cov(self):
        return self.inner.init_cov

    @property
    def regime_names(self):
        return ("toy",)

    @property
    def crisis_index(self):
        return -1

    @property
    def state_dim(self):
        return self.inner.state_dim

    @property
    def regime_dynamics(self):
        return (self.inner.dynamics,)

    def transition_matrix(self, dt=None):
        return jnp.ones((1, 1), self.dtype)

    @property
    def initial_regime_probs(self):
        return jnp.ones((1,), self.dtype)

    def default_adjoint(self):
        return dj.DirectAdjoint()

    def filter_from(self, state, zs, dt, adjoint):
        return self.inner.filter_from(state, zs, dt, adjoint)

    def initial_state(self):
        return self.inner.initial_state()

    def cycle(self, state, z, dt, observation=None):
        return self.inner.cycle(state, z, dt, observation)

    def state_moments(self, state):
        return self.inner.state_moments(state)

    def state_regime_probs(self, state):
        return self.inner.state_regime_probs(state)


def test_a_third_model_kind_plugs_in():
    toy = _Toy(KALMAN)
    ref = dj.filter(KALMAN, ZS, 0.5, method=dj.Sequential(adjoint=dj.DirectAdjoint()))
    res = dj.filter(toy, ZS, 0.5)  # its own default adjoint
    np.testing.assert_array_equal(res.drift, ref.drift)
    assert float(dj.feature_nll(toy, ZS, 0.5)) == -float(ref.log_likelihood)
    # Forward mode: its default adjoint has it.
    _, t = jax.jvp(
        lambda m: dj.feature_nll(m, ZS, 0.5), (toy,), (jax.tree.map(jnp.ones_like, toy),)
    )
    assert np.isfinite(t)
    paths = dj.simulate(toy, jax.random.key(1), n_paths=2, n_steps=5, dt=0.5)
    assert paths.regime_names == ("toy",) and paths.crisis_index == -1
    same = dj.simulate(KALMAN, jax.random.key(1), n_paths=2, n_steps=5, dt=0.5)
    np.testing.assert_array_equal(paths.drift, same.drift)
    # What it does not provide is a clear error naming it.
    with pytest.raises(ValueError, match=r"dj\.Associative\(\).*_Toy"):
        dj.filter(toy, ZS, 0.5, method=dj.Associative())
    with pytest.raises(ValueError, match=r"kind 'toy'"):
        dj.config_to_toml(toy)


def test_an_incomplete_model_kind_is_abstract():
    class Half(dj.AbstractDriftModel):
        inner: dj.KalmanModel
        kind: ClassVar[str] = "half"

    with pytest.raises(TypeError):
        Half(KALMAN)
