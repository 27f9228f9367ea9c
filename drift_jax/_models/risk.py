"""Risk outputs driven by the crisis-regime probability (the specification's item C)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._core import validate as v
from .._core.types import Array, ArrayLike, Bool, Float
from .constraints import CONSTRAINT, NonNegative, Positive
from .returns import AbstractReturnModel, gaussian_return_nll


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
    threshold = v.probability("threshold", threshold)
    return jnp.asarray(p_crisis) > threshold


class RiskModel(AbstractReturnModel):
    """The return-risk side of a drift model: ``sigma_effective`` and the crisis alert.

    ``sigma_effective_t = sigma_base * (1 + crisis_amplifier * P_t(Crisis))`` is the
    volatility (bps per sqrt(second)) of the next interval's return, widened by the filter's
    crisis probability; ``is_crisis`` fires when ``P(Crisis) > threshold``. Both
    ``sigma_base`` and ``crisis_amplifier`` are learnable (``dj.fit`` with returns); the
    threshold is a setting. As a return model (``risk=`` of the losses and ``dj.fit``) it
    scores the next interval's return under ``N(mu_hat_k dt, sigma_eff_k^2 dt)``; for
    returns whose volatility is set by the regime, ``dj.RegimeReturnModel`` is the correctly
    specified alternative.

    Arguments:
        sigma_base: return volatility in calm markets (bps / sqrt(s)), ``> 0``.
        crisis_amplifier: ``>= 0``; 2.0 triples sigma when ``P(Crisis) = 1``.
        threshold: alert level for ``P(Crisis)`` in ``[0, 1]`` (default 0.3).

    Example:
        >>> import drift_jax as dj
        >>> risk = dj.RiskModel(sigma_base=10.0, crisis_amplifier=2.0)
        >>> float(risk.sigma_effective(0.5)), bool(risk.is_crisis(0.5))
        (20.0, True)
    """

    sigma_base: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: Positive()})
    crisis_amplifier: Float[Array, ""] = eqx.field(metadata={CONSTRAINT: NonNegative()})
    threshold: float = eqx.field(static=True)

    def __init__(self, sigma_base=1.0, crisis_amplifier=2.0, threshold: float = 0.3):
        self.sigma_base = v.scalar("sigma_base", v.positive("sigma_base", sigma_base))
        self.crisis_amplifier = v.scalar(
            "crisis_amplifier", v.nonnegative("crisis_amplifier", crisis_amplifier)
        )
        self.threshold = v.probability("threshold", threshold)

    def sigma_effective(self, p_crisis: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """``sigma_base * (1 + crisis_amplifier * p_crisis)``."""
        return sigma_effective(self.sigma_base, p_crisis, self.crisis_amplifier)

    def is_crisis(self, p_crisis: Float[ArrayLike, "..."]) -> Bool[Array, "..."]:
        """``p_crisis > threshold``."""
        return is_crisis(p_crisis, self.threshold)

    def predictive_nll(self, result, dt, returns):
        """``-sum_k log N(returns[k+1]; mu_hat_k dt[k+1], sigma_eff_k^2 dt[k+1])`` with
        ``sigma_eff_k`` from the filter's ``P_k(Crisis)`` (traceable, no validation)."""
        sigma = self.sigma_base * (1.0 + self.crisis_amplifier * result.p_crisis)
        return gaussian_return_nll(result, sigma, dt, returns)
