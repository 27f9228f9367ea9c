"""Return models: the density of the next interval's realised return given the filter.

Every return model scores ``returns[k + 1]`` (the return over step ``k + 1``'s interval,
of length ``dt[k + 1]``) with the filter's output after step ``k`` (information up to
``t_k`` only), for ``k = 0 .. T - 2``; a NaN return is missing and adds exactly 0.

- ``dj.RiskModel(sigma_base, crisis_amplifier)`` (``_models/risk.py``, the
  specification's form): ``N(mu_hat_k dt, sigma_eff_k^2 dt)`` with ``sigma_eff_k =
  sigma_base (1 + crisis_amplifier P_k(Crisis))``.
- ``dj.RegimeReturnModel(vols)``: the mixture over the next step's predicted regime
  probabilities ``p_{k+1|k}(j) = P(regime at step k + 1 = j | z_0..z_k)`` of
  ``N(mu_hat_k dt, vols_j^2 dt)``: the predictive density of a return whose volatility
  is that of the regime in force over the interval (what ``dj.simulate(...,
  return_vol=[...])`` draws), one vol per regime.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core import validate as v
from .._core.types import Array, Float, Scalar
from .constraints import CONSTRAINT, Positive

_LOG_2PI = math.log(2.0 * math.pi)


class AbstractReturnModel(eqx.Module):
    """What ``risk=`` takes (abstract): a model of the next interval's return.

    A concrete return model implements ``predictive_nll(result, dt, returns)``, the
    negative log-likelihood of ``returns[1:]`` given the filter ``result`` (no
    look-ahead), and ``check_model(model)``, which raises a ``ValueError`` when it does
    not fit ``model`` (e.g. one vol per regime).
    """

    @abc.abstractmethod
    def predictive_nll(self, result, dt, returns) -> Scalar:
        """``-sum_k log p(returns[k + 1] | z_0..z_k)`` (NaN returns add 0); traceable."""

    def check_model(self, model) -> None:
        """Raise a ``ValueError`` when this return model does not fit ``model``."""


def _scored(result, dt, returns):
    """``(next returns, their dt, the drift after the step before, mask of the seen)``,
    with missing returns replaced by a finite stand-in (the mean), so neither branch of a
    ``where`` makes NaN gradients."""
    drift = result.drift
    T = drift.shape[-1]
    dt = jnp.broadcast_to(jnp.asarray(dt, drift.dtype), (T,))
    nxt, dt_next = returns[1:], dt[1:]
    mean = drift[:-1] * dt_next
    seen = ~jnp.isnan(nxt)
    return jnp.where(seen, nxt, mean), dt_next, mean, seen


def gaussian_return_nll(result, sigma, dt, returns) -> Scalar:
    """``-sum_k log N(returns[k+1]; mu_hat_k dt[k+1], sigma_k^2 dt[k+1])`` for a per-step
    volatility ``sigma [T]`` after step ``k``."""
    r, dt_next, mean, seen = _scored(result, dt, returns)
    var = sigma[:-1] ** 2 * dt_next
    nll = 0.5 * (_LOG_2PI + jnp.log(var) + (r - mean) ** 2 / var)
    return jnp.sum(jnp.where(seen, nll, 0.0))


class RegimeReturnModel(AbstractReturnModel):
    """Returns with one volatility per regime: a mixture over the predicted regime.

    The return over the next interval is scored under

        p(returns[k + 1] | z_0..z_k) = sum_j p_{k+1|k}(j) N(mu_hat_k dt, vols_j^2 dt),

    with ``dt = dt[k + 1]``, the filter's drift ``mu_hat_k`` after step ``k`` and the
    next step's predicted regime probabilities ``p_{k+1|k} = p_k Pi(dt[k + 1])`` (the
    filter's ``predicted_regime_probs[k + 1]``). When the returns' volatility is that of
    the regime in force over the interval, this is their predictive density (up to the
    drift's own uncertainty, as for ``dj.RiskModel``); the specification's ``sigma_base (1
    + crisis_amplifier P(Crisis))`` is then misspecified (one Gaussian whose width is
    linear in a probability). ``vols`` is declared ``dj.Positive`` (trained as ``log``).
    For a ``dj.KalmanModel`` (one regime) it is one Gaussian with ``vols[0]``.

    Arguments:
        vols: ``[M]``, the return volatility (bps / sqrt(s)) of each regime, in the model's
            regime order, each finite and ``> 0``.

    Example:
        >>> import drift_jax as dj
        >>> ret = dj.RegimeReturnModel([10.0, 10.0, 30.0])
        >>> ret.vols.shape, ret.num_regimes
        ((3,), 3)
        >>> zs, returns = [0.3, -0.1, 0.8], [0.0, 4.0, -2.0]
        >>> nll = dj.return_nll(dj.seed_imm(), ret, zs, 0.5, returns)
        >>> bool(nll > 0)
        True
    """

    vols: Float[Array, " M"] = eqx.field(metadata={CONSTRAINT: Positive()})

    def __init__(self, vols):
        arr = v.as_float_array("vols", vols)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(
                f"`vols` must be a vector [M] with one return volatility per regime (M >= "
                f"1), got shape {arr.shape}."
            )
        self.vols = v.positive("vols", arr)

    @property
    def num_regimes(self) -> int:
        """``M``, the number of vols."""
        return int(self.vols.shape[0])

    def check_model(self, model) -> None:
        M = model.num_regimes
        if self.num_regimes != M:
            raise ValueError(
                f"`vols` must have one return volatility per regime of the model: the "
                f"{type(model).__name__} has M = {M} regime(s), got {self.num_regimes} "
                f"vol(s) {self.vols.tolist()}."
            )

    def predictive_nll(self, result, dt, returns) -> Scalar:
        r, dt_next, mean, seen = _scored(result, dt, returns)
        probs = result.predicted_regime_probs[1:]  # [T - 1, M]: p_{k+1|k}
        var = self.vols[None, :] ** 2 * dt_next[:, None]  # [T - 1, M]
        log_n = -0.5 * (_LOG_2PI + jnp.log(var) + (r - mean)[:, None] ** 2 / var)
        # log sum_j p_j N_j with the weights as `b`: a zero probability is no -inf log and
        # no NaN gradient.
        nll = -jax.nn.logsumexp(log_n, axis=-1, b=probs)
        return jnp.sum(jnp.where(seen, nll, 0.0))

    def sigma_effective(self, regime_probs: Float[Array, "*T M"]) -> Float[Array, "*T"]:
        """The mixture's standard deviation per sqrt(s), ``sqrt(sum_j p_j vols_j^2)``."""
        return jnp.sqrt(jnp.sum(jnp.asarray(regime_probs) * self.vols**2, axis=-1))
