"""``dj.fit`` / ``dj.fit_batch``: gradient fitting of a drift model and its return model.

The optimiser loop runs inside ``jit``: a ``lax.scan`` over ``steps_per_call`` steps of
``(free coordinates, optimiser state)``, over the starting points and, for
``dj.fit_batch``, over instruments (``vmap``, or in turn: ``_in_turn``). The
Python loop outside only moves between chunks (progress bar, checkpoint, early stopping);
``steps``, ``gtol``, ``rtol`` and ``patience`` are traced, so a chunk is compiled once per
model structure and data shape, not per setting.

The default optimiser is L-BFGS (``optax.lbfgs(memory_size=50)``, a zoom line search); a
start stops when the norm of its gradient in free coordinates is at most ``gtol`` (converged), or
when its loss has stopped changing (``rtol``, ``patience``: the line search cannot make
progress, e.g. at the floating-point floor; converged only if the gradient is small).
With an optimiser whose state stores the value and gradient at the accepted point (a line
search: ``optax.value_and_grad_from_state``), each step reuses them instead of
recomputing.

With returns, the fit runs in two stages by default: the filter on the features alone,
then the return model with the filter held fixed (see ``dj.fit``).
"""

from __future__ import annotations

import dataclasses
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

from .._core import multihost, validate as v
from .._core.inputs import check_no_inf, prepare_dt, prepare_observations
from .._core.types import Array, Bool, Float, Int
from .._filters.methods import Chunked, resolve_method
from .losses import (
    _check_model,
    _check_risk,
    check_prior,
    check_weights,
    objective,
    prepare_returns,
)
from .params import FitParams, constrain, perturb, trainable_mask, unconstrain

STAGES = ("two-stage", "joint")
_FORMAT = 2  # checkpoint format: (starts, fixed parameters, loop state, loss history)


#: L-BFGS's memory: the number of past steps its curvature estimate is built from. optax's
#: default, 10, is fewer than the free coordinates of a 3-regime IMM with 4 features (28):
#: on that fit (T = 1e5, benchmarks/bench_fit.py) 500 steps with memory 10 stopped
#: unconverged (gradient 2.7e-4), memory 30 converged in 244 steps and memory 50 in 139, at
#: the same loss. The two-loop recursion costs O(memory x coordinates) a step, nothing
#: beside one loss evaluation.
LBFGS_MEMORY = 50


@functools.cache
def _default_optimizer() -> optax.GradientTransformation:
    # One object for every call, so the compiled chunk is reused across fits.
    return optax.lbfgs(memory_size=LBFGS_MEMORY)


def default_tolerances(dtype) -> tuple[float, float]:
    """``(gtol, rtol)`` when ``dj.fit`` is given ``None``: ``(1e-6, 1e-12)`` in float64,
    ``(1e-3, 1e-6)`` in float32 (a float32 loss's gradient is not good to 1e-6)."""
    if jnp.dtype(dtype) == jnp.float64:
        return 1e-6, 1e-12
    return 1e-3, 1e-6


class FitResult(eqx.Module):
    """What ``dj.fit`` returns (``dj.fit_batch``: every field has a leading axis ``N``).

    Attributes:
        model: the fitted model (the best start's).
        risk: the fitted return model (``dj.RiskModel`` / ``dj.RegimeReturnModel``), or
            ``None`` when there was none.
        loss_history: the loss (per time step) before each optimiser step of the last
            stage, ``[steps]``; NaN after the fit stopped.
        converged: whether the gradient norm in free coordinates at the returned
            parameters is at most ``gtol`` (``grad_norm <= gtol``), in every stage that
            ran. ``False`` when ``steps`` ran out first, the loss stopped changing with a
            larger gradient (``rtol``), or the loss became non-finite.
        num_steps: optimiser steps applied in the last stage.
        best_start: index of the start kept (0 is the given model, unperturbed).
        losses_per_start: final loss of every start, ``[n_starts]``.
        grad_norm: the Euclidean norm of the gradient of the loss (per time step) in the
            free coordinates of the last stage's trainable fields, at the returned
            parameters (NaN when the loss is not finite there).
        stage1: with a two-stage fit (returns, ``stages="two-stage"``), the first stage's
            own ``FitResult`` (the filter fitted to the features alone, ``risk=None``: its
            ``loss_history``, ``converged``, ``num_steps``, ``grad_norm``); ``None``
            otherwise.
        stages: the stages that ran, in order: ``("features",)`` (no returns, or a
            two-stage fit whose return model is held), ``("features", "returns")`` (two
            stages), ``("returns",)`` (only the return model is trainable) or
            ``("joint",)``.
    """

    model: Any
    risk: Any
    loss_history: Float[Array, "*batch steps"]
    converged: Bool[Array, "*batch"]
    num_steps: Int[Array, "*batch"]
    best_start: Int[Array, "*batch"]
    losses_per_start: Float[Array, "*batch starts"]
    grad_norm: Float[Array, "*batch"] | None = None  # None: a FitResult built by hand
    stage1: Any = None
    stages: tuple[str, ...] = eqx.field(static=True, default=("features",))

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
    small: Bool[Array, "N S"]
    num_steps: Int[Array, "N S"]


class _Data(eqx.Module):
    """Per-instrument inputs: ``zs [N, T, m]``, ``dt`` scalar / ``[T]`` / ``[N, T]``,
    ``returns [N, T]`` or ``None``."""

    zs: Float[Array, "N T m"]
    dt: Float[Array, "..."]
    returns: Float[Array, "N T"] | None
    dt_batched: bool = eqx.field(static=True)


def _split(data: _Data):
    """``vmap`` inputs and axes over instruments: ``(zs, dt, returns)``."""
    axes = (0, 0 if data.dt_batched else None, None if data.returns is None else 0)
    return (data.zs, data.dt, data.returns), axes


def _stored_value_and_grad(opt_state):
    """The value and gradient at the current point that the optimiser's state holds (a
    line search's, as ``optax.value_and_grad_from_state`` reads them), or ``None``."""
    try:
        value = optax.tree.get(opt_state, "value")
        grad = optax.tree.get(opt_state, "grad")
    except (KeyError, ValueError):
        return None
    if value is None or grad is None:
        return None
    return value, grad


def _value_fn(params, inputs, weights, prior, method):
    def value_fn(r):
        p = constrain(r, params)
        return objective(p.model, p.risk, *inputs, weights, prior, method)

    return value_fn


def _all_values_and_grads(raw, params, data, weights, prior, method, p_axis):
    """Loss and gradient of every (instrument, start): ``[N, S]`` and a tree like ``raw``."""

    def one(r, p, inputs):
        return jax.value_and_grad(_value_fn(p, inputs, weights, prior, method))(r)

    inputs, axes = _split(data)
    over_starts = jax.vmap(one, in_axes=(0, None, None))
    if p_axis is None:  # shared parameters: closed over (their leaves need not be arrays)
        return jax.vmap(lambda r, x: over_starts(r, params, x), in_axes=(0, axes))(raw, inputs)
    return jax.vmap(over_starts, in_axes=(0, p_axis, axes))(raw, params, inputs)


def _in_turn(method) -> bool:
    """Whether the instruments and starts of a batch take their steps one after another
    (``lax.map``) rather than side by side (``vmap``): on CPU, with the chunked filter.

    Under ``vmap`` a line search's ``lax.cond`` on a batched predicate runs both branches
    (two loss-and-gradient evaluations per line-search step instead of one), its ``while``
    loops run until the slowest element is done, and a converged element still pays for
    every step. With ``dj.Chunked`` one series is already a batch (its chunks) that fills
    the CPU's cores, so the elements are faster in turn: 16 instruments of 1e4 steps, 78.7
    s against 237.1 s under ``vmap`` (benchmarks/RESULTS.md "fit"). Short series (the
    sequential filter) are too little work each to fill the cores, so they keep the batch
    (the suite's small recovery fits looked slower in turn, but that was measured while
    the machine itself slowed down: not settled). On an accelerator the batch is what
    fills the device.
    """
    return jax.default_backend() == "cpu" and isinstance(method, Chunked)


def _over(fn, in_axes, in_turn: bool):
    """``fn`` over the instruments or starts of a batch: ``jax.vmap(fn, in_axes)`` (axes
    ``0`` / ``None``, also inside a tuple of arguments), or with ``in_turn`` the same
    function of one element after another (``lax.map``; see ``_in_turn``)."""
    if not in_turn:
        return jax.vmap(fn, in_axes=in_axes)
    is_axis = lambda x: x is None or isinstance(x, int)  # noqa: E731

    def run(*args):
        mapped = jax.tree.map(lambda ax, x: x if ax == 0 else None, in_axes, args, is_leaf=is_axis)
        fixed = jax.tree.map(lambda ax, x: None if ax == 0 else x, in_axes, args, is_leaf=is_axis)

        def one(m):
            full = jax.tree.map(
                lambda ax, a, b: a if ax == 0 else b, in_axes, m, fixed, is_leaf=is_axis
            )
            return fn(*full)

        return jax.lax.map(one, mapped)

    return run


@eqx.filter_jit
def _run_chunk(
    state: _FitState,
    params,
    data: _Data,
    weights,
    settings,
    optimizer,
    prior,
    method,
    length,
    p_axis,
):
    """``length`` optimiser steps of every (instrument, start); returns the losses."""
    steps, rtol, patience, gtol = settings
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)
    stored = extra and _stored_value_and_grad(state.opt_state) is not None

    def one(raw, opt_state, loss, grad, last, calm, done, failed, small, num, p, inputs, on):
        value_fn = _value_fn(p, inputs, weights, prior, method)
        gnorm = optax.tree.norm(grad)
        active = on & ~done
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        flat = (rtol > 0) & (jnp.abs(loss - last) <= rtol * jnp.abs(last))
        calm = jnp.where(active, jnp.where(flat, calm + 1, 0), calm)
        tiny = finite & (gnorm <= gtol)
        stop = active & (~finite | tiny | (calm >= patience))
        apply = active & ~stop

        def update():
            if extra:  # e.g. optax.lbfgs: line searches need the value and the function
                kwargs = dict(value=loss, grad=grad, value_fn=value_fn)
                updates, new_opt = optimizer.update(grad, opt_state, raw, **kwargs)
            else:
                updates, new_opt = optimizer.update(grad, opt_state, raw)
            return optax.apply_updates(raw, updates), new_opt

        # A start that has stopped (or a step past ``steps``) skips the update and its line
        # search; under ``vmap`` (see ``_in_turn``) both branches run and the
        # result is selected, as ``jnp.where`` would.
        new_raw, new_opt = jax.lax.cond(apply, update, lambda: (raw, opt_state))
        out = (
            new_raw,
            new_opt,
            jnp.where(active, loss, last),
            calm,
            done | stop,
            failed | (active & ~finite),
            small | (active & tiny),
            num + apply.astype(num.dtype),
        )
        return out, jnp.where(active, loss, jnp.nan)

    inputs, axes = _split(data)
    in_turn = _in_turn(method)
    over_starts = _over(one, (0,) * 10 + (None, None, None), in_turn)
    if state.last_loss.shape == (1, 1):
        # One instrument, one start (a plain dj.fit): no batch axis at all.

        def over_all(*a):
            first = [jax.tree.map(lambda x: x[0, 0], x) for x in a[:10]]
            p = a[10] if p_axis is None else jax.tree.map(lambda x: x[0], a[10])
            xs = tuple(
                x if (ax is None or x is None) else x[0] for x, ax in zip(a[11], axes, strict=True)
            )
            out, loss = one(*first, p, xs, a[12])
            return jax.tree.map(lambda x: x[None, None], out), loss[None, None]

    elif p_axis is None:  # shared parameters: closed over

        def over_all(*a):
            run = _over(
                lambda *b: over_starts(*b[:10], params, *b[10:]), (0,) * 10 + (axes, None), in_turn
            )
            return run(*a[:10], *a[11:])

    else:
        over_all = _over(over_starts, (0,) * 10 + (p_axis, axes, None), in_turn)

    def body(s: _FitState, _):
        on = s.step < steps
        if stored:
            # The line search evaluated the loss and gradient at the point it accepted:
            # reuse them (no evaluation besides the line search's); ``_stage`` fills them
            # in before the first step.
            loss, grad = _stored_value_and_grad(s.opt_state)
        else:
            loss, grad = _all_values_and_grads(s.raw, params, data, weights, prior, method, p_axis)
        carry, losses = over_all(
            s.raw,
            s.opt_state,
            loss,
            grad,
            s.last_loss,
            s.calm,
            s.done,
            s.failed,
            s.small,
            s.num_steps,
            params,
            inputs,
            on,
        )
        return _FitState(carry[0], carry[1], s.step + 1, *carry[2:]), losses

    return jax.lax.scan(body, state, None, length=length)


@eqx.filter_jit
def _evaluate(raw, params, data: _Data, weights, prior, method, p_axis):
    """Loss ``[N, S]``, gradient (like ``raw``) and gradient norm ``[N, S]`` of every
    (instrument, start) at ``raw``."""
    loss, grad = _all_values_and_grads(raw, params, data, weights, prior, method, p_axis)
    gnorm = jax.vmap(jax.vmap(optax.tree.norm))(grad)
    return loss, grad, jnp.where(jnp.isfinite(loss), gnorm, jnp.nan)


def _fill_stored(state: _FitState, args, p_axis) -> _FitState:
    """The value and gradient at the current point, written into an optimiser state that
    stores them (a line search's) where they are missing (``inf`` before the first step)."""
    stored = _stored_value_and_grad(state.opt_state)
    if stored is None or bool(jnp.all(jnp.isfinite(stored[0]) | state.done)):
        return state
    fixed, data, weights, _, _, prior, method = args
    loss, grad, _ = _evaluate(state.raw, fixed, data, weights, prior, method, p_axis)
    value = loss.astype(stored[0].dtype)
    grad = jax.tree.map(lambda g, old: g.astype(old.dtype), grad, stored[1])
    opt_state = optax.tree.set(state.opt_state, value=value, grad=grad)
    return eqx.tree_at(lambda s: s.opt_state, state, opt_state)


def default_trainable(params: FitParams, with_returns: bool) -> FitParams:
    """The fields ``dj.fit`` trains by default (see ``dj.fit``), as a pytree of bools."""
    mask = jax.tree.map(lambda _: True, params)
    held = [lambda p: p.model.observation.loadings]
    # The prior before the first step (init_mean, init_cov and, with regimes, init_probs).
    held += [lambda p, f=f: getattr(p.model, f) for f in params.model.initial_prior_fields()]
    if params.risk is not None:
        if not with_returns:
            held.append(lambda p: p.risk)
        elif params.model.crisis_index < 0 and hasattr(params.risk, "crisis_amplifier"):
            held.append(lambda p: p.risk.crisis_amplifier)  # P(Crisis) = 0: no information
    for where in held:
        mask = eqx.tree_at(where, mask, replace_fn=lambda n: jax.tree.map(lambda _: False, n))
    return mask


def _mask_of(params: FitParams, trainable, with_returns: bool):
    if trainable is None:
        return default_trainable(params, with_returns)
    return trainable_mask(params, trainable)


def trainable_coordinates(params: FitParams, trainable, with_returns: bool):
    """``(mask, free coordinates)`` of the fields ``trainable`` selects (default:
    ``default_trainable``); shared by ``dj.fit`` and ``dj.standard_errors``."""
    mask = _mask_of(params, trainable, with_returns)
    raw = unconstrain(params, mask)
    if not jax.tree.leaves(raw):
        raise ValueError(f"`trainable` selects no field to train; got trainable={trainable!r}.")
    return mask, raw


def _prepare_data(model, zs, dt, returns, batched: bool) -> _Data:
    dtype, m = model.dtype, model.num_features
    if not batched:
        z = prepare_observations(zs, m, dtype, model.observation.feature_names)
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


def _save(path: Path, ident, state: _FitState, history: np.ndarray, step: int) -> None:
    N, S = history.shape[1:]
    header = np.array([_FORMAT, step, N, S], dtype=np.int64)  # format, step, N, S
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        eqx.tree_serialise_leaves(f, header)
        eqx.tree_serialise_leaves(f, (ident, state, history[:step]))
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a torn checkpoint


def _load(path: Path, ident, state: _FitState, N: int, S: int, restart_if_other: bool):
    """``(state, history, step)`` from ``path``; ``None`` when the checkpoint was written
    from other fixed parameters and ``restart_if_other`` (a second stage whose first
    stage has since moved: it starts afresh)."""
    with open(path, "rb") as f:
        header = eqx.tree_deserialise_leaves(f, np.zeros(4, np.int64))
        version, step, n_saved, s_saved = (int(x) for x in header)
        if version != _FORMAT or (n_saved, s_saved) != (N, S):
            raise ValueError(
                f"`checkpoint` {str(path)!r} holds a fit of {n_saved} instrument(s) x "
                f"{s_saved} start(s) (format {version}); this fit has {N} x {S} (format "
                f"{_FORMAT})."
            )
        like = (ident, state, np.zeros((step, N, S), np.asarray(state.last_loss).dtype))
        try:
            loaded = eqx.tree_deserialise_leaves(f, like)
        except Exception as err:  # noqa: BLE001 -- re-raised with the file named
            raise ValueError(
                f"`checkpoint` {str(path)!r} was written by a fit of another model, data "
                f"size or optimiser ({err})."
            ) from err
    for a, b in zip(jax.tree.leaves(like), jax.tree.leaves(loaded), strict=True):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise ValueError(
                f"`checkpoint` {str(path)!r} was written by a fit of another model, data "
                f"size or optimiser (a leaf of shape {np.shape(b)} where {np.shape(a)} is "
                f"expected)."
            )
    saved_ident, saved_state, history = loaded
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b, equal_nan=True)), ident, saved_ident
    )
    starts_same = all(jax.tree.leaves(same[0]))
    fixed_same = all(jax.tree.leaves(same[1]))
    if starts_same and not fixed_same and restart_if_other:
        return None
    if not (starts_same and fixed_same):
        raise ValueError(
            f"`checkpoint` {str(path)!r} was written by a fit from other starting values "
            f"(model, trainable fields, key, n_starts or init_scale differ); pass "
            f"resume=False to start afresh."
        )
    return saved_state, history, step


@dataclasses.dataclass(frozen=True)
class _Setup:
    """The settings shared by the stages of one ``dj.fit`` call."""

    optimizer: Any
    prior: Any
    method: Any
    steps: int
    steps_per_call: int
    n_starts: int
    init_scale: float
    patience: int
    resume: bool
    progress: bool
    batched: bool
    key: Any
    rtol: Any
    gtol: Any


def _stage(
    setup: _Setup,
    start: FitParams,
    fixed: FitParams,
    p_axis,
    mask,
    data: _Data,
    weights,
    path: Path | None,
    label: str,
    restart_if_other: bool = False,
) -> FitResult:
    """One optimisation: the fields ``mask`` selects, from ``start``; the others from
    ``fixed`` (batched over instruments along ``p_axis`` when that is 0)."""
    raw0 = unconstrain(start, mask)
    keys = jax.random.split(setup.key, setup.n_starts)
    starts = _stack(
        [raw0] + [perturb(raw0, keys[s], setup.init_scale) for s in range(1, setup.n_starts)]
    )
    N, S = data.zs.shape[0], setup.n_starts
    dtype = start.model.dtype
    raw = jax.tree.map(lambda x: jnp.broadcast_to(x, (N, *x.shape)), starts)
    opt_state = jax.vmap(jax.vmap(setup.optimizer.init))(raw)
    # optax's line-search state starts with weak-typed scalars; after a chunk they are
    # strong, and the second chunk would compile anew.
    opt_state = jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), opt_state)
    state = _FitState(
        raw,
        opt_state,
        jnp.zeros((), jnp.int32),
        jnp.full((N, S), jnp.nan, dtype),
        jnp.zeros((N, S), jnp.int32),
        jnp.zeros((N, S), bool),
        jnp.zeros((N, S), bool),
        jnp.zeros((N, S), bool),
        jnp.zeros((N, S), jnp.int32),
    )
    # Committed from the start, as the chunk's outputs are: jit compiles anew when an
    # argument goes from uncommitted to committed (this process's first device).
    dev = jax.local_devices()[0]
    state = jax.device_put(state, dev)
    ident = (starts, eqx.filter(fixed, eqx.is_array))
    steps = setup.steps
    history = np.full((steps, N, S), np.nan, dtype=np.dtype(dtype))
    step = 0
    if setup.resume and path is not None and path.exists():
        loaded = _load(path, ident, state, N, S, restart_if_other)
        if loaded is not None:
            state, saved, step = loaded
            state = jax.device_put(state, dev)  # committed, as above
            if step > steps:
                raise ValueError(
                    f"`checkpoint` {str(path)!r} is at step {step}, beyond steps={steps}; "
                    f"pass steps >= {step} to continue it (or resume=False to start afresh)."
                )
            history[:step] = np.asarray(saved)
    settings = (
        jnp.asarray(steps, jnp.int32),
        setup.rtol,
        jnp.asarray(setup.patience, jnp.int32),
        setup.gtol,
    )
    args = (fixed, data, weights, settings, setup.optimizer, setup.prior, setup.method)
    args = jax.tree.map(lambda x: jax.device_put(x, dev) if eqx.is_array(x) else x, args)

    from tqdm.auto import tqdm

    extra = isinstance(setup.optimizer, optax.GradientTransformationExtraArgs)
    # In a run of several processes only process 0 draws the bar and writes checkpoints.
    main = multihost.is_main_process()
    show = setup.progress and main
    with tqdm(total=steps, initial=step, disable=not show, desc=label) as bar:
        while step < steps and not bool(jnp.all(state.done)):
            if extra:
                state = _fill_stored(state, args, p_axis)
            state, losses = _run_chunk(state, *args, setup.steps_per_call, p_axis)
            new_step = min(step + setup.steps_per_call, steps)
            history[step:new_step] = np.asarray(losses)[: new_step - step]
            new = jax.device_put(jnp.asarray(new_step, jnp.int32), dev)
            state = eqx.tree_at(lambda s: s.step, state, new)
            bar.update(new_step - step)
            bar.set_postfix(loss=f"{float(np.nanmin(np.asarray(state.last_loss))):.6g}")
            step = new_step
            if path is not None and main:
                _save(path, ident, state, history, step)

    finals, _, gnorms = _evaluate(  # the committed args, as _fill_stored had them
        state.raw, args[0], args[1], args[2], setup.prior, setup.method, p_axis
    )  # [N, S]
    best = jnp.argmin(jnp.where(jnp.isnan(finals), jnp.inf, finals), axis=1)
    idx = jnp.arange(N)
    best_raw = jax.tree.map(lambda x: x[idx, best], state.raw)
    gnorm = gnorms[idx, best]
    converged = ((state.small & ~state.failed)[idx, best] | (gnorm <= setup.gtol)) & (
        jnp.isfinite(gnorm)
    )
    hist = jnp.asarray(history[:, np.arange(N), np.asarray(best)].T)  # [N, steps]
    if p_axis is None:
        fitted = jax.vmap(lambda r: constrain(r, fixed))(best_raw)
    else:
        fitted = jax.vmap(constrain, in_axes=(0, p_axis))(best_raw, fixed)
    out = FitResult(
        fitted.model,
        fitted.risk,
        hist,
        converged,
        state.num_steps[idx, best],
        best,
        finals,
        gnorm,
    )
    return out


def _unbatch(res: FitResult) -> FitResult:
    return jax.tree.map(lambda x: x[0], res)


def _split_mask(mask: FitParams):
    """``(the model's part, the return model's part)`` of a trainable mask."""
    falses = jax.tree.map(lambda _: False, mask)
    model_part = FitParams(mask.model, falses.risk)
    risk_part = FitParams(falses.model, mask.risk)
    return model_part, risk_part


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
    gtol,
    rtol,
    patience,
    stages,
    steps_per_call,
    checkpoint,
    resume,
    progress,
    method,
) -> FitResult:
    _check_model(model)
    if method is not None:
        method = resolve_method(method, model)  # a bad method fails before anything else
    if risk is not None:
        _check_risk(risk, model)
    if returns is not None and risk is None:
        raise ValueError(
            "`returns` are scored by a return model, so they need a starting "
            "`risk=dj.RiskModel(sigma_base, crisis_amplifier)` or "
            "`risk=dj.RegimeReturnModel(vols)`; got risk=None."
        )
    stages = v.one_of("stages", stages, STAGES, "'two-stage' (the default) or 'joint'")
    steps = v.positive_int("steps", steps, "an integer")
    steps_per_call = v.positive_int("steps_per_call", steps_per_call, "an integer")
    n_starts = v.positive_int("n_starts", n_starts, "an integer")
    patience = v.positive_int("patience", patience, "an integer")
    dtype = model.dtype
    gtol0, rtol0 = default_tolerances(dtype)
    gtol = gtol0 if gtol is None else gtol
    rtol = rtol0 if rtol is None else rtol
    gtol = v.scalar("gtol", v.nonnegative("gtol", gtol, dtype))
    rtol = v.scalar("rtol", v.nonnegative("rtol", rtol, dtype))
    init_scale = float(v.scalar("init_scale", v.nonnegative("init_scale", init_scale)))
    weights = check_weights(feature_weight, return_weight, dtype)
    check_prior(prior)
    optimizer = _default_optimizer() if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise v.ArgumentTypeError(
            f"`optimizer` must be an optax.GradientTransformation (e.g. optax.lbfgs() or "
            f"optax.adam(1e-2)), got {optimizer!r}."
        )
    if resume and checkpoint is None:
        raise ValueError("`resume=True` needs a `checkpoint` path to resume from; got None.")
    path = None if checkpoint is None else Path(checkpoint)
    data = _prepare_data(model, zs, dt, returns, batched)
    # None: picked by the series' length (dj.Chunked() from AUTO_CHUNKED_STEPS steps).
    method = resolve_method(method, model, num_steps=data.zs.shape[1])
    key = jax.random.key(0) if key is None else key
    setup = _Setup(
        optimizer,
        prior,
        method,
        steps,
        steps_per_call,
        n_starts,
        init_scale,
        patience,
        bool(resume),
        bool(progress),
        batched,
        key,
        rtol,
        gtol,
    )
    params = FitParams(model, risk)
    with_returns = returns is not None
    # Only to raise "selects no field" early, as a one-stage fit does.
    mask, _ = trainable_coordinates(params, trainable, with_returns)

    if not with_returns or stages == "joint":
        label = "dj.fit" if not with_returns else "dj.fit (joint)"
        res = _stage(setup, params, params, None, mask, data, weights, path, label)
        res = dataclasses.replace(res, stages=("joint",) if with_returns else ("features",))
        return res if batched else _unbatch(res)

    model_mask, risk_mask = _split_mask(mask)
    any_model = any(jax.tree.leaves(model_mask))
    any_risk = any(jax.tree.leaves(risk_mask))
    if not any_risk:
        raise ValueError(
            "with returns and stages='two-stage', the returns fit only the return model "
            "(stage 2), and `trainable` holds all of it fixed; pass stages='joint' to let "
            f"the returns inform the filter, or train the return model; got "
            f"trainable={trainable!r}."
        )
    stage1 = None
    fitted_model, p_axis = model, None
    if any_model:
        path1 = None if path is None else path.with_name(path.name + ".stage1")
        features = _Data(data.zs, data.dt, None, data.dt_batched)
        w1 = weights.at[1].set(0.0)
        label = "dj.fit (stage 1: features)"
        stage1 = _stage(setup, params, params, None, model_mask, features, w1, path1, label)
        stage1 = dataclasses.replace(stage1, risk=None)
        fitted_model, p_axis = stage1.model, 0
    N = data.zs.shape[0]
    risk_b = jax.tree.map(lambda x: jnp.broadcast_to(x, (N, *jnp.shape(x))), risk)
    if p_axis is None:
        fixed = params
    else:
        fixed = FitParams(fitted_model, risk_b)
    label = "dj.fit (stage 2: returns)" if any_model else "dj.fit (returns)"
    res = _stage(
        setup, params, fixed, p_axis, risk_mask, data, weights, path, label, restart_if_other=True
    )
    if stage1 is not None:
        converged = res.converged & stage1.converged
        res = dataclasses.replace(
            res, converged=converged, stage1=stage1, stages=("features", "returns")
        )
    else:
        res = dataclasses.replace(res, stages=("returns",))
    return res if batched else _unbatch(res)


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
    gtol=None,
    rtol=None,
    patience=5,
    stages="two-stage",
    steps_per_call=50,
    checkpoint=None,
    resume: bool = False,
    progress: bool = True,
    method=None,
) -> FitResult:
    """Fit a drift model (and its return model) to one series by gradient.

    Minimises ``dj.fit_loss``: ``(feature_weight * feature NLL + return_weight * return
    NLL - log prior) / T`` over the trainable fields, each in free coordinates
    (``dj.unconstrain``), so every iterate is a valid model (``theta, sigma > 0``, ``Pi``
    row-stochastic, ``R`` and ``init_cov`` SPD). Fixed fields are returned bit for bit.

    By default the optimiser is L-BFGS (``optax.lbfgs(memory_size=50)``: a quasi-Newton
    direction from the last 50 steps and a zoom line search, a few loss evaluations per
    step), and a start stops when the norm of
    its gradient in free coordinates falls to ``gtol``: then ``converged`` is ``True``
    and ``grad_norm`` says how small. A loss that stops changing is not convergence.

    **Returns: two stages.** With ``returns``, the fit runs by default in two stages:
    stage 1 fits the filter's trainable fields to the features alone (``feature_weight *
    feature NLL - log prior``); stage 2 fits the return model's trainable fields with the
    filter held at stage 1's estimate (the full loss). The filter is then the features'
    maximum-likelihood estimate, whatever the return model: in a joint fit the return
    term also pulls the regime parameters (``Pi``, the regimes' ``theta`` and ``sigma``)
    towards whatever makes a misspecified return model fit better. Measured on returns
    drawn with a per-regime volatility and scored by ``dj.RiskModel`` (issue 11): the
    joint fit ended 1,067 nats below the truth's loss with 1 of 15 parameters within 2
    standard errors. ``stages="joint"`` minimises the one joint loss over everything (the
    efficient estimator when the return model is correctly specified, e.g.
    ``dj.RegimeReturnModel`` for per-regime volatilities). ``result.stages`` names the
    stages that ran and ``result.stage1`` keeps the first stage's result. Standard errors
    of a two-stage fit: ``dj.standard_errors(result.stage1, zs, dt)`` for the filter and
    ``dj.standard_errors(result, zs, dt, returns=returns, trainable=lambda p: p.risk)``
    for the return model (conditional on the filter).

    Arguments:
        model: the starting ``dj.KalmanModel`` or ``dj.IMMModel``.
        zs: features ``[T]`` or ``[T, m]`` (NaN = missing).
        dt: step lengths in seconds, a scalar or ``[T]``.
        returns: realised returns ``[T]`` (bps), ``returns[k]`` over step ``k``'s interval;
            adds the predictive return NLL (``dj.return_nll``; NaN = missing).
        risk: the starting return model, required with ``returns``: ``dj.RiskModel``
            (``sigma_base (1 + crisis_amplifier P(Crisis))``) or ``dj.RegimeReturnModel``
            (one vol per regime, a mixture over the predicted regime).
        trainable: the fields to train; the rest are held fixed exactly. A selector over
            ``dj.FitParams(model, risk)`` as ``eqx.tree_at`` takes (``lambda p:
            (p.model.dynamics[0].theta, p.risk)``; a sub-module trains all its fields), or
            a pytree of bools with that structure or a prefix of it. Default: the dynamics
            of every regime, ``R`` (``cov_chol``) and ``Pi``, plus the return model when
            ``returns`` are given (``sigma_base`` and, for an IMM, ``crisis_amplifier``;
            or ``vols``). Held by default: the ``loadings`` (they set the drift's scale:
            with ``sigma`` free the likelihood is flat along ``alpha -> c alpha``,
            ``sigma -> sigma / c``) and the initial prior ``init_mean``, ``init_cov``,
            ``init_probs`` (one observation's worth of information). A trainable
            ``theta`` (or other positive field) must start ``> 0``: hold ``theta = 0``
            fixed.
        optimizer: an optax transformation (default ``optax.lbfgs(memory_size=50)``); one whose
            ``update`` takes extra arguments (``optax.lbfgs()``) gets ``value``, ``grad``
            and ``value_fn``, and when its state stores the value and gradient at the
            accepted point (a line search) they are reused for the next step. Pass the
            same object to reuse the compiled loop.
        steps: the maximum number of optimiser steps (per stage).
        feature_weight, return_weight: weights (``>= 0``) of the two NLL terms.
        prior: ``None`` or a callable ``(model, risk) -> log prior density``, e.g.
            ``dj.sticky_prior(20.0)`` (like ``optimizer``, a static argument of the compiled
            loop: reuse the object across fits).
        n_starts: starting points, run in one compiled loop (in turn on CPU with the
            chunked filter, else under ``vmap``); start 0 is ``model`` itself, the others add
            ``N(0, init_scale^2)`` to every free coordinate. The start with the lowest
            final loss is kept.
        key: PRNG key for the perturbed starts (default ``jax.random.key(0)``).
        init_scale: standard deviation of the perturbation, in free coordinates (0.1 is
            about 10% on ``theta`` or ``sigma``).
        gtol: the convergence rule: a start stops, converged, once the Euclidean norm of
            the gradient of the loss (per time step) in free coordinates is ``<= gtol``
            (its last step is then not applied, so the result equals a fit of
            ``num_steps`` steps). Default (``None``): ``1e-6`` in float64 (a parameter's
            free coordinate is then within ``gtol / lambda_min`` of the optimum, with
            ``lambda_min`` the smallest eigenvalue of the per-step Hessian; on the Nile
            local level 4e-5 relative), ``1e-3`` in float32. ``0`` disables it.
        rtol: a secondary stopping rule, not convergence: a start also stops once
            ``|L_k - L_{k-1}| <= rtol |L_{k-1}|`` for ``patience`` steps in a row (the
            loss no longer moves: a line search at the floating-point floor, or a
            first-order optimiser that has stalled); it is reported ``converged`` only if
            its gradient is small. Default (``None``): ``1e-12`` in float64, ``1e-6`` in
            float32. ``0`` disables it.
        patience: see ``rtol``.
        stages: with ``returns``: ``"two-stage"`` (default: the filter on the features,
            then the return model with the filter fixed; see above) or ``"joint"`` (one
            fit of everything). Without returns there is one stage either way.
        steps_per_call: optimiser steps per compiled chunk (a ``lax.scan``) between
            progress-bar updates, checkpoints and the early-stopping check.
        checkpoint: ``None`` or a file path, rewritten (atomically) after every chunk
            with ``eqx.tree_serialise_leaves`` of the starts, the fixed parameters, the
            free coordinates, the optimiser state, the step and the loss history. A
            two-stage fit writes its first stage to ``<checkpoint>.stage1`` and its
            second to ``checkpoint``.
        resume: continue from ``checkpoint`` if the file exists (a fit that resumes
            equals an uninterrupted one bit for bit); otherwise start afresh. A second
            stage whose first stage has moved since (resumed with more ``steps``) starts
            afresh.
        progress: show a tqdm progress bar.
        method: how the filter runs and is differentiated inside the loss, as for
            ``dj.filter``. ``None`` (default): ``dj.Chunked()`` for series of at least
            10,000 steps (parallel in time, exact, many times faster on one long series),
            else ``dj.Sequential()`` (the model's default adjoint, the fused one for a
            ``dj.KalmanModel``, ``jax.checkpoint`` for an IMM). The fit needs reverse
            mode, which every method has.

    Returns:
        A ``dj.FitResult`` with the fitted ``model`` and ``risk``, ``loss_history``
        ``[steps]``, ``converged``, ``num_steps``, ``best_start``, ``losses_per_start``
        ``[n_starts]``, ``grad_norm``, ``stage1`` and ``stages``.

    Example:
        >>> import jax, numpy as np, drift_jax as dj
        >>> rng = np.random.default_rng(0)
        >>> mu = np.cumsum(rng.normal(0.0, 0.5, 400)) * 0.3
        >>> zs = mu + rng.normal(0.0, 1.0, 400)
        >>> start = dj.KalmanModel(dj.OU(0.5, 1.0), dj.Observation.scalar(2.0))
        >>> res = dj.fit(start, zs, 1.0, progress=False)
        >>> bool(res.converged), bool(res.grad_norm <= 1e-3), int(res.num_steps) < 100
        (True, True, True)
        >>> bool(res.loss_history[int(res.num_steps)] < res.loss_history[0])
        True
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
        gtol=gtol,
        rtol=rtol,
        patience=patience,
        stages=stages,
        steps_per_call=steps_per_call,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        method=method,
    )


def fit_batch(model, zs, dt, *, returns=None, risk=None, **kwargs) -> FitResult:
    """``dj.fit`` of ``N`` instruments in one compiled loop, each from the same start.

    The same as ``N`` separate ``dj.fit`` calls (up to floating-point rounding); the Python
    loop stops early once every instrument and start has. On CPU with the chunked filter
    (long series: ``method=None`` picks it by length) the instruments (and starts) take
    their steps in turn inside the loop (``lax.map``): an instrument that has converged
    skips its line search, and each search runs only as long as its own. Otherwise they
    are a ``vmap`` (short series, an accelerator: the batch is what fills the cores or
    the device), and an iteration lasts as long as the slowest instrument's line search.

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
        >>> res.model.dynamics.sigma.shape, res.loss_history.shape, res.grad_norm.shape
        ((3,), (3, 20), (3,))
    """
    unknown = set(kwargs) - _FIT_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown argument(s) {sorted(unknown)} to dj.fit_batch; it takes dj.fit's "
            f"options {sorted(_FIT_OPTIONS)}."
        )
    options = {name: _FIT_DEFAULTS[name] for name in _FIT_OPTIONS} | kwargs
    if multihost.process_count() > 1:
        return _fit_batch_in_processes(model, zs, dt, returns, risk, options)
    return _drive(model, zs, dt, batched=True, returns=returns, risk=risk, **options)


def _fit_batch_in_processes(model, zs, dt, returns, risk, options) -> FitResult:
    """``dj.fit_batch`` in a ``jax.distributed`` run: each process fits its block of the
    instruments (``_core/multihost.py``) and every process returns all of them.

    An instrument's fit does not depend on the others in its batch (finished instruments
    are frozen while the others go on), so the result does not depend on the number of
    processes.
    """
    if options["checkpoint"] is not None:
        raise ValueError(
            f"`checkpoint` is not supported by dj.fit_batch in a run of "
            f"{multihost.process_count()} processes (each fits only its block of the "
            f"instruments); pass checkpoint=None, or checkpoint the fit of each block; got "
            f"checkpoint={options['checkpoint']!r}."
        )
    _check_model(model)
    data = _prepare_data(model, zs, dt, returns, True)
    sh = multihost.share(0, data.zs.shape[0])
    rows = np.arange(sh.first, sh.first + sh.size)
    # Pad the block with its last instrument (thrown away after the gather): every process
    # then exchanges arrays of one shape. At least 2 rows: XLA compiles a batch of one as
    # other code, whose last bits differ (see _simulation/sharding.py: padded_size).
    rows = np.concatenate([rows, np.full(max(sh.block, 2) - sh.size, rows[-1])])
    mine = _drive(
        model,
        data.zs[rows],
        data.dt[rows] if data.dt_batched else data.dt,
        batched=True,
        returns=None if data.returns is None else data.returns[rows],
        risk=risk,
        **(options | {"progress": bool(options["progress"]) and multihost.is_main_process()}),
    )
    mine = jax.tree.map(lambda x: x[: sh.block], jax.device_get(mine))
    whole = multihost.gather(mine, sh, "dj.fit_batch")
    return jax.tree.map(jnp.asarray, whole)


_FIT_DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(fit).parameters.items()
    if p.kind is p.KEYWORD_ONLY and k not in ("returns", "risk")
}
_FIT_OPTIONS = set(_FIT_DEFAULTS)
