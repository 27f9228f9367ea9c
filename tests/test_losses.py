"""Losses (issue 5, item 2): the feature NLL, the predictive return NLL against a plain
NumPy/SciPy loop (no look-ahead), priors against scipy's Dirichlet, the weighted sum, and
gradients of the whole loss in free coordinates against central finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

import drift_jax as dj

T = 40
RNG = np.random.default_rng(7)
DTS = RNG.uniform(0.2, 1.0, size=T)
ZS = np.cumsum(RNG.normal(scale=0.8, size=(T, 2)), axis=0) + RNG.normal(size=(T, 2))
ZS[RNG.random((T, 2)) < 0.1] = np.nan
RETURNS = RNG.normal(scale=2.0, size=T)
RETURNS[[3, 17, 30]] = np.nan


def _imm(m=2):
    obs = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]]) if m == 2 else None
    return dj.seed_imm(obs)


def _kalman():
    obs = dj.Observation([1.0, 0.8], [[1.0, 0.3], [0.3, 2.0]])
    return dj.KalmanModel(dj.OUAccel(0.3, 0.9, 0.5, 0.4), obs, 0.1, [[1.0, 0.1], [0.1, 0.3]])


RISK = dj.RiskModel(sigma_base=1.7, crisis_amplifier=2.5)


def _reference_return_nll(drift, p_crisis, sigma_base, amp, dts, returns):
    """The definition, term by term: returns[k+1] scored with the output after step k."""
    total = 0.0
    for k in range(len(returns) - 1):
        if np.isnan(returns[k + 1]):
            continue
        sig = sigma_base * (1.0 + amp * p_crisis[k])
        mean, sd = drift[k] * dts[k + 1], sig * np.sqrt(dts[k + 1])
        total -= stats.norm.logpdf(returns[k + 1], loc=mean, scale=sd)
    return total


def test_feature_nll_is_minus_the_log_likelihood():
    for model, zs in ((_imm(), ZS), (_kalman(), ZS), (_imm(1), ZS[:, 0])):
        ll = dj.filter(model, zs, DTS).log_likelihood
        # Exact: both run the same compiled filter on the same inputs.
        assert float(dj.feature_nll(model, zs, DTS)) == -float(ll)


@pytest.mark.parametrize("kind", ["imm", "kalman"])
def test_return_nll_equals_the_definition(kind):
    model = _imm() if kind == "imm" else _kalman()
    res = dj.filter(model, ZS, DTS)
    p = np.asarray(res.p_crisis) if kind == "imm" else np.zeros(T)  # Kalman: P(Crisis) = 0
    if kind == "imm":
        assert 0.05 < p.max() and p.min() < 0.5  # the crisis channel is exercised
    ref = _reference_return_nll(np.asarray(res.drift), p, 1.7, 2.5, DTS, RETURNS)
    got = float(dj.return_nll(model, RISK, ZS, DTS, RETURNS))
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    # scalar dt broadcasts
    ref_scalar = _reference_return_nll(
        np.asarray(dj.filter(model, ZS, 0.5).drift),
        np.asarray(dj.filter(model, ZS, 0.5).regime_probs[:, -1]) if kind == "imm" else p,
        1.7,
        2.5,
        np.full(T, 0.5),
        RETURNS,
    )
    np.testing.assert_allclose(
        dj.return_nll(model, RISK, ZS, 0.5, RETURNS), ref_scalar, rtol=1e-13
    )


def test_return_nll_has_no_look_ahead():
    model = _imm()
    base = float(dj.return_nll(model, RISK, ZS, DTS, RETURNS))
    # The last features update the filter after the last scored interval: no effect. Exact:
    # the same compiled filter and ops, and a scan's earlier steps never see later inputs.
    zs = ZS.copy()
    zs[-1] = [50.0, -50.0]
    assert float(dj.return_nll(model, RISK, zs, DTS, RETURNS)) == base
    # Changing features at step j changes only the terms k >= j: the prefix of the loss
    # up to step j (terms k < j) is the same whatever the future holds.
    j = 25
    prefix = float(dj.return_nll(model, RISK, ZS[: j + 1], DTS[: j + 1], RETURNS[: j + 1]))
    zs = ZS.copy()
    zs[j:] += 10.0
    returns = RETURNS.copy()
    returns[j + 1 :] *= 3.0
    assert float(dj.return_nll(model, RISK, zs[: j + 1], DTS[: j + 1], returns[: j + 1])) == prefix
    # Gradients: returns[0] lies before the first filter output and is never scored.
    g_r = jax.jit(jax.grad(lambda r: dj.return_nll(model, RISK, ZS, DTS, r)))(RETURNS)
    assert float(g_r[0]) == 0.0 and np.all(np.asarray(g_r)[np.isnan(RETURNS)] == 0.0)
    seen = ~np.isnan(RETURNS)
    seen[0] = False
    assert np.all(np.asarray(g_r)[seen] != 0.0)


def test_missing_returns_add_nothing():
    model = _imm()
    all_nan = np.full(T, np.nan)
    assert float(dj.return_nll(model, RISK, ZS, DTS, all_nan)) == 0.0
    one = np.full(T, np.nan)
    one[10] = RETURNS[10]
    res = dj.filter(model, ZS, DTS)
    sig = 1.7 * (1.0 + 2.5 * float(res.p_crisis[9]))
    ref = -stats.norm.logpdf(RETURNS[10], float(res.drift[9]) * DTS[10], sig * np.sqrt(DTS[10]))
    np.testing.assert_allclose(dj.return_nll(model, RISK, ZS, DTS, one), ref, rtol=1e-13)


def test_fit_loss_is_the_weighted_sum_per_step():
    model = _imm()
    prior = dj.sticky_prior(5.0)
    f = float(dj.feature_nll(model, ZS, DTS))
    r = float(dj.return_nll(model, RISK, ZS, DTS, RETURNS))
    lp = float(prior(model, RISK))
    got = dj.fit_loss(
        model,
        ZS,
        DTS,
        returns=RETURNS,
        risk=RISK,
        feature_weight=0.3,
        return_weight=2.0,
        prior=prior,
    )
    np.testing.assert_allclose(got, (0.3 * f + 2.0 * r - lp) / T, rtol=1e-14)
    np.testing.assert_allclose(dj.fit_loss(model, ZS, DTS), f / T, rtol=1e-14)
    only_returns = dj.fit_loss(model, ZS, DTS, returns=RETURNS, risk=RISK, feature_weight=0.0)
    np.testing.assert_allclose(only_returns, r / T, rtol=1e-14)


def test_priors_equal_scipy_dirichlet():
    imm = _imm()
    Pi = np.asarray(imm.transition)
    alpha = np.array([[9.0, 2.0, 1.5], [1.0, 7.0, 3.0], [0.5, 1.0, 4.0]])
    ref = sum(stats.dirichlet.logpdf(Pi[i], alpha[i]) for i in range(3))
    np.testing.assert_allclose(dj.dirichlet_prior(alpha)(imm, None), ref, rtol=1e-13)
    c = 12.0
    ref = sum(stats.dirichlet.logpdf(Pi[i], 1.0 + c * np.eye(3)[i]) for i in range(3))
    np.testing.assert_allclose(dj.sticky_prior(c)(imm, None), ref, rtol=1e-13)
    # Flat (alpha = 1) entries add no log Pi: a structural zero keeps the prior finite.
    zero = dj.IMMModel(
        imm.dynamics, imm.observation, [[0.9, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.9]]
    )
    assert np.isfinite(float(dj.sticky_prior(c)(zero, None)))
    # Stickier Pi, higher prior.
    sticky = dj.IMMModel(imm.dynamics, imm.observation, 0.97 * np.eye(3) + 0.01)
    assert float(dj.sticky_prior(c)(sticky, None)) > float(dj.sticky_prior(c)(imm, None))


def _flat_loss(params, *, returns, prior):
    raw = dj.unconstrain(params)
    flat, unravel = ravel_pytree(raw)

    def loss(x):
        p = dj.constrain(unravel(x), params)
        return dj.fit_loss(
            p.model,
            ZS if p.model.num_features == 2 else ZS[:, 0],
            DTS,
            returns=returns,
            risk=p.risk,
            feature_weight=0.7,
            return_weight=1.3,
            prior=prior,
        )

    return jax.jit(loss), flat


def _central_difference(f, x, h=1e-5):
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h * max(1.0, abs(x[i]))
        g[i] = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * e[i])
    return g


@pytest.mark.parametrize("name", ["imm", "kalman_accel"])
def test_gradient_of_the_whole_loss_matches_finite_differences(name):
    # Every field in free coordinates (Pi's logits, R's and init_cov's Cholesky factors,
    # the dynamics, loadings, initial prior, sigma_base, crisis_amplifier), the return
    # loss and a sticky prior: reverse mode against central differences in float64. (The
    # filters' own gradients are checked field by field in test_*_gradients.py.)
    model = {"imm": _imm(1), "kalman_accel": _kalman()}[name]
    imm = name != "kalman_accel"
    risk = RISK if imm else dj.RiskModel(1.7, 0.0)
    params = dj.FitParams(model, risk)
    if not imm:  # crisis_amplifier has no effect without regimes: hold it (at 0)
        loss, flat = _flat_loss_kalman(params)
    else:
        loss, flat = _flat_loss(params, returns=RETURNS, prior=dj.sticky_prior(4.0))
    grad = np.asarray(jax.jit(jax.grad(loss))(flat))
    fd = _central_difference(loss, flat)
    assert np.all(np.isfinite(grad))
    assert np.all(np.abs(grad) > 1e-6)  # every coordinate matters: a real comparison
    np.testing.assert_allclose(grad, fd, rtol=2e-6, atol=1e-9)


def _flat_loss_kalman(params):
    mask = dj.trainable_mask(params, lambda p: (p.model, p.risk.sigma_base))
    raw = dj.unconstrain(params, mask)
    flat, unravel = ravel_pytree(raw)

    def loss(x):
        p = dj.constrain(unravel(x), params)
        return dj.fit_loss(p.model, ZS, DTS, returns=RETURNS, risk=p.risk, return_weight=1.3)

    return jax.jit(loss), flat


def test_gradient_reaches_the_filter_through_p_crisis():
    # The return loss alone (feature_weight = 0) moves Pi and the Crisis regime's sigma,
    # and more so with the amplifier on: its gradient flows through P_t(Crisis).
    model = _imm(1)
    params = dj.FitParams(model, RISK)
    mask = dj.trainable_mask(params, lambda p: (p.model.transition, p.model.dynamics[2].sigma))
    raw = dj.unconstrain(params, mask)

    def loss(r, amp):
        p = dj.constrain(r, params)
        risk = eqx.tree_at(lambda r: r.crisis_amplifier, p.risk, amp)
        return dj.fit_loss(p.model, ZS[:, 0], DTS, returns=RETURNS, risk=risk, feature_weight=0.0)

    grad = jax.jit(jax.grad(loss))
    with_amp = grad(raw, jnp.asarray(2.5))
    without = grad(raw, jnp.asarray(0.0))
    g_amp = ravel_pytree(with_amp)[0]
    g_none = ravel_pytree(without)[0]
    assert np.all(np.isfinite(g_amp)) and np.all(np.isfinite(g_none))
    assert np.all(np.abs(np.asarray(g_none)) > 1e-8)  # through the drift mu_hat alone
    # the P(Crisis) channel adds to the gradient only when the amplifier is on
    assert np.min(np.abs(np.asarray(g_amp - g_none))) > 1e-4


def test_bad_input():
    model = _imm()
    with pytest.raises(ValueError, match="`returns` must have shape"):
        dj.return_nll(model, RISK, ZS, DTS, RETURNS[:-1])
    bad = RETURNS.copy()
    bad[4] = np.inf
    with pytest.raises(ValueError, match=r"`returns` must not contain \+-inf"):
        dj.return_nll(model, RISK, ZS, DTS, bad)
    with pytest.raises(ValueError, match="`risk` must be a dj.RiskModel"):
        dj.return_nll(model, 2.0, ZS, DTS, RETURNS)
    with pytest.raises(ValueError, match="`risk` must be a dj.RiskModel"):
        dj.fit_loss(model, ZS, DTS, returns=RETURNS)
    with pytest.raises(ValueError, match="`model` must be a dj.KalmanModel or dj.IMMModel"):
        dj.feature_nll(dj.OU(0.1, 1.0), ZS, DTS)
    with pytest.raises(ValueError, match="`feature_weight` must be finite and >= 0"):
        dj.fit_loss(model, ZS, DTS, feature_weight=-1.0)
    with pytest.raises(ValueError, match="`prior` must be None or a callable"):
        dj.fit_loss(model, ZS, DTS, prior=3.0)
    with pytest.raises(ValueError, match="`concentration` must be finite and > 0"):
        dj.dirichlet_prior([[1.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="must be a square"):
        dj.dirichlet_prior([1.0, 2.0])
    with pytest.raises(ValueError, match="`concentration` must be finite and >= 0"):
        dj.sticky_prior(-1.0)
    with pytest.raises(ValueError, match="needs a dj.IMMModel"):
        dj.sticky_prior(1.0)(_kalman(), None)
    with pytest.raises(ValueError, match=r"has shape \(2, 2\) but the model's transition"):
        dj.dirichlet_prior(np.ones((2, 2)))(model, None)
