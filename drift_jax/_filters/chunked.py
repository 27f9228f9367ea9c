"""Parallel-in-time filtering of one long series by chunks and sweeps (``dj.Chunked``).

The series is cut into ``C`` chunks of ``L`` steps, filtered side by side (``vmap`` over
the chunks: on CPU the chunks fill the SIMD lanes that one series leaves empty, on an
accelerator its cores). Chunk ``c`` has to start from the state chunk ``c - 1`` ends in,
which is not known until chunk ``c - 1`` has run; so the filter *sweeps*:

1. sweep 1 starts chunk 0 from the prior (exact) and every other chunk from the prior too
   (a guess);
2. after sweep ``k``, every chunk's new start is the end state of the chunk before it in
   sweep ``k``. A filter forgets its start, so the new starts are already close to the
   true ones; whether they are close enough is CHECKED, never assumed: each chunk's first
   ``check_steps`` steps are run again from its new start and the state they reach is
   compared with the state sweep ``k`` reached at that step. If no component of any chunk
   differs by more than ``tol`` (relative to ``max(1, |value|)``), the outputs of sweep
   ``k`` after those steps are those of the true starts to ``tol``, and the re-run prefix
   replaces the first ``check_steps`` outputs of each chunk. Otherwise sweep ``k + 1``
   runs from the new starts.
3. chunk ``c``'s start is exact after ``c`` sweeps whatever the model (by induction from
   chunk 0), so after at most ``C`` sweeps the check passes exactly: the worst case (a
   filter that forgets slowly, e.g. a Kalman gain of 1e-3) is the sequential answer,
   never a wrong one. ``result.chunked.sweeps`` reports the sweeps used.

Gradients are exact, by an adjoint that sweeps backwards the same way (the reverse of the
forward's dependence on the starts). The derivative of the outputs is that of one last
pass over the chunks from the converged starts ``S``, plus what flows through each start:
``S_c`` is the end state of chunk ``c - 1``, so the cotangent of chunk ``c``'s start is
passed to chunk ``c - 1``'s end, and the backward pass over all chunks is repeated until
those boundary cotangents stop changing (checked to ``tol`` as in the forward; at most
``C + 1`` backward sweeps, typically 2). The forward pass's residuals are stored once and
each backward sweep reuses them. Each chunk carries its own cotangent of the parameters (the
model is broadcast to the chunks before the ``vmap``), summed once at the end, instead of a
reduction across the chunks at every step. Differentiating through the sweeps themselves
would need the sweep count fixed in advance (a ``while`` loop is not reverse
differentiable) and the reverse pass of every sweep; this adjoint costs the last pass and
its backward sweeps only.

Reverse mode works (``jax.grad``, ``dj.fit``); forward mode and reverse-over-reverse do
not (the adjoint is a ``jax.custom_vjp`` whose backward pass loops until convergence):
``jax.jvp`` raises the method error, and ``dj.standard_errors`` uses ``dj.Sequential()``'s
derivatives of the same likelihood (see there).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .._core.types import Array, Float, Int
from .loop_choice import scalar_loop

__all__ = ["ChunkedInfo", "chunked_filter"]


class ChunkedInfo(eqx.Module):
    """How a ``dj.Chunked`` filter converged (``result.chunked``).

    Attributes:
        sweeps: forward sweeps run (1 when the first sweep's new starts already passed the
            check; at most ``num_chunks``).
        boundary_change: the check's largest difference after the last sweep (relative to
            ``max(1, |value|)``; ``<= tol`` when converged, 0 when it is exact).
        chunk_size: ``L``, steps per chunk (the last chunk padded with missing steps).
        num_chunks: ``C``.
    """

    sweeps: Int[Array, ""]
    boundary_change: Float[Array, ""]
    chunk_size: int = eqx.field(static=True)
    num_chunks: int = eqx.field(static=True)


def chunked_filter(model, zs, dt, method):
    """The chunked filter of ``model`` on checked ``zs`` ``[T, m]`` and ``dt`` (scalar or
    ``[T]``), with a resolved ``dj.Chunked`` method: the result of ``dj.filter`` with
    ``result.chunked`` set."""
    T = zs.shape[0]
    L = min(default_chunk_size(T) if method.chunk_size is None else method.chunk_size, T)
    C = -(-T // L)
    pad = C * L - T
    dtype = zs.dtype
    # Padding after the last step: missing observations (pure predictions that add 0 to
    # the log-likelihood) whose outputs are dropped; they only move the last chunk's end
    # state, which nothing reads.
    zc = jnp.concatenate([zs, jnp.full((pad, zs.shape[1]), jnp.nan, dtype)]).reshape(C, L, -1)
    if jnp.ndim(dt) == 0:
        dc = dt
    else:
        dc = jnp.concatenate([dt, jnp.ones((pad,), dt.dtype)]).reshape(C, L)
    P = min(L, method.check_steps)
    tol = method.tolerance(dtype)
    settings = _Settings(
        method.adjoint, P, tol, C if method.max_sweeps is None else method.max_sweeps
    )
    res, sweeps, change = _chunked(settings, model, zc, dc)
    res = jax.tree.map(lambda x: _unchunk(x, T) if jnp.ndim(x) >= 2 else x, res)
    res = eqx.tree_at(lambda r: r.log_likelihood, res, jnp.sum(res.log_likelihoods))
    info = ChunkedInfo(sweeps, change, L, C)
    return eqx.tree_at(lambda r: r.chunked, res, info, is_leaf=lambda x: x is None)


def _unchunk(x, T):
    """``[C, L, ...]`` -> ``[T, ...]`` (dropping the padding)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])[:T]


class _Settings(eqx.Module):
    adjoint: object = eqx.field(static=True)
    check_steps: int = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_sweeps: int = eqx.field(static=True)


def _broadcast(tree, C: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (C, *jnp.shape(x))), tree)


def _run_chunks(settings: _Settings, model, starts, zc, dc):
    """Every chunk filtered from its start: ``(results [C, L, ...], end states [C])``.

    The model is broadcast to one copy per chunk, so that in reverse mode each chunk
    accumulates its own parameter cotangent and they are summed once, outside the scan.
    """
    C = zc.shape[0]
    models = _broadcast(model, C)
    d_axis = None if jnp.ndim(dc) == 0 else 0

    def one(m, s, z, d):
        return m.filter_from(s, z, d, settings.adjoint)

    with scalar_loop("unrolled"):  # the chunks are a batch (imm_scalar.py)
        return jax.vmap(one, in_axes=(0, 0, 0, d_axis))(models, starts, zc, dc)


def _shift(model, ends, C: int):
    """The starts of the next sweep: the prior for chunk 0, chunk ``c - 1``'s end else."""
    first = _broadcast(model.initial_state(), 1)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b[:-1]]), first, ends)


def _steps(res, sl):
    """The per-step leaves of a chunked result (``[C, L, ...]``), sliced along ``L``."""
    return [x[:, sl] for x in jax.tree.leaves(res) if jnp.ndim(x) >= 2]


def _change(a: list, b: list):
    """The largest ``|a - b| / max(1, |b|)`` over every leaf (NaN-safe: equal NaNs agree)."""
    out = jnp.zeros((), jnp.result_type(*[x.dtype for x in b]))
    for x, y in zip(a, b, strict=True):
        d = jnp.where(jnp.isnan(x) & jnp.isnan(y), 0.0, jnp.abs(x - y))
        d = d / jnp.maximum(1.0, jnp.where(jnp.isnan(y), 1.0, jnp.abs(y)))
        out = jnp.maximum(out, jnp.max(jnp.where(jnp.isnan(d), jnp.inf, d)))
    return out


def _splice(res, prefix, P: int):
    """``res`` with the first ``P`` steps of every chunk taken from ``prefix``."""

    def put(x, y):
        if jnp.ndim(x) < 2:
            return x
        return x.at[:, :P].set(y)

    out = jax.tree.map(put, res, prefix)
    return eqx.tree_at(lambda r: r.log_likelihood, out, jnp.sum(out.log_likelihoods, axis=1))


def _forward(settings: _Settings, model, zc, dc):
    """The sweeps: ``(spliced result [C, L, ...], converged starts, sweeps, change)``."""
    C, P = zc.shape[0], settings.check_steps
    init = _broadcast(model.initial_state(), C)

    def sweep(starts):
        res, ends = _run_chunks(settings, model, starts, zc, dc)
        new = _shift(model, ends, C)
        pre, _ = _run_chunks(
            settings, model, new, zc[:, :P], dc if jnp.ndim(dc) == 0 else dc[:, :P]
        )
        change = _change(_steps(pre, slice(P - 1, P)), _steps(res, slice(P - 1, P)))
        return res, pre, new, change

    # The first sweep runs inside the loop too: one copy of the scans to compile.
    shapes = jax.eval_shape(sweep, init)
    blank = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes[:2])

    def cond(c):
        k, _, _, _, change = c
        return (k == 0) | ((change > settings.tol) & (k < settings.max_sweeps))

    def body(c):
        k, _, _, starts, _ = c
        res, pre, new, change = sweep(starts)
        return k + 1, res, pre, new, change

    k0 = jnp.zeros((), jnp.int32)
    inf = jnp.asarray(jnp.inf, zc.dtype)
    carry = (k0, *blank, init, inf)
    k, res, pre, starts, change = jax.lax.while_loop(cond, body, carry)
    return _splice(res, pre, P), starts, k, change


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(settings: _Settings, model, zc, dc):
    res, _, k, change = _forward(settings, model, zc, dc)
    return res, k, change


def _chunked_fwd(settings: _Settings, model, zc, dc):
    model, zc, dc = jax.tree.map(
        lambda x: x.value, (model, zc, dc), is_leaf=lambda x: hasattr(x, "perturbed")
    )
    res, starts, k, change = _forward(settings, model, zc, dc)
    rest = jax.tree.map(lambda x: x[1:], starts)
    return (res, k, change), (model, rest, zc, dc)


def _chunked_bwd(settings: _Settings, residuals, cotangents):
    """The adjoint: backward passes over all chunks from the converged starts, with the
    boundary cotangents (chunk ``c``'s start cotangent is chunk ``c - 1``'s end
    cotangent) found as the forward's starts are: the first pass with zero boundary
    cotangents, each next one with those the last pass handed back, until they change
    by no more than ``tol`` (relative to their largest; at most ``C + 1`` passes, exact).

    Only the outputs whose cotangent is not a symbolic zero are recomputed (for a
    log-likelihood, its per-step terms), once; each pass reuses that forward's residuals.
    """
    model, rest, zc, dc = residuals
    ct_res = cotangents[0]
    C = zc.shape[0]
    is_zero = lambda x: isinstance(x, SymbolicZero)  # noqa: E731
    ct_leaves = jax.tree.leaves(ct_res, is_leaf=is_zero)
    needed = [i for i, x in enumerate(ct_leaves) if not is_zero(x)]
    ct_needed = [ct_leaves[i] for i in needed]

    def final_pass(m, r):
        first = _broadcast(m.initial_state(), 1)
        starts = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, r)
        res, ends = _run_chunks(settings, m, starts, zc, dc)
        leaves = jax.tree.leaves(res)
        return [leaves[i] for i in needed], ends

    (_, ends), vjp = jax.vjp(final_pass, model, rest)
    zero_ends = jax.tree.map(jnp.zeros_like, ends)
    last = jax.tree.map(lambda x: x[:1], zero_ends)

    def cond(c):
        k, _, _, change = c
        return (k == 0) | ((change > settings.tol) & (k <= C))

    def body(c):
        k, _, ct_ends, _ = c
        ct_model, ct_rest = vjp((ct_needed, ct_ends))
        # Chunk c's start cotangent goes to chunk c - 1's end; the last chunk's end state
        # is read by nothing.
        new = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ct_rest, last)
        return k + 1, ct_model, new, _relative_change(new, ct_ends)

    zero_model = jax.tree.map(jnp.zeros_like, model)
    inf = jnp.asarray(jnp.inf, zc.dtype)
    carry = (jnp.zeros((), jnp.int32), zero_model, zero_ends, inf)
    _, ct_model, _, _ = jax.lax.while_loop(cond, body, carry)
    return ct_model, jnp.zeros_like(zc), jnp.zeros_like(dc)


def _relative_change(new, old):
    """``max |new - old| / max |new|`` over every leaf (0 when both are 0)."""
    pairs = zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
    num = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a - b)) for a, b in pairs])
    den = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(a)) for a in jax.tree.leaves(new)])
    return jnp.where(num == 0, 0.0, num / jnp.where(den > 0, den, 1.0))


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


def default_chunk_size(num_steps: int) -> int:
    """The chunk length ``dj.Chunked()`` uses by default: 256 steps (about 400 chunks at
    ``T = 1e5``), fewer for short series."""
    return max(1, min(256, math.ceil(num_steps / 2)))
