"""dj.market_making quotes, strategies and fill model: formulas against hand values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj
from drift_jax._core.validate import ArgumentTypeError

mm = dj.market_making


def glft_by_hand(mu, sigma, q, gamma, k, A):
    """The issue's formulas, term by term in plain Python floats."""
    base = math.log(1.0 + gamma / k) / gamma
    omega = math.sqrt(sigma**2 * gamma / (2.0 * k * A) * (1.0 + gamma / k) ** (1.0 + k / gamma))
    bid = base + (-mu / (gamma * sigma**2) + (2 * q + 1) / 2) * omega
    ask = base + (mu / (gamma * sigma**2) - (2 * q - 1) / 2) * omega
    return bid, ask


CASES = [
    # mu (bps/s), sigma (bps/sqrt s), q (lots), gamma, k, A
    (0.0, 1.0, 0.0, 0.1, 0.5, 1.0),
    (0.3, 1.0, 2.0, 0.1, 0.5, 1.0),
    (-12.0, 4.0, -3.0, 0.05, 0.3, 0.9),
    (2.5, 0.7, 7.0, 1.5, 2.0, 20.0),
]


def test_glft_against_hand_values():
    # gamma 0.1, k 0.5, A 1, sigma 1: ln(1.2)/0.1 = 1.8232155679, omega = sqrt(0.1 * 1.2^6)
    # = sqrt(0.298598400) = 0.5464415797; at mu = q = 0 both sides are 1.8232 + 0.2732.
    bid, ask = mm.glft_quotes(0.0, 1.0, 0.0, gamma=0.1, k=0.5, A=1.0)
    np.testing.assert_allclose([bid, ask], [2.0964363577, 2.0964363577], rtol=1e-10)
    # mu = 0.3, q = 2: skew 0.3 / 0.1 = 3 lots; bid = 1.8232 + (-3 + 2.5) omega.
    bid, ask = mm.glft_quotes(0.3, 1.0, 2.0, gamma=0.1, k=0.5, A=1.0)
    np.testing.assert_allclose(bid, 1.8232155679 - 0.5 * 0.5464415797, rtol=1e-10)
    np.testing.assert_allclose(ask, 1.8232155679 + 1.5 * 0.5464415797, rtol=1e-10)
    for case in CASES:
        got = mm.glft_quotes(case[0], case[1], case[2], gamma=case[3], k=case[4], A=case[5])
        np.testing.assert_allclose(got, glft_by_hand(*case), rtol=1e-13)


def test_avellaneda_stoikov_against_hand_values_and_glft():
    # gamma 0.1, k 0.5, sigma 1, tau 5 s, mu 2, q 1: reservation r = S + 10 - 0.5, total
    # spread 0.5 + 2 ln(1.2) / 0.1 = 4.1464; bid = r - 2.0732, ask = r + 2.0732 (from S).
    bid, ask = mm.avellaneda_stoikov_quotes(2.0, 1.0, 1.0, gamma=0.1, k=0.5, horizon=5.0)
    half = 0.25 + 1.8232155679
    np.testing.assert_allclose(-bid, 9.5 - half, rtol=1e-10)
    np.testing.assert_allclose(ask, 9.5 + half, rtol=1e-10)
    # At tau = omega / (gamma sigma^2) AS is GLFT, for any drift and inventory.
    for mu, sigma, q, gamma, k, A in CASES:
        tau = mm.glft_horizon(sigma, gamma=gamma, k=k, A=A)
        omega = math.sqrt(sigma**2 * gamma / (2 * k * A) * (1 + gamma / k) ** (1 + k / gamma))
        np.testing.assert_allclose(tau, omega / (gamma * sigma**2), rtol=1e-13)
        for m, qq in ((mu, q), (-3.0 * mu, 0.5 - q)):
            as_q = mm.avellaneda_stoikov_quotes(m, sigma, qq, gamma=gamma, k=k, horizon=tau)
            glft = mm.glft_quotes(m, sigma, qq, gamma=gamma, k=k, A=A)
            np.testing.assert_allclose(as_q, glft, rtol=1e-12, atol=1e-12)


def test_symmetric_at_zero_drift_and_inventory_and_mirrored():
    gammas, ks, As, sigmas = np.meshgrid([0.01, 0.1, 2.0], [0.2, 1.0], [0.5, 5.0], [0.5, 3.0])
    args = dict(gamma=gammas.ravel(), k=ks.ravel(), A=As.ravel())
    bid, ask = mm.glft_quotes(0.0, sigmas.ravel(), 0.0, **args)
    # Bit for bit: both sides are base + omega / 2 computed in the same order.
    np.testing.assert_array_equal(bid, ask)
    assert bool(jnp.all(bid > 0))
    # Mirror: a drift mu with inventory q quotes the bid where -mu with -q quotes the ask.
    b1, a1 = mm.glft_quotes(1.7, sigmas.ravel(), 3.0, **args)
    b2, a2 = mm.glft_quotes(-1.7, sigmas.ravel(), -3.0, **args)
    np.testing.assert_allclose(b1, a2, rtol=1e-13)
    np.testing.assert_allclose(a1, b2, rtol=1e-13)
    tau = mm.glft_horizon(1.0, gamma=0.3, k=0.4, A=2.0)
    b, a = mm.avellaneda_stoikov_quotes(0.0, 1.0, 0.0, gamma=0.3, k=0.4, horizon=tau)
    np.testing.assert_allclose(b, a, rtol=1e-15)


def test_quotes_under_jit_vmap_grad():
    f = lambda g: mm.glft_quotes(0.5, 1.0, 1.0, gamma=g, k=0.5, A=1.0)[0]
    gs = jnp.array([0.05, 0.1, 0.2])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(gs), [float(f(g)) for g in gs], rtol=1e-14)
    h = 1e-6
    fd = (float(f(0.1 + h)) - float(f(0.1 - h))) / (2 * h)
    np.testing.assert_allclose(jax.grad(f)(0.1), fd, rtol=1e-7)


def test_strategies():
    s = mm.GLFTStrategy(gamma=0.1, k=0.5, A=1.0, sigma=1.0, inventory_limit=4)
    np.testing.assert_allclose(s.quotes(0.3, 0.9, 2.0), glft_by_hand(0.3, 1.0, 2.0, 0.1, 0.5, 1.0))
    # A falling market: the ask is through the mid by the formula and floored at 0.
    raw = glft_by_hand(-1.0, 1.0, 0.0, 0.1, 0.5, 1.0)
    assert raw[1] < 0
    np.testing.assert_allclose(s.quotes(-1.0, 0.0, 0.0), [raw[0], 0.0])
    free = mm.GLFTStrategy(gamma=0.1, k=0.5, A=1.0, sigma=1.0, min_delta=None)
    np.testing.assert_allclose(free.quotes(-1.0, 0.0, 0.0), raw)
    # sigma_effective: sigma (1 + amp P(Crisis)) goes into the formula.
    eff = mm.GLFTStrategy(0.1, 0.5, 1.0, 2.0, volatility="effective", crisis_amplifier=3.0)
    sig = float(dj.sigma_effective(2.0, 0.4, 3.0))
    np.testing.assert_allclose(sig, 4.4)
    floored = lambda *a: np.maximum(glft_by_hand(*a), 0.0)  # noqa: E731
    np.testing.assert_allclose(eff.quotes(5.0, 0.4, 1.0), floored(5.0, sig, 1.0, 0.1, 0.5, 1.0))
    np.testing.assert_allclose(eff.quotes(5.0, 0.0, 1.0), floored(5.0, 2.0, 1.0, 0.1, 0.5, 1.0))
    assert glft_by_hand(5.0, sig, 1.0, 0.1, 0.5, 1.0)[0] < 0  # the floor is active here
    const = mm.GLFTStrategy(0.1, 0.5, 1.0, 2.0, crisis_amplifier=3.0)
    np.testing.assert_allclose(const.quotes(5.0, 0.4, 1.0), floored(5.0, 2.0, 1.0, 0.1, 0.5, 1.0))
    as_s = mm.AvellanedaStoikovStrategy(0.1, 0.5, 1.0, 1.0, horizon=5.0, min_delta=None)
    np.testing.assert_allclose(
        as_s.quotes(2.0, 0.0, 1.0),
        mm.avellaneda_stoikov_quotes(2.0, 1.0, 1.0, gamma=0.1, k=0.5, horizon=5.0),
    )
    fixed = mm.FixedSpread(1.5, -0.5, min_delta=0.0)
    np.testing.assert_allclose(fixed.quotes(9.0, 1.0, 3.0), [1.5, 0.0])
    flow = s.order_flow()
    assert (float(flow.A), float(flow.k), flow.kind) == (1.0, 0.5, "resting")


def test_fill_probability():
    flow_q = mm.FillModel(A=2.0, k=0.4, kind="quoted")
    flow_r = mm.FillModel(A=2.0, k=0.4, kind="resting")
    delta, dt = np.array([0.0, 1.0, 3.5, 12.0]), 0.25
    expected = 1.0 - np.exp(-2.0 * np.exp(-0.4 * delta) * dt)
    np.testing.assert_allclose(flow_q.fill_probability(delta, dt, move=5.0), expected, rtol=1e-13)
    np.testing.assert_allclose(flow_r.fill_probability(delta, dt, move=0.0), expected, rtol=1e-13)
    # Resting: the intensity integrated along a mid moving linearly toward the quote by
    # `move` bps over the step, A int_0^dt exp(-k (delta - move s / dt)) ds, by quadrature.
    s = np.linspace(0.0, dt, 200001)
    for move in (-6.0, -0.3, 1e-5, 0.8, 7.5):
        lam = np.trapezoid(2.0 * np.exp(-0.4 * (1.5 - move * s / dt)), s)
        got = flow_r.fill_probability(1.5, dt, move=move)
        np.testing.assert_allclose(got, 1.0 - np.exp(-lam), rtol=1e-9)
    # Gradients are finite at a zero move and for a quote far through the mid.
    g = jax.grad(lambda m: flow_r.fill_probability(1.5, dt, move=m))(0.0)
    fd = (
        float(flow_r.fill_probability(1.5, dt, 1e-4))
        - float(flow_r.fill_probability(1.5, dt, -1e-4))
    ) / 2e-4
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    assert float(flow_r.fill_probability(-1e4, dt)) == 1.0
    assert np.isfinite(float(jax.grad(lambda d: flow_r.fill_probability(d, dt))(-1e4)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: mm.glft_quotes(0.0, 1.0, 0.0, gamma=-0.1, k=0.5, A=1.0),
            r"`gamma` must be finite and > 0; got gamma=-0.1",
        ),
        (
            lambda: mm.glft_quotes(0.0, 1.0, 0.0, gamma=0.1, k=-0.5, A=1.0),
            r"`k` must be finite and > 0; got k=-0.5",
        ),
        (
            lambda: mm.glft_quotes(0.0, 1.0, 0.0, gamma=0.1, k=0.5, A=-1.0),
            r"`A` must be finite and > 0; got A=-1.0",
        ),
        (
            lambda: mm.glft_quotes(0.0, 0.0, 0.0, gamma=0.1, k=0.5, A=1.0),
            r"`sigma` must be finite and > 0; got sigma=0.0",
        ),
        (
            lambda: mm.avellaneda_stoikov_quotes(0.0, 1.0, 0.0, gamma=0.1, k=0.5, horizon=0.0),
            r"`horizon` must be finite and > 0",
        ),
        (lambda: mm.GLFTStrategy(gamma=-1.0), r"`gamma` must be finite and > 0; got gamma=-1.0"),
        (lambda: mm.GLFTStrategy(k=0.0), r"`k` must be finite and > 0; got k=0.0"),
        (lambda: mm.GLFTStrategy(A=-2.0), r"`A` must be finite and > 0; got A=-2.0"),
        (
            lambda: mm.GLFTStrategy(crisis_amplifier=-1.0),
            r"`crisis_amplifier` must be finite and >= 0",
        ),
        (
            lambda: mm.GLFTStrategy(inventory_limit=0),
            r"`inventory_limit` must be an int \(lots\) >= 1, got inventory_limit=0",
        ),
        (
            lambda: mm.GLFTStrategy(volatility="implied"),
            r"`volatility` must be one of \('constant', 'effective'\), got 'implied'",
        ),
        (lambda: mm.FillModel(A=-1.0), r"`A` must be finite and > 0; got A=-1.0"),
        (lambda: mm.FillModel(k=-3.0), r"`k` must be finite and > 0; got k=-3.0"),
        (
            lambda: mm.FillModel(kind="touch"),
            r"`kind` must be one of \('resting', 'quoted'\), got 'touch'",
        ),
        (lambda: mm.Oracle(lag=2), r"`lag` must be 0 or 1, got lag=2"),
    ],
)
def test_bad_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types():
    with pytest.raises(ArgumentTypeError, match=r"`gamma` must be a number or an array"):
        mm.GLFTStrategy(gamma="big")
    with pytest.raises(ArgumentTypeError, match=r"`inventory_limit` must be an int"):
        mm.GLFTStrategy(inventory_limit=2.5)
    with pytest.raises(ArgumentTypeError, match=r"`estimator` must be a dj.KalmanModel"):
        mm.Quoter("imm")
