"""Return models (issue 11, item 4): dj.RegimeReturnModel's mixture NLL against the
density written out by hand, its gradient against central differences, and dj.fit's
two-stage fit with returns: the per-regime vols recovered within 3 standard errors, the
filter equal (bit for bit) to a fit on the features alone; `stages="joint"`; batches equal
separate fits; bad input by message."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

import drift_jax as dj

T = 12
RNG = np.random.default_rng(3)
DTS = RNG.uniform(0.3, 1.2, size=T)
ZS = np.cumsum(RNG.normal(scale=1.5, size=T)) + RNG.normal(size=T)
RETURNS = RNG.normal(scale=3.0, size=T)
RETURNS[[4, 9]] = np.nan
VOLS = [1.5, 2.5, 7.0]


def _imm():
    return dj.seed_imm(dj.Observation.scalar(2.0))


def test_mixture_nll_equals_the_hand_computed_density():
    model, ret = _imm(), dj.RegimeReturnModel(VOLS)
    res = dj.filter(model, ZS, DTS)
    probs, drift = np.asarray(res.regime_probs), np.asarray(res.drift)
    Pi = np.asarray(model.transition)
    total = 0.0
    for k in range(T - 1):
        if np.isnan(RETURNS[k + 1]):
            continue
        p_next = probs[k] @ Pi  # P(regime at step k + 1 | z_0..z_k)
        sd = np.asarray(VOLS) * np.sqrt(DTS[k + 1])
        dens = np.sum(p_next * stats.norm.pdf(RETURNS[k + 1], drift[k] * DTS[k + 1], sd))
        total -= np.log(dens)
    got = float(dj.return_nll(model, ret, ZS, DTS, RETURNS))
    np.testing.assert_allclose(got, total, rtol=1e-12)
    # In the loss dj.fit minimises, per step, beside the feature NLL.
    loss = dj.fit_loss(model, ZS, DTS, returns=RETURNS, risk=ret)
    f = float(dj.feature_nll(model, ZS, DTS))
    np.testing.assert_allclose(float(loss), (f + total) / T, rtol=1e-12)
    # One regime (a Kalman model): one Gaussian, the same as dj.RiskModel(v, 0).
    kalman = dj.KalmanModel(dj.OU(0.2, 1.0), dj.Observation.scalar(2.0))
    one = float(dj.return_nll(kalman, dj.RegimeReturnModel([2.5]), ZS, DTS, RETURNS))
    risk = float(dj.return_nll(kalman, dj.RiskModel(2.5, 0.0), ZS, DTS, RETURNS))
    np.testing.assert_allclose(one, risk, rtol=1e-13)
    # Missing returns add exactly 0; a zero regime probability gives no NaN.
    assert float(dj.return_nll(model, ret, ZS, DTS, np.full(T, np.nan))) == 0.0
    zero = dj.IMMModel(model.dynamics, model.observation, np.eye(3), [1.0, 0.0, 0.0])
    g = jax.grad(lambda r: dj.return_nll(zero, r, ZS, DTS, RETURNS))(ret)
    assert np.all(np.isfinite(np.asarray(g.vols))) and float(g.vols[1]) == 0.0


def test_mixture_gradient_matches_central_differences():
    params = dj.FitParams(_imm(), dj.RegimeReturnModel(VOLS))
    mask = dj.trainable_mask(
        params, lambda p: (p.risk, p.model.transition, p.model.dynamics[2].sigma)
    )
    flat, unravel = ravel_pytree(dj.unconstrain(params, mask))

    @jax.jit
    def loss(x):
        p = dj.constrain(unravel(x), params)
        return dj.return_nll(p.model, p.risk, ZS, DTS, RETURNS)

    grad = np.asarray(jax.grad(loss)(flat))
    fd = np.zeros_like(grad)
    for i in range(flat.size):
        e = np.zeros(flat.size)
        e[i] = 1e-5 * max(1.0, abs(float(flat[i])))
        fd[i] = (float(loss(flat + e)) - float(loss(flat - e))) / (2 * e[i])
    assert np.all(np.abs(grad) > 1e-6)  # every coordinate matters: a real comparison
    np.testing.assert_allclose(grad, fd, rtol=2e-6, atol=1e-9)


# --- two-stage fit on simulated data with per-regime return vols ---------------------------

PI = np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.02, 0.02, 0.96]])
TRUE_VOLS = np.array([2.0, 4.0, 12.0])


def _truth():
    dynamics = [dj.OU(0.1, 0.3), dj.OU(0.02, 1.0), dj.OU(0.005, 5.0)]
    return dj.IMMModel(dynamics, dj.Observation.scalar(0.05), PI, crisis_regime=2)


def _sigmas(p):
    return tuple(d.sigma for d in p.model.dynamics)


def test_two_stage_fit_recovers_the_vols_and_keeps_the_features_fit():
    truth = _truth()
    n = 1500
    paths = dj.simulate(truth, jax.random.key(11), 1, n, 1.0, return_vol=TRUE_VOLS)
    zs, returns = np.asarray(paths.features[0, :, 0]), np.asarray(paths.returns[0])
    share = np.bincount(np.asarray(paths.regimes[0]), minlength=3) / n
    assert np.all(share > 0.1), share  # every regime's vol is informed
    start = dj.IMMModel(
        [dj.OU(float(d.theta), 1.5 * float(d.sigma)) for d in truth.dynamics],
        truth.observation,
        PI,
        crisis_regime=2,
    )
    ret0 = dj.RegimeReturnModel(1.5 * TRUE_VOLS)
    res = dj.fit(
        start,
        zs,
        1.0,
        returns=returns,
        risk=ret0,
        trainable=lambda p: (*_sigmas(p), p.risk),
        progress=False,
    )
    assert res.stages == ("features", "returns") and bool(res.converged)
    assert bool(res.stage1.converged) and res.stage1.risk is None
    assert float(res.grad_norm) <= 1e-6 and float(res.stage1.grad_norm) <= 1e-6
    assert res.stage1.loss_history.shape == (500,)
    # Stage 1 is the fit on the features alone (the same compiled loop: bit for bit), and
    # stage 2 held that filter fixed, bit for bit.
    alone = dj.fit(start, zs, 1.0, risk=ret0, trainable=_sigmas, progress=False)
    for a, b, c in zip(
        jax.tree.leaves(res.stage1.model),
        jax.tree.leaves(alone.model),
        jax.tree.leaves(res.model),
        strict=True,
    ):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes() == np.asarray(c).tobytes()
    # The vols against the truth, in standard errors conditional on the filter.
    se = dj.standard_errors(res, zs, 1.0, returns=returns, trainable=lambda p: p.risk)
    t = se.table
    assert list(t.index) == ["risk.vols[0]", "risk.vols[1]", "risk.vols[2]"]
    assert bool(t["identified"].all())
    z = (t["estimate"].to_numpy() - TRUE_VOLS) / t["std_err"].to_numpy()
    print("two-stage vols z-scores:", np.round(z, 2), "se:", np.round(t["std_err"], 3))
    assert np.all(np.abs(z) < 3.0), z
    assert np.all(t["std_err"].to_numpy() < 0.1 * TRUE_VOLS)  # an informative test
    assert np.max(np.abs(se.newton_step)) < 0.01  # stage 2 is at its optimum


def test_joint_and_batched_two_stage_fits():
    rng = np.random.default_rng(5)
    start = dj.KalmanModel(dj.OU(0.3, 1.0), dj.Observation.scalar(1.0))
    zs = np.cumsum(rng.normal(scale=0.6, size=(2, 300)), axis=1) * 0.2 + rng.normal(size=(2, 300))
    returns = rng.normal(scale=2.0, size=(2, 300))
    ret0 = dj.RegimeReturnModel([1.0])
    adam = optax.adam(0.05)
    opts = dict(risk=ret0, optimizer=adam, steps=40, progress=False)
    batch = dj.fit_batch(start, zs, 1.0, returns=returns, **opts)
    assert batch.stages == ("features", "returns") and batch.stage1.grad_norm.shape == (2,)
    for i in range(2):
        one = dj.fit(start, zs[i], 1.0, returns=returns[i], **opts)
        got = jax.tree.map(lambda x, i=i: x[i], batch)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
        # Stage 2 fits one vol with the drift held: its MLE is the RMS of the standardised
        # prediction errors, sqrt(mean((r[k+1] - mu_k dt)^2 / dt)).
        full = dj.fit(start, zs[i], 1.0, returns=returns[i], risk=ret0, progress=False)
        drift = np.asarray(dj.filter(full.model, zs[i], 1.0).drift)
        rms = np.sqrt(np.mean((returns[i, 1:] - drift[:-1]) ** 2))
        np.testing.assert_allclose(float(full.risk.vols[0]), rms, rtol=1e-6)
    two = dj.fit(start, zs[0], 1.0, returns=returns[0], risk=ret0, progress=False)
    joint = dj.fit(
        start, zs[0], 1.0, returns=returns[0], risk=ret0, stages="joint", progress=False
    )
    assert joint.stages == ("joint",) and joint.stage1 is None and bool(joint.converged)
    # The joint fit lets the returns move the filter: a lower joint loss, another theta.
    assert float(joint.losses_per_start[0]) < float(two.losses_per_start[0])
    assert abs(float(joint.model.dynamics.theta) / float(two.model.dynamics.theta) - 1) > 1e-4


def test_bad_input():
    model = _imm()
    with pytest.raises(ValueError, match=r"`vols` must be finite and > 0; got vols=\[ 1\., -2\."):
        dj.RegimeReturnModel([1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match=r"`vols` must be a vector \[M\]"):
        dj.RegimeReturnModel([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"one return volatility per regime.*M = 3.*got 2 vol"):
        dj.return_nll(model, dj.RegimeReturnModel([1.0, 2.0]), ZS, DTS, RETURNS)
    with pytest.raises(ValueError, match="one return volatility per regime"):
        dj.fit(model, ZS, DTS, returns=RETURNS, risk=dj.RegimeReturnModel([1.0]))
    with pytest.raises(ValueError, match="`stages` must be 'two-stage' .* or 'joint', got 'both'"):
        dj.fit(model, ZS, DTS, returns=RETURNS, risk=dj.RegimeReturnModel(VOLS), stages="both")
    with pytest.raises(TypeError, match="`stages` must be"):
        dj.fit(model, ZS, DTS, stages=2)
    with pytest.raises(ValueError, match="`risk` must be a dj.RiskModel .* or a dj.RegimeReturn"):
        dj.fit_loss(model, ZS, DTS, returns=RETURNS, risk=jnp.ones(3))
    with pytest.raises(ValueError, match="`trainable` holds all of it fixed"):
        dj.fit(
            model,
            ZS,
            DTS,
            returns=RETURNS,
            risk=dj.RegimeReturnModel(VOLS),
            trainable=lambda p: p.model.transition,
        )
    with pytest.raises(ValueError, match="need a starting `risk=dj.RiskModel"):
        dj.fit(model, ZS, DTS, returns=RETURNS)
    with pytest.raises(ValueError, match="`gtol` must be finite and >= 0"):
        dj.fit(model, ZS, DTS, gtol=-1e-6)
