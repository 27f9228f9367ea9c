"""``dj.monte_carlo``: run estimators over many paths, on every device, in bounded memory.

For each chunk of paths and each estimator, one compiled function filters every path
(``vmap``) and reduces it to per-path statistics (squared errors per regime, coverage,
NEES, log-likelihood, alarm counts) and per-event latencies. The chunk is split across
devices with ``jax.sharding`` (``_simulation/sharding.py``); statistics come back per path and are
summed on the host in path order, so the report does not depend on the chunk size or the
number of devices. Peak memory is set by ``chunk_size * n_steps``, not by ``n_paths``.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import multihost, validate as v
from .._core.inputs import prepare_dt, prepare_observations
from .._core.ordered_sum import ordered_sum
from .._filters.filter import run_filter
from .._filters.methods import DirectAdjoint, Sequential, method_name, resolve_method
from .._models.model import AbstractDriftModel
from .._simulation.sharding import padded_size, resolve_devices, shard_leading, unpad
from .._simulation.simulate import Paths, path_source
from . import event_metrics as em, metrics as mt

_PATH_STATS = ("sq_sum", "count", "inside", "nees_sum", "valid", "loglik", "alarms", "quiet_h")
_EVENTS = ("detection", "track50", "track90", "recovery")


class MonteCarloReport:
    """Results of ``dj.monte_carlo``: one row per estimator.

    Attributes:
        table: ``pandas.DataFrame`` indexed by estimator: ``rmse``, ``rmse_<regime>``,
            ``coverage_2sigma``, ``nees``, ``loglik_per_step``, crisis ``detection``
            latency (``detect_median_s``, ``detect_p90_s``, ``detected``), tracking latency
            to 50% / 90% of the true move after a crisis onset (``track50_median_s``,
            ``track90_median_s``), ``false_alarms_per_hour`` while truly quiet,
            ``recovery_median_s`` (crisis end until ``P(Crisis) <= threshold``).
        latencies: ``{estimator: {"detection"|"track50"|"track90"|"recovery": array}}``,
            one entry per event in path order (``inf`` = not reached).
        info: run facts (paths, steps, path-steps, devices, chunk size, seconds, dtype).
    """

    def __init__(self, table, latencies: dict, info: dict):
        self.table = table
        self.latencies = latencies
        self.info = info

    def __repr__(self) -> str:
        return f"MonteCarloReport({self.info})\n{self.table.to_string(float_format='%.4g')}"

    def to_markdown(self, floatfmt: str = ".4g") -> str:
        """The table as a markdown table (no extra dependency)."""
        cols = ["estimator", *self.table.columns]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for name, row in self.table.iterrows():
            cells = [format(x, floatfmt) if isinstance(x, float) else str(x) for x in row]
            lines.append("| " + " | ".join([str(name), *cells]) + " |")
        return "\n".join(lines)

    def save(self, path) -> None:
        """Write ``<path>.csv`` (the table), ``<path>.md`` and ``<path>.npz`` (latencies).

        In a run of several processes only process 0 writes (every process holds the same
        report)."""
        from pathlib import Path

        if not multihost.is_main_process():
            return

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(path.with_suffix(".csv"))
        info = "\n".join(f"- {k}: {v}" for k, v in self.info.items())
        path.with_suffix(".md").write_text(f"{info}\n\n{self.to_markdown()}\n")
        flat = {f"{e}/{k}": v for e, d in self.latencies.items() for k, v in d.items()}
        np.savez(path.with_suffix(".npz"), **flat)


#: ``dj.monte_carlo``'s default method: nothing is differentiated, so the plain scan.
FORWARD_ONLY = Sequential(adjoint=DirectAdjoint())


def _check_estimators(estimators, num_features: int, method) -> dict:
    """``{name: (model, feature indices or None, method)}`` after checking every entry."""
    if isinstance(estimators, AbstractDriftModel):
        estimators = {type(estimators).__name__: estimators}
    if not isinstance(estimators, dict):
        raise v.ArgumentTypeError(
            "`estimators` must be a model or a non-empty dict name -> dj.KalmanModel / "
            f"dj.IMMModel (or (model, feature indices)), got {type(estimators).__name__}."
        )
    if not estimators:
        raise ValueError(
            "`estimators` must be a model or a non-empty dict name -> dj.KalmanModel / "
            f"dj.IMMModel (or (model, feature indices)), got {type(estimators).__name__}."
        )
    out = {}
    for name, spec in estimators.items():
        model, idx = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, None)
        if not isinstance(model, AbstractDriftModel):
            raise v.ArgumentTypeError(
                f"`estimators[{name!r}]` must be a dj.KalmanModel or dj.IMMModel (a "
                "dj.AbstractDriftModel), or a pair (model, feature indices); got "
                f"{type(spec).__name__}."
            )
        if idx is not None:
            idx = tuple(int(i) for i in np.atleast_1d(np.asarray(idx)))
            if not idx or any(not 0 <= i < num_features for i in idx):
                raise ValueError(
                    f"`estimators[{name!r}]` feature indices must lie in [0, {num_features}) "
                    f"(the paths have {num_features} features), got {list(idx)}."
                )
        seen = num_features if idx is None else len(idx)
        if model.num_features != seen:
            raise ValueError(
                f"`estimators[{name!r}]` observes {model.num_features} feature(s) but the "
                f"paths give it {seen}; build its dj.Observation with {seen} loadings or "
                "pass (model, feature indices)."
            )
        try:
            resolved = resolve_method(method, model)
        except ValueError as err:
            raise type(err)(f"`estimators[{name!r}]`: {err}") from None
        out[name] = (model, idx, resolved)
    return out


def _path_statistics(model, idx, method, paths: Paths, dt, num_regimes, threshold: float):
    """Per-path statistics of one estimator on a batch of paths (runs under jit)."""
    zs = paths.features if idx is None else paths.features[..., jnp.asarray(idx)]

    def one(z, d):
        z = prepare_observations(z, model.num_features, model.dtype)
        return run_filter(model, z, prepare_dt(d, z.shape[0], model.dtype), method)

    res = jax.vmap(one)(zs, dt)
    est, var, truth = res.drift, res.drift_var, paths.drift.astype(res.drift.dtype)
    sq_sum, count = mt.squared_error_sums(est, truth, paths.regimes, num_regimes)
    err2 = (est - truth) ** 2
    valid = jnp.isfinite(est) & (var > 0)
    inside = jnp.sum(valid & (err2 <= 4.0 * var), axis=-1)
    # ordered_sum: a path's sums do not depend on the chunk, device or process count.
    nees_sum = ordered_sum(jnp.where(valid, err2 / jnp.where(valid, var, 1), 0), axis=-1)
    stats = {
        "sq_sum": sq_sum,
        "count": count,
        "inside": inside,
        "nees_sum": nees_sum,
        "valid": jnp.sum(valid, axis=-1),
        "loglik": res.log_likelihood,
    }
    events = {}
    steps = paths.dt.astype(est.dtype)
    crisis, quiet = paths.crisis_index, paths.quiet_index
    if crisis >= 0:
        onsets = paths.onsets(crisis)
        track50, track90 = em.tracking_latencies(est, truth, onsets, steps, (0.5, 0.9))
        events["track50"], events["track90"] = track50, track90
    if model.crisis_index >= 0 and crisis >= 0:  # the estimator has a crisis regime
        p = res.p_crisis
        events["detection"] = em.detection_latency(
            p, paths.regimes, steps, crisis_index=crisis, threshold=threshold
        )
        events["recovery"] = em.recovery_time(
            p, paths.regimes, steps, crisis_index=crisis, threshold=threshold
        )
        stats["alarms"], stats["quiet_h"] = em.false_alarm_rate(
            p, paths.regimes, steps, quiet_index=quiet, threshold=threshold
        )
    return stats, events


@eqx.filter_jit
def _run_chunk(models: dict, paths: Paths, dt, num_regimes: int, threshold: float):
    return {
        name: _path_statistics(model, idx, method, paths, dt, num_regimes, threshold)
        for name, (model, idx, method) in models.items()
    }


def _step_lengths(chunk: Paths):
    """A scalar dt when every step of every path has the same length (faster filters)."""
    d = np.asarray(chunk.dt)
    if d.size and np.all(d == d.flat[0]):
        return jnp.full((chunk.num_paths,), d.flat[0], d.dtype)
    return chunk.dt


def monte_carlo(
    estimators,
    paths,
    *,
    key=None,
    n_paths: int | None = None,
    chunk_size: int = 4096,
    devices=None,
    threshold: float = 0.3,
    progress: bool | None = None,
    method=FORWARD_ONLY,
) -> MonteCarloReport:
    """Run one or several estimators over many paths and summarise how they behave.

    Arguments:
        estimators: a model or a dict ``name -> model`` (``dj.KalmanModel`` or
            ``dj.IMMModel`` observing every feature of the paths) or ``name -> (model,
            feature indices)`` (the model sees only those features, e.g. ``(imm, [0])``).
        paths: ``dj.Paths`` in memory, a simulator (``dj.simulator(...)`` or
            ``dj.scenarios.simulator(...)``: paths are then generated chunk by chunk, so
            ``n_paths`` may exceed memory), or a callable ``(start, count) -> dj.Paths``.
        key: PRNG key for a simulator source.
        n_paths: number of paths for a simulator or callable source.
        chunk_size: paths per compiled call (bounds memory: about ``chunk_size * n_steps``
            values per output).
        devices: ``None`` (every device), an int or a list; each chunk is split across
            them with ``jax.sharding``. The numbers do not depend on it.
        threshold: ``P(Crisis)`` alarm level for detection, false alarms and recovery.
        progress: show a progress bar (default: when there are more than 4 chunks).
        method: how every estimator's filter runs, as for ``dj.filter``. Default
            ``dj.Sequential(adjoint=dj.DirectAdjoint())``: nothing is differentiated here,
            so the plain scan (every ``Sequential`` adjoint gives the same numbers; this one
            adds nothing to the compiled forward pass). ``dj.Associative()`` needs every
            estimator to be a ``dj.KalmanModel``.

    Returns:
        A ``MonteCarloReport`` (``.table`` pandas DataFrame, ``.latencies``, ``.info``,
        ``.save(path)``).

    Example:
        >>> import jax, drift_jax as dj
        >>> imm = dj.seed_imm(dj.Observation.scalar(4.0))
        >>> paths = dj.simulate(imm, jax.random.key(0), n_paths=16, n_steps=200, dt=0.5)
        >>> single = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0))
        >>> report = dj.monte_carlo({"imm": imm, "ou": single}, paths)
        >>> list(report.table.index), bool(report.table.loc["imm", "rmse"] > 0)
        (['imm', 'ou'], True)
    """
    import pandas as pd

    sample, total = path_source(paths, key, n_paths)
    chunk_size = v.positive_int("chunk_size", chunk_size)
    threshold = v.probability("threshold", threshold)
    devs = resolve_devices(devices)
    starts = list(range(0, total, chunk_size))
    # With several processes each computes its block of every chunk (_core/multihost.py).
    padded = padded_size(multihost.share(0, min(chunk_size, total)).block, len(devs))
    show = len(starts) > 4 if progress is None else bool(progress)
    show = show and multihost.is_main_process()
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="path", desc="monte_carlo")
    stats: dict = {}
    events: dict = {}
    models = None
    t0 = time.perf_counter()
    first = None
    for lo in starts:
        sh = multihost.share(lo, min(chunk_size, total - lo))
        chunk = sample(sh.first, sh.size)
        if first is None:
            first = chunk
            models = _check_estimators(estimators, chunk.num_features, method)
        num_regimes = len(chunk.regime_names)
        dt = _step_lengths(chunk)
        # Every chunk is padded to the same size, so the compiled function is reused.
        (sharded, dt_sharded), _ = shard_leading((chunk, dt), devs, size=padded)
        out = _run_chunk(models, sharded, dt_sharded, num_regimes, float(threshold))
        out = multihost.gather(jax.device_get(unpad(out, sh.block)), sh, "dj.monte_carlo")
        for name, (st, ev) in out.items():
            for k, x in st.items():
                stats.setdefault(name, {}).setdefault(k, []).append(np.asarray(x))
            for k, x in ev.items():
                x = np.asarray(x)
                events.setdefault(name, {}).setdefault(k, []).append(x[~np.isnan(x)])
        if bar is not None:
            bar.update(sum(sh.counts))
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    names = first.regime_names
    rows, latencies = {}, {}
    for name in models:
        st = {k: np.concatenate(v) for k, v in stats[name].items()}
        ev = {k: np.concatenate(v) for k, v in events.get(name, {}).items()}
        latencies[name] = ev
        rows[name] = _summary_row(st, ev, names)
    table = pd.DataFrame.from_dict(rows, orient="index")
    steps = first.num_steps
    info = {
        "n_paths": total,
        "n_steps": steps,
        "path_steps": total * steps,
        "devices": len(devs) * multihost.process_count(),
        "processes": multihost.process_count(),
        "chunk_size": chunk_size,
        "seconds": round(seconds, 3),
        "path_steps_per_s": total * steps * len(models) / seconds,
        "dtype": str(first.drift.dtype),
        "threshold": float(threshold),
        "method": method if isinstance(method, str) else method_name(method),
    }
    return MonteCarloReport(table, latencies, info)


def _summary_row(st: dict, ev: dict, regime_names) -> dict:
    """Pool per-path statistics (float64, path order) into one table row."""
    sq = st["sq_sum"].astype(np.float64).sum(axis=0)
    n = st["count"].astype(np.float64).sum(axis=0)
    row = {"rmse": float(np.sqrt(sq.sum() / n.sum()))}
    for j, rn in enumerate(regime_names):
        row[f"rmse_{rn}"] = float(np.sqrt(sq[j] / n[j])) if n[j] > 0 else float("nan")
    valid = st["valid"].astype(np.float64).sum()
    row["coverage_2sigma"] = float(st["inside"].sum() / valid)
    row["nees"] = float(st["nees_sum"].astype(np.float64).sum() / valid)
    row["loglik_per_step"] = float(st["loglik"].astype(np.float64).sum() / n.sum())
    for key, label in (("detection", "detect"), ("recovery", "recovery")):
        s = em.summarise_latencies(ev[key]) if key in ev else None
        row[f"{label}_median_s"] = s["median"] if s else float("nan")
        row[f"{label}_p90_s"] = s["p90"] if s else float("nan")
        row[f"{label}_fraction"] = s["detected_fraction"] if s else float("nan")
    for key in ("track50", "track90"):
        s = em.summarise_latencies(ev[key]) if key in ev else None
        row[f"{key}_median_s"] = s["median"] if s else float("nan")
    if "alarms" in st:
        hours = st["quiet_h"].astype(np.float64).sum()
        row["false_alarms_per_hour"] = float(st["alarms"].sum() / hours) if hours else np.nan
    else:
        row["false_alarms_per_hour"] = float("nan")
    return row
