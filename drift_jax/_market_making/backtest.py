"""``dj.market_making.backtest``: estimators in the quoting loop, over many paths.

For each chunk of paths one compiled function draws the fill uniforms (path ``i`` from
``fold_in(fill_key, i)``), filters every path with every estimator (``dj.filter`` over the
whole path, ``vmap``-ed), runs the quoting loop (``loop.py``) and reduces each path to its
statistics (PnL and its parts, fills, inventory, markouts, drawdown). Chunks are split
across devices with ``jax.sharding`` (``_simulation/sharding.py``) and padded to one size
(one compilation); statistics come back per path and are pooled on the host in path
order, so the report does not depend on the chunk size or the device count. Memory is
bounded by ``chunk_size * n_steps``, not ``n_paths``.
"""

from __future__ import annotations

import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import multihost, validate as v
from .._core.ordered_sum import ordered_sum
from .._filters.methods import DirectAdjoint, Sequential, method_name, resolve_method
from .._models.model import AbstractDriftModel
from .._simulation.sharding import padded_size, resolve_devices, shard_leading, unpad
from .._simulation.simulate import Paths, path_source
from .loop import fill_uniforms, run_path
from .report import MarketMakingReport, summarise
from .signals import as_quoters, signals
from .strategy import FillModel

#: The backtest's filter method: nothing is differentiated, so the plain scan.
FORWARD_ONLY = Sequential(adjoint=DirectAdjoint())

#: Markout horizons (seconds) of the report.
MARKOUT_HORIZONS = (1.0, 5.0, 30.0)


def step_lengths(paths: Paths):
    """``[B]`` when every step of every path has the same length (faster filters), else
    ``paths.dt``."""
    d = np.asarray(paths.dt)
    if d.size and np.all(d == d.flat[0]):
        return jnp.full((paths.num_paths,), d.flat[0], d.dtype)
    return paths.dt


def _markout_moves(paths: Paths, horizons):
    """``[B, H, T]`` mid move from each step's quote time to ``h`` seconds later, and
    whether the path lasts that long (``[B, H, T]`` bool). Times match to 1% of a step."""
    mids = jnp.cumsum(paths.returns, axis=1)
    times = jnp.cumsum(paths.dt, axis=1)
    zero = jnp.zeros_like(mids[:, :1])
    grid_t = jnp.concatenate([zero, times], axis=1)  # [B, T + 1]: 0, t_0, ..., t_{T-1}
    grid_s = jnp.concatenate([zero, mids], axis=1)
    quote_t, quote_s = grid_t[:, :-1], grid_s[:, :-1]
    tol = 0.01 * jnp.min(paths.dt, axis=1, keepdims=True)
    moves, valid = [], []
    for h in horizons:
        target = quote_t + h + tol
        j = jax.vmap(lambda g, x: jnp.searchsorted(g, x, side="right") - 1)(grid_t, target)
        moves.append(jnp.take_along_axis(grid_s, j, axis=1) - quote_s)
        valid.append(target - 2.0 * tol <= grid_t[:, -1:])
    return jnp.stack(moves, axis=1), jnp.stack(valid, axis=1)


def _shared(paths: Paths, horizons):
    """What every estimator's statistics need from the paths alone."""
    M = len(paths.regime_names)
    onehot = paths.regimes[..., None] == jnp.arange(M)[None, None, :]  # [B, T, M]
    moves, valid = _markout_moves(paths, horizons)
    crisis = paths.crisis_index
    if crisis >= 0:
        now = paths.regimes == crisis
        # A cascade is a run of non-Quiet steps with a Crisis step in it (the scenarios label
        # the fall Crisis and the hold and recovery after it Trending); it ends on the run's
        # last step, where its inventory is read.
        active = paths.regimes != paths.quiet_index
        after = jnp.concatenate([active[:, 1:], jnp.zeros_like(active[:, :1])], axis=1)

        def seen(flag, x):
            act, cri = x
            flag = act & (flag | cri)
            return flag, flag

        _, with_crisis = jax.lax.scan(seen, jnp.zeros(active.shape[:1], bool), (active.T, now.T))
        ends = active & ~after & with_crisis.T
    else:
        now = ends = jnp.zeros(paths.regimes.shape, bool)
    return {
        "in_crisis": now,
        "onehot": onehot,
        "moves": moves,
        "valid": valid,
        "crisis_end": ends,
        "duration": ordered_sum(paths.dt, axis=1),
        "regime_time": ordered_sum(jnp.where(onehot, paths.dt[..., None], 0.0), axis=1),
    }


def _statistics(steps: dict, paths: Paths, shared: dict, limit: int, penalty):
    """Per-path statistics of one estimator's loop output (``[B, T]`` arrays)."""
    q, fb, fa, pnl = steps["q"], steps["fill_bid"], steps["fill_ask"], steps["pnl"]
    dt, r = paths.dt, paths.returns
    onehot = shared["onehot"]
    spread = steps["spread"]
    step_pnl = spread + q * r
    peak = jnp.maximum(jax.lax.cummax(pnl, axis=1), 0.0)
    sq_time = ordered_sum(q * q * dt, axis=1)
    side = (fb - fa)[:, None, :]
    both = (fb + fa)[:, None, :]
    valid = shared["valid"]
    stats = {
        "pnl": pnl[:, -1],
        "spread_pnl": ordered_sum(spread, axis=1),
        "inventory_pnl": ordered_sum(q * r, axis=1),
        "drift_pnl": ordered_sum(q * paths.drift * dt, axis=1),
        "fills_bid": jnp.sum(fb, axis=1),
        "fills_ask": jnp.sum(fa, axis=1),
        "final_q": q[:, -1],
        "max_abs_q": jnp.max(jnp.abs(q), axis=1),
        "limit_time": ordered_sum(jnp.where(jnp.abs(q) >= limit, dt, 0.0), axis=1),
        "q_sq_time": sq_time,
        "score": pnl[:, -1] - penalty * sq_time,
        "max_drawdown": jnp.max(peak - pnl, axis=1),
        "pnl_by_regime": ordered_sum(jnp.where(onehot, step_pnl[..., None], 0.0), axis=1),
        "q_by_regime": ordered_sum(jnp.where(onehot, (q * dt)[..., None], 0.0), axis=1),
        "abs_q_by_regime": ordered_sum(
            jnp.where(onehot, (jnp.abs(q) * dt)[..., None], 0.0), axis=1
        ),
        "markout_sum": ordered_sum(jnp.where(valid, side * shared["moves"], 0.0), axis=2),
        "markout_count": jnp.sum(jnp.where(valid, both, 0.0), axis=2),
    }
    # Inventory against the true drift (long in a fall, short in a rise), at its worst in
    # each path's crisis steps (NaN for a path without any).
    crisis = shared["in_crisis"]
    against = jnp.max(jnp.where(crisis, -q * jnp.sign(paths.drift), -jnp.inf), axis=1)
    stats["adverse_q_max_crisis"] = jnp.where(jnp.any(crisis, axis=1), against, jnp.nan)
    events = {"q_crisis_end": jnp.where(shared["crisis_end"], q, jnp.nan)}
    return stats, events


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _groups(quoters: dict, flows: dict) -> list[list[str]]:
    """Rows whose strategy and order flow have one structure (classes, static settings):
    their loops are one ``vmap`` over the rows, compiled once."""
    groups: dict = {}
    for name, q in quoters.items():
        groups.setdefault(jax.tree.structure((q.strategy, flows[name])), []).append(name)
    return list(groups.values())


@eqx.filter_jit
def _run_chunk(quoters, flows, paths, dt, ids, fill_key, horizons, penalty, n_trace, method):
    dtype = paths.drift.dtype
    u = fill_uniforms(fill_key, ids, paths.num_steps, dtype)
    shared = _shared(paths, horizons)
    # One filter per distinct estimator (two rows may quote from the same one).
    cache: dict = {}
    sig = {}
    for name, qt in quoters.items():
        ident = (id(qt.estimator), qt.features)
        if ident not in cache:
            cache[ident] = signals(qt.estimator, qt.features, paths, dt, method)
        sig[name] = cache[ident]
    per_path = jax.vmap(run_path, in_axes=(None, None, 0, 0, 0, 0, 0))
    over_rows = jax.vmap(per_path, in_axes=(0, 0, 0, 0, None, None, None))
    out = {}
    for names in _groups(quoters, flows):
        strategy = _stack([quoters[n].strategy for n in names])
        flow = _stack([flows[n] for n in names])
        drift = jnp.stack([sig[n][0] for n in names])
        p = jnp.stack([sig[n][1] for n in names])
        steps = over_rows(strategy, flow, drift, p, paths.returns, paths.dt, u)
        limit = quoters[names[0]].strategy.inventory_limit
        reduce = functools.partial(_statistics, paths=paths, shared=shared, limit=limit)
        stats, events = jax.vmap(lambda st, f=reduce: f(st, penalty=penalty))(steps)
        for j, name in enumerate(names):
            pick = lambda tree, j=j: jax.tree.map(lambda leaf, j=j: leaf[j], tree)  # noqa: E731
            trace = {k: x[j, :n_trace] for k, x in steps.items()}
            trace["drift_signal"], trace["p_crisis_signal"] = drift[j, :n_trace], p[j, :n_trace]
            out[name] = (pick(stats), pick(events), trace)
    common = {k: shared[k] for k in ("duration", "regime_time")}
    return common, {name: out[name] for name in quoters}


def _flows(quoters, fills) -> dict:
    if fills is not None:
        v.instance("fills", fills, FillModel, "None or a dj.market_making.FillModel")
    return {
        name: fills if fills is not None else q.strategy.order_flow()
        for name, q in quoters.items()
    }


def _horizons(values) -> tuple[float, ...]:
    out = tuple(
        v.positive_float("markout_horizons", h, "positive numbers (seconds)")
        for h in np.atleast_1d(np.asarray(values, dtype=object))
    )
    if not out:
        raise ValueError("`markout_horizons` must hold at least one horizon, got none.")
    return out


def backtest(
    estimators,
    paths,
    strategy,
    *,
    key,
    n_paths: int | None = None,
    fills: FillModel | None = None,
    chunk_size: int = 1000,
    devices=None,
    markout_horizons=MARKOUT_HORIZONS,
    inventory_penalty: float = 0.0,
    traces: int = 4,
    progress: bool | None = None,
    method=FORWARD_ONLY,
) -> MarketMakingReport:
    """Quote from each estimator's drift on every path, fill, account, and compare.

    On each path every estimator filters the features (``dj.filter`` on the whole path);
    the strategy quotes step ``t`` from the estimate after the features of step ``t-1``
    (the prior at step 0), so no quote sees the future (module docstring of
    ``signals.py``); each side fills with probability ``1 - exp(-Lambda)`` (``FillModel``,
    one lot, both sides may fill in a step); fills happen at the quoted prices and the mid
    then moves by the path's return; the PnL is ``cash + q * mid`` in bps of one lot
    (the mid starts at 0). Every estimator sees the same paths and the same fill
    uniforms (common random numbers), so differences between rows are sharp.

    Arguments:
        estimators: ``{name: estimator}``; an estimator is a ``dj.KalmanModel`` /
            ``dj.IMMModel`` observing every feature of the paths, a pair ``(model, feature
            indices)``, ``dj.market_making.NoSignal()`` (drift 0), ``Oracle()`` (the true
            drift) or a ``dj.market_making.Quoter(estimator, strategy=..., features=...)``
            (an estimator with a strategy of its own).
        paths: ``dj.Paths``, a simulator (``dj.simulator(...)``,
            ``dj.scenarios.simulator(...)``; generated chunk by chunk) or a callable
            ``(start, count) -> dj.Paths``.
        strategy: the quoting rule (``GLFTStrategy``, ``AvellanedaStoikovStrategy``,
            ``FixedSpread``) of every row without its own.
        key: PRNG key. ``path_key, fill_key = jax.random.split(key)``: a simulator draws
            its paths with ``path_key``, and the fill uniforms of path ``i`` come from
            ``fold_in(fill_key, i)``, so no number depends on the chunk size or the
            devices.
        n_paths: number of paths of a simulator or callable source.
        fills: the order flow (``FillModel``); default: each strategy's own ``A``, ``k``
            with ``kind="resting"``.
        chunk_size: paths per compiled call (memory ~ ``chunk_size * n_steps`` per output).
        devices: ``None`` (every device), an int or a list; the numbers do not depend on it.
        markout_horizons: seconds after each fill at which the mid move is measured.
        inventory_penalty: ``phi`` of the score ``PnL - phi sum_t q_t^2 dt_t`` (bps per
            lot^2 per second), the sampled counterpart of ``dj.market_making.objective``.
        traces: keep the step-by-step series of the first ``traces`` paths (inventory,
            PnL, quotes, fills, signals) for plots.
        progress: show a progress bar (default: when there are more than 4 chunks).
        method: how each model's filter runs (``dj.filter``'s ``method``).

    Returns:
        A ``MarketMakingReport`` (``.table``, ``.per_path``, ``.events``, ``.traces``,
        ``.info``, ``.to_markdown()``, ``.save(path)``, ``.plot()``).

    Example:
        >>> import jax, drift_jax as dj
        >>> mm = dj.market_making
        >>> paths = dj.scenarios.liquidation_cascade(jax.random.key(0), 8, n_steps=600,
        ...                                          start=20.0, hold_time=20.0)
        >>> ou = dj.KalmanModel(dj.OU(0.02, 1.0), dj.scenarios.default_observation())
        >>> rep = mm.backtest({"none": mm.NoSignal(), "ou": ou, "oracle": mm.Oracle()},
        ...                   paths, mm.GLFTStrategy(), key=jax.random.key(1))
        >>> list(rep.table.index)
        ['none', 'ou', 'oracle']
        >>> bool(rep.table.loc["oracle", "pnl_mean"] > rep.table.loc["none", "pnl_mean"])
        True
    """
    import pandas as pd

    key = v.prng_key("key", key)
    path_key, fill_key = jax.random.split(key)
    sample, total = path_source(paths, path_key, n_paths)
    chunk_size = v.positive_int("chunk_size", chunk_size)
    traces = v.nonnegative_int("traces", traces)
    penalty = v.nonnegative_float("inventory_penalty", inventory_penalty)
    horizons = _horizons(markout_horizons)
    devs = resolve_devices(devices)
    starts = list(range(0, total, chunk_size))
    # With several processes each computes its block of every chunk (_core/multihost.py).
    block = multihost.share(0, min(chunk_size, total)).block
    padded = padded_size(block, len(devs))
    n_trace = min(traces, block)  # one static value: every chunk reuses one compilation
    show = len(starts) > 4 if progress is None else v.boolean("progress", progress)
    show = show and multihost.is_main_process()
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="path", desc="backtest")
    quoters = flows = None
    per_path: dict = {}
    events: dict = {}
    common: dict = {}
    trace_out = None
    first = None
    t0 = time.perf_counter()
    for lo in starts:
        count = min(chunk_size, total - lo)
        sh = multihost.share(lo, count)
        chunk = sample(sh.first, sh.size)
        if first is None:
            first = chunk
            quoters = as_quoters(estimators, strategy, chunk.num_features)
            for name, q in quoters.items():
                if isinstance(q.estimator, AbstractDriftModel):
                    try:
                        resolve_method(method, q.estimator)
                    except ValueError as err:
                        raise type(err)(f"`estimators[{name!r}]`: {err}") from None
            flows = _flows(quoters, fills)
        ids = jnp.arange(sh.first, sh.first + sh.size, dtype=jnp.uint32)
        (sharded, dt, ids), _ = shard_leading((chunk, step_lengths(chunk), ids), devs, size=padded)
        pen = jnp.asarray(penalty, chunk.drift.dtype)
        shared, out = _run_chunk(
            quoters, flows, sharded, dt, ids, fill_key, horizons, pen, n_trace, method
        )
        tr = {name: trace for name, (_, _, trace) in out.items()}
        stats = {name: (st, ev) for name, (st, ev, _) in out.items()}
        stats, shared = jax.device_get(unpad((stats, shared), sh.block))
        stats, shared = multihost.gather((stats, shared), sh, "the market-making backtest")
        for k, x in shared.items():
            common.setdefault(k, []).append(np.asarray(x))
        for name, (st, ev) in stats.items():
            for k, x in st.items():
                per_path.setdefault(name, {}).setdefault(k, []).append(np.asarray(x))
            for k, x in ev.items():
                x = np.asarray(x)
                events.setdefault(name, {}).setdefault(k, []).append(x[~np.isnan(x)])
        if trace_out is None:
            # The first `traces` paths of the run: the first rows of process 0's block, then
            # of the next processes' blocks when a block holds fewer.
            tr = jax.device_get(tr)
            if traces:
                tr["paths"] = jax.device_get(sharded[:n_trace])
                what = "the market-making backtest (traces)"
                tr = multihost.gather_prefix(tr, sh, n_trace, what)
                tr = jax.tree.map(lambda x: x[:traces], tr)
            else:
                tr["paths"] = None
            trace_out = tr
        if bar is not None:
            bar.update(count)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    cat = lambda d: {k: np.concatenate(x) for k, x in d.items()}  # noqa: E731
    common = cat(common)
    per_path = {name: cat(d) for name, d in per_path.items()}
    events = {name: cat(d) for name, d in events.items()}
    names = first.regime_names
    rows = {
        name: summarise(
            per_path[name],
            events.get(name, {}),
            common,
            names,
            horizons,
            quoters[name].strategy.inventory_limit,
        )
        for name in quoters
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    steps = first.num_steps
    info = {
        "n_paths": total,
        "n_steps": steps,
        "hours_per_path": float(common["duration"].mean() / 3600.0),
        "devices": len(devs) * multihost.process_count(),
        "processes": multihost.process_count(),
        "chunk_size": chunk_size,
        "seconds": round(seconds, 3),
        "dtype": str(first.drift.dtype),
        "fills": "each strategy's (A, k), resting" if fills is None else repr(fills),
        "strategy": repr(strategy),
        "inventory_penalty": penalty,
        "markout_horizons_s": horizons,
        "regime_names": names,
        "method": method if isinstance(method, str) else method_name(method),
    }
    return MarketMakingReport(table, per_path, events, trace_out, common, info)
