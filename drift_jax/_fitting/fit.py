"""``dj.fit`` / ``dj.fit_batch``: gradient fitting of a drift model and its return risk.

The optimiser loop runs inside ``jit``: a ``lax.scan`` over ``steps_per_call`` steps of
``(free coordinates, optimiser state)``, ``vmap``-ed over the starting points and, for
``dj.fit_batch``, over instruments. The Python loop outside only moves between chunks
(progress bar, checkpoint, early stopping); ``steps``, ``rtol`` and ``patience`` are traced,
so a chunk is compiled once per model structure and data shape, not per setting.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._core import validate as v
from .._core.inputs import check_no_inf, prepare_dt, prepare_observations
from .._core.types import Array, Bool, Float, Int
from .._filters.methods import SEQUENTIAL, resolve_method
from .losses import (
    _check_model,
    _check_risk,
    check_prior,
    check_weights,
    objective,
    prepare_returns,
)
from .params import FitParams, constrain, perturb, trainable_mask, unconstrain


@functools.cache
def _default_optimizer() -> optax.GradientTransformation:
    # One object for every call, so the compiled chunk is reused across fits.
    return optax.adam(1e-2)


class FitResult(eqx.Module):
    """What ``dj.fit`` returns (``dj.fit_batch``: every field has a leading axis ``N``).

    Attributes:
        model: the fitted model (the best start's).
        risk: the fitted ``dj.RiskModel``, or ``None`` when there was none.
        loss_history: the loss (per time step) before each optimiser step, ``[steps]``;
            NaN after the fit stopped early.
        converged: whether the relative change of the loss stayed below ``rtol`` for
            ``patience`` steps in a row (``False`` when ``steps`` ran out first, or the
            loss became non-finite).
        num_steps: optimiser steps applied.
        best_start: index of the start kept (0 is the given model, unperturbed).
        losses_per_start: final loss of every start, ``[n_starts]``.
    """

    model: Any
    risk: Any
    loss_history: Float[Array, "*batch steps"]
    converged: Bool[Array, "*batch"]
    num_steps: Int[Array, "*batch"]
    best_start: Int[Array, "*batch"]
    losses_per_start: Float[Array, "*batch starts"]

    @property
    def params(self) -> FitParams:
        """``dj.FitParams(model, risk)``."""
        return FitParams(self.model, self.risk)


class _FitState(eqx.Module):
    """Loop carry; leaves of ``raw`` / ``opt_state`` and the flags have leading ``[N, S]``."""

    raw: Any
    opt_state: Any
    step: Int[Array, ""]
    last_loss: Float[Array, "N S"]
    calm: Int[Array, "N S"]
    done: Bool[Array, "N S"]
    failed: Bool[Array, "N S"]
    num_steps: Int[Array, "N S"]


class _Data(eqx.Module):
    """Per-instrument inputs: ``zs [N, T, m]``, ``dt`` scalar / ``[T]`` / ``[N, T]``,
    ``returns [N, T]`` or ``None``."""

    zs: Float[Array, "N T m"]
    dt: Float[Array, "..."]
    returns: Float[Array, "N T"] | None
    dt_batched: bool = eqx.field(static=True)


def _select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def _split(data: _Data):
    """``vmap`` inputs and axes over instruments: ``(zs, dt, returns)``."""
    axes = (0, 0 if data.dt_batched else None, None if data.returns is None else 0)
    return (data.zs, data.dt, data.returns), axes


@eqx.filter_jit
def _run_chunk(
    state: _FitState, params, data: _Data, weights, settings, optimizer, prior, method, length
):
    """``length`` optimiser steps of every (instrument, start); returns the losses."""
    steps, rtol, patience = settings
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def one(raw, opt_state, last, calm, done, failed, num, inputs, on):
        def value_fn(r):
            p = constrain(r, params)
            return objective(p.model, p.risk, *inputs, weights, prior, method)

        loss, grad = jax.value_and_grad(value_fn)(raw)
        active = on & ~done
        finite = jnp.isfinite(loss)
        small = (rtol > 0) & (jnp.abs(loss - last) <= rtol * jnp.abs(last))
        calm = jnp.where(active, jnp.where(small, calm + 1, 0), calm)
        stop = active & (~finite | (calm >= patience))
        apply = active & ~stop
        if extra:  # e.g. optax.lbfgs: line searches need the value and the function
            kwargs = dict(value=loss, grad=grad, value_fn=value_fn)
            updates, new_opt = optimizer.update(grad, opt_state, raw, **kwargs)
        else:
            updates, new_opt = optimizer.update(grad, opt_state, raw)
        new_raw = optax.apply_updates(raw, updates)
        out = (
            _select(apply, new_raw, raw),
            _select(apply, new_opt, opt_state),
            jnp.where(active, loss, last),
            calm,
            done | stop,
            failed | (active & ~finite),
            num + apply.astype(num.dtype),
        )
        return out, jnp.where(active, loss, jnp.nan)

    inputs, axes = _split(data)
    over_starts = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None))
    over_all = jax.vmap(over_starts, in_axes=(0, 0, 0, 0, 0, 0, 0, axes, None))

    def body(s: _FitState, _):
        on = s.step < steps
        carry, losses = over_all(
            s.raw, s.opt_state, s.last_loss, s.calm, s.done, s.failed, s.num_steps, inputs, on
        )
        return _FitState(carry[0], carry[1], s.step + 1, *carry[2:]), losses

    return jax.lax.scan(body, state, None, length=length)


@eqx.filter_jit
def _final_losses(raw, params, data: _Data, weights, prior, method):
    def value(r, inputs):
        p = constrain(r, params)
        return objective(p.model, p.risk, *inputs, weights, prior, method)

    inputs, axes = _split(data)
    over_starts = jax.vmap(value, in_axes=(0, None))
    return jax.vmap(over_starts, in_axes=(0, axes))(raw, inputs)


def default_trainable(params: FitParams, with_returns: bool) -> FitParams:
    """The fields ``dj.fit`` trains by default (see ``dj.fit``), as a pytree of bools."""
    mask = jax.tree.map(lambda _: True, params)
    held = [lambda p: p.model.observation.loadings]
    # The prior before the first step (init_mean, init_cov and, with regimes, init_probs).
    held += [lambda p, f=f: getattr(p.model, f) for f in params.model.initial_prior_fields()]
    if params.risk is not None:
        if not with_returns:
            held.append(lambda p: p.risk)
        elif params.model.crisis_index < 0:
            held.append(lambda p: p.risk.crisis_amplifier)  # P(Crisis) = 0: no information
    for where in held:
        mask = eqx.tree_at(where, mask, replace_fn=lambda n: jax.tree.map(lambda _: False, n))
    return mask


def trainable_coordinates(params: FitParams, trainable, with_returns: bool):
    """``(mask, free coordinates)`` of the fields ``trainable`` selects (default:
    ``default_trainable``); shared by ``dj.fit`` and ``dj.standard_errors``."""
    if trainable is None:
        mask = default_trainable(params, with_returns)
    else:
        mask = trainable_mask(params, trainable)
    raw = unconstrain(params, mask)
    if not jax.tree.leaves(raw):
        raise ValueError(f"`trainable` selects no field to train; got trainable={trainable!r}.")
    return mask, raw


def _prepare_data(model, zs, dt, returns, batched: bool) -> _Data:
    dtype, m = model.dtype, model.num_features
    if not batched:
        z = prepare_observations(zs, m, dtype)
        T = z.shape[0]
        d = prepare_dt(dt, T, dtype)
        r = None if returns is None else prepare_returns(returns, T, dtype)[None]
        return _Data(z[None], d, r, False)
    z = v.as_float_array("zs", zs, dtype)
    if z.ndim == 2 and m == 1:
        z = z[..., None]
    if z.ndim != 3 or z.shape[2] != m or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(
            f"`zs` must have shape [N, T] (one feature) or [N, T, m] with m={m} features, "
            f"N >= 1 instruments and T >= 1 steps, got shape {z.shape}."
        )
    z = check_no_inf("zs", z)
    N, T = z.shape[:2]
    d = v.as_float_array("dt", dt, dtype)
    if d.shape not in ((), (T,), (N, T)):
        raise ValueError(
            f"`dt` must be a scalar, [T] = [{T}] (shared) or [N, T] = [{N}, {T}], "
            f"got shape {d.shape}."
        )
    d = v.check("dt", d, lambda x: jnp.isfinite(x) & (x > 0), "finite and > 0 (seconds)")
    r = None
    if returns is not None:
        r = v.as_float_array("returns", returns, dtype)
        if r.shape != (N, T):
            raise ValueError(
                f"`returns` must have shape [N, T] = [{N}, {T}] (one return per step of "
                f"`zs`), got shape {r.shape}."
            )
        r = check_no_inf("returns", r)
    return _Data(z, d, r, d.ndim == 2)


def _stack(trees: list):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _save(path: Path, starts, state: _FitState, history: np.ndarray, step: int) -> None:
    N, S = history.shape[1:]
    header = np.array([1, step, N, S], dtype=np.int64)  # format version, step, N, S
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        eqx.tree_serialise_leaves(f, header)
        eqx.tree_serialise_leaves(f, (starts, state, history[:step]))
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a torn checkpoint


def _load(path: Path, starts, state: _FitState, N: int, S: int):
    with open(path, "rb") as f:
        header = eqx.tree_deserialise_leaves(f, np.zeros(4, np.int64))
        version, step, n_saved, s_saved = (int(x) for x in header)
        if version != 1 or (n_saved, s_saved) != (N, S):
            raise ValueError(
                f"`checkpoint` {str(path)!r} holds a fit of {n_saved} instrument(s) x "
                f"{s_saved} start(s) (format {version}); this fit has {N} x {S}."
            )
        like = (starts, state, np.zeros((step, N, S), np.asarray(state.last_loss).dtype))
        loaded = eqx.tree_deserialise_leaves(f, like)
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(loaded), strict=True):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise ValueError(
                f"`checkpoint` {str(path)!r} was written by a fit of another model, data "
                f"size or optimiser (a leaf of shape {np.shape(b)} where {np.shape(a)} is "
                f"expected)."
            )
    saved_starts, saved_state, history = loaded
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b, equal_nan=True)), starts, saved_starts
    )
    if not all(jax.tree.leaves(same)):
        raise ValueError(
            f"`checkpoint` {str(path)!r} was written by a fit from other starting values "
            f"(model, trainable fields, key, n_starts or init_scale differ); pass "
            f"resume=False to start afresh."
        )
    return saved_state, history, step


def _drive(
    model,
    zs,
    dt,
    *,
    batched,
    returns,
    risk,
    trainable,
    optimizer,
    steps,
    feature_weight,
    return_weight,
    prior,
    n_starts,
    key,
    init_scale,
    rtol,
    patience,
    steps_per_call,
    checkpoint,
    resume,
    progress,
    method,
) -> FitResult:
    _check_model(model)
    method = resolve_method(method, model)
    if risk is not None:
        _check_risk(risk)
    if returns is not None and risk is None:
        raise ValueError(
            "`returns` are scored under sigma_effective = sigma_base (1 + crisis_amplifier "
            "P(Crisis)), so they need a starting `risk=dj.RiskModel(sigma_base, "
            "crisis_amplifier)`; got risk=None."
        )
    steps = v.positive_int("steps", steps, "an integer")
    steps_per_call = v.positive_int("steps_per_call", steps_per_call, "an integer")
    n_starts = v.positive_int("n_starts", n_starts, "an integer")
    patience = v.positive_int("patience", patience, "an integer")
    dtype = model.dtype
    rtol = v.scalar("rtol", v.nonnegative("rtol", rtol, dtype))
    init_scale = float(v.scalar("init_scale", v.nonnegative("init_scale", init_scale)))
    weights = check_weights(feature_weight, return_weight, dtype)
    check_prior(prior)
    optimizer = _default_optimizer() if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise v.ArgumentTypeError(
            f"`optimizer` must be an optax.GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {optimizer!r}."
        )
    if resume and checkpoint is None:
        raise ValueError("`resume=True` needs a `checkpoint` path to resume from; got None.")
    path = None if checkpoint is None else Path(checkpoint)
    data = _prepare_data(model, zs, dt, returns, batched)

    params = FitParams(model, risk)
    mask, raw0 = trainable_coordinates(params, trainable, returns is not None)
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, n_starts)
    starts = _stack([raw0] + [perturb(raw0, keys[s], init_scale) for s in range(1, n_starts)])
    N, S = data.zs.shape[0], n_starts
    raw = jax.tree.map(lambda x: jnp.broadcast_to(x, (N, *x.shape)), starts)
    opt_state = jax.vmap(jax.vmap(optimizer.init))(raw)
    state = _FitState(
        raw,
        opt_state,
        jnp.zeros((), jnp.int32),
        jnp.full((N, S), jnp.nan, dtype),
        jnp.zeros((N, S), jnp.int32),
        jnp.zeros((N, S), bool),
        jnp.zeros((N, S), bool),
        jnp.zeros((N, S), jnp.int32),
    )
    history = np.full((steps, N, S), np.nan, dtype=np.dtype(dtype))
    step = 0
    if resume and path is not None and path.exists():
        state, saved, step = _load(path, starts, state, N, S)
        if step > steps:
            raise ValueError(
                f"`checkpoint` {str(path)!r} is at step {step}, beyond steps={steps}; pass "
                f"steps >= {step} to continue it (or resume=False to start afresh)."
            )
        history[:step] = np.asarray(saved)
    settings = (jnp.asarray(steps, jnp.int32), rtol, jnp.asarray(patience, jnp.int32))

    from tqdm.auto import tqdm

    with tqdm(total=steps, initial=step, disable=not progress, desc="dj.fit") as bar:
        while step < steps and not bool(jnp.all(state.done)):
            state, losses = _run_chunk(
                state, params, data, weights, settings, optimizer, prior, method, steps_per_call
            )
            new_step = min(step + steps_per_call, steps)
            history[step:new_step] = np.asarray(losses)[: new_step - step]
            state = eqx.tree_at(lambda s: s.step, state, jnp.asarray(new_step, jnp.int32))
            bar.update(new_step - step)
            bar.set_postfix(loss=f"{float(np.nanmin(np.asarray(state.last_loss))):.6g}")
            step = new_step
            if path is not None:
                _save(path, starts, state, history, step)

    finals = _final_losses(state.raw, params, data, weights, prior, method)  # [N, S]
    best = jnp.argmin(jnp.where(jnp.isnan(finals), jnp.inf, finals), axis=1)
    idx = jnp.arange(N)
    best_raw = jax.tree.map(lambda x: x[idx, best], state.raw)
    converged = (state.done & ~state.failed)[idx, best]
    hist = jnp.asarray(history[:, np.arange(N), np.asarray(best)].T)  # [N, steps]
    if batched:
        fitted = jax.vmap(lambda r: constrain(r, params))(best_raw)
        return FitResult(
            fitted.model,
            fitted.risk,
            hist,
            converged,
            state.num_steps[idx, best],
            best,
            finals,
        )
    fitted = constrain(jax.tree.map(lambda x: x[0], best_raw), params)
    return FitResult(
        fitted.model,
        fitted.risk,
        hist[0],
        converged[0],
        state.num_steps[0, best[0]],
        best[0],
        finals[0],
    )


def fit(
    model,
    zs,
    dt,
    *,
    returns=None,
    risk=None,
    trainable=None,
    optimizer=None,
    steps=500,
    feature_weight=1.0,
    return_weight=1.0,
    prior=None,
    n_starts=1,
    key=None,
    init_scale=0.1,
    rtol=1e-7,
    patience=5,
    steps_per_call=50,
    checkpoint=None,
    resume: bool = False,
    progress: bool = True,
    method=SEQUENTIAL,
) -> FitResult:
    """Fit a drift model (and its return risk) to one series by gradient descent.

    Minimises ``dj.fit_loss``: ``(feature_weight * feature NLL + return_weight * return
    NLL - log prior) / T`` over the trainable fields, each in free coordinates
    (``dj.unconstrain``), so every iterate is a valid model (``theta, sigma > 0``, ``Pi``
    row-stochastic, ``R`` and ``init_cov`` SPD). Fixed fields are returned bit for bit.

    Arguments:
        model: the starting ``dj.KalmanModel`` or ``dj.IMMModel``.
        zs: features ``[T]`` or ``[T, m]`` (NaN = missing).
        dt: step lengths in seconds, a scalar or ``[T]``.
        returns: realised returns ``[T]`` (bps), ``returns[k]`` over step ``k``'s interval;
            adds the predictive return NLL (``dj.return_nll``; NaN = missing).
        risk: the starting ``dj.RiskModel``, required with ``returns``.
        trainable: the fields to train; the rest are held fixed exactly. A selector over
            ``dj.FitParams(model, risk)`` as ``eqx.tree_at`` takes (``lambda p:
            (p.model.dynamics[0].theta, p.risk)``; a sub-module trains all its fields), or
            a pytree of bools with that structure or a prefix of it. Default: the dynamics
            of every regime, ``R`` (``cov_chol``) and ``Pi``, plus ``sigma_base`` (and, for
            an IMM, ``crisis_amplifier``) when ``returns`` are given. Held by default: the
            ``loadings`` (they set the drift's scale: with ``sigma`` free the likelihood is
            flat along ``alpha -> c alpha``, ``sigma -> sigma / c``) and the initial prior
            ``init_mean``, ``init_cov``, ``init_probs`` (one observation's worth of
            information). A trainable ``theta`` (or other positive field) must start
            ``> 0``: hold ``theta = 0`` fixed.
        optimizer: an optax transformation (default ``optax.adam(1e-2)``); one whose
            ``update`` takes extra arguments (``optax.lbfgs()``) gets ``value``, ``grad``
            and ``value_fn``. Pass the same object to reuse the compiled loop.
        steps: the maximum number of optimiser steps.
        feature_weight, return_weight: weights (``>= 0``) of the two NLL terms.
        prior: ``None`` or a callable ``(model, risk) -> log prior density``, e.g.
            ``dj.sticky_prior(20.0)`` (like ``optimizer``, a static argument of the compiled
            loop: reuse the object across fits).
        n_starts: starting points, run together under ``vmap``; start 0 is ``model``
            itself, the others add ``N(0, init_scale^2)`` to every free coordinate. The
            start with the lowest final loss is kept.
        key: PRNG key for the perturbed starts (default ``jax.random.key(0)``).
        init_scale: standard deviation of the perturbation, in free coordinates (0.1 is
            about 10% on ``theta`` or ``sigma``).
        rtol: early stopping: a start stops once ``|L_k - L_{k-1}| <= rtol |L_{k-1}|`` for
            ``patience`` steps in a row (its last step is then not applied, so the result
            equals a fit of ``num_steps`` steps with ``rtol=0``). ``0`` disables it.
        patience: see ``rtol``.
        steps_per_call: optimiser steps per compiled chunk (a ``lax.scan``) between
            progress-bar updates, checkpoints and the early-stopping check.
        checkpoint: ``None`` or a file path, rewritten (atomically) after every chunk
            with ``eqx.tree_serialise_leaves`` of the starts, the free coordinates, the
            optimiser state, the step and the loss history.
        resume: continue from ``checkpoint`` if the file exists (a fit that resumes
            equals an uninterrupted one bit for bit); otherwise start afresh.
        progress: show a tqdm progress bar.
        method: how the filter runs and is differentiated inside the loss, as for
            ``dj.filter`` (default ``dj.Sequential()``: the model's default adjoint, the
            fused one for a ``dj.KalmanModel``, ``jax.checkpoint`` for an IMM). The fit
            needs reverse mode, which every method has.

    Returns:
        A ``dj.FitResult`` with the fitted ``model`` and ``risk``, ``loss_history``
        ``[steps]``, ``converged``, ``num_steps``, ``best_start`` and
        ``losses_per_start`` ``[n_starts]``.

    Example:
        >>> import jax, numpy as np, drift_jax as dj
        >>> rng = np.random.default_rng(0)
        >>> mu = np.cumsum(rng.normal(0.0, 0.5, 400)) * 0.3
        >>> zs = mu + rng.normal(0.0, 1.0, 400)
        >>> start = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0))
        >>> res = dj.fit(start, zs, 1.0, steps=200, progress=False)
        >>> bool(res.loss_history[-1] < res.loss_history[0]), res.loss_history.shape
        (True, (200,))
    """
    return _drive(
        model,
        zs,
        dt,
        batched=False,
        returns=returns,
        risk=risk,
        trainable=trainable,
        optimizer=optimizer,
        steps=steps,
        feature_weight=feature_weight,
        return_weight=return_weight,
        prior=prior,
        n_starts=n_starts,
        key=key,
        init_scale=init_scale,
        rtol=rtol,
        patience=patience,
        steps_per_call=steps_per_call,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        method=method,
    )


def fit_batch(model, zs, dt, *, returns=None, risk=None, **kwargs) -> FitResult:
    """``dj.fit`` of ``N`` instruments at once (``vmap``), each from the same start.

    The same as ``N`` separate ``dj.fit`` calls (up to floating-point rounding), in one
    compiled loop; the Python loop stops early once every instrument and start has.

    Arguments:
        model: the starting model, shared by all instruments.
        zs: features ``[N, T]`` (one feature) or ``[N, T, m]``.
        dt: a scalar, ``[T]`` (shared) or ``[N, T]``.
        returns: ``None`` or ``[N, T]``.
        risk, **kwargs: as ``dj.fit``.

    Returns:
        A ``dj.FitResult`` whose every field has a leading axis ``N``: instrument ``i`` is
        ``jax.tree.map(lambda x: x[i], res)`` (``res.model.dynamics.theta`` is ``[N]``).

    Example:
        >>> import numpy as np, drift_jax as dj
        >>> zs = np.random.default_rng(0).normal(size=(3, 100))
        >>> start = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0))
        >>> res = dj.fit_batch(start, zs, 1.0, steps=20, progress=False)
        >>> res.model.dynamics.sigma.shape, res.loss_history.shape
        ((3,), (3, 20))
    """
    unknown = set(kwargs) - _FIT_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown argument(s) {sorted(unknown)} to dj.fit_batch; it takes dj.fit's "
            f"options {sorted(_FIT_OPTIONS)}."
        )
    options = {name: _FIT_DEFAULTS[name] for name in _FIT_OPTIONS} | kwargs
    return _drive(model, zs, dt, batched=True, returns=returns, risk=risk, **options)


_FIT_DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(fit).parameters.items()
    if p.kind is p.KEYWORD_ONLY and k not in ("returns", "risk")
}
_FIT_OPTIONS = set(_FIT_DEFAULTS)
