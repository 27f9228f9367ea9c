"""Continuous-time regimes: dj.IMMModel(..., rates=Q) switches with expm(Q dt) per step.

Against the per-cycle model at dt = 1, in the filter, the streaming estimator, the
simulator (Poisson steps), the fit and its standard errors, the config file, the Monte
Carlo harness; and the errors that bad rates raise."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg as sl

import drift_jax as dj

RATES = np.array([[-0.05, 0.04, 0.01], [0.1, -0.2, 0.1], [0.02, 0.08, -0.1]])
R2 = np.array([[4.0, 1.5], [1.5, 3.0]])


def _pair(extended=False):
    obs = dj.Observation([1.0, 0.6], R2)
    dyn = dj.seed_imm(obs, extended=extended).dynamics
    names = dict(regime_names=dj.REGIME_NAMES, init_probs=[0.5, 0.3, 0.2])
    ct = dj.IMMModel(dyn, obs, rates=RATES, **names)
    pc = dj.IMMModel(dyn, obs, sl.expm(RATES), **names)
    return ct, pc


@pytest.mark.parametrize("extended", [False, True], ids=["[mu] scalar cycle", "[mu, mu_dot]"])
def test_rates_at_dt_one_equal_the_per_cycle_expm(extended):
    ct, pc = _pair(extended)
    np.testing.assert_allclose(ct.transition_matrix(1.0), sl.expm(RATES), rtol=0, atol=1e-15)
    assert ct.transition_depends_on_dt and not pc.transition_depends_on_dt
    assert ct.transition is None and pc.rates is None
    zs = np.random.default_rng(0).normal(-3.0, 3.0, (60, 2))
    zs[9] = np.nan
    a, b = dj.filter(ct, zs, 1.0), dj.filter(pc, zs, 1.0)
    assert abs(float(a.log_likelihood - b.log_likelihood)) < 1e-12
    np.testing.assert_allclose(a.regime_probs, b.regime_probs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.drift, b.drift, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.drift_var, b.drift_var, rtol=0, atol=1e-12)


def test_irregular_steps_use_each_steps_expm_in_the_filter_and_the_estimator():
    ct, _ = _pair()
    rng = np.random.default_rng(1)
    zs = rng.normal(-3.0, 3.0, (40, 2))
    zs[5, 1] = np.nan
    dts = rng.exponential(0.5, 40) + 0.01
    res = dj.filter(ct, zs, dts)
    # A per-cycle model with one Pi per step is the same filter: a per-step reference
    # built from the streaming estimator of per-cycle models, one Pi = expm(Q dt_k) each.
    est = dj.IMMDriftEstimator(ct)
    ref_ll = 0.0
    state = None
    for z, d in zip(zs, dts, strict=True):
        est = est.update_observation(z, d)
        step_model = dj.IMMModel(
            ct.dynamics, ct.observation, sl.expm(RATES * d), ct.init_probs,
            regime_names=dj.REGIME_NAMES,
        )  # fmt: skip
        ref = dj.IMMDriftEstimator(step_model, state=state).update_observation(z, d)
        state, ref_ll = ref.state, ref_ll + float(ref.log_likelihood)
    np.testing.assert_allclose(est.regime_probabilities(), res.regime_probs[-1], atol=1e-12)
    np.testing.assert_allclose(np.exp(state.log_probs), res.regime_probs[-1], atol=1e-12)
    assert abs(float(est.log_likelihood) - float(res.log_likelihood)) < 1e-10
    assert abs(ref_ll - float(res.log_likelihood)) < 1e-10
    # ... and not the per-cycle model that ignores the step lengths
    pc = dj.filter(_pair()[1], zs, dts)
    assert abs(float(pc.log_likelihood - res.log_likelihood)) > 0.1


def test_simulated_chain_under_poisson_steps_is_expm_of_each_step():
    """For every step k >= 1 of every path, the move s_{k-1} -> s_k has probability
    expm(Q dt_k)[s_{k-1}, s_k]. Per pair (i, j) the sum over steps leaving i of
    1{s_k = j} - P_k[i, j] has mean 0 and variance sum_k P_k (1 - P_k) (independent
    Bernoulli terms given the path): its z-score must be within 5; read with the mean step
    instead of each step's own, the same statistic is far off."""
    Q = 4.0 * RATES  # many switches
    ct = dj.IMMModel(dj.seed_imm().dynamics, dj.Observation.scalar(1.0), rates=Q)
    paths = dj.simulate(ct, jax.random.key(7), 400, 250, 0.5, sampling="poisson")
    s = np.asarray(paths.regimes)
    prev, nxt = s[:, :-1].ravel(), s[:, 1:].ravel()
    dts = np.asarray(paths.dt)[:, 1:].ravel()
    assert np.std(dts) > 0.4  # exponential gaps
    P = np.asarray(jax.vmap(ct.transition_matrix)(jnp.asarray(dts)))  # [K, 3, 3]
    P_mean = sl.expm(Q * dts.mean())

    def z_scores(probs):
        z = np.zeros((3, 3))
        for i in range(3):
            leaving = prev == i
            p = (
                probs[leaving, i]
                if probs.ndim == 3
                else np.broadcast_to(probs[i], (leaving.sum(), 3))
            )
            hits = nxt[leaving, None] == np.arange(3)[None, :]
            z[i] = (hits - p).sum(0) / np.sqrt((p * (1 - p)).sum(0))
        return z

    z = z_scores(P)
    print(f"largest |z| of the empirical transitions: {np.max(np.abs(z)):.2f}")
    assert np.max(np.abs(z)) < 5.0, z
    assert np.max(np.abs(z_scores(P_mean))) > 10.0
    # per-cycle transition counts still read the chain per step
    counts = dj.metrics.transition_counts(paths.regimes, 3)
    assert int(np.sum(counts)) == 400 * 249


def test_fit_recovers_rates_within_three_standard_errors():
    Q = np.array([[-0.3, 0.3], [0.6, -0.6]])
    obs = dj.Observation.scalar(1.0)
    members = (dj.OU(0.2, 0.3), dj.OU(0.05, 4.0))
    true = dj.IMMModel(members, obs, rates=Q, init_probs=[0.7, 0.3])
    paths = dj.simulate(true, jax.random.key(0), 1, 600, 0.5, sampling="poisson")  # ~90 switches
    zs, dts = paths.features[0], paths.dt[0]
    start = dj.IMMModel(members, obs, rates=3.0 * Q, init_probs=[0.7, 0.3])
    trainable = lambda p: p.model.rates
    fitted = dj.fit(start, zs, dts, trainable=trainable, steps=60, progress=False)
    assert bool(fitted.converged)
    se = dj.standard_errors(fitted, zs, dts, trainable=trainable)
    t = se.table
    assert list(t.index) == [
        "rates[0,1]",
        "rates[1,0]",
        "expected_duration[0]",
        "expected_duration[1]",
    ]
    est = t.loc[["rates[0,1]", "rates[1,0]"], "estimate"].to_numpy()
    err = t.loc[["rates[0,1]", "rates[1,0]"], "std_err"].to_numpy()
    z = (est - np.array([0.3, 0.6])) / err
    print(f"rates {est} +- {err}: z {z}")
    assert np.all(np.abs(z) < 3.0), z
    np.testing.assert_allclose(
        fitted.model.rates, [[-est[0], est[0]], [est[1], -est[1]]], rtol=1e-12
    )
    # durations -1/Q_jj, with the delta method's standard errors se(rate) / rate^2
    dur = t.loc[["expected_duration[0]", "expected_duration[1]"]]
    np.testing.assert_allclose(dur["estimate"], 1.0 / est, rtol=1e-12)
    np.testing.assert_allclose(dur["std_err"], err / est**2, rtol=1e-6)
    assert list(t["scale"]) == ["log"] * 4 and se.identified
    np.testing.assert_allclose(fitted.model.expected_durations(), 1.0 / est, rtol=1e-12)


def test_generator_constraint_free_coordinates():
    g = dj.Generator()
    Q = jnp.asarray([[-0.3, 0.3, 0.0], [0.1, -0.3, 0.2], [0.05, 0.05, -0.1]])
    raw, ref = g.to_free(Q, "rates", ".rates")
    assert raw.shape == (3, 2) and float(raw[0, 1]) == -np.inf  # a zero rate: structural
    back = g.from_free(raw, (3, 3), ref)
    np.testing.assert_allclose(back, Q, rtol=1e-15, atol=1e-17)
    assert float(back[0, 2]) == 0.0 and g.is_valid(back)
    np.testing.assert_allclose(
        np.sum(np.asarray(g.from_free(raw + 0.7, (3, 3), ref)), 1), 0.0, atol=1e-15
    )
    assert not g.is_valid([[-0.1, 0.2], [0.1, -0.1]]) and not g.is_valid(
        [[0.1, -0.1], [0.1, -0.1]]
    )
    ct, _ = _pair()
    free = dj.unconstrain(ct, lambda m: m.rates)
    assert free.rates.raw.shape == (3, 2)
    np.testing.assert_allclose(dj.constrain(free, ct).rates, ct.rates, rtol=1e-14, atol=1e-17)
    with pytest.raises(ValueError, match="is trainable but is not a generator"):
        g.to_free(jnp.asarray([[0.1, -0.1], [0.1, -0.1]]), "rates", ".rates")


def test_config_round_trip_of_a_rates_model():
    ct, _ = _pair(extended=True)
    text = dj.config_to_toml(ct, dj.RiskModel(10.0, 2.0))
    assert "\nrates = [\n" in text and "\ntransition =" not in text
    back = dj.config_from_toml(text).model
    assert jax.tree.structure(back) == jax.tree.structure(ct)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(ct), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit (repr of each float)
    both = text.replace(
        "\nrates = [",
        "\ntransition = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]\nrates = [",
    )
    with pytest.raises(
        dj.ConfigError, match="exactly one regime chain: `transition`.*it has both"
    ):
        dj.config_from_toml(both)
    bad = text.replace(repr(float(RATES[0, 1])), "-0.04", 1)
    with pytest.raises(dj.ConfigError, match=r"`rates` must be a generator \(rates per second\)"):
        dj.config_from_toml(bad)
    neither = re.sub(r"\nrates = \[\n(    \[.*\],\n)+\]", "", text)
    assert "rates" not in neither and "transition" not in neither
    with pytest.raises(dj.ConfigError, match="it has neither"):
        dj.config_from_toml(neither)


def test_rates_from_transition():
    Q = dj.rates_from_transition(dj.SEED_TRANSITION, 1.0)
    np.testing.assert_allclose(sl.expm(Q), dj.SEED_TRANSITION, rtol=0, atol=1e-12)
    assert np.all(Q[~np.eye(3, dtype=bool)] >= 0)
    assert np.max(np.abs(np.sum(Q, axis=1))) < 1e-16  # the diagonal is minus the row's sum
    Q10 = dj.rates_from_transition(dj.SEED_TRANSITION, 0.1)  # the same Pi read at 10 Hz
    np.testing.assert_allclose(Q10, 10.0 * Q, rtol=1e-12)
    model = dj.IMMModel(dj.seed_imm().dynamics, dj.Observation.scalar(1.0), rates=Q10)
    np.testing.assert_allclose(model.transition_matrix(0.1), dj.SEED_TRANSITION, atol=1e-12)
    # the expected durations: a cycle's geometric count, and -1/Q_jj, agree roughly
    per_cycle = dj.seed_imm().expected_durations(cycle_seconds=0.1)
    np.testing.assert_allclose(per_cycle, 0.1 / (1 - np.diag(dj.SEED_TRANSITION)), rtol=1e-12)
    assert np.all(np.abs(model.expected_durations() / per_cycle - 1) < 0.15)
    with pytest.raises(ValueError, match=r"no valid generator: it has the eigenvalue\(s\) -1"):
        dj.rates_from_transition([[0.0, 1.0], [1.0, 0.0]], 1.0)  # alternates every cycle
    with pytest.raises(ValueError, match=r"eigenvalue\(s\) 0 "):
        dj.rates_from_transition([[0.5, 0.5], [0.5, 0.5]], 1.0)
    cyclic = [[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.9]]  # 0 -> 1 -> 2 -> 0 only
    with pytest.raises(ValueError, match=r"negative off-diagonal rates \(Q\[0,2\] = -0.00616946"):
        dj.rates_from_transition(cyclic, 1.0)
    with pytest.raises(ValueError, match="`cycle_seconds` must be a number of seconds > 0"):
        dj.rates_from_transition(dj.SEED_TRANSITION, 0.0)
    with pytest.raises(ValueError, match="must be row-stochastic"):
        dj.rates_from_transition([[0.9, 0.2], [0.1, 0.9]], 1.0)


def test_bad_rates_are_clear_errors():
    dyn, obs = dj.seed_imm().dynamics, dj.Observation.scalar(1.0)
    with pytest.raises(ValueError, match=r"negative off-diagonal rates at \[\(0, 1\)\]"):
        dj.IMMModel(dyn, obs, rates=[[0.01, -0.02, 0.01], [0.1, -0.2, 0.1], [0.0, 0.1, -0.1]])
    with pytest.raises(ValueError, match=r"each row summing to 0 within 1e-09.*row sums \[0.05"):
        dj.IMMModel(dyn, obs, rates=[[0.0, 0.04, 0.01], [0.1, -0.2, 0.1], [0.02, 0.08, -0.1]])
    with pytest.raises(ValueError, match="needs exactly one regime chain.*got both"):
        dj.IMMModel(dyn, obs, dj.SEED_TRANSITION, rates=RATES)
    with pytest.raises(ValueError, match="needs exactly one regime chain.*got neither"):
        dj.IMMModel(dyn, obs)
    with pytest.raises(ValueError, match=r"`rates` must have shape \[M, M\] = \[3, 3\]"):
        dj.IMMModel(dyn, obs, rates=[[-0.1, 0.1], [0.1, -0.1]])
    with pytest.raises(TypeError, match="`rates` must be a number or an array of numbers"):
        dj.IMMModel(dyn, obs, rates="fast")
    ct = dj.IMMModel(dyn, obs, rates=RATES)
    with pytest.raises(ValueError, match=r"pass the step length, transition_matrix\(dt\)"):
        ct.transition_matrix()
    with pytest.raises(ValueError, match="`cycle_seconds` is required for a per-cycle"):
        dj.seed_imm().expected_durations()


def test_monte_carlo_with_continuous_time_regimes():
    """dj.monte_carlo runs a continuous-time IMM over Poisson-sampled paths of its own
    simulator: calibrated (coverage near 95%, NEES near 1) and finite everywhere."""
    ct = dj.IMMModel(
        dj.seed_imm().dynamics,
        dj.Observation.scalar(1.0),
        rates=dj.rates_from_transition(dj.SEED_TRANSITION, 1.0),
        regime_names=dj.REGIME_NAMES,
    )
    sim = dj.simulator(ct, 200, 1.0, sampling="poisson")
    report = dj.monte_carlo({"ct": ct}, sim, key=jax.random.key(2), n_paths=64, progress=False)
    row = report.table.loc["ct"]
    print(report.table[["rmse", "coverage_2sigma", "nees", "loglik_per_step"]])
    assert np.isfinite(row["rmse"]) and np.isfinite(row["loglik_per_step"])
    assert 0.9 < row["coverage_2sigma"] < 0.99 and 0.7 < row["nees"] < 1.3
