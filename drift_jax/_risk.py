"""Risk outputs driven by the crisis-regime probability (the specification's item C)."""

from __future__ import annotations

import jax.numpy as jnp

from . import _validate as v
from ._types import Array, ArrayLike, Bool, Float


def sigma_effective(
    sigma: Float[ArrayLike, "..."],
    p_crisis: Float[ArrayLike, "..."],
    crisis_amplifier: Float[ArrayLike, "..."] = 2.0,
) -> Float[Array, "..."]:
    """Volatility widened by regime uncertainty: ``sigma * (1 + crisis_amplifier * P(Crisis))``.

    Arguments:
        sigma: base volatility (any units; the result has the same), ``>= 0``.
        p_crisis: probability of the Crisis regime, in ``[0, 1]``.
        crisis_amplifier: ``>= 0``; with 2.0, ``P(Crisis) = 0.5`` doubles sigma.

    Example:
        >>> import drift_jax as dj
        >>> float(dj.sigma_effective(10.0, 0.5, 2.0))
        20.0
    """
    sigma = v.nonnegative("sigma", sigma)
    p = v.as_float_array("p_crisis", p_crisis)
    p = v.check("p_crisis", p, lambda x: (x >= 0) & (x <= 1), "a probability in [0, 1]")
    amp = v.nonnegative("crisis_amplifier", crisis_amplifier)
    return sigma * (1.0 + amp * p)


def is_crisis(p_crisis: Float[ArrayLike, "..."], threshold: float = 0.3) -> Bool[Array, "..."]:
    """``P(Crisis) > threshold`` (the specification's alert, default threshold 0.3)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"`threshold` must be in [0, 1], got threshold={threshold!r}.")
    return jnp.asarray(p_crisis) > threshold
