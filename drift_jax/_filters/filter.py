"""``dj.filter``: one entry point for every drift model and every filter method."""

from __future__ import annotations

import equinox as eqx
import jax

from .._core.inputs import prepare_dt, prepare_observations
from .._core.types import DtLike, ObsLike
from .._models.model import AbstractFilterResult, check_model
from .loop_choice import scalar_loop
from .methods import (
    AbstractFilterMethod,
    forward_mode_error,
    resolve_method,
)


def filter(
    model,
    zs: ObsLike,
    dt: DtLike,
    *,
    method: AbstractFilterMethod | str | None = None,
    checkpoint: bool | None = None,
) -> AbstractFilterResult:
    """Filter a series of feature observations with a drift model.

    Arguments:
        model: a drift model, ``dj.KalmanModel`` or ``dj.IMMModel`` (any
            ``dj.AbstractDriftModel``).
        zs: observations, ``[T]`` (one feature) or ``[T, m]``; NaN marks a missing
            feature, a row of NaN is a step with nothing observed (pure prediction,
            adds 0 to the log-likelihood). ``+-inf`` is an error.
        dt: step length in seconds, a scalar or one per step (``[T]``), each ``> 0``.
        method: how the filter runs and is differentiated (``_filters/methods.py``):
            ``dj.Sequential(adjoint=...)`` (``lax.scan``, any model, with the model's
            default reverse pass: ``dj.FusedAdjoint()`` for a ``KalmanModel``,
            ``dj.CheckpointAdjoint()`` for an ``IMMModel``), ``dj.Chunked(...)``
            (parallel-in-time: chunks filtered side by side in sweeps until their starts
            are checked to have converged; exact; reverse mode only) or
            ``dj.Associative()`` (associative scan, Särkkä & García-Fernández 2021;
            ``KalmanModel`` only). The strings ``"sequential"``, ``"chunked"`` and
            ``"parallel"`` are shorthands. ``None`` (default): ``dj.Chunked()`` for a
            series of at least ``AUTO_CHUNKED_STEPS`` (10,000) steps, ``dj.Sequential()``
            for a shorter one, under ``vmap`` over paths (the batch fills the vector
            lanes) or under forward-mode differentiation.
        checkpoint: the older spelling of the adjoint, for ``dj.Sequential()``: ``True`` is
            the model's default, ``False`` the plain scan (``dj.DirectAdjoint()``, every
            intermediate stored; forward mode works). ``None`` (default): set by
            ``method``. No effect with ``dj.Associative()``.

    Returns:
        A ``dj.AbstractFilterResult`` (``dj.KalmanResult`` / ``dj.IMMResult``; with
        ``dj.Chunked``, ``result.chunked`` reports the sweeps) with
        ``log_likelihood`` (``sum_t log p(z_t | z_<t)``), ``drift`` ``[T]``, ``drift_var``
        ``[T]``, ``regime_probs`` ``[T, M]`` (``[T, 1]`` of ones for a single model),
        ``p_crisis`` ``[T]`` (0 without a crisis regime), ``sigma_effective(...)`` and the
        per-step moments. It is a pytree: ``jit``, ``vmap`` (over paths or parameters) and
        ``grad`` go through. Forward mode (``jax.jvp``, ``jax.jacfwd``) needs a method
        that has it (not ``dj.FusedAdjoint``, a ``TypeError`` otherwise).

    Example:
        >>> import jax, jax.numpy as jnp, drift_jax as dj
        >>> model = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(1.0), 0.0, 1.0)
        >>> zs = jnp.array([0.3, -0.1, 0.8, 1.2])
        >>> ll = jax.jit(lambda mdl: dj.filter(mdl, zs, 0.5).log_likelihood)(model)
        >>> bool(jnp.isfinite(ll))
        True
    """
    check_model(model)
    if method is not None or checkpoint is not None:
        method = resolve_method(method, model, checkpoint)
    # Concrete inputs are checked here, eagerly, so bad data raises a ValueError naming
    # the argument; the compiled filter below then sees arrays of fixed shape and dtype
    # and is compiled once per shape (not retraced on every call).
    zs = prepare_observations(zs, model.num_features, model.dtype, model.observation.feature_names)
    dt = prepare_dt(dt, zs.shape[0], model.dtype)
    if method is None:
        # Picked by length. Forward mode (jax.jvp) needs the sequential filter, and under
        # vmap over paths the batch already fills the vector lanes chunks would fill.
        forward = any(map(_under_forward_mode, jax.tree.leaves((model, zs, dt))))
        sequential = forward or _batched(zs)
        method = resolve_method(None, model, num_steps=None if sequential else zs.shape[0])
    return run_filter(model, zs, dt, method)


def run_filter(model, zs, dt, method: AbstractFilterMethod):
    """The filter on inputs already checked and shaped, with a method resolved for the
    model (``resolve_method``): what ``dj.filter`` and every loss run."""
    if not method.forward_mode and any(map(_under_forward_mode, jax.tree.leaves((model, zs, dt)))):
        raise forward_mode_error(method)
    # One series or a batch (under vmap): the scalar IMM's loop is chosen by it.
    batched = any(map(_batched, jax.tree.leaves((model, zs, dt))))
    try:
        return _compiled_filter(model, zs, dt, method, "unrolled" if batched else "vector")
    except TypeError as err:
        # jax.jvp through a jax.custom_vjp fails with JAX's own message, which names
        # neither the filter nor a fix: say which method and what to use instead.
        if method.forward_mode or "custom_vjp" not in str(err):
            raise
        raise forward_mode_error(method) from err


def _batched(x) -> bool:
    """Whether ``x`` is batched by an enclosing ``vmap`` (e.g. over paths)."""
    while isinstance(x, jax.core.Tracer):
        if type(x).__name__ == "BatchTracer":
            return True
        x = getattr(x, "primal", getattr(x, "val", None))
    return False


def _under_forward_mode(x) -> bool:
    """Whether ``x`` is being differentiated in forward mode by the transformation applied
    last (``jax.jvp`` / ``jax.jacfwd``, under ``jit`` or ``vmap`` too), where a
    ``jax.custom_vjp`` cannot go: then JAX fails only when the enclosing ``jit`` is
    compiled, with a message that names no fix. Reverse mode (``jax.grad``) traces with a
    linearize tracer (JAX's direct linearize), and ``jax.hessian``'s forward pass is
    outside it, so both go on. Without direct linearize, reverse mode traces with a JVP
    tracer too: then nothing is said here (the ``except`` above still names the method
    wherever the failure is raised inside ``run_filter``)."""
    if not getattr(jax.config, "jax_use_direct_linearize", False):
        return False
    while isinstance(x, jax.core.Tracer):
        kind = type(x).__name__
        if kind == "JVPTracer":
            return True
        if kind != "BatchTracer":  # vmap: look at what it batches
            return False
        x = x.val
    return False


@eqx.filter_jit
def _compiled_filter(model, zs, dt, method: AbstractFilterMethod, loop: str):
    # The method has static fields only: the compiled filter is specialised on it, and on
    # the scalar IMM's loop (``_filters/imm_scalar.py``: scalar_loop).
    with scalar_loop(loop):
        return method.run(model, zs, dt)
