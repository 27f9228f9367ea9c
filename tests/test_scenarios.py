"""dj.scenarios: scripted paths with their truth.

The scripts are checked exactly (background off: the drift is the closed-form script,
against ``_synthetic.cascade_profile`` and hand-computed values); the noise is checked
statistically with tolerances of 5 to 6 standard errors at the sample size used (fixed
keys, so the tests are deterministic). Most tests share ``(n_paths, n_steps)`` so each
scenario compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj
from drift_jax._simulation.synthetic import cascade_profile, default_feature_cov, default_loadings

from .conftest import tree_allclose

KEY = jax.random.key(20261204)
T = 1200  # steps of 0.1 s: two minutes
DT = 0.1
B = 64
Q, TR, C = 0, 1, 2
CASCADE = dict(level=-50.0, start=30.0, fall_time=2.0, hold_time=20.0, recovery_time=10.0)
QUIET = dict(background_sigma=0.0)


def _times():
    return DT * np.arange(1, T + 1)


def _at(seconds):
    """Index of the step whose end time is ``seconds`` (a multiple of DT)."""
    return int(round(seconds / DT)) - 1


# --- the scripts, exactly --------------------------------------------------------------------


def test_cascade_script_profile_rate_and_labels():
    paths = dj.scenarios.liquidation_cascade(KEY, B, T, DT, **CASCADE, **QUIET)
    t = _times()
    drift = np.asarray(paths.drift)
    ref = cascade_profile(t, 30.0, -50.0, 2.0, 20.0, 10.0)
    np.testing.assert_allclose(drift, np.broadcast_to(ref, drift.shape), rtol=0, atol=1e-12)
    assert np.all(drift[:, t < 30.0] == 0.0)
    assert np.all(drift[:, (t >= 32.0) & (t <= 52.0)] == -50.0)
    assert np.all(drift[:, t >= 62.0] == 0.0)
    np.testing.assert_allclose(drift[0, _at(31.0)], -25.0, atol=1e-9)  # halfway down
    np.testing.assert_allclose(drift[0, _at(57.0)], -25.0, atol=1e-9)  # halfway back
    rate = np.asarray(paths.drift_rate[0])
    assert rate[_at(30.5)] == -25.0 and rate[_at(40.0)] == 0.0 and rate[_at(60.0)] == 5.0
    assert rate[_at(20.0)] == 0.0 and rate[_at(70.0)] == 0.0
    labels = np.asarray(paths.regimes[0])
    # Crisis: the steps (t_prev, t] that overlap the fall [30, 32]; Trending: hold, recovery.
    t_prev = np.concatenate([[0.0], t[:-1]])
    fall = (t >= 30) & (t_prev < 32)
    expected = np.where(fall, C, np.where((t >= 32) & (t < 62), TR, Q))
    np.testing.assert_array_equal(labels, expected)
    assert labels[_at(32.0)] == C and labels[_at(32.1)] == TR and labels[_at(61.9)] == TR
    assert paths.regimes.dtype == jnp.int32
    assert (paths.regime_names, paths.crisis_index, paths.quiet_index) == (
        ("Quiet", "Trending", "Crisis"),
        2,
        0,
    )
    assert paths.features.shape == (B, T, 4) and paths.dt.shape == (B, T)
    np.testing.assert_allclose(np.asarray(paths.times[0]), t, rtol=1e-12)


def test_cascade_jump_fall_and_instant_recovery():
    p = dict(CASCADE, fall_time=0.0, recovery_time=0.0)
    paths = dj.scenarios.liquidation_cascade(KEY, B, T, DT, **p, **QUIET)
    t, drift = _times(), np.asarray(paths.drift[0])
    np.testing.assert_array_equal(drift, np.where((t >= 30) & (t < 50), -50.0, 0.0))
    assert np.all(np.asarray(paths.drift_rate) == 0.0)
    labels = np.asarray(paths.regimes[0])
    # A jump is Crisis in its own step only; the hold is Trending.
    jump = (t >= 30) & (np.concatenate([[0.0], t[:-1]]) < 30)
    assert jump.sum() == 1
    np.testing.assert_array_equal(labels, np.where(jump, C, np.where((t >= 30) & (t < 50), TR, Q)))


def test_cascade_after_the_end_is_quiet():
    paths = dj.scenarios.liquidation_cascade(KEY, B, T, DT, **dict(CASCADE, start=500.0), **QUIET)
    assert np.all(np.asarray(paths.drift) == 0.0) and np.all(np.asarray(paths.regimes) == Q)


@pytest.mark.parametrize("width", [4.0, 0.0])
def test_reversal_script_and_labels(width):
    paths = dj.scenarios.reversal(
        KEY, B, T, DT, level=20.0, start=60.0, reversal_time=width, **QUIET
    )
    t, drift = _times(), np.asarray(paths.drift[0])
    turn = np.clip((t - 60.0) / width, 0, 1) if width else (t >= 60.0) * 1.0
    np.testing.assert_allclose(drift, 20.0 - 40.0 * turn, rtol=0, atol=1e-12)
    assert drift[_at(50.0)] == 20.0 and drift[_at(70.0)] == -20.0
    labels = np.asarray(paths.regimes[0])
    np.testing.assert_array_equal(labels, np.where((t >= 60) & (t < 60 + width), C, TR))
    rate = np.asarray(paths.drift_rate[0])
    assert rate[_at(62.0)] == (-10.0 if width else 0.0) and rate[_at(50.0)] == 0.0


def test_slow_trend_script_and_labels():
    paths = dj.scenarios.slow_trend(
        KEY, B, T, DT, level=-12.0, start=20.0, ramp_time=60.0, **QUIET
    )
    t, drift = _times(), np.asarray(paths.drift[0])
    np.testing.assert_allclose(drift, -12.0 * np.clip((t - 20) / 60, 0, 1), atol=1e-12)
    np.testing.assert_allclose(drift[_at(50.0)], -6.0, atol=1e-12)
    assert drift[_at(10.0)] == 0.0 and drift[_at(100.0)] == -12.0
    rate = np.asarray(paths.drift_rate[0])
    np.testing.assert_allclose(rate[_at(50.0)], -0.2, rtol=1e-12)
    assert rate[_at(90.0)] == 0.0
    np.testing.assert_array_equal(np.asarray(paths.regimes[0]), np.where(t < 20, Q, TR))


def test_chop_square_and_sine():
    square = dj.scenarios.chop(KEY, B, T, DT, amplitude=3.0, period=5.0, start=10.0, **QUIET)
    t, drift = _times(), np.asarray(square.drift[0])
    assert np.all(drift[t < 10] == 0.0)
    np.testing.assert_array_equal(drift[_at(12.0)], 3.0)
    np.testing.assert_array_equal(drift[_at(17.0)], -3.0)
    np.testing.assert_array_equal(drift[_at(22.0)], 3.0)
    on = drift[t >= 10.05]
    flips = np.flatnonzero(np.diff(np.sign(on)))
    assert np.all(np.abs(on) == 3.0) and len(flips) == 22  # at 15, 20, ..., 120 s
    np.testing.assert_allclose(np.diff(flips), 50)  # 5 s apart
    assert np.all(np.asarray(square.drift_rate) == 0.0)
    np.testing.assert_array_equal(np.asarray(square.regimes[0]), np.where(t < 10, Q, TR))
    sine = dj.scenarios.chop(
        KEY, B, T, DT, amplitude=3.0, period=5.0, start=10.0, waveform="sine", **QUIET
    )
    phase = np.pi * (t - 10.0) / 5.0
    np.testing.assert_allclose(
        np.asarray(sine.drift[0]), np.where(t >= 10, 3.0 * np.sin(phase), 0.0), atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(sine.drift_rate[0]),
        np.where(t >= 10, 3.0 * np.pi / 5.0 * np.cos(phase), 0.0),
        atol=1e-12,
    )


def test_false_alarm_outlier_is_visible_and_alone():
    paths = dj.scenarios.false_alarm(KEY, B, T, DT, outlier_time=45.0)
    z, alpha = np.asarray(paths.features), default_loadings()
    k = _at(45.0)
    # The outlier step: 1000 * alpha on top of noise of std <= 12 (> 40 sigma).
    assert np.all(z[:, k, :] > 1000.0 * alpha - 100.0)
    rest = np.delete(z, k, axis=1)
    assert np.abs(rest).max() < 100.0
    assert np.all(np.asarray(paths.regimes) == Q)
    # Common random numbers: the same key without the outlier differs exactly there.
    none = dj.scenarios.false_alarm(KEY, B, T, DT, outlier_time=45.0, outlier_size=0.0)
    diff = z - np.asarray(none.features)
    np.testing.assert_allclose(diff[:, k, :], np.broadcast_to(1000.0 * alpha, (B, 4)), atol=1e-9)
    assert np.all(np.delete(diff, k, axis=1) == 0.0)
    np.testing.assert_array_equal(np.asarray(paths.drift), np.asarray(none.drift))
    # One feature only; an outlier after the end changes nothing.
    one = dj.scenarios.false_alarm(KEY, B, T, DT, outlier_time=45.0, outlier_feature=2)
    d1 = np.asarray(one.features) - np.asarray(none.features)
    np.testing.assert_allclose(d1[:, k, 2], 500.0, atol=1e-9)
    assert np.count_nonzero(d1) == B
    late = dj.scenarios.false_alarm(KEY, B, T, DT, outlier_time=1e4)
    np.testing.assert_array_equal(np.asarray(late.features), np.asarray(none.features))


# --- noise: features, background, returns -------------------------------------------------


def test_feature_noise_covariance_and_missing():
    # No outlier in range and no background: the features are pure noise v ~ N(0, R).
    paths = dj.scenarios.false_alarm(KEY, B, T, DT, outlier_time=1e4, **QUIET)
    assert np.all(np.asarray(paths.drift) == 0.0)
    v = np.asarray(paths.features).reshape(-1, 4)
    n, R = v.shape[0], default_feature_cov()
    S = v.T @ v / n
    se = np.sqrt((np.outer(np.diag(R), np.diag(R)) + R**2) / n)
    np.testing.assert_array_less(np.abs(S - R), 5 * se)
    lag1 = np.mean(v[1:] * v[:-1], axis=0) / np.diag(R)  # independent over steps
    assert np.all(np.abs(lag1) < 5 / np.sqrt(n))
    holes = dj.scenarios.false_alarm(
        KEY, B, T, DT, outlier_time=1e4, missing_prob=[0.0, 0.1, 0.3, 0.0], **QUIET
    )
    frac = np.isnan(np.asarray(holes.features)).reshape(-1, 4).mean(axis=0)
    se = np.sqrt(np.array([0.0, 0.09, 0.21, 0.0]) / n)
    np.testing.assert_array_less(np.abs(frac - [0.0, 0.1, 0.3, 0.0]), 5 * se + 1e-12)


@pytest.mark.parametrize(("theta", "sigma"), [(1.0, 2.0), (0.0, 0.5)])
def test_background_is_exact_ou(theta, sigma):
    """AR(1) coefficient, innovation variance and (theta > 0) stationary variance."""
    paths = dj.scenarios.false_alarm(
        KEY, B, T, DT, outlier_time=1e4, background_theta=theta, background_sigma=sigma
    )
    x = np.asarray(paths.drift)
    if theta > 0:
        a = np.exp(-theta * DT)
        q = sigma**2 * (1 - a**2) / (2 * theta)
        stat = sigma**2 / (2 * theta)
        x0 = x[:, 0] / np.sqrt(stat)  # started from the stationary law
        prev, now = x[:, :-1].ravel(), x[:, 1:].ravel()
    else:
        a, q = 1.0, sigma**2 * DT
        # A random walk from 0: x_0 is the first increment.
        prev = np.concatenate([np.zeros((B, 1)), x[:, :-1]], axis=1).ravel()
        now = x.ravel()
    n = now.size
    if theta > 0:
        a_hat = np.sum(now * prev) / np.sum(prev**2)
        assert abs(a_hat - a) < 5 * np.sqrt(q / np.sum(prev**2))
        # Whole-path variance: about B * T * dt / (2 correlation times) independent values.
        n_eff = B * T * DT * theta / 2
        assert abs(np.mean(x**2) / stat - 1) < 6 * np.sqrt(2 / n_eff)
        assert abs(np.mean(x0**2) - 1) < 6 * np.sqrt(2 / B)
    resid = now - a * prev
    assert abs(np.mean(resid**2) / q - 1) < 5 * np.sqrt(2 / n)


def test_returns_per_true_regime():
    vol = np.array([1.0, 2.0, 6.0])
    paths = dj.scenarios.liquidation_cascade(KEY, B, T, DT, **CASCADE, return_vol=vol)
    r, mu = np.asarray(paths.returns), np.asarray(paths.drift)
    s = np.asarray(paths.regimes)
    xi = (r - mu * DT) / (vol[s] * np.sqrt(DT))
    for j in range(3):
        e = xi[s == j]
        # Crisis is the 2 s fall only (21 steps a path, the steps that overlap it).
        assert e.size >= (21 * B if j == 2 else 6400)
        assert abs(np.mean(e)) < 5 / np.sqrt(e.size)
        assert abs(np.mean(e**2) - 1) < 5 * np.sqrt(2 / e.size)


def test_irregular_dt_and_float32():
    rng = np.random.default_rng(0)
    dts = rng.uniform(0.05, 0.15, T)
    paths = dj.scenarios.liquidation_cascade(KEY, 2, T, dts, **CASCADE, **QUIET)
    t = np.cumsum(dts)
    ref = cascade_profile(t, 30.0, -50.0, 2.0, 20.0, 10.0)
    np.testing.assert_allclose(np.asarray(paths.drift[1]), ref, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(paths.dt[1]), dts)
    single = dj.scenarios.chop(KEY, 2, 50, DT, dtype=jnp.float32)
    assert single.drift.dtype == single.features.dtype == single.returns.dtype == jnp.float32


# --- randomised variants and reproducibility ------------------------------------------------


def test_randomised_parameters_within_ranges_and_used():
    ranges = dict(
        level=(-80.0, -20.0),
        start=(10.0, 40.0),
        fall_time=(0.5, 3.0),
        hold_time=5.0,
        recovery_time=(1.0, 20.0),
    )
    paths, params = dj.scenarios.liquidation_cascade(
        KEY, B, T, DT, **ranges, **QUIET, return_params=True
    )
    assert sorted(params) == sorted(ranges) and all(p.shape == (B,) for p in params.values())
    assert np.all(np.asarray(params["hold_time"]) == 5.0)
    for name, (lo, hi) in ((k, r) for k, r in ranges.items() if isinstance(r, tuple)):
        x = np.asarray(params[name])
        assert np.all((x >= lo) & (x <= hi)), name
        # Uniform: mean (lo + hi) / 2, sd (hi - lo) / sqrt(12); and spread over the range.
        assert abs(x.mean() - (lo + hi) / 2) < 5 * (hi - lo) / np.sqrt(12 * B), name
        assert x.min() < lo + 0.2 * (hi - lo) and x.max() > hi - 0.2 * (hi - lo), name
    assert np.unique(np.asarray(params["level"])).size == B
    # Each path follows its own parameters.
    t = _times()
    for i in range(0, B, 7):
        p = {k: float(v[i]) for k, v in params.items()}
        ref = cascade_profile(
            t, p["start"], p["level"], p["fall_time"], p["hold_time"], p["recovery_time"]
        )
        np.testing.assert_allclose(np.asarray(paths.drift[i]), ref, atol=1e-9)


def test_reproducible_prefix_chunks_and_common_random_numbers():
    # Bit for bit (on one machine): each path's draws are keyed by fold_in(key, index), so
    # they and the path's arithmetic do not depend on the batch or the chunk.
    kw = dict(dj.scenarios.randomised("reversal"), return_params=True)
    a, pa = dj.scenarios.reversal(KEY, 4, T, DT, **kw)
    again, _ = dj.scenarios.reversal(KEY, 4, T, DT, **kw)
    assert tree_allclose(a, again, rtol=0, atol=0)
    prefix, pp = dj.scenarios.reversal(KEY, 2, T, DT, **kw)
    assert tree_allclose(prefix, a[:2], rtol=0, atol=0)
    assert tree_allclose(pp, {k: v[:2] for k, v in pa.items()}, rtol=0, atol=0)
    chunked, _ = dj.scenarios.reversal(KEY, 4, T, DT, chunk_size=2, **kw)
    assert tree_allclose(chunked, a, rtol=0, atol=0)
    sim = dj.scenarios.simulator("reversal", T, DT, **dj.scenarios.randomised("reversal"))
    tail = sim.sample(KEY, start=2, count=2)
    assert tree_allclose(tail, a[2:], rtol=0, atol=0)
    other = dj.scenarios.reversal(jax.random.key(1), 4, T, DT)
    assert not np.allclose(np.asarray(other.features), np.asarray(a.features))
    # Same key, other shape parameters: the noise is shared, only the script differs.
    lo = dj.scenarios.reversal(KEY, 4, T, DT, level=10.0, start=60.0, reversal_time=4.0)
    hi = dj.scenarios.reversal(KEY, 4, T, DT, level=30.0, start=60.0, reversal_time=4.0)
    ddrift = np.asarray(hi.drift - lo.drift)
    t = _times()
    np.testing.assert_allclose(ddrift[0], 20.0 - 40.0 * np.clip((t - 60) / 4, 0, 1), atol=1e-9)
    dz = np.asarray(hi.features - lo.features)
    np.testing.assert_allclose(dz, ddrift[..., None] * default_loadings(), atol=1e-9)


def test_default_ranges_fit_default_lengths():
    assert sorted(dj.scenarios.SCENARIOS) == sorted(
        ["liquidation_cascade", "reversal", "false_alarm", "slow_trend", "chop"]
    )
    ends = {
        "liquidation_cascade": lambda r: sum(r[k][1] for k in r if k != "level"),
        "reversal": lambda r: r["start"][1] + r["reversal_time"][1],
        "false_alarm": lambda r: r["outlier_time"][1],
        "slow_trend": lambda r: r["start"][1] + r["ramp_time"][1],
        "chop": lambda r: r["start"][1] + 2 * r["period"][1],
    }
    for name in dj.scenarios.SCENARIOS:
        ranges = dj.scenarios.randomised(name)
        assert all(lo < hi for lo, hi in ranges.values())
        span = dj.scenarios.simulator(name).num_steps * 0.1
        assert ends[name](ranges) < span, name
        ranges["start" if "start" in ranges else "outlier_time"] = 1.0
        assert dj.scenarios.randomised(name) != ranges  # a fresh dict each call
    assert dj.scenarios.simulator("liquidation_cascade").num_steps == 3000


# --- a filter sees the cascade --------------------------------------------------------------


def test_imm_detects_the_cascade_within_seconds():
    """Measured (key 20261204, 32 paths, default cascade at 60 s, 4 default features):
    P(Crisis) of the seed IMM first exceeds 0.5 between 0.4 and 0.8 s after the fall
    begins (median 0.6 s). Asserted: every path within 2.5 s, median in (0.2, 1.2) s."""
    obs = dj.Observation(default_loadings(), default_feature_cov())
    imm = dj.seed_imm(obs)
    paths = dj.scenarios.liquidation_cascade(KEY, B, T, DT, observation=obs)[:32]
    res = jax.vmap(lambda z: dj.filter(imm, z, DT))(paths.features)
    p = np.asarray(res.regime_probs[..., paths.crisis_index])
    t = _times()
    after = t >= 60.0
    crossed = p[:, after] > 0.5
    assert crossed.any(axis=1).all()
    latency = t[after][np.argmax(crossed, axis=1)] - 60.0
    assert latency.max() < 2.5 and 0.2 < np.median(latency) < 1.2


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_paths": 0}, "n_paths"),
        ({"n_paths": 2.5}, "n_paths"),
        ({"n_steps": 0}, "n_steps"),
        ({"dt": -0.1}, "dt"),
        ({"dt": np.full(3, 0.1)}, r"dt.*shape"),
        ({"level": float("nan")}, r"level.*finite"),
        ({"level": "big"}, r"level.*number or a \(low, high\)"),
        ({"level": np.array([1.0, 2.0])}, r"level.*number or a \(low, high\)"),
        ({"level": (-80.0, -20.0, 0.0)}, r"level.*\(low, high\)"),
        ({"level": (-20.0, -80.0)}, r"level.*low <= high.*-20.0, -80.0"),
        ({"fall_time": -1.0}, r"fall_time.*>= 0.*-1.0"),
        ({"fall_time": (-1.0, 2.0)}, r"fall_time.*bounds.*>= 0"),
        ({"hold_time": float("inf")}, "hold_time"),
        ({"start": -5.0}, "start"),
        ({"background_theta": -0.1}, "background_theta"),
        ({"background_sigma": float("nan")}, "background_sigma"),
        ({"return_vol": [1.0, 2.0]}, r"return_vol.*\[3\]"),
        ({"return_vol": -1.0}, "return_vol"),
        ({"missing_prob": 1.0}, r"missing_prob.*\[0, 1\)"),
        ({"observation": "bim"}, "observation"),
        ({"bogus": 1.0}, r"unknown parameter.*bogus"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"dtype": jnp.int32}, "dtype"),
        ({"dtype": "float99"}, "dtype"),
    ],
)
def test_cascade_bad_input(kwargs, match):
    args = {"n_paths": 2, "n_steps": 10, "dt": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        dj.scenarios.liquidation_cascade(KEY, **args)


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (dj.scenarios.chop, {"period": 0.0}, r"period.*> 0"),
        (dj.scenarios.chop, {"period": (0.0, 3.0)}, "period"),
        (dj.scenarios.chop, {"waveform": "triangle"}, "waveform"),
        (dj.scenarios.false_alarm, {"outlier_size": float("inf")}, "outlier_size"),
        (dj.scenarios.false_alarm, {"outlier_feature": 4}, r"outlier_feature.*\[0, 4\)"),
        (dj.scenarios.false_alarm, {"outlier_feature": 1.0}, "outlier_feature"),
        (dj.scenarios.reversal, {"reversal_time": -2.0}, "reversal_time"),
        (dj.scenarios.slow_trend, {"ramp_time": (5.0, 1.0)}, "ramp_time"),
        (dj.scenarios.slow_trend, {"fall_time": 1.0}, "unknown parameter"),
    ],
)
def test_scenario_bad_input(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(KEY, 2, 10, 0.1, **kwargs)


def test_bad_key():
    with pytest.raises(ValueError, match="key"):
        dj.scenarios.reversal(7, 2, 10, 0.1)
    with pytest.raises(ValueError, match="key"):
        dj.scenarios.simulator("chop", 10).sample(np.zeros(2, np.uint32))


def test_bad_scenario_name():
    with pytest.raises(ValueError, match="name"):
        dj.scenarios.randomised("flash_crash")
    with pytest.raises(ValueError, match="name"):
        dj.scenarios.simulator("flash_crash")
