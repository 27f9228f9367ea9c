"""The generative side: draw regime paths, drifts, features and returns from a model.

``dj.simulate`` samples from the same model classes the filters use, so simulation and
filtering share one parameter set. Per path and per step ``k`` (step ``k`` covers
``(t_{k-1}, t_k]``, ``dt_k = t_k - t_{k-1}``), starting from the filter's prior
``s_{-1} ~ init_probs``, ``x_{-1} ~ N(init_mean, init_cov)``:

1. regime ``s_k ~ Pi[s_{k-1}, :]`` (a ``KalmanModel`` has one regime), with continuous-time
   regimes (``rates=Q``) ``Pi = expm(Q dt_k)`` for each step's own ``dt_k``: the chain
   drawn exactly at the sampling times, regular or Poisson;
2. state ``x_k = F_{s_k}(dt_k) x_{k-1} + w_k``, ``w_k ~ N(0, Q_{s_k}(dt_k))`` — the
   member's own discretisation (euler or exact; a scalar member of an extended IMM resets
   ``mu_dot`` to 0, as the filter assumes); optionally a jump in ``mu`` when ``s_k``
   differs from ``s_{k-1}``;
3. features ``z_k = H x_k + v_k``, ``v_k ~ N(0, R)`` (full ``R``), optionally missing;
4. return over the step (bps) ``r_k = mu_k dt_k + vol_{s_k} sqrt(dt_k) xi_k``.

This is exactly the process the IMM filter assumes (up to the jumps and the returns,
which the filter does not model), so filtering simulated data with the true model is a
check of the filter's calibration.

Reproducibility: path ``i`` draws from ``jax.random.fold_in(key, i)`` only, so a path does
not depend on how many paths are drawn, the chunk size or the number of devices.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core import multihost, validate as v
from .._core.types import Array, Float, Int
from .._models.model import AbstractDriftModel, check_model
from .sharding import sample_in_chunks

_SAMPLING = ("regular", "poisson")


class Paths(eqx.Module):
    """Simulated (or scripted) paths with their truth; leading axis ``B`` (paths).

    Attributes:
        regimes: ``[B, T]`` int, the true regime during step ``k``.
        drift: ``[B, T]`` the true drift ``mu`` at ``t_k`` (bps/s).
        drift_rate: ``[B, T]`` the true ``mu_dot`` (bps/s^2; 0 for scalar models).
        features: ``[B, T, m]`` observed features (NaN = missing).
        returns: ``[B, T]`` realised return over step ``k`` (bps).
        dt: ``[B, T]`` step lengths (s).
        regime_names: names of the regimes (static).
        crisis_index: index of the crisis regime, or -1 when there is none (static).
        quiet_index: index of the quiet regime (static; regime 0 unless one is named
            "Quiet").
    """

    regimes: Int[Array, "B T"]
    drift: Float[Array, "B T"]
    drift_rate: Float[Array, "B T"]
    features: Float[Array, "B T m"]
    returns: Float[Array, "B T"]
    dt: Float[Array, "B T"]
    regime_names: tuple[str, ...] = eqx.field(static=True)
    crisis_index: int = eqx.field(static=True)
    quiet_index: int = eqx.field(static=True, default=0)

    @property
    def num_paths(self) -> int:
        return self.drift.shape[0]

    @property
    def num_steps(self) -> int:
        return self.drift.shape[1]

    @property
    def num_features(self) -> int:
        return self.features.shape[2]

    @property
    def times(self) -> Float[Array, "B T"]:
        """``t_k``, the time of observation ``k`` (s); the prior sits at 0."""
        return jnp.cumsum(self.dt, axis=1)

    def onsets(self, regime: int | str) -> Array:
        """``[B, T]`` bool: steps at which ``regime`` is entered (not counting step 0)."""
        r = self.regime_names.index(regime) if isinstance(regime, str) else int(regime)
        now = self.regimes == r
        before = jnp.concatenate([jnp.ones_like(now[:, :1]), now[:, :-1]], axis=1)
        return now & ~before

    def to_frame(self, feature_names=None, *, start_price: float = 100.0):
        """The paths as a timestamped table (``pandas.DataFrame``), one row per path and step.

        Columns: ``path``, ``time`` (``t_k``, s), ``dt``, one column per feature
        (``feature_names``, default ``z0, z1, ...``; NaN = missing), ``mid`` (the price
        ``start_price * prod(1 + r / 1e4)`` from the returns, the convention of
        ``dj.simple_returns``), ``returns`` (bps), and the truth: ``drift``, ``drift_rate``,
        ``regime`` (its name). ``table[table.path == 0]`` is the history ``dj.read_history``
        reads (``price_column="mid"``).

        Example:
            >>> import jax, drift_jax as dj
            >>> paths = dj.simulate(dj.seed_imm(), jax.random.key(0), 2, 5, 0.5)
            >>> df = paths.to_frame(["bim"])
            >>> list(df.columns), len(df)
            (['path', 'time', 'dt', 'bim', 'mid', 'returns', 'drift', 'drift_rate', 'regime'], 10)
        """
        from .._core.optional import optional_pandas

        pd = optional_pandas()
        m = self.num_features
        names = [f"z{k}" for k in range(m)] if feature_names is None else list(feature_names)
        if len(names) != m or not all(isinstance(n, str) for n in names):
            raise ValueError(f"`feature_names` must be {m} strings, got {names!r}.")
        B, T = self.num_paths, self.num_steps
        r = np.asarray(self.returns, dtype=np.float64)
        mid = float(start_price) * np.cumprod(1.0 + r / 1e4, axis=1)
        table = {
            "path": np.repeat(np.arange(B), T),
            "time": np.asarray(self.times, dtype=np.float64).ravel(),
            "dt": np.asarray(self.dt, dtype=np.float64).ravel(),
        }
        features = np.asarray(self.features, dtype=np.float64).reshape(B * T, m)
        table.update({n: features[:, k] for k, n in enumerate(names)})
        table.update(
            mid=mid.ravel(),
            returns=r.ravel(),
            drift=np.asarray(self.drift, dtype=np.float64).ravel(),
            drift_rate=np.asarray(self.drift_rate, dtype=np.float64).ravel(),
            regime=np.asarray(self.regime_names, dtype=object)[np.asarray(self.regimes).ravel()],
        )
        return pd.DataFrame(table)

    def __getitem__(self, index) -> Paths:
        """Select paths (the leading axis): ``paths[:100]``, ``paths[idx]``."""
        if isinstance(index, tuple):
            raise ValueError(
                "`Paths` is indexed along paths only (paths[i], paths[a:b], paths[idx]); "
                f"got a tuple index {index!r}."
            )
        sel = jax.tree.map(lambda x: x[index], self)
        if sel.drift.ndim == 1:  # an integer index keeps the path axis
            sel = jax.tree.map(lambda x: x[None], sel)
        return sel

    @staticmethod
    def concatenate(parts: list[Paths]) -> Paths:
        """Join paths along the path axis (same regimes, steps and features)."""
        if not parts:
            raise ValueError("`parts` must hold at least one Paths, got none.")
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


class PathSimulator(eqx.Module):
    """The generative specification of ``dj.simulate``, without a key or a path count.

    ``simulator.sample(key, start, count)`` draws paths ``start .. start + count - 1``;
    a Monte Carlo run calls it chunk by chunk so ``n_paths`` may exceed memory. Build it
    with ``dj.simulator(...)`` (same arguments as ``dj.simulate`` less the key and count).
    """

    model: AbstractDriftModel
    dt: Float[Array, "*T"]
    return_vol: Float[Array, " M"]
    jump_mean: Float[Array, " M"]
    jump_std: Float[Array, " M"]
    missing_prob: Float[Array, " m"]
    num_steps: int = eqx.field(static=True)
    sampling: str = eqx.field(static=True)
    symmetric_jumps: bool = eqx.field(static=True)
    has_jumps: bool = eqx.field(static=True, default=True)
    has_missing: bool = eqx.field(static=True, default=True)

    @property
    def num_regimes(self) -> int:
        return self.model.num_regimes

    @property
    def regime_names(self) -> tuple[str, ...]:
        return self.model.regime_names

    @property
    def crisis_index(self) -> int:
        return self.model.crisis_index  # -1: the model has no crisis regime

    @property
    def quiet_index(self) -> int:
        names = self.regime_names
        return names.index("Quiet") if "Quiet" in names else 0

    def sample(self, key, start=0, count=1, *, chunk_size=None, devices=None) -> Paths:
        """Draw paths ``start .. start + count - 1`` (each from ``fold_in(key, i)``).

        ``chunk_size`` bounds how many paths are generated at once (the result is still
        joined in memory); ``devices`` (default: all) splits each chunk across devices.
        """
        key = v.prng_key("key", key)
        parts = sample_in_chunks(
            lambda ids: _sample_paths(self, key, ids), start, count, chunk_size, devices
        )
        return parts[0] if len(parts) == 1 else Paths.concatenate(parts)


@eqx.filter_jit
def _sample_paths(sim: PathSimulator, key, path_ids) -> Paths:
    out = jax.vmap(lambda i: _sample_one(sim, jax.random.fold_in(key, i)))(path_ids)
    regimes, drift, rate, features, returns, dts = out
    return Paths(
        regimes,
        drift,
        rate,
        features,
        returns,
        dts,
        sim.regime_names,
        sim.crisis_index,
        sim.quiet_index,
    )


def _sqrt_psd(Q: Array) -> Array:
    """Lower factor ``L`` with ``L L^T = Q`` for a 1x1 / 2x2 PSD ``Q`` (zeros allowed)."""
    if Q.shape[-1] == 1:
        return jnp.sqrt(jnp.maximum(Q, 0.0))
    a = jnp.sqrt(jnp.maximum(Q[0, 0], 0.0))
    safe = jnp.where(a > 0, a, 1.0)
    b = jnp.where(a > 0, Q[1, 0] / safe, 0.0)
    c = jnp.sqrt(jnp.maximum(Q[1, 1] - b * b, 0.0))
    zero = jnp.zeros_like(a)
    return jnp.stack([jnp.stack([a, zero]), jnp.stack([b, c])])


def _regime_transitions(model, dt) -> tuple[Array, Array]:
    """``[M, n, n]`` transition matrices and noise factors for one step length."""
    Fs, Qs = model.transitions(dt)
    return jnp.stack(Fs), jnp.stack([_sqrt_psd(Q) for Q in Qs])


def _sample_one(sim: PathSimulator, key):
    model = sim.model
    dtype = model.dtype
    T, M, n, m = sim.num_steps, sim.num_regimes, model.state_dim, model.num_features
    # A single model is one regime: Pi = [[1]], p0 = [1].
    p0 = model.initial_regime_probs
    # Continuous-time regimes switch with expm(rates dt_k) for each step's own dt_k.
    chain_per_step = model.transition_depends_on_dt
    ks = jax.random.split(key, 9)
    # Draw every random number up front: the scan below is then deterministic arithmetic.
    s0 = jax.random.choice(ks[0], M, p=p0)
    x0 = model.init_mean + _sqrt_psd(model.init_cov) @ jax.random.normal(ks[1], (n,), dtype)
    u_regime = jax.random.uniform(ks[2], (T,), dtype)
    w = jax.random.normal(ks[3], (T, n), dtype)
    eps = jax.random.normal(ks[4], (T, m), dtype)
    xi = jax.random.normal(ks[5], (T,), dtype)
    # Draws that a setting switches off are skipped (static flags): the other draws keep
    # their keys, so a path does not change when they are skipped.
    zeros = jnp.zeros((T,), dtype)
    jump_z = jax.random.normal(ks[6], (T,), dtype) if sim.has_jumps else zeros
    if sim.has_jumps and sim.symmetric_jumps:
        sign = jnp.where(jax.random.bernoulli(ks[7], 0.5, (T,)), 1.0, -1.0).astype(dtype)
    else:
        sign = jnp.ones((T,), dtype)
    if sim.sampling == "poisson":
        gaps = jax.random.exponential(ks[8], (T,), dtype)
        dts = jnp.maximum(sim.dt * gaps, sim.dt * 1e-6)
    else:
        dts = jnp.broadcast_to(sim.dt, (T,))
    fixed = sim.sampling == "regular" and sim.dt.ndim == 0
    if fixed:
        Fs, Ls = _regime_transitions(model, sim.dt)
    if chain_per_step:
        cum_Pi = jnp.cumsum(model.transition_matrix(sim.dt), axis=1) if fixed else None
    else:
        cum_Pi = jnp.cumsum(model.transition_matrix(), axis=1)

    def pick(table, s):
        # table[s] as a chain of selects over the static M: under vmap a gather per step
        # costs several times the arithmetic it feeds on CPU.
        out = table[M - 1]
        for j in range(M - 2, -1, -1):
            out = jnp.where(s == j, table[j], out)
        return out

    def step(carry, inp):
        s_prev, x = carry
        u, wk, jz, sg, dtk = inp
        # Inverse-CDF draw from row s_prev; the last bin takes any rounding slack.
        cum = cum_Pi if cum_Pi is not None else jnp.cumsum(model.transition_matrix(dtk), axis=1)
        s = jnp.minimum(jnp.sum(u > pick(cum, s_prev)), M - 1)
        F, L = (Fs, Ls) if fixed else _regime_transitions(model, dtk)
        x = pick(F, s) @ x + pick(L, s) @ wk
        jump = pick(sim.jump_mean, s) + pick(sim.jump_std, s) * jz
        jump = jump * sg if sim.symmetric_jumps else jump
        x = x.at[0].add(jnp.where(s != s_prev, jump, 0.0))
        return (s, x), (s, x)

    _, (regimes, xs) = jax.lax.scan(step, (s0, x0), (u_regime, w, jump_z, sign, dts))
    H, R = model.observation.matrices(n, dtype)
    features = xs @ H.T + eps @ model.observation.cov_chol.T
    if sim.has_missing:
        missing = jax.random.uniform(jax.random.fold_in(key, 10), (T, m), dtype)
        features = jnp.where(missing < sim.missing_prob[None, :], jnp.nan, features)
    drift = xs[:, 0]
    rate = xs[:, 1] if n == 2 else jnp.zeros_like(drift)
    returns = drift * dts + sim.return_vol[regimes] * jnp.sqrt(dts) * xi
    return regimes.astype(jnp.int32), drift, rate, features, returns, dts


def _per_regime(name: str, value, M: int, dtype, allowed: str, ok) -> Array:
    arr = v.as_float_array(name, value, dtype)
    if arr.ndim == 0:
        arr = jnp.full((M,), arr, dtype)
    if arr.shape != (M,):
        raise ValueError(
            f"`{name}` must be a scalar or one value per regime (shape [{M}]), "
            f"got shape {arr.shape}."
        )
    return v.check(name, arr, ok, allowed)


def simulator(
    model,
    n_steps,
    dt,
    *,
    return_vol=1.0,
    jump_mean=0.0,
    jump_std=0.0,
    symmetric_jumps: bool = False,
    sampling: str = "regular",
    missing_prob=0.0,
) -> PathSimulator:
    """The generative specification of ``dj.simulate`` (arguments as there), unsampled."""
    check_model(model)
    T = v.positive_int("n_steps", n_steps)
    v.one_of("sampling", sampling, _SAMPLING)
    dtype = model.dtype
    M = model.num_regimes
    dt_arr = v.positive("dt", dt, dtype)
    if dt_arr.ndim not in (0, 1) or (dt_arr.ndim == 1 and dt_arr.shape != (T,)):
        raise ValueError(
            f"`dt` must be a scalar or have shape [n_steps] = [{T}], got shape {dt_arr.shape}."
        )
    if sampling == "poisson" and dt_arr.ndim != 0:
        raise ValueError(
            "with sampling='poisson' `dt` must be a scalar (the mean gap in seconds), "
            f"got shape {dt_arr.shape}."
        )
    finite_nonneg = lambda x: jnp.isfinite(x) & (x >= 0)
    vol = _per_regime("return_vol", return_vol, M, dtype, "finite and >= 0", finite_nonneg)
    jmean = _per_regime("jump_mean", jump_mean, M, dtype, "finite", jnp.isfinite)
    jstd = _per_regime("jump_std", jump_std, M, dtype, "finite and >= 0", finite_nonneg)
    m = model.num_features
    miss = v.as_float_array("missing_prob", missing_prob, dtype)
    miss = jnp.full((m,), miss, dtype) if miss.ndim == 0 else miss
    if miss.shape != (m,):
        raise ValueError(
            f"`missing_prob` must be a scalar or one value per feature (shape [{m}]), "
            f"got shape {miss.shape}."
        )
    miss = v.check("missing_prob", miss, lambda x: (x >= 0) & (x < 1), "in [0, 1)")
    return PathSimulator(
        model,
        dt_arr,
        vol,
        jmean,
        jstd,
        miss,
        T,
        sampling,
        bool(symmetric_jumps),
        _maybe_nonzero(jmean) or _maybe_nonzero(jstd),
        _maybe_nonzero(miss),
    )


def _maybe_nonzero(x) -> bool:
    """False only for a concrete all-zero array (its random draws can then be skipped)."""
    return v.is_traced(x) or bool(np.any(np.asarray(x) != 0))


def simulate(
    model,
    key,
    n_paths,
    n_steps,
    dt,
    *,
    return_vol=1.0,
    jump_mean=0.0,
    jump_std=0.0,
    symmetric_jumps: bool = False,
    sampling: str = "regular",
    missing_prob=0.0,
    chunk_size=None,
    devices=None,
) -> Paths:
    """Draw ``n_paths`` paths of regimes, drift, features and returns from ``model``.

    Arguments:
        model: a ``dj.IMMModel`` (regime chain from its ``transition``, per step, or from
            ``expm(rates dt_k)`` for each step's ``dt_k``; one drift law per regime) or a
            ``dj.KalmanModel`` (one regime). Its parameters and dtype are
            used as they are, prior included.
        key: a JAX PRNG key; path ``i`` uses ``jax.random.fold_in(key, i)``.
        n_paths, n_steps: ``B`` and ``T`` (ints >= 1).
        dt: step length in seconds (> 0): a scalar, ``[T]`` shared by all paths, or with
            ``sampling="poisson"`` the mean gap of exponential (Poisson-arrival) steps.
        return_vol: per-regime return volatility (bps / sqrt(s), scalar or ``[M]``).
        jump_mean, jump_std: per-regime jump in ``mu`` (bps/s) when that regime is
            entered, ``N(jump_mean, jump_std^2)``; 0 (default) is no jump.
        symmetric_jumps: multiply each jump by a random sign (up- and down-cascades).
        sampling: ``"regular"`` or ``"poisson"`` (irregular ``dt``).
        missing_prob: probability that a feature is missing (NaN) at a step, scalar or
            ``[m]``, in ``[0, 1)``.
        chunk_size: generate at most this many paths at once (bounded peak memory).
        devices: ``None`` (every device), an int (the first ones) or a list; the paths are
            split across them. The numbers do not depend on it.

    Returns:
        ``dj.Paths`` with ``regimes``, ``drift``, ``drift_rate``, ``features``,
        ``returns``, ``dt`` (leading axis ``n_paths``).

    Example:
        >>> import jax, drift_jax as dj
        >>> paths = dj.simulate(dj.seed_imm(), jax.random.key(0), n_paths=8, n_steps=100,
        ...                     dt=0.5, return_vol=[1.0, 1.5, 4.0])
        >>> paths.features.shape, paths.regimes.shape
        ((8, 100, 1), (8, 100))
    """
    sim = simulator(
        model,
        n_steps,
        dt,
        return_vol=return_vol,
        jump_mean=jump_mean,
        jump_std=jump_std,
        symmetric_jumps=symmetric_jumps,
        sampling=sampling,
        missing_prob=missing_prob,
    )
    return sim.sample(key, 0, n_paths, chunk_size=chunk_size, devices=devices)


def empirical_transition_counts(regimes: Int[Array, "B T"], num_regimes: int) -> np.ndarray:
    """``[M, M]`` counts of ``regimes[:, k-1] -> regimes[:, k]`` over all paths (NumPy)."""
    r = np.asarray(regimes)
    flat = r[:, :-1].ravel() * num_regimes + r[:, 1:].ravel()
    return np.bincount(flat, minlength=num_regimes**2).reshape(num_regimes, num_regimes)


def path_source(paths, key, n_paths):
    """``(sample(start, count) -> Paths, total)`` from in-memory ``dj.Paths``, a simulator
    (with ``key`` and ``n_paths``) or a callable ``(start, count) -> Paths``: how
    ``dj.monte_carlo`` and the market-making backtest stream their paths."""
    if isinstance(paths, Paths):
        if n_paths is not None and n_paths != paths.num_paths:
            raise ValueError(
                f"`n_paths`={n_paths} disagrees with the {paths.num_paths} paths given; "
                "leave it None for in-memory paths."
            )
        return (lambda s, c: paths[s : s + c]), paths.num_paths
    if hasattr(paths, "sample"):  # dj.PathSimulator, dj.scenarios.ScenarioSimulator
        missing = [f"`{n}`" for n, x in (("key", key), ("n_paths", n_paths)) if x is None]
        if missing:
            raise ValueError(
                "with a simulator as `paths` (dj.simulator / dj.scenarios.simulator), pass "
                f"{' and '.join(missing)} (paths are generated chunk by chunk)."
            )
        n_paths = v.positive_int("n_paths", n_paths)

        def sample(start, count):
            # The caller asks for its own block (_core/multihost.py): sample it here.
            with multihost.process_local():
                return paths.sample(key, start, count, devices=1)

        return sample, n_paths
    if callable(paths):
        if n_paths is None:
            raise ValueError("with a callable `paths(start, count)`, pass `n_paths`.")

        def call(start, count):
            with multihost.process_local():  # e.g. a dj.simulate inside: this block only
                return paths(start, count)

        return call, v.positive_int("n_paths", n_paths)
    raise v.ArgumentTypeError(
        "`paths` must be dj.Paths, a simulator (with `key`, `n_paths`) or a callable "
        f"(start, count) -> dj.Paths; got {type(paths).__name__}."
    )
