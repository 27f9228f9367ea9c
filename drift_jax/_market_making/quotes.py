"""Optimal quotes with a drift: Gueant-Lehalle-Fernandez-Tapia and Avellaneda-Stoikov.

Units throughout ``dj.market_making``: prices and quote distances in bps (of the mid at the
start of the path), the drift ``mu`` in bps/s, the volatility ``sigma`` in bps/sqrt(s), the
risk aversion ``gamma`` in 1/(bps lot), the order-flow decay ``k`` in 1/bps, the fill
intensity at the mid ``A`` in fills/s, the inventory ``q`` in lots and time in seconds. A
quote is a pair ``(delta_bid, delta_ask)`` of distances from the mid: the bid is at
``mid - delta_bid``, the ask at ``mid + delta_ask`` (a negative distance is through the
mid).

Both rules share the constant part ``(1/gamma) ln(1 + gamma/k)`` (the half-spread a risk
neutral maker facing fills ``A exp(-k delta)`` would not change) and differ in how the
inventory and the drift move the quotes:

- GLFT (Gueant, Lehalle & Fernandez-Tapia 2013, the asymptotic closed form with drift):
  a skew per lot ``omega = sqrt(sigma^2 gamma / (2 k A) (1 + gamma/k)^(1 + k/gamma))`` and
  a drift term ``mu / (gamma sigma^2)`` lots;
- Avellaneda-Stoikov (2008): the reservation price ``r = S + mu tau - q gamma sigma^2 tau``
  of the frozen-inventory problem over a horizon ``tau`` (its drift term is that of
  ``E[S_T] = S + mu tau``), quotes ``r -/+ (1/gamma) ln(1 + gamma/k)`` widened by half of
  ``gamma sigma^2 tau``.

With ``tau = omega / (gamma sigma^2)`` (``glft_horizon``) the two coincide exactly.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._core import validate as v
from .._core.types import Array, ArrayLike, Float


def _constant_part(gamma, k):
    return jnp.log1p(gamma / k) / gamma


def _omega(sigma, gamma, k, A):
    # (1 + gamma/k)^(1 + k/gamma) in log space: no overflow for small gamma / k.
    power = jnp.exp((1.0 + k / gamma) * jnp.log1p(gamma / k))
    return jnp.sqrt(sigma**2 * gamma / (2.0 * k * A) * power)


def glft_offsets(drift, sigma, q, gamma, k, A):
    """The GLFT quotes, unchecked (the strategies call this inside their loops)."""
    base = _constant_part(gamma, k)
    omega = _omega(sigma, gamma, k, A)
    skew = drift / (gamma * sigma**2)
    bid = base + (-skew + (2.0 * q + 1.0) / 2.0) * omega
    ask = base + (skew - (2.0 * q - 1.0) / 2.0) * omega
    return bid, ask


def as_offsets(drift, sigma, q, gamma, k, horizon):
    """The Avellaneda-Stoikov quotes, unchecked."""
    base = _constant_part(gamma, k)
    risk = gamma * sigma**2 * horizon
    bid = base - drift * horizon + (2.0 * q + 1.0) / 2.0 * risk
    ask = base + drift * horizon - (2.0 * q - 1.0) / 2.0 * risk
    return bid, ask


def _inputs(drift, sigma, inventory):
    drift = v.as_float_array("drift", drift)
    dtype = drift.dtype
    drift = v.check("drift", drift, jnp.isfinite, "finite (bps/s)")
    sigma = v.positive("sigma", sigma, dtype)
    q = v.as_float_array("inventory", inventory, dtype)
    q = v.check("inventory", q, jnp.isfinite, "finite (lots)")
    return drift, sigma, q, dtype


def glft_quotes(
    drift: Float[ArrayLike, "..."],
    sigma: Float[ArrayLike, "..."],
    inventory: Float[ArrayLike, "..."],
    *,
    gamma: Float[ArrayLike, "..."],
    k: Float[ArrayLike, "..."],
    A: Float[ArrayLike, "..."],  # noqa: N803 (the literature's name)
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """GLFT (2013) asymptotic optimal quotes with a drift, in bps from the mid.

    ``delta_bid = (1/gamma) ln(1 + gamma/k) + (-mu/(gamma sigma^2) + (2q + 1)/2) omega``,
    ``delta_ask = (1/gamma) ln(1 + gamma/k) + ( mu/(gamma sigma^2) - (2q - 1)/2) omega``,
    ``omega = sqrt(sigma^2 gamma / (2 k A) (1 + gamma/k)^(1 + k/gamma))``.

    A positive drift lowers the bid distance (buy more) and raises the ask's; a long
    inventory does the opposite, ``omega`` bps per lot. Arguments broadcast; pure
    ``jax.numpy`` (``jit``, ``vmap``, ``grad``).

    Arguments:
        drift: ``mu``, bps/s (finite).
        sigma: mid volatility, bps/sqrt(s) (> 0).
        inventory: ``q``, lots (finite; not rounded).
        gamma: risk aversion, 1/(bps lot) (> 0).
        k: decay of the fill intensity with the distance, 1/bps (> 0).
        A: fill intensity at the mid, fills/s (> 0).

    Returns:
        ``(delta_bid, delta_ask)`` in bps (bid at ``mid - delta_bid``, ask at
        ``mid + delta_ask``), not floored: a large drift puts one side through the mid.

    Example:
        >>> import drift_jax as dj
        >>> bid, ask = dj.market_making.glft_quotes(0.0, 1.0, 0.0, gamma=0.1, k=0.5, A=1.0)
        >>> round(float(bid), 4), round(float(ask), 4)  # symmetric at zero drift and inventory
        (2.0964, 2.0964)
    """
    drift, sigma, q, dtype = _inputs(drift, sigma, inventory)
    gamma = v.positive("gamma", gamma, dtype)
    k = v.positive("k", k, dtype)
    A = v.positive("A", A, dtype)  # noqa: N806
    return glft_offsets(drift, sigma, q, gamma, k, A)


def avellaneda_stoikov_quotes(
    drift: Float[ArrayLike, "..."],
    sigma: Float[ArrayLike, "..."],
    inventory: Float[ArrayLike, "..."],
    *,
    gamma: Float[ArrayLike, "..."],
    k: Float[ArrayLike, "..."],
    horizon: Float[ArrayLike, "..."],
) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """Avellaneda-Stoikov (2008) quotes around a reservation price with drift, bps from the mid.

    Reservation price ``r = S + mu tau - q gamma sigma^2 tau`` and total spread
    ``gamma sigma^2 tau + (2/gamma) ln(1 + gamma/k)``, that is

    ``delta_bid = (1/gamma) ln(1 + gamma/k) - mu tau + (2q + 1)/2 gamma sigma^2 tau``,
    ``delta_ask = (1/gamma) ln(1 + gamma/k) + mu tau - (2q - 1)/2 gamma sigma^2 tau``.

    ``r`` is the indifference price of the frozen-inventory problem with exponential
    utility over the horizon, whose mid has drift ``mu``: ``E[S_T] = S + mu tau``.

    Horizon convention: ``tau`` is the time left, in seconds. The 2008 paper quotes with
    ``tau = T - t`` (the quotes change as the end approaches); a stationary quoting rule,
    as the strategies of ``dj.market_making`` use, holds ``tau`` fixed (a rolling
    horizon). With ``tau = glft_horizon(sigma, gamma=, k=, A=)`` these are the GLFT quotes.

    Arguments:
        drift, sigma, inventory, gamma, k: as for ``glft_quotes``.
        horizon: ``tau``, seconds (> 0).

    Returns:
        ``(delta_bid, delta_ask)`` in bps, not floored.

    Example:
        >>> import drift_jax as dj
        >>> bid, ask = dj.market_making.avellaneda_stoikov_quotes(
        ...     2.0, 1.0, 1.0, gamma=0.1, k=0.5, horizon=5.0)
        >>> round(float(bid), 4), round(float(ask), 4)  # r = S + 10 - 0.5: both quotes rise
        (-7.4268, 11.5732)
    """
    drift, sigma, q, dtype = _inputs(drift, sigma, inventory)
    gamma = v.positive("gamma", gamma, dtype)
    k = v.positive("k", k, dtype)
    horizon = v.positive("horizon", horizon, dtype)
    return as_offsets(drift, sigma, q, gamma, k, horizon)


def glft_horizon(
    sigma: Float[ArrayLike, "..."],
    *,
    gamma: Float[ArrayLike, "..."],
    k: Float[ArrayLike, "..."],
    A: Float[ArrayLike, "..."],  # noqa: N803
) -> Float[Array, "..."]:
    """The Avellaneda-Stoikov horizon at which its quotes are GLFT's, ``omega / (gamma sigma^2)``.

    Both rules then skew by ``omega`` per lot and by ``mu omega / (gamma sigma^2)`` for a
    drift ``mu``, around the same constant part.

    Example:
        >>> import drift_jax as dj
        >>> round(float(dj.market_making.glft_horizon(1.0, gamma=0.1, k=0.5, A=1.0)), 4)
        5.4644
    """
    sigma = v.positive("sigma", sigma)
    dtype = sigma.dtype
    gamma = v.positive("gamma", gamma, dtype)
    k = v.positive("k", k, dtype)
    A = v.positive("A", A, dtype)  # noqa: N806
    return _omega(sigma, gamma, k, A) / (gamma * sigma**2)
