"""Reverse mode for a filter scan, assembled by hand so that XLA fuses the backward step.

Differentiating ``lax.scan`` the ordinary way gives a backward loop whose body carries one
cotangent per parameter and per state component as separate values; XLA:CPU then emits
one kernel per value, about 20 per step for the scalar Kalman filter, and the backward
pass costs ~40x the (fully fused) forward. Here the forward stores each step's incoming
carry (as ``jax.checkpoint`` would), and the backward is a reverse scan of
``jax.vjp(step)`` whose carry -- the running parameter cotangent and the state
cotangent -- is ONE flat vector: one fused kernel per step, ~2x the forward.

``scan_with_adjoint(step, params, init, xs)`` has the semantics of
``lax.scan(lambda c, x: step(params, c, x), init, xs)``; it is differentiable in reverse
mode (also reverse-over-reverse), not in forward mode: ``jax.jvp`` / ``jax.jacfwd`` need
another adjoint (``dj.Sequential(adjoint=dj.DirectAdjoint())``). It is what
``dj.FusedAdjoint()`` runs, for any model's step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def scan_with_adjoint(step: Callable, params, init, xs):
    """``lax.scan`` of ``step(params, carry, x) -> (carry, y)`` with a fused adjoint.

    ``params`` are the arrays every step reads (differentiable like any input; ``step``
    must not close over traced values, which the adjoint would not differentiate).
    Returns ``(final carry, stacked ys)``.
    """
    return _scan(step, params, init, xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(step, params, init, xs):
    return jax.lax.scan(lambda c, x: step(params, c, x), init, xs)


def _scan_fwd(step, params, init, xs):
    def body(c, x):
        c2, y = step(params, c, x)
        return c2, (c, y)

    last, (carries, ys) = jax.lax.scan(body, init, xs)
    return (last, ys), (params, carries, xs)


def _scan_bwd(step, residuals, cotangents):
    params, carries, xs = residuals
    ct_last, ct_ys = cotangents
    p_flat, unravel_p = ravel_pytree(params)
    c_flat, unravel_c = ravel_pytree(ct_last)
    n_p = p_flat.shape[0]

    def flat_step(p, c, x):
        c2, y = step(unravel_p(p), unravel_c(c), x)
        return ravel_pytree(c2)[0], y

    def back(acc, inputs):
        carry, x, ct_y = inputs
        ct_c = acc[n_p:]
        _, vjp = jax.vjp(flat_step, p_flat, ravel_pytree(carry)[0], x)
        d_p, d_c, d_x = vjp((ct_c, ct_y))
        # One flat carry: the backward step compiles to a single fused kernel.
        return jnp.concatenate([acc[:n_p] + d_p, d_c]), d_x

    acc0 = jnp.concatenate([jnp.zeros_like(p_flat), c_flat])
    acc, d_xs = jax.lax.scan(back, acc0, (carries, xs, ct_ys), reverse=True)
    return unravel_p(acc[:n_p]), unravel_c(acc[n_p:]), d_xs


_scan.defvjp(_scan_fwd, _scan_bwd)
