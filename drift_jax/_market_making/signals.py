"""What a strategy quotes from: a drift estimator, no signal, or the true drift.

Timing convention (the one causal choice of the harness). Step ``t`` of a path covers
``(t_{t-1}, t_t]``: its return ``r_t`` is the mid's move over it and its features ``z_t``
arrive at ``t_t``. The quote for step ``t`` is set at ``t_{t-1}`` from what is known
then: the filter's estimate after ``z_{t-1}`` (``dj.filter(...).drift[t-1]``, which uses
``z_0 .. z_{t-1}`` only) and its ``P(Crisis)``; step 0 quotes from the filter's prior
(``model.initial_state()``). So the whole path is filtered at once and the signal is the
filtered series shifted by one step: causal, with no look-ahead.

- ``NoSignal()``: drift 0 and ``P(Crisis)`` 0 at every step (the maker without a drift
  estimate);
- ``Oracle(lag=1)``: the true drift with the filters' timing, ``paths.drift[t-1]``
  (``paths.drift[0]`` at step 0), and ``P(Crisis)`` = 1 when the true regime of step
  ``t-1`` is the crisis regime: the bound a perfect estimator could reach. ``lag=0``
  quotes step ``t`` from the drift of step ``t`` itself (the drift of the return being
  traded), an upper bound no causal estimator reaches;
- a drift model (``dj.KalmanModel`` / ``dj.IMMModel``), optionally on some features only;
- ``Quoter(estimator, strategy=..., features=...)``: any of the above with a strategy of
  its own (e.g. the same IMM quoting with and without ``sigma_effective``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import validate as v
from .._filters.filter import filter as dj_filter
from .._models.model import AbstractDriftModel
from .strategy import AbstractStrategy


class NoSignal(eqx.Module):
    """Quote without a drift estimate: drift 0, ``P(Crisis)`` 0 at every step.

    Example:
        >>> import drift_jax as dj
        >>> dj.market_making.NoSignal()
        NoSignal()
    """


class Oracle(eqx.Module):
    """Quote from the true drift (and the true crisis regime) of the paths.

    Arguments:
        lag: ``1`` (default): step ``t`` quotes from the truth at the start of the step,
            ``paths.drift[t-1]``, the information timing of the filters (a perfect
            filter); ``0``: from the drift of step ``t`` itself (look-ahead by one step).

    Example:
        >>> import drift_jax as dj
        >>> dj.market_making.Oracle().lag
        1
    """

    lag: int = eqx.field(static=True)

    def __init__(self, lag=1):
        self.lag = v.integer("lag", lag, "0 or 1", lambda i: i in (0, 1))


_ESTIMATOR_KINDS = "a dj.KalmanModel / dj.IMMModel, dj.market_making.NoSignal() or Oracle()"


class Quoter(eqx.Module):
    """An estimator together with the strategy it quotes with (a backtest row).

    Arguments:
        estimator: a drift model (``dj.KalmanModel``, ``dj.IMMModel``),
            ``dj.market_making.NoSignal()`` or ``dj.market_making.Oracle()``.
        strategy: its own strategy (default: the backtest's ``strategy``).
        features: indices of the features the model sees (default: all).

    Example:
        >>> import drift_jax as dj
        >>> imm = dj.seed_imm(dj.scenarios.default_observation())
        >>> eff = dj.market_making.GLFTStrategy(volatility="effective")
        >>> row = dj.market_making.Quoter(imm, strategy=eff)
        >>> row.strategy.volatility
        'effective'
    """

    estimator: AbstractDriftModel | NoSignal | Oracle
    strategy: AbstractStrategy | None
    features: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(self, estimator, strategy=None, features=None):
        v.instance(
            "estimator", estimator, (AbstractDriftModel, NoSignal, Oracle), _ESTIMATOR_KINDS
        )
        if strategy is not None:
            v.instance(
                "strategy",
                strategy,
                AbstractStrategy,
                "None or a dj.market_making strategy (GLFTStrategy, ...)",
            )
        if features is not None:
            features = tuple(int(i) for i in np.atleast_1d(np.asarray(features)))
        self.estimator = estimator
        self.strategy = strategy
        self.features = features


def as_quoters(estimators, strategy, num_features: int) -> dict[str, Quoter]:
    """``{name: Quoter}`` with every strategy set, after checking every entry against the
    paths' ``num_features``."""
    v.instance("strategy", strategy, AbstractStrategy, "a dj.market_making strategy")
    if isinstance(estimators, AbstractDriftModel | NoSignal | Oracle | Quoter):
        estimators = {_default_name(estimators): estimators}
    if not isinstance(estimators, dict):
        raise v.ArgumentTypeError(
            "`estimators` must be a non-empty dict name -> estimator (" + _ESTIMATOR_KINDS + ", "
            f"a (model, feature indices) pair or a dj.market_making.Quoter), got "
            f"{type(estimators).__name__}."
        )
    if not estimators:
        raise ValueError(
            "`estimators` must be a non-empty dict name -> estimator, got an empty dict."
        )
    out = {}
    for name, spec in estimators.items():
        if isinstance(spec, tuple) and len(spec) == 2:
            spec = Quoter(spec[0], features=spec[1])
        elif not isinstance(spec, Quoter):
            if not isinstance(spec, AbstractDriftModel | NoSignal | Oracle):
                raise v.ArgumentTypeError(
                    f"`estimators[{name!r}]` must be {_ESTIMATOR_KINDS}, a (model, feature "
                    f"indices) pair or a dj.market_making.Quoter; got {type(spec).__name__}."
                )
            spec = Quoter(spec)
        if spec.strategy is None:
            spec = Quoter(spec.estimator, strategy, spec.features)
        _check_features(name, spec, num_features)
        out[str(name)] = spec
    return out


def _default_name(est) -> str:
    inner = est.estimator if isinstance(est, Quoter) else est
    return type(inner).__name__


def _check_features(name, spec: Quoter, num_features: int) -> None:
    model, idx = spec.estimator, spec.features
    if idx is not None and (not idx or any(not 0 <= i < num_features for i in idx)):
        raise ValueError(
            f"`estimators[{name!r}]` feature indices must lie in [0, {num_features}) (the "
            f"paths have {num_features} features), got {list(idx)}."
        )
    if not isinstance(model, AbstractDriftModel):
        return
    seen = num_features if idx is None else len(idx)
    if model.num_features != seen:
        raise ValueError(
            f"`estimators[{name!r}]` observes {model.num_features} feature(s) but the paths "
            f"give it {seen}; build its dj.Observation with {seen} loadings or pass "
            "(model, feature indices)."
        )


def _shift(series, first):
    """``[first, series[..., :-1]]`` along the last axis: the value known at each quote."""
    first = jnp.broadcast_to(first, series.shape[:-1] + (1,)).astype(series.dtype)
    return jnp.concatenate([first, series[..., :-1]], axis=-1)


def signals(estimator, features, paths, dt, method):
    """``(drift, p_crisis)`` ``[B, T]`` each: what step ``t`` of every path quotes from.

    ``dt`` is ``[B]`` (one step length per path) or ``[B, T]``; ``method`` runs the filter
    (``dj.filter``'s ``method``)."""
    dtype = paths.drift.dtype
    if isinstance(estimator, NoSignal):
        zero = jnp.zeros_like(paths.drift)
        return zero, zero
    if isinstance(estimator, Oracle):
        crisis = paths.crisis_index
        in_crisis = (
            (paths.regimes == crisis).astype(dtype) if crisis >= 0 else jnp.zeros_like(paths.drift)
        )
        if estimator.lag == 0:
            return paths.drift, in_crisis
        return _shift(paths.drift, paths.drift[:, :1]), _shift(in_crisis, 0.0)
    model = estimator
    zs = paths.features if features is None else paths.features[..., jnp.asarray(features)]
    res = jax.vmap(lambda z, d: dj_filter(model, z, d, method=method))(zs, dt)
    prior = model.initial_state()
    mean0 = model.state_moments(prior)[0][0]
    if model.crisis_index >= 0:
        p0 = model.state_regime_probs(prior)[model.crisis_index]
    else:
        p0 = jnp.zeros((), dtype)
    drift = _shift(res.drift.astype(dtype), mean0)
    p_crisis = _shift(res.p_crisis.astype(dtype), p0)
    return drift, p_crisis
