"""A smooth objective for tuning a strategy and its estimator by gradient, and its optimiser.

The sampled backtest's PnL is a step function of the parameters (a fill happens or not),
so its gradient is zero almost everywhere. The relaxation here replaces every sampled
fill by its probability and runs the loop on the expected (fluid) inventory and cash
(``loop.run_path`` without uniforms): along each path

    q_{t} = q_{t-1} + p_bid,t clip(Q - q_{t-1}, 0, 1) - p_ask,t clip(Q + q_{t-1}, 0, 1),

with the quotes of step ``t`` computed from the signal and ``q_{t-1}``, and the cash
moving by the expected fills at the quoted prices. The PnL ``cash_T + q_T S_T`` is then a
smooth function of the strategy's parameters (``gamma``, ``crisis_amplifier``, ...) and,
through the filter's drift and ``P(Crisis)``, of the estimator's (``Pi``, the regimes'
``sigma``, ``R``, ...): every step is differentiable (``dj.filter``'s reverse pass).

What it approximates: the expectation over the fill draws of the sampled backtest's PnL
on the same paths. It is exact when the quotes do not depend on the inventory (then the
expected cash is linear in the fill probabilities); otherwise the quotes are evaluated at
the expected inventory instead of averaged over its distribution (a mean-field, or
certainty-equivalent, approximation), an error of second order in the spread of the
inventory around its mean, and the hard limit ``|q| <= Q`` becomes the continuous room
``clip(Q -/+ q, 0, 1)``. The inventory penalty ``phi sum q_t^2 dt_t`` is likewise taken at
the expected inventory, so it omits the inventory's variance (it understates the sampled
penalty). Both are known biases; ``tests/test_market_making_objective.py`` measures that
the relaxation's optimum lies within the sampled backtest's standard error of a grid
search's optimum.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._core import multihost, validate as v
from .._core.types import Array, Float, Int
from .._filters.methods import SEQUENTIAL
from .._fitting.params import constrain, trainable_mask, unconstrain
from .._simulation.simulate import Paths
from .backtest import step_lengths
from .loop import run_path
from .signals import Quoter, as_quoters, signals
from .strategy import FillModel


class TuneParams(NamedTuple):
    """What ``tune`` trains: the ``strategy`` and the ``estimator`` (a pytree pair;
    ``trainable`` selectors read ``p.strategy`` and ``p.estimator``)."""

    strategy: Any
    estimator: Any


class ExpectedPnL(eqx.Module):
    """The relaxed (expected-fill) backtest of each path; every field is ``[B]``.

    Attributes:
        pnl: expected PnL ``cash_T + q_T S_T`` (bps of one lot).
        spread_pnl: expected spread captured, ``sum p delta``.
        inventory_pnl: ``sum q_t r_t`` at the expected inventory.
        q_sq_time: ``sum q_t^2 dt_t`` at the expected inventory (lots^2 s).
        score: ``pnl - inventory_penalty * q_sq_time``.
        fills_bid, fills_ask: expected fills per side.
        final_q: expected inventory at the end.
        duration: path length (s).
    """

    pnl: Float[Array, " B"]
    spread_pnl: Float[Array, " B"]
    inventory_pnl: Float[Array, " B"]
    q_sq_time: Float[Array, " B"]
    score: Float[Array, " B"]
    fills_bid: Float[Array, " B"]
    fills_ask: Float[Array, " B"]
    final_q: Float[Array, " B"]
    duration: Float[Array, " B"]


def _check(estimator, paths, strategy, fills, features):
    v.instance("paths", paths, Paths, "dj.Paths (in memory)")
    spec = Quoter(estimator, features=features)
    quoter = as_quoters({"estimator": spec}, strategy, paths.num_features)["estimator"]
    if fills is None:
        fills = strategy.order_flow()
    v.instance("fills", fills, FillModel, "None or a dj.market_making.FillModel")
    return quoter, fills


@eqx.filter_jit
def _expected(strategy, estimator, features, paths, dt, fills, penalty, method):
    drift, p = signals(estimator, features, paths, dt, method)
    loop = jax.vmap(run_path, in_axes=(None, None, 0, 0, 0, 0))
    steps = loop(strategy, fills, drift, p, paths.returns, paths.dt)
    q = steps["q"]
    sq = jnp.sum(q * q * paths.dt, axis=1)
    pnl = steps["pnl"][:, -1]
    return ExpectedPnL(
        pnl=pnl,
        spread_pnl=jnp.sum(steps["spread"], axis=1),
        inventory_pnl=jnp.sum(q * paths.returns, axis=1),
        q_sq_time=sq,
        score=pnl - penalty * sq,
        fills_bid=jnp.sum(steps["fill_bid"], axis=1),
        fills_ask=jnp.sum(steps["fill_ask"], axis=1),
        final_q=q[:, -1],
        duration=jnp.sum(paths.dt, axis=1),
    )


def expected_pnl(
    estimator,
    paths: Paths,
    strategy,
    *,
    fills: FillModel | None = None,
    features=None,
    inventory_penalty=0.0,
    method=SEQUENTIAL,
) -> ExpectedPnL:
    """The backtest in expectation over the fills (the module docstring's relaxation).

    Arguments:
        estimator: a drift model, ``NoSignal()`` or ``Oracle()`` (one, not a dict).
        paths: ``dj.Paths`` (in memory; a batch for tuning).
        strategy: the quoting rule.
        fills: the order flow (default: the strategy's ``A``, ``k``, resting).
        features: the feature indices the model sees (default: all).
        inventory_penalty: ``phi`` of the score (bps per lot^2 per second, ``>= 0``).
        method: the filter's method (default ``dj.Sequential()``: differentiable).

    Returns:
        ``ExpectedPnL`` (per path). Differentiable with respect to the strategy, the
        estimator and ``fills`` (``jax.grad``).

    Example:
        >>> import jax, drift_jax as dj
        >>> mm = dj.market_making
        >>> paths = dj.scenarios.liquidation_cascade(jax.random.key(0), 4, n_steps=400,
        ...                                          start=10.0, hold_time=20.0)
        >>> e = mm.expected_pnl(mm.Oracle(), paths, mm.GLFTStrategy())
        >>> e.pnl.shape, bool((abs(e.final_q) <= 10).all())
        ((4,), True)
    """
    quoter, fills = _check(estimator, paths, strategy, fills, features)
    penalty = v.nonnegative("inventory_penalty", inventory_penalty, paths.drift.dtype)
    return _expected(
        quoter.strategy,
        quoter.estimator,
        quoter.features,
        paths,
        step_lengths(paths),
        fills,
        penalty,
        method,
    )


def objective(
    strategy,
    estimator,
    paths: Paths,
    *,
    fills: FillModel | None = None,
    features=None,
    inventory_penalty=0.0,
    method=SEQUENTIAL,
) -> Float[Array, ""]:
    """The smooth loss: minus the expected score per hour over ``paths``.

    ``-sum_paths E[score] / sum_paths hours``, the score being
    ``PnL - inventory_penalty * sum q^2 dt`` at the expected inventory (``expected_pnl``;
    the module docstring says what the relaxation approximates). Its sampled counterpart
    is ``-backtest(..., inventory_penalty=phi).per_path[name]["score"]`` per hour.
    Arguments as ``expected_pnl``; the strategy comes first so ``jax.grad(objective)``
    differentiates it.

    Example:
        >>> import jax, drift_jax as dj
        >>> mm = dj.market_making
        >>> paths = dj.scenarios.liquidation_cascade(jax.random.key(0), 4, n_steps=400,
        ...                                          start=10.0, hold_time=20.0)
        >>> g = jax.grad(mm.objective)(mm.GLFTStrategy(), mm.Oracle(), paths)
        >>> bool(jax.numpy.isfinite(g.gamma))
        True
    """
    e = expected_pnl(
        estimator,
        paths,
        strategy,
        fills=fills,
        features=features,
        inventory_penalty=inventory_penalty,
        method=method,
    )
    return -jnp.sum(e.score) / jnp.sum(e.duration / 3600.0)


class TuneResult(eqx.Module):
    """What ``tune`` returns.

    Attributes:
        strategy, estimator: the tuned pair.
        loss_history: the loss (minus the expected score per hour) before each step.
        num_steps: optimiser steps applied.
    """

    strategy: Any
    estimator: Any
    loss_history: Float[Array, " steps"]
    num_steps: Int[Array, ""]


@functools.cache
def _default_optimizer() -> optax.GradientTransformation:
    # One object for every call, so the compiled chunk is reused across runs.
    return optax.adam(5e-2)


def _default_trainable(params: TuneParams):
    s = params.strategy
    if getattr(s, "volatility", None) == "effective":
        return lambda p: (p.strategy.gamma, p.strategy.crisis_amplifier)
    if hasattr(s, "gamma"):
        return lambda p: p.strategy.gamma
    raise ValueError(f"pass `trainable`: {type(s).__name__} has no `gamma` to tune by default.")


@eqx.filter_jit
def _tune_chunk(raw, opt_state, step, steps, params, data, optimizer, method, length):
    """``length`` optimiser steps; those at or past ``steps`` (traced) change nothing, so
    every chunk has one length and is compiled once."""
    features, paths, dt, fills, penalty = data

    def loss_fn(r):
        p = constrain(r, params)
        e = _expected(p.strategy, p.estimator, features, paths, dt, fills, penalty, method)
        return -jnp.sum(e.score) / jnp.sum(e.duration / 3600.0)

    def body(carry, _):
        r, s, i = carry
        loss, grad = jax.value_and_grad(loss_fn)(r)
        updates, new_s = optimizer.update(grad, s, r)
        on = i < steps
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(on, a, b), new, old)  # noqa: E731
        r = keep(optax.apply_updates(r, updates), r)
        return (r, keep(new_s, s), i + 1), jnp.where(on, loss, jnp.nan)

    return jax.lax.scan(body, (raw, opt_state, step), None, length=length)


def tune(
    strategy,
    estimator,
    paths: Paths,
    *,
    trainable=None,
    steps: int = 200,
    optimizer: optax.GradientTransformation | None = None,
    fills: FillModel | None = None,
    features=None,
    inventory_penalty=0.0,
    steps_per_call: int = 50,
    progress: bool | None = None,
    method=SEQUENTIAL,
) -> TuneResult:
    """Tune a strategy's risk parameters (and its estimator's) by gradient on ``objective``.

    As ``dj.fit`` does for a model: every selected field is trained in the free
    coordinates its constraint declares (``dj.unconstrain``: ``log gamma``, ``log
    crisis_amplifier``, row logits of ``Pi``, ...), so every iterate is valid; an optax
    optimiser runs inside ``jit`` as a ``lax.scan`` of ``steps_per_call`` steps, with a
    tqdm progress bar between chunks (``steps`` is traced: one compilation per model
    structure, whatever the number of steps). The fields not selected come back bit for bit.

    Arguments:
        strategy, estimator, paths, fills, features, inventory_penalty, method: as for
            ``objective`` (``paths``: the training batch).
        trainable: a selector over ``TuneParams(strategy, estimator)``, e.g.
            ``lambda p: (p.strategy.gamma, p.estimator.transition)``, or a pytree of bools
            (``dj.trainable_mask``). Default: ``gamma``, and ``crisis_amplifier`` when the
            strategy quotes with ``volatility="effective"``.
        steps: optimiser steps (int >= 1).
        optimizer: an optax ``GradientTransformation`` (default ``optax.adam(5e-2)``).
        steps_per_call: steps per compiled call.
        progress: show a progress bar (default: more than 4 calls).

    Returns:
        ``TuneResult`` (``strategy``, ``estimator``, ``loss_history``, ``num_steps``).

    Example:
        >>> import jax, drift_jax as dj
        >>> mm = dj.market_making
        >>> paths = dj.scenarios.liquidation_cascade(jax.random.key(0), 4, n_steps=300,
        ...                                          start=10.0, hold_time=10.0)
        >>> res = mm.tune(mm.GLFTStrategy(), mm.Oracle(), paths, steps=20)
        >>> bool(res.loss_history[-1] < res.loss_history[0])
        True
    """
    quoter, fills = _check(estimator, paths, strategy, fills, features)
    steps = v.positive_int("steps", steps)
    steps_per_call = v.positive_int("steps_per_call", steps_per_call)
    optimizer = _default_optimizer() if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise v.ArgumentTypeError(
            "`optimizer` must be an optax GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {type(optimizer).__name__}."
        )
    params = TuneParams(quoter.strategy, quoter.estimator)
    selector = _default_trainable(params) if trainable is None else trainable
    mask = trainable_mask(params, selector)
    raw = unconstrain(params, mask)
    if not jax.tree.leaves(raw):
        raise ValueError(f"`trainable` selects no field to train; got trainable={trainable!r}.")
    penalty = v.nonnegative("inventory_penalty", inventory_penalty, paths.drift.dtype)
    data = (quoter.features, paths, step_lengths(paths), fills, penalty)
    opt_state = optimizer.init(raw)
    calls = -(-steps // steps_per_call)
    show = calls > 4 if progress is None else v.boolean("progress", progress)
    bar = None
    if show and multihost.is_main_process():  # one bar in a run of several processes
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, unit="step", desc="tune")
    losses = []
    step = jnp.asarray(0, jnp.int32)
    total = jnp.asarray(steps, jnp.int32)
    for _ in range(calls):
        (raw, opt_state, step), chunk = _tune_chunk(
            raw, opt_state, step, total, params, data, optimizer, method, steps_per_call
        )
        losses.append(chunk)
        if bar is not None:
            bar.update(min(steps_per_call, steps - len(losses[:-1]) * steps_per_call))
    if bar is not None:
        bar.close()
    tuned = constrain(raw, params)
    return TuneResult(
        tuned.strategy,
        tuned.estimator,
        jnp.concatenate(losses)[:steps],
        jnp.asarray(steps, jnp.int32),
    )
