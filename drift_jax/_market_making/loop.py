"""One path of the quoting loop: quotes, fills, inventory and cash, step by step.

Per step ``t`` (``(t_{t-1}, t_t]``, length ``dt_t``), from the state after step ``t-1``
(inventory ``q``, cash, the mid ``S_{t-1}``; all start at 0):

1. the strategy quotes ``(delta_bid, delta_ask)`` from the signal known at ``t_{t-1}``
   (``signals.py``) and ``q``; no bid at ``q >= Q``, no ask at ``q <= -Q``;
2. each quoted side fills (one lot) with probability ``p = 1 - exp(-Lambda)``
   (``FillModel``): sampled, the bid fills when its uniform ``u_bid < p_bid`` (the same
   uniforms for every estimator), the ask likewise; both sides may fill in one step;
3. a bid fill buys at ``S_{t-1} - delta_bid`` (``q += 1``, ``cash -= price``), an ask fill
   sells at ``S_{t-1} + delta_ask``;
4. the mid moves by the path's return: ``S_t = S_{t-1} + r_t``; the PnL is marked at it,
   ``PnL_t = cash_t + q_t S_t`` (bps of one lot), which is also
   ``sum_{s <= t} (fills_s * delta_s) + q_s r_s``: the spread captured plus the
   inventory's move.

In expectation (``sampled=False``, the smooth objective's relaxation) the fills are their
probabilities, ``q`` and cash their expected (fluid) values, and the limit is the
continuous ``p_bid * clip(Q - q, 0, 1)`` (``p_ask * clip(Q + q, 0, 1)``), so ``|q| <= Q``
holds there too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def run_path(strategy, flow, drift, p_crisis, returns, dt, uniforms=None):
    """The loop over one path; ``uniforms`` ``[T, 2]`` (bid, ask) samples the fills,
    ``None`` gives the expected (fluid) path.

    Returns per-step ``[T]`` arrays: ``q`` (after the step's fills), ``fill_bid``,
    ``fill_ask`` (0/1, or probabilities), ``delta_bid``, ``delta_ask``, ``pnl`` (marked at
    the mid after the step), ``spread`` (the step's ``fills * delta``).
    """
    dtype = returns.dtype
    limit = jnp.asarray(strategy.inventory_limit, dtype)
    sampled = uniforms is not None
    dt = jnp.broadcast_to(dt, returns.shape).astype(dtype)

    def step(carry, inp):
        q, cash, mid = carry
        if sampled:
            mu, p, r, d, u = inp
        else:
            mu, p, r, d = inp
        bid, ask = strategy.quotes(mu, p, q)
        bid, ask = bid.astype(dtype), ask.astype(dtype)
        p_bid = flow.fill_probability(bid, d, -r).astype(dtype)
        p_ask = flow.fill_probability(ask, d, r).astype(dtype)
        if sampled:
            f_bid = ((q < limit) & (u[0] < p_bid)).astype(dtype)
            f_ask = ((q > -limit) & (u[1] < p_ask)).astype(dtype)
        else:
            f_bid = p_bid * jnp.clip(limit - q, 0.0, 1.0)
            f_ask = p_ask * jnp.clip(limit + q, 0.0, 1.0)
        q_new = q + f_bid - f_ask
        cash = cash - f_bid * (mid - bid) + f_ask * (mid + ask)
        mid = mid + r
        out = {
            "q": q_new,
            "fill_bid": f_bid,
            "fill_ask": f_ask,
            "delta_bid": bid,
            "delta_ask": ask,
            "pnl": cash + q_new * mid,
            "spread": f_bid * bid + f_ask * ask,
        }
        return (q_new, cash, mid), out

    zero = jnp.zeros((), dtype)
    inputs = (drift.astype(dtype), p_crisis.astype(dtype), returns, dt)
    if sampled:
        inputs = (*inputs, uniforms.astype(dtype))
    _, out = jax.lax.scan(step, (zero, zero, zero), inputs)
    return out


def fill_uniforms(key, path_ids, num_steps: int, dtype):
    """``[B, T, 2]`` uniforms of the fills (``[..., 0]`` the bid's, ``[..., 1]`` the ask's):
    path ``i`` draws ``uniform(fold_in(key, i), (2 T,)).reshape(T, 2)`` (one flat draw
    compiles faster on CPU than a 2-d one)."""

    def one(i):
        u = jax.random.uniform(jax.random.fold_in(key, i), (2 * num_steps,), dtype)
        return u.reshape(num_steps, 2)

    return jax.vmap(one)(path_ids)
