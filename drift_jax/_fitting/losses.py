"""Losses for fitting: the feature likelihood, the predictive return likelihood, priors.

- Feature NLL: ``-sum_t log p(z_t | z_<t)``, the filter's log-likelihood (Kalman or IMM).
- Predictive return NLL: ``returns[k]`` is the realised return (bps) over step ``k``'s
  interval ``(t_{k-1}, t_k]`` of length ``dt[k]``. With the filter's output after step
  ``k`` (information up to ``t_k`` only), the next return ``returns[k + 1]`` is scored
  under the return model ``risk`` (``_models/returns.py``), for ``k = 0 .. T - 2``; a NaN
  return is missing and adds 0:

  - ``dj.RiskModel`` (the specification's): ``N(mu_hat_k dt[k + 1], sigma_eff_k^2
    dt[k + 1])``, ``sigma_eff_k = sigma_base (1 + crisis_amplifier P_k(Crisis))``; a
    ``KalmanModel`` has no regimes: ``P(Crisis) = 0`` and ``sigma_eff = sigma_base``.
  - ``dj.RegimeReturnModel(vols)``: the mixture ``sum_j p_{k+1|k}(j) N(mu_hat_k dt[k + 1],
    vols_j^2 dt[k + 1])`` over the next step's predicted regime probabilities.

  Gradients reach the filter's parameters through ``mu_hat`` and the regime
  probabilities, which is what makes the return model learnable (and, in a joint fit, lets
  a misspecified return model pull the filter: see ``dj.fit``'s ``stages``).
- Priors: any callable ``(model, risk) -> log density``; ``dj.dirichlet_prior`` and
  ``dj.sticky_prior`` put a Dirichlet on each row of ``Pi``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._core import validate as v
from .._core.inputs import check_no_inf, prepare_dt, prepare_observations
from .._core.types import Array, DtLike, Float, ObsLike, Scalar
from .._filters.methods import AbstractFilterMethod, resolve_method
from .._models.model import check_model

LogPrior = Callable[..., Scalar]


def _check_model(model):
    check_model(model)


RETURN_MODELS = "a dj.RiskModel (sigma_base, crisis_amplifier) or a dj.RegimeReturnModel (vols)"


def _check_risk(risk, model=None):
    """``risk`` is a return model (and, given ``model``, one that fits it)."""
    from .._models.returns import AbstractReturnModel

    v.instance("risk", risk, AbstractReturnModel, RETURN_MODELS + " to score returns")
    if model is not None:
        risk.check_model(model)


def prepare_returns(returns, num_steps: int, dtype) -> Float[Array, " T"]:
    """``returns`` as a ``[T]`` array in ``dtype``; NaN is missing, ``+-inf`` is an error."""
    arr = v.as_float_array("returns", returns, dtype)
    if arr.shape != (num_steps,):
        raise ValueError(
            f"`returns` must have shape [T] = [{num_steps}] (one return per step of `zs`), "
            f"got shape {arr.shape}."
        )
    return check_no_inf("returns", arr)


def run_filter(model, zs, dt, method: AbstractFilterMethod):
    """The filter on inputs already checked and shaped, with a method resolved for the
    model (inside the losses)."""
    from .._filters.filter import run_filter as run

    return run(model, zs, dt, method)


def predictive_return_nll(result, risk, dt, returns) -> Scalar:
    """Return NLL from a filter ``result`` (no look-ahead); see the module docstring.

    Arguments:
        result: ``dj.filter``'s output (its ``drift`` and regime probabilities).
        risk: a return model, ``dj.RiskModel`` or ``dj.RegimeReturnModel``.
        dt: step lengths, a scalar or ``[T]``.
        returns: realised returns ``[T]`` (bps), ``returns[k]`` over step ``k``.

    Returns:
        ``-sum_k log p(returns[k+1] | z_0..z_k)``.
    """
    return risk.predictive_nll(result, dt, returns)


def feature_nll(
    model, zs: ObsLike, dt: DtLike, *, method: AbstractFilterMethod | str | None = None
) -> Scalar:
    """Minus the filter's log-likelihood of the features, ``-sum_t log p(z_t | z_<t)``.

    Arguments:
        model: a ``dj.KalmanModel`` or ``dj.IMMModel``.
        zs: features ``[T]`` or ``[T, m]`` (NaN = missing).
        dt: step lengths in seconds, a scalar or ``[T]``.
        method: how the filter runs and is differentiated, as for ``dj.filter`` (default
            ``None``: picked by the series' length, ``dj.Chunked()`` from 10,000 steps,
            else ``dj.Sequential()`` with the model's default adjoint).

    Returns:
        The negative log-likelihood (a sum over steps, not a mean).

    Example:
        >>> import drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> zs = [0.3, -0.1, 0.8]
        >>> bool(dj.feature_nll(model, zs, 0.5) == -dj.filter(model, zs, 0.5).log_likelihood)
        True
    """
    _check_model(model)
    zs = prepare_observations(zs, model.num_features, model.dtype, model.observation.feature_names)
    dt = prepare_dt(dt, zs.shape[0], model.dtype)
    method = resolve_method(method, model, num_steps=zs.shape[0])
    return -run_filter(model, zs, dt, method).log_likelihood


def return_nll(
    model,
    risk,
    zs: ObsLike,
    dt: DtLike,
    returns,
    *,
    method: AbstractFilterMethod | str | None = None,
) -> Scalar:
    """Predictive NLL of the next interval's return given the features so far.

    With ``risk = dj.RiskModel``: ``returns[k + 1] ~ N(mu_hat_k dt[k + 1], sigma_eff_k^2
    dt[k + 1])`` with the filter's drift ``mu_hat_k`` and ``sigma_eff_k = sigma_base (1 +
    crisis_amplifier P_k(Crisis))`` after step ``k``. With ``risk =
    dj.RegimeReturnModel(vols)``: the mixture ``sum_j p_{k+1|k}(j) N(mu_hat_k dt[k + 1],
    vols_j^2 dt[k + 1])`` over the predicted regime probabilities of step ``k + 1``.
    Summed over ``k = 0 .. T - 2`` (NaN returns add 0).

    Arguments:
        model: a ``dj.KalmanModel`` (``P(Crisis) = 0``, one regime) or ``dj.IMMModel``.
        risk: a return model: ``dj.RiskModel`` or ``dj.RegimeReturnModel`` (one vol per
            regime of ``model``).
        zs: features ``[T]`` or ``[T, m]``.
        dt: step lengths (s), a scalar or ``[T]``.
        returns: ``[T]``, ``returns[k]`` the realised return (bps) over ``(t_{k-1}, t_k]``.
        method: as for ``dj.filter`` (default ``None``: picked by the series' length).

    Returns:
        The negative log-likelihood (a sum over the scored intervals).

    Example:
        >>> import drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> risk = dj.RiskModel(sigma_base=2.0, crisis_amplifier=1.0)
        >>> nll = dj.return_nll(model, risk, [0.3, -0.1, 0.8], 0.5, [0.0, 0.4, float("nan")])
        >>> nll.shape
        ()
    """
    _check_model(model)
    _check_risk(risk, model)
    zs = prepare_observations(zs, model.num_features, model.dtype, model.observation.feature_names)
    dt = prepare_dt(dt, zs.shape[0], model.dtype)
    method = resolve_method(method, model, num_steps=zs.shape[0])
    returns = prepare_returns(returns, zs.shape[0], model.dtype)
    return predictive_return_nll(run_filter(model, zs, dt, method), risk, dt, returns)


def fit_loss(
    model,
    zs: ObsLike,
    dt: DtLike,
    *,
    returns=None,
    risk=None,
    feature_weight=1.0,
    return_weight=1.0,
    prior=None,
    method: AbstractFilterMethod | str | None = None,
) -> Scalar:
    """The loss ``dj.fit`` minimises, per time step.

    ``(feature_weight * feature_nll + return_weight * return_nll - log prior) / T``, with
    the return term only when ``returns`` are given (then ``risk`` is required). The
    filter runs once for both terms.

    Arguments:
        model: a ``dj.KalmanModel`` or ``dj.IMMModel``.
        zs, dt: features ``[T]`` / ``[T, m]`` and step lengths.
        returns: realised returns ``[T]`` (optional).
        risk: a return model, ``dj.RiskModel`` or ``dj.RegimeReturnModel`` (required with
            ``returns``).
        feature_weight, return_weight: weights ``>= 0`` of the two NLL terms.
        prior: ``None`` or a callable ``(model, risk) -> log prior density``.
        method: how the filter runs and is differentiated, as for ``dj.filter`` (default
            ``None``: picked by the series' length).

    Returns:
        The scalar loss.

    Example:
        >>> import drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0))
        >>> zs = [0.3, -0.1, 0.8, 0.2]
        >>> bool(abs(dj.fit_loss(model, zs, 0.5) - dj.feature_nll(model, zs, 0.5) / 4) < 1e-6)
        True
    """
    _check_model(model)
    zs = prepare_observations(zs, model.num_features, model.dtype, model.observation.feature_names)
    dt = prepare_dt(dt, zs.shape[0], model.dtype)
    method = resolve_method(method, model, num_steps=zs.shape[0])
    if returns is not None:
        _check_risk(risk, model)
        returns = prepare_returns(returns, zs.shape[0], model.dtype)
    elif risk is not None:
        _check_risk(risk, model)
    weights = check_weights(feature_weight, return_weight, model.dtype)
    check_prior(prior)
    return objective(model, risk, zs, dt, returns, weights, prior, method)


def check_weights(feature_weight, return_weight, dtype) -> Float[Array, "2"]:
    fw = v.scalar("feature_weight", v.nonnegative("feature_weight", feature_weight, dtype))
    rw = v.scalar("return_weight", v.nonnegative("return_weight", return_weight, dtype))
    return jnp.stack([fw, rw])


def check_prior(prior) -> None:
    if prior is not None and not callable(prior):
        raise v.ArgumentTypeError(
            f"`prior` must be None or a callable (model, risk) -> log prior density, "
            f"got {prior!r}."
        )


def objective(model, risk, zs, dt, returns, weights, prior, method) -> Scalar:
    """``fit_loss`` on inputs already checked and shaped and a resolved method (traceable,
    no validation)."""
    result = run_filter(model, zs, dt, method)
    total = weights[0] * -result.log_likelihood
    if returns is not None:
        total = total + weights[1] * predictive_return_nll(result, risk, dt, returns)
    if prior is not None:
        total = total - jnp.asarray(prior(model, risk), total.dtype)
    return total / zs.shape[0]


def _require_imm(model):
    from .._filters.imm import IMMModel

    # The prior is on IMMModel's `transition` field itself (a learnable Pi), which only
    # that model kind has: the one class check that stays.
    if not isinstance(model, IMMModel):
        raise v.ArgumentTypeError(
            f"a Dirichlet prior on `Pi` needs a dj.IMMModel, got {type(model).__name__}."
        )
    if model.transition is None:
        raise ValueError(
            "a Dirichlet prior is on a per-cycle transition matrix `Pi`; this dj.IMMModel has "
            "continuous-time `rates` instead (its Pi = expm(Q dt) depends on the step). Put "
            "a prior on the rates as a callable `prior=lambda model, risk: ...` instead."
        )


def dirichlet_log_density(Pi: Array, alpha: Array) -> Scalar:
    """``sum_i log Dir(Pi[i]; alpha[i])``; an entry with ``alpha = 1`` adds no ``log Pi``."""
    log_norm = jnp.sum(
        jax.scipy.special.gammaln(jnp.sum(alpha, axis=1))
        - jnp.sum(jax.scipy.special.gammaln(alpha), axis=1)
    )
    flat = alpha == 1.0
    safe = jnp.where(flat, 1.0, Pi)
    return log_norm + jnp.sum(jnp.where(flat, 0.0, (alpha - 1.0) * jnp.log(safe)))


def dirichlet_prior(concentration) -> LogPrior:
    """A Dirichlet prior on each row of ``Pi``: ``Pi[i] ~ Dir(concentration[i])``.

    Arguments:
        concentration: ``alpha``, ``[M, M]``, every entry ``> 0`` (1 is flat; above 1
            pulls away from 0).

    Returns:
        A callable ``(model, risk) -> sum_i log Dir(Pi[i]; alpha[i])`` (the normalised
        density) for a ``dj.IMMModel``. An entry with ``alpha = 1`` contributes no
        ``log Pi`` term, so a structural zero of ``Pi`` there stays finite.

    Example:
        >>> import drift_jax as dj
        >>> prior = dj.dirichlet_prior([[9.0, 1.0, 1.0], [1.0, 9.0, 1.0], [1.0, 1.0, 9.0]])
        >>> round(float(prior(dj.seed_imm(), None)), 3)
        11.403
    """
    alpha = v.positive("concentration", concentration)
    if alpha.ndim != 2 or alpha.shape[0] != alpha.shape[1]:
        raise ValueError(
            f"`concentration` must be a square [M, M] matrix, got shape {alpha.shape}."
        )
    alpha_np = np.asarray(alpha, dtype=np.float64)

    def log_prior(model, risk=None) -> Scalar:
        _require_imm(model)
        Pi = model.transition
        if Pi.shape != alpha_np.shape:
            raise ValueError(
                f"`concentration` has shape {alpha_np.shape} but the model's transition "
                f"matrix `Pi` has shape {Pi.shape}."
            )
        return dirichlet_log_density(Pi, jnp.asarray(alpha_np, Pi.dtype))

    return log_prior


def sticky_prior(concentration) -> LogPrior:
    """A stickiness prior: ``Pi[i] ~ Dir(1 + concentration * e_i)`` for every row ``i``.

    Its log density is ``concentration * sum_i log Pi[i, i]`` plus a constant: it favours
    regimes that persist and is flat off the diagonal (``concentration = 0``: flat).

    Arguments:
        concentration: ``>= 0``, pseudo-counts of staying in the same regime, per row.

    Returns:
        A callable ``(model, risk) -> log prior`` for a ``dj.IMMModel`` of any ``M``; see
        ``dj.dirichlet_prior``.

    Example:
        >>> import drift_jax as dj
        >>> prior = dj.sticky_prior(10.0)
        >>> round(float(prior(dj.seed_imm(), None)), 3)
        12.028
    """
    c = float(v.scalar("concentration", v.nonnegative("concentration", concentration)))

    def log_prior(model, risk=None) -> Scalar:
        _require_imm(model)
        Pi = model.transition
        M = Pi.shape[0]
        alpha = 1.0 + c * jnp.eye(M, dtype=Pi.dtype)
        return dirichlet_log_density(Pi, alpha)

    return log_prior
