"""Quoting rules (strategies) and the order flow that fills them.

A strategy maps what it knows at the start of a step (the drift signal ``mu``, ``P(Crisis)``
and its inventory ``q``) to a quote ``(delta_bid, delta_ask)`` in bps from the mid, and
has an inventory limit ``Q``: at ``q >= Q`` it posts no bid, at ``q <= -Q`` no ask, so
``|q| <= Q`` always. ``min_delta`` floors both distances (default 0: the quotes never
cross the mid, a passive maker; ``None``: no floor).

The volatility a risk-averse rule quotes with is either ``"constant"`` (``sigma``) or
``"effective"``: the estimator's ``sigma_effective = sigma (1 + crisis_amplifier
P(Crisis))`` (``dj.sigma_effective``), so the crisis probability widens the spread and
strengthens the inventory skew.

Array fields declare their constraints (``dj.Positive``, ``dj.NonNegative``, ``dj.Real``),
so ``dj.unconstrain`` / ``dj.constrain`` and ``dj.market_making.tune`` train them in free
coordinates, as ``dj.fit`` trains a model.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp

from .._core import validate as v
from .._core.types import Array, Float
from .._models.constraints import CONSTRAINT, NonNegative, Positive, Real
from .quotes import as_offsets, glft_offsets

_VOLATILITIES = ("constant", "effective")
_FILL_KINDS = ("resting", "quoted")


def _min_delta(value) -> float | None:
    if value is None:
        return None
    return v.finite_float("min_delta", value, "None (no floor) or a finite number (bps)")


def _limit(value) -> int:
    return v.positive_int("inventory_limit", value, "an int (lots)")


class FillModel(eqx.Module):
    """The order flow: each side of a quote is filled (one lot) at most once per step.

    The intensity at distance ``delta`` from the mid is ``A exp(-k delta)`` fills/s, so a
    side quoted at ``delta`` for a step of ``dt`` seconds fills with probability
    ``1 - exp(-Lambda)``:

    - ``kind="quoted"``: ``Lambda = A exp(-k delta) dt``, ``delta`` the distance quoted at
      the start of the step (the mid's move during the step does not matter);
    - ``kind="resting"`` (default): the quote rests at its price while the mid moves
      linearly by the step's return ``r``, and the intensity follows the distance to the
      moving mid: ``Lambda = A exp(-k delta) dt (1 - exp(-x)) / x`` with ``x = k r`` for
      the bid and ``x = -k r`` for the ask. A falling mid runs into the bid (more bid
      fills: adverse selection), a rising one into the ask. ``r = 0`` is ``"quoted"``;
      both are the exact discretisation of the Poisson fills when ``dt -> 0``.

    Arguments:
        A: intensity at the mid, fills/s (> 0).
        k: decay with the distance, 1/bps (> 0).
        kind: ``"resting"`` or ``"quoted"``.

    Example:
        >>> import drift_jax as dj
        >>> flow = dj.market_making.FillModel(A=1.0, k=0.5)
        >>> round(float(flow.fill_probability(2.0, dt=0.1)), 5)  # 1 - exp(-e^-1 0.1)
        0.03612
    """

    A: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    k: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    kind: str = eqx.field(static=True)

    def __init__(self, A=1.0, k=0.5, kind="resting"):  # noqa: N803
        self.A = v.scalar("A", v.positive("A", A))
        self.k = v.scalar("k", v.positive("k", k, self.A.dtype))
        self.kind = v.one_of("kind", kind, _FILL_KINDS)

    def log_intensity(self, delta, dt, move=0.0):
        """``log Lambda`` of a side at distance ``delta`` whose mid moves toward it by
        ``move`` bps during the step (``-r`` for the bid, ``r`` for the ask); capped at 50
        (a fill is then certain), so gradients stay finite."""
        log_lam = jnp.log(self.A * dt) - self.k * delta
        if self.kind == "resting":
            log_lam = log_lam + _log_phi(-self.k * move)
        return jnp.minimum(log_lam, 50.0)

    def fill_probability(self, delta, dt, move=0.0):
        """``1 - exp(-Lambda)``: the probability that the side fills in the step."""
        return -jnp.expm1(-jnp.exp(self.log_intensity(delta, dt, move)))


def _log_phi(x):
    """``log((1 - exp(-x)) / x)`` (0 at ``x = 0``), stable for large ``|x|`` (``phi(-y) =
    exp(y) phi(y)`` for ``y > 0``), with its Taylor series near 0 so that the value and the
    gradient are smooth there (the double ``where`` keeps ``0/0`` out of the gradient)."""
    small = jnp.abs(x) < 1e-3
    safe = jnp.where(small, 1.0, x)
    y = jnp.abs(safe)
    exact = jnp.maximum(-safe, 0.0) + jnp.log(-jnp.expm1(-y) / y)
    # log phi(x) = -x/2 + x^2/24 - x^4/2880 + ...: the remainder is < 1e-15 for |x| < 1e-3.
    series = -x / 2.0 + x * x / 24.0
    return jnp.where(small, series, exact)


class AbstractStrategy(eqx.Module):
    """A quoting rule: ``quotes(drift, p_crisis, inventory) -> (delta_bid, delta_ask)``.

    A subclass defines ``offsets`` (the rule before the floor) and holds
    ``inventory_limit`` and ``min_delta`` (static). ``order_flow()`` is the fill model the
    rule assumes (its ``A`` and ``k``), the backtest's default market.
    """

    inventory_limit: eqx.AbstractVar[int]
    min_delta: eqx.AbstractVar[float | None]

    @abc.abstractmethod
    def offsets(self, drift, p_crisis, inventory) -> tuple[Array, Array]:
        """The rule's distances before ``min_delta`` (bps)."""

    def quotes(self, drift, p_crisis, inventory) -> tuple[Array, Array]:
        """``(delta_bid, delta_ask)`` in bps, floored at ``min_delta``."""
        bid, ask = self.offsets(drift, p_crisis, inventory)
        if self.min_delta is not None:
            bid, ask = jnp.maximum(bid, self.min_delta), jnp.maximum(ask, self.min_delta)
        return bid, ask

    def order_flow(self) -> FillModel:
        """The order flow this rule assumes (``kind="resting"``)."""
        raise ValueError(
            f"{type(self).__name__} assumes no order flow; pass `fills=dj.market_making."
            "FillModel(A, k)` to say how its quotes are filled."
        )


class _RiskAverse(AbstractStrategy):
    """Shared fields and the volatility choice of the GLFT and AS rules."""

    gamma: eqx.AbstractVar[Array]
    k: eqx.AbstractVar[Array]
    A: eqx.AbstractVar[Array]
    sigma: eqx.AbstractVar[Array]
    crisis_amplifier: eqx.AbstractVar[Array]
    volatility: eqx.AbstractVar[str]

    def _set_common(self, gamma, k, A, sigma, inventory_limit, volatility, amp, min_delta):  # noqa: N803
        self.gamma = v.scalar("gamma", v.positive("gamma", gamma))
        dtype = self.gamma.dtype
        self.k = v.scalar("k", v.positive("k", k, dtype))
        self.A = v.scalar("A", v.positive("A", A, dtype))
        self.sigma = v.scalar("sigma", v.positive("sigma", sigma, dtype))
        self.crisis_amplifier = v.scalar(
            "crisis_amplifier", v.nonnegative("crisis_amplifier", amp, dtype)
        )
        self.inventory_limit = _limit(inventory_limit)
        self.volatility = v.one_of("volatility", volatility, _VOLATILITIES)
        self.min_delta = _min_delta(min_delta)

    def quoting_sigma(self, p_crisis):
        """The volatility quoted with: ``sigma`` or ``sigma (1 + crisis_amplifier P)``."""
        if self.volatility == "constant":
            return jnp.broadcast_to(self.sigma, jnp.shape(p_crisis))
        return self.sigma * (1.0 + self.crisis_amplifier * p_crisis)

    def order_flow(self) -> FillModel:
        return FillModel(self.A, self.k)


class GLFTStrategy(_RiskAverse):
    """Quote with the GLFT (2013) closed form with drift (``dj.market_making.glft_quotes``).

    Arguments:
        gamma: risk aversion, 1/(bps lot) (> 0).
        k, A: the order flow the rule assumes (1/bps, fills/s; > 0). The backtest's fills
            follow them unless it is given another ``FillModel``.
        sigma: volatility, bps/sqrt(s) (> 0); the base of ``sigma_effective``.
        inventory_limit: ``Q`` lots (int >= 1): no bid at ``q >= Q``, no ask at ``q <= -Q``.
        volatility: ``"constant"`` (``sigma``) or ``"effective"`` (``sigma (1 +
            crisis_amplifier P(Crisis))`` from the estimator).
        crisis_amplifier: ``>= 0`` (used with ``volatility="effective"``).
        min_delta: floor of both distances, bps (default 0: never through the mid;
            ``None``: no floor).

    Example:
        >>> import drift_jax as dj
        >>> s = dj.market_making.GLFTStrategy(gamma=0.1, k=0.5, A=1.0, sigma=1.0)
        >>> [round(float(x), 4) for x in s.quotes(0.0, 0.0, 0.0)]
        [2.0964, 2.0964]
        >>> [round(float(x), 4) for x in s.quotes(-1.0, 0.0, 0.0)]  # a falling market
        [7.5609, 0.0]
    """

    gamma: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    k: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    A: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    sigma: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    crisis_amplifier: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    inventory_limit: int = eqx.field(static=True)
    volatility: str = eqx.field(static=True)
    min_delta: float | None = eqx.field(static=True)

    def __init__(
        self,
        gamma=0.1,
        k=0.5,
        A=1.0,  # noqa: N803
        sigma=1.0,
        *,
        inventory_limit=10,
        volatility="constant",
        crisis_amplifier=2.0,
        min_delta=0.0,
    ):
        self._set_common(
            gamma, k, A, sigma, inventory_limit, volatility, crisis_amplifier, min_delta
        )

    def offsets(self, drift, p_crisis, inventory):
        sigma = self.quoting_sigma(p_crisis)
        return glft_offsets(drift, sigma, inventory, self.gamma, self.k, self.A)


class AvellanedaStoikovStrategy(_RiskAverse):
    """Quote around the Avellaneda-Stoikov reservation price with drift
    (``dj.market_making.avellaneda_stoikov_quotes``) over a rolling horizon ``horizon``.

    Arguments as ``GLFTStrategy``, plus ``horizon``: the fixed time left ``tau`` in
    seconds (> 0; ``dj.market_making.glft_horizon`` gives the GLFT-equivalent one).

    Example:
        >>> import drift_jax as dj
        >>> tau = dj.market_making.glft_horizon(1.0, gamma=0.1, k=0.5, A=1.0)
        >>> s = dj.market_making.AvellanedaStoikovStrategy(0.1, 0.5, 1.0, 1.0, horizon=tau)
        >>> [round(float(x), 4) for x in s.quotes(0.0, 0.0, 0.0)]
        [2.0964, 2.0964]
    """

    gamma: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    k: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    A: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    sigma: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    crisis_amplifier: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    horizon: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    inventory_limit: int = eqx.field(static=True)
    volatility: str = eqx.field(static=True)
    min_delta: float | None = eqx.field(static=True)

    def __init__(
        self,
        gamma=0.1,
        k=0.5,
        A=1.0,  # noqa: N803
        sigma=1.0,
        *,
        horizon=5.0,
        inventory_limit=10,
        volatility="constant",
        crisis_amplifier=2.0,
        min_delta=0.0,
    ):
        self._set_common(
            gamma, k, A, sigma, inventory_limit, volatility, crisis_amplifier, min_delta
        )
        self.horizon = v.scalar("horizon", v.positive("horizon", horizon, self.gamma.dtype))

    def offsets(self, drift, p_crisis, inventory):
        sigma = self.quoting_sigma(p_crisis)
        return as_offsets(drift, sigma, inventory, self.gamma, self.k, self.horizon)


class FixedSpread(AbstractStrategy):
    """Constant quotes that ignore the drift and the inventory (up to the limit): the
    baseline maker, and fixed quotes for checking fill rates.

    Arguments:
        delta_bid, delta_ask: the distances from the mid, bps (finite).
        inventory_limit: ``Q`` lots (int >= 1).
        min_delta: floor (default ``None``).

    Example:
        >>> import drift_jax as dj
        >>> s = dj.market_making.FixedSpread(1.5, 2.5, inventory_limit=5)
        >>> [float(x) for x in s.quotes(-30.0, 1.0, 4.0)]
        [1.5, 2.5]
    """

    delta_bid: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Real()})
    delta_ask: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Real()})
    inventory_limit: int = eqx.field(static=True)
    min_delta: float | None = eqx.field(static=True)

    def __init__(self, delta_bid, delta_ask, *, inventory_limit=10, min_delta=None):
        bid = v.as_float_array("delta_bid", delta_bid)
        self.delta_bid = v.scalar("delta_bid", v.check("delta_bid", bid, jnp.isfinite, "finite"))
        ask = v.as_float_array("delta_ask", delta_ask, bid.dtype)
        self.delta_ask = v.scalar("delta_ask", v.check("delta_ask", ask, jnp.isfinite, "finite"))
        self.inventory_limit = _limit(inventory_limit)
        self.min_delta = _min_delta(min_delta)

    def offsets(self, drift, p_crisis, inventory):
        shape = jnp.shape(inventory)
        return jnp.broadcast_to(self.delta_bid, shape), jnp.broadcast_to(self.delta_ask, shape)
