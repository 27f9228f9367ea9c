"""dj.metrics: hand-made paths with known answers, brute-force references (Python loops over
time) on random paths, jit/vmap equivalence, and bad input."""

import functools

import equinox as eqx
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import drift_jax as dj
from drift_jax import metrics as mt

nan, inf = np.nan, np.inf


def assert_same(actual, expected):
    """Exact equality with NaN == NaN and inf == inf. Legitimate here: the inputs are small
    integers and dyadic steps, whose sums are exact in any order, and each expected value
    is at most one correctly rounded division or square root away."""
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))


# --- brute-force references: one path, Python loops ----------------------------------------


def ref_detection(p, reg, dt, crisis, thr, include_start=False):
    t, T = np.cumsum(dt), len(p)
    out = np.full(T, nan)
    for k0 in range(T):
        onset = reg[k0] == crisis and (reg[k0 - 1] != crisis if k0 else include_start)
        if not onset:
            continue
        out[k0] = inf
        j = k0
        while j < T and reg[j] == crisis:
            if p[j] > thr:
                out[k0] = t[j] - t[k0]
                break
            j += 1
    return out


def ref_recovery(p, reg, dt, crisis, thr):
    t, T = np.cumsum(dt), len(p)
    out = np.full(T, nan)
    for k1 in range(1, T):
        if reg[k1 - 1] != crisis or reg[k1] == crisis:
            continue
        out[k1] = inf
        j = k1
        while j < T and reg[j] != crisis:
            if p[j] <= thr:
                out[k1] = t[j] - t[k1]
                break
            j += 1
    return out


def ref_tracking(est, truth, onsets, dt, fraction, horizon=None):
    t, T = np.cumsum(dt), len(est)
    out = np.full(T, nan)
    for k0 in np.flatnonzero(onsets):
        b = truth[k0 - 1] if k0 else truth[0]
        window = [k0]
        j = k0 + 1
        while j < T and not onsets[j] and (horizon is None or t[j] - t[k0] <= horizon):
            window.append(j)
            j += 1
        dev = [abs(truth[i] - b) for i in window]
        level = truth[window[int(np.argmax(dev))]]  # argmax: the first maximum
        if level == b:
            continue
        out[k0] = inf
        for i in window:
            if (est[i] - b) / (level - b) >= fraction:
                out[k0] = t[i] - t[k0]
                break
    return out


def ref_false_alarms(p, reg, dt, quiet, thr):
    alarms, quiet_s, alarm_s, before = 0, 0.0, 0.0, False
    for k in range(len(p)):
        now = p[k] > thr
        if reg[k] == quiet:
            alarms += now and not before
            quiet_s += dt[k]
            alarm_s += dt[k] * now
        before = now
    return alarms, quiet_s / 3600.0, alarm_s / quiet_s if quiet_s else nan


# --- tracking error ---------------------------------------------------------------------------


def test_squared_error_sums_and_rmse_by_hand():
    est = np.array([1.0, 2.0, 4.0, nan, 3.0])
    truth = np.zeros(5)
    reg = np.array([0, 1, 1, 0, 2])
    sums, counts = mt.squared_error_sums(est, truth, reg, 4)
    assert_same(sums, [1.0, 20.0, 9.0, 0.0])
    assert_same(counts, [1, 2, 1, 0])
    assert_same(mt.rmse_by_regime(est, truth, reg, 4), [1.0, np.sqrt(10.0), 3.0, nan])
    assert float(mt.rmse(est, truth)) == np.sqrt(30.0 / 4.0)
    assert float(mt.rmse(est, truth, where=reg == 1)) == np.sqrt(10.0)
    assert np.isnan(float(mt.rmse(est, truth, where=np.zeros(5, bool))))


def test_rmse_per_path_and_pooled():
    est = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, nan, 0.0]])
    truth = np.array([0.0, 0.0, 0.0, 0.0])  # broadcast over the batch
    assert_same(mt.rmse(est, truth, axis=-1), [1.0, np.sqrt(8.0 / 3.0)])
    assert float(mt.rmse(est, truth)) == np.sqrt(12.0 / 7.0)
    sums, counts = mt.squared_error_sums(est, truth, np.zeros((2, 4), int), 1)
    assert_same(sums[:, 0], [4.0, 8.0])
    assert_same(counts[:, 0], [4, 3])
    # Chunks add up: pooled RMSE from the per-path sums.
    assert np.sqrt(np.sum(sums) / np.sum(counts)) == float(mt.rmse(est, truth))


# --- calibration ----------------------------------------------------------------------------


def test_coverage_known_errors():
    truth = np.zeros(8)
    err = np.array([0.0, 0.5, -1.0, 1.5, -2.0, 2.5, 3.0, nan])
    var = np.full(8, 1.0)
    assert float(mt.coverage(err, var, truth)) == 5.0 / 7.0  # |e| <= 2, NaN left out
    assert float(mt.coverage(err, var, truth, k=1.0)) == 3.0 / 7.0
    assert float(mt.coverage(err, 4.0 * var, truth, k=1.0)) == 5.0 / 7.0  # std 2
    assert float(mt.coverage(err, var, truth, where=err > 0)) == 2.0 / 4.0
    batch = np.stack([err, np.zeros(8)])
    assert_same(mt.coverage(batch, var, truth, axis=-1), [5.0 / 7.0, 1.0])


def test_nees_exact_values():
    est = np.array([1.0, -2.0, 3.0, nan])
    var = np.array([1.0, 2.0, 9.0, 1.0])
    truth = np.zeros(4)
    # (1/1 + 4/2 + 9/9) / 3
    assert float(mt.nees(est, var, truth)) == 4.0 / 3.0
    assert float(mt.nees(est, var, truth, where=np.array([True, False, True, True]))) == 1.0


def test_nees_state_matches_a_solve():
    rng = np.random.default_rng(0)
    T, n = 6, 2
    A = rng.normal(size=(T, n, n))
    covs = A @ np.swapaxes(A, -1, -2) + 0.5 * np.eye(n)
    means = rng.normal(size=(T, n))
    states = rng.normal(size=(T, n))
    e = means - states
    q = np.einsum("ti,ti->t", e, np.linalg.solve(covs, e[..., None])[..., 0])
    np.testing.assert_allclose(float(mt.nees_state(means, covs, states)), q.mean(), rtol=1e-13)
    means[2, 1] = nan  # a missing step is left out
    keep = np.arange(T) != 2
    np.testing.assert_allclose(
        float(mt.nees_state(means, covs, states)), q[keep].mean(), rtol=1e-13
    )
    np.testing.assert_allclose(
        mt.nees_state(means[None], covs[None], states, where=keep, axis=-1),
        [q[keep].mean()],
        rtol=1e-13,
    )
    # n = 1 is the scalar NEES.
    np.testing.assert_allclose(
        float(mt.nees_state(e[:, :1], covs[:, :1, :1], np.zeros((T, 1)))),
        float(mt.nees(e[:, 0], covs[:, 0, 0], np.zeros(T))),
        rtol=1e-14,
    )


def test_mean_log_likelihood_of_a_filter():
    model = dj.KalmanModel(dj.OU(0.1, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
    zs = np.random.default_rng(1).normal(size=50)
    zs[7] = nan
    res = dj.filter(model, zs, 0.5)
    np.testing.assert_allclose(
        float(mt.mean_log_likelihood(res.log_likelihoods)),
        float(res.log_likelihood) / 50,
        rtol=1e-13,
    )
    assert_same(mt.mean_log_likelihood(np.array([[-1.0, -3.0], [0.0, 2.0]]), axis=-1), [-2, 1])


# --- detection ------------------------------------------------------------------------------


def test_detection_latency_by_hand():
    reg = np.array([0, 0, 2, 2, 2, 0, 0])
    p = np.array([0.0, 0.1, 0.2, 0.5, 0.9, 0.1, 0.0])
    assert_same(
        mt.detection_latency(p, reg, 0.5, crisis_index=2), [nan, nan, 0.5, nan, nan, nan, nan]
    )
    # Exactly at the threshold is not an alarm (strict >); at the onset step it is 0.
    assert_same(mt.detection_latency(p, reg, 0.5, crisis_index=2, threshold=0.5)[2], 1.0)
    assert_same(mt.detection_latency(p, reg, 0.5, crisis_index=2, threshold=0.15)[2], 0.0)
    # The alarm comes only after the episode has ended: missed.
    late = np.array([0.0, 0.0, 0.1, 0.1, 0.1, 0.9, 0.9])
    assert_same(mt.detection_latency(late, reg, 0.5, crisis_index=2)[2], inf)
    # Irregular steps: the latency is the time from t_2 to t_4 = dt_3 + dt_4.
    dt = np.array([1.0, 1.0, 1.0, 0.25, 2.0, 1.0, 1.0])
    assert_same(mt.detection_latency(p, reg, dt, crisis_index=2, threshold=0.6)[2], 2.25)


def test_detection_latency_two_episodes_and_start():
    reg = np.array([2, 2, 0, 2, 2, 0, 2, 2])
    p = np.array([0.9, 0.9, 0.9, 0.1, 0.4, 0.0, 0.0, 0.0])
    lat = mt.detection_latency(p, reg, 1.0, crisis_index=2)
    assert_same(lat, [nan, nan, nan, 1.0, nan, nan, inf, nan])
    lat = mt.detection_latency(p, reg, 1.0, crisis_index=2, include_start=True)
    assert_same(lat, [0.0, nan, nan, 1.0, nan, nan, inf, nan])
    assert mt.summarise_latencies(lat) == {
        "episodes": 3,
        "detected": 2,
        "detected_fraction": 2 / 3,
        "median": 0.5,
        "p90": 0.9,
        "mean": 0.5,
    }


def test_recovery_time_by_hand():
    reg = np.array([0, 2, 2, 0, 0, 0, 2, 0, 0, 2, 0])
    p = np.array([0.0, 0.9, 0.9, 0.6, 0.5, 0.2, 0.9, 0.1, 0.1, 0.9, 0.8])
    # End at 3: recovered at 5; end at 7: already; end at 10: never before the path ends.
    assert_same(
        mt.recovery_time(p, reg, 0.5, crisis_index=2),
        [nan, nan, nan, 1.0, nan, nan, nan, 0.0, nan, nan, inf],
    )
    # Not recovered before the next crisis onset (step 6) is +inf.
    p2 = p.copy()
    p2[5] = 0.35
    assert_same(mt.recovery_time(p2, reg, 0.5, crisis_index=2)[3], inf)


# --- tracking -------------------------------------------------------------------------------


def test_tracking_latency_step_and_linear_ramp():
    T, k0 = 20, 3
    truth = np.where(np.arange(T) >= k0, -10.0, 0.0)
    est = np.where(np.arange(T) >= k0, -(np.arange(T) - k0 + 1.0), 0.0)  # -1 per step
    onsets = np.arange(T) == k0
    dt = 0.25
    # 90% of -10 is -9, reached 8 steps after the onset; 50% (-5) after 4.
    lat = mt.tracking_latency(est, truth, onsets, dt, fraction=0.9)
    assert_same(lat, np.where(onsets, 8 * dt, nan))
    assert float(mt.tracking_latency(est, truth, onsets, dt, fraction=0.5)[k0]) == 4 * dt
    assert float(mt.tracking_latency(est, truth, onsets, dt, fraction=1.0)[k0]) == 9 * dt
    # A horizon shorter than the latency: missed; at exactly the latency: reached.
    assert float(mt.tracking_latency(est, truth, onsets, dt, horizon=1.75)[k0]) == inf
    assert float(mt.tracking_latency(est, truth, onsets, dt, horizon=2.0)[k0]) == 2.0
    # The next event cuts the window.
    two = onsets | (np.arange(T) == k0 + 5)
    assert float(mt.tracking_latency(est, truth, two, dt)[k0]) == inf
    # A rise is tracked like a fall; an event at step 0 has baseline truth[0].
    assert float(mt.tracking_latency(-est, -truth, onsets, dt)[k0]) == 8 * dt
    assert float(mt.tracking_latency(est, truth, np.arange(T) == 0, dt)[0]) == (k0 + 8) * dt


def test_tracking_latency_level_is_the_extreme_of_the_window():
    # An overshoot: the truth falls to -10 and relaxes to -6. The target is -10 (the truth
    # furthest from the baseline 2), so 50% means -4.
    truth = np.array([2.0, 2.0, -10.0, -8.0, -6.0, -6.0, -6.0])
    est = np.array([2.0, 2.0, 0.0, -3.0, -4.0, -6.0, -6.0])
    onsets = np.array([False, False, True, False, False, False, False])
    assert float(mt.tracking_latency(est, truth, onsets, 1.0, fraction=0.5)[2]) == 2.0
    # Without a move in the window the latency is undefined (NaN), not 0.
    flat = np.full(7, 2.0)
    assert np.all(np.isnan(mt.tracking_latency(est, flat, onsets, 1.0)))
    # NaN estimates never count as reached.
    est_nan = est.copy()
    est_nan[4] = nan
    assert float(mt.tracking_latency(est_nan, truth, onsets, 1.0, fraction=0.5)[2]) == 3.0


def test_reversal_recovery_time_is_tracking_latency():
    truth = np.array([0.0, -8.0, -8.0, -8.0, 0.0, 0.0, 0.0, 0.0])
    est = np.array([0.0, -2.0, -5.0, -7.0, -6.0, -4.0, -3.0, -0.5])
    reversal = np.arange(8) == 4
    rec = mt.reversal_recovery_time(est, truth, reversal, 0.5)
    assert_same(rec, np.where(reversal, 0.5, nan))  # -4 is half way back from -8 to 0
    assert_same(
        mt.reversal_recovery_time(est, truth, reversal, 0.5, fraction=0.9),
        mt.tracking_latency(est, truth, reversal, 0.5, fraction=0.9),
    )
    assert float(mt.reversal_recovery_time(est, truth, reversal, 0.5, fraction=0.9)[4]) == 1.5


def test_regime_onsets():
    reg = np.array([1, 1, 0, 2, 2, 0])
    assert_same(mt.regime_onsets(reg, 1), [False] * 6)
    assert_same(mt.regime_onsets(reg, 1, include_start=True), [True] + [False] * 5)
    assert_same(mt.regime_onsets(reg), [False, False, True, True, False, True])
    assert_same(mt.regime_onsets(reg, include_start=True), [True, False, True, True, False, True])


# --- false alarms ---------------------------------------------------------------------------


def test_false_alarms_two_rising_edges_in_one_quiet_hour():
    T = 3600
    p = np.zeros(T)
    p[100:160] = 0.5  # first alarm, 60 s
    p[1000] = 0.31  # second alarm, 1 s
    p[2000:2010] = 0.3  # at the threshold: not an alarm
    reg = np.zeros(T, int)
    alarms, hours = mt.false_alarm_rate(p, reg, 1.0, quiet_index=0)
    assert (int(alarms), float(hours)) == (2, 1.0)
    assert float(mt.false_alarm_rate_per_hour(p, reg, 1.0, quiet_index=0)) == 2.0
    assert float(mt.alarm_time_fraction(p, reg, 1.0, quiet_index=0)) == 61.0 / 3600.0


def test_false_alarms_only_count_quiet_onsets():
    p = np.array([0.9, 0.9, 0.1, 0.5, 0.5, 0.5, 0.0, 0.7])
    reg = np.array([0, 0, 0, 2, 0, 0, 1, 0])
    dt = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 4.0])
    alarms, hours = mt.false_alarm_rate(p, reg, dt, quiet_index=0)
    # Onsets at 0 (start above) and 7; the one at 3 is raised in crisis.
    assert (int(alarms), float(hours)) == (2, 10.0 / 3600.0)
    # Alarm time while quiet: steps 0, 1, 4, 5, 7 -> 1 + 1 + 1 + 2 + 4 of 10 s.
    assert float(mt.alarm_time_fraction(p, reg, dt, quiet_index=0)) == 0.9
    batch = np.stack([p, np.zeros(8)])
    alarms, hours = mt.false_alarm_rate(batch, reg, dt, quiet_index=0)
    assert_same(alarms, [2, 0])
    rate = mt.false_alarm_rate_per_hour(batch, reg, dt, quiet_index=0)
    np.testing.assert_allclose(float(rate), 2 / (20 / 3600), rtol=1e-15)
    rates = mt.false_alarm_rate_per_hour(batch, reg, dt, quiet_index=0, axis=-1)
    np.testing.assert_allclose(rates, [720.0, 0.0], rtol=1e-15)
    # No quiet time at all: undefined.
    assert np.isnan(float(mt.false_alarm_rate_per_hour(p, reg, dt, quiet_index=3)))


def test_summarise_latencies_without_events():
    s = mt.summarise_latencies(np.full((2, 3), nan))
    assert s["episodes"] == 0 and s["detected"] == 0
    assert all(np.isnan(s[k]) for k in ("detected_fraction", "median", "p90", "mean"))
    s = mt.summarise_latencies([inf, nan])
    assert (s["episodes"], s["detected"], s["detected_fraction"]) == (1, 0, 0.0)


# --- random paths: brute-force references, jit and vmap ------------------------------------

B, T = 3, 16
regimes_st = hnp.arrays(np.int64, (B, T), elements=st.sampled_from([0, 0, 0, 1, 2, 2]))
probs_st = hnp.arrays(
    np.float64, (B, T), elements=st.sampled_from([0.0, 0.2, 0.3, 0.31, 0.5, 0.9, nan])
)
dts_st = hnp.arrays(np.float64, (B, T), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
values_st = hnp.arrays(np.float64, (B, T), elements=st.sampled_from([-3.0, -1, 0, 1, 2, nan]))
truths_st = hnp.arrays(np.float64, (B, T), elements=st.sampled_from([-4.0, -2, 0, 1, 3]))
onsets_st = hnp.arrays(np.bool_, (B, T), elements=st.sampled_from([False, False, True]))


@settings(max_examples=30, deadline=None)
@given(regimes_st, probs_st, dts_st, st.sampled_from([0.3, 0.5]), st.booleans())
def test_crisis_timing_matches_brute_force(reg, p, dt, thr, include_start):
    lat = mt.detection_latency(
        p, reg, dt, crisis_index=2, threshold=thr, include_start=include_start
    )
    rec = mt.recovery_time(p, reg, dt, crisis_index=2, threshold=thr)
    for b in range(B):
        assert_same(lat[b], ref_detection(p[b], reg[b], dt[b], 2, thr, include_start))
        assert_same(rec[b], ref_recovery(p[b], reg[b], dt[b], 2, thr))
    for x in (lat, rec):
        x = np.asarray(x)
        assert np.all(np.isnan(x) | (x >= 0))
    alarms, hours = mt.false_alarm_rate(p, reg, dt, quiet_index=0, threshold=thr)
    frac = mt.alarm_time_fraction(p, reg, dt, quiet_index=0, threshold=thr, axis=-1)
    for b in range(B):
        ref = ref_false_alarms(p[b], reg[b], dt[b], 0, thr)
        assert int(alarms[b]) == ref[0]
        np.testing.assert_allclose(float(hours[b]), ref[1], rtol=1e-15)
        np.testing.assert_allclose(float(frac[b]), ref[2], rtol=1e-15)


@settings(max_examples=30, deadline=None)
@given(
    values_st,
    truths_st,
    onsets_st,
    dts_st,
    st.sampled_from([0.5, 0.9, 1.0]),
    st.sampled_from([None, 0.5, 2.0]),
)
def test_tracking_latency_matches_brute_force(est, truth, onsets, dt, fraction, horizon):
    lat = mt.tracking_latency(est, truth, onsets, dt, fraction=fraction, horizon=horizon)
    for b in range(B):
        ref = ref_tracking(est[b], truth[b], onsets[b], dt[b], fraction, horizon)
        assert_same(lat[b], ref)
    assert np.all(np.isnan(lat) | (np.asarray(lat) >= 0))


@settings(max_examples=30, deadline=None)
@given(values_st, truths_st, regimes_st, dts_st)
def test_error_metrics_properties(est, truth, reg, var):
    # RMSE per regime, weighted by the counts, is the overall RMSE (per path and pooled).
    sums, counts = mt.squared_error_sums(est, truth, reg, 3)
    by_regime = np.asarray(mt.rmse_by_regime(est, truth, reg, 3))
    overall = np.asarray(mt.rmse(est, truth, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):  # a path without estimates
        weighted = np.nansum(np.asarray(counts) * by_regime**2, axis=-1) / np.sum(counts, -1)
        pooled = np.sqrt(np.sum(sums) / np.sum(counts))
    np.testing.assert_allclose(weighted, overall**2, rtol=1e-14)
    assert_same(np.sum(counts, axis=-1), np.sum(~np.isnan(est), axis=-1))
    np.testing.assert_allclose(pooled, float(mt.rmse(est, truth)), rtol=1e-14)
    # Coverage is a fraction, and grows with k (NaN only for a path without estimates).
    cov1 = np.asarray(mt.coverage(est, var, truth, k=1.0, axis=-1))
    cov3 = np.asarray(mt.coverage(est, var, truth, k=3.0, axis=-1))
    empty = np.all(np.isnan(est), axis=-1)
    assert_same(np.isnan(cov1), empty)
    assert np.all((0.0 <= cov1[~empty]) & (cov1[~empty] <= cov3[~empty]) & (cov3[~empty] <= 1))


def _batch_paths(seed=0):
    rng = np.random.default_rng(seed)
    reg = np.repeat(rng.integers(0, 3, size=(4, 10)), 3, axis=-1)  # runs of 3 steps
    p = rng.uniform(size=(4, 30))
    dt = rng.choice([0.25, 0.5, 1.0], size=(4, 30))
    truth = np.where(reg == 2, -8.0, 0.0) + rng.normal(size=(4, 30))
    est = truth + rng.normal(size=(4, 30))
    var = rng.uniform(0.5, 2.0, size=(4, 30))
    return reg, p, dt, truth, est, var


PER_STEP = {
    "detection": lambda r, p, d, t, e, v: mt.detection_latency(p, r, d, crisis_index=2),
    "recovery": lambda r, p, d, t, e, v: mt.recovery_time(p, r, d, crisis_index=2),
    "tracking": lambda r, p, d, t, e, v: mt.tracking_latency(
        e, t, mt.regime_onsets(r), d, fraction=0.5, horizon=3.0
    ),
    "alarms": lambda r, p, d, t, e, v: mt.false_alarm_rate(p, r, d, quiet_index=0),
    "sums": lambda r, p, d, t, e, v: mt.squared_error_sums(e, t, r, 3),
    "rmse": lambda r, p, d, t, e, v: mt.rmse(e, t, axis=-1),
    "coverage": lambda r, p, d, t, e, v: mt.coverage(e, v, t, axis=-1),
    "nees": lambda r, p, d, t, e, v: mt.nees(e, v, t, axis=-1),
    "alarm_time": lambda r, p, d, t, e, v: mt.alarm_time_fraction(p, r, d, quiet_index=0, axis=-1),
}


@pytest.mark.parametrize("name", sorted(PER_STEP))
def test_jit_and_vmap_equal_per_path_calls(name, allclose_tree):
    fn = PER_STEP[name]
    args = _batch_paths()
    batched = fn(*args)
    per_path = [fn(*(a[b] for a in args)) for b in range(4)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_path)
    assert allclose_tree(batched, stacked, rtol=1e-15, atol=0)
    assert allclose_tree(jax.jit(fn)(*args), batched, rtol=1e-15, atol=0)
    assert allclose_tree(jax.vmap(fn)(*args), batched, rtol=1e-15, atol=0)


def test_traced_settings_under_jit():
    reg, p, dt, truth, est, var = _batch_paths(1)

    @jax.jit
    def f(thr, frac, k):
        return (
            mt.detection_latency(p, reg, dt, crisis_index=2, threshold=thr),
            mt.tracking_latency(est, truth, mt.regime_onsets(reg), dt, fraction=frac),
            mt.coverage(est, var, truth, k=k),
        )

    got = f(0.4, 0.7, 1.5)
    want = (
        mt.detection_latency(p, reg, dt, crisis_index=2, threshold=0.4),
        mt.tracking_latency(est, truth, mt.regime_onsets(reg), dt, fraction=0.7),
        mt.coverage(est, var, truth, k=1.5),
    )
    for a, b in zip(got, want, strict=True):
        assert_same(a, b)
    g = eqx.filter_jit(lambda thr: mt.detection_latency(p, reg, dt, crisis_index=2, threshold=thr))
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`threshold` must be in \[0, 1\]"):
        g(1.5)


# --- bad input ------------------------------------------------------------------------------

P = np.array([0.1, 0.5, 0.2])
R = np.array([0, 2, 0])


@pytest.mark.parametrize("thr", [-0.1, 1.5, nan])
def test_bad_threshold(thr):
    with pytest.raises(ValueError, match=r"`threshold` must be in \[0, 1\], got threshold="):
        mt.detection_latency(P, R, 1.0, crisis_index=2, threshold=thr)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\], got fraction="):
        mt.tracking_latency(P, P, R == 2, 1.0, fraction=fraction)


def test_bad_horizon():
    with pytest.raises(ValueError, match=r"`horizon` must be > 0, got horizon=-1\.0"):
        mt.tracking_latency(P, P, R == 2, 1.0, horizon=-1.0)


@pytest.mark.parametrize("k", [0.0, -2.0, inf])
def test_bad_k(k):
    with pytest.raises(ValueError, match=r"`k` must be finite and > 0, got k="):
        mt.coverage(P, P, P, k=k)


def test_shapes_that_do_not_broadcast():
    with pytest.raises(
        ValueError, match=r"shapes must broadcast .* estimate \(3,\), truth \(4,\)"
    ):
        mt.rmse(P, np.zeros(4))
    with pytest.raises(ValueError, match=r"shapes must broadcast .* dt \(2,\)"):
        mt.detection_latency(P, R, np.ones(2), crisis_index=2)


def test_scalar_path():
    with pytest.raises(ValueError, match=r"`estimate` must be a path with time as its last"):
        mt.rmse(1.0, 1.0)


def test_float_regimes():
    with pytest.raises(ValueError, match=r"`regimes` must be an integer array .* float64"):
        mt.detection_latency(P, [0.0, 2.0, 0.0], 1.0, crisis_index=2)


def test_regimes_out_of_range():
    with pytest.raises(ValueError, match=r"`regimes` must be regime indices in \[0, num_regi"):
        mt.squared_error_sums(P, P, R, num_regimes=2)


@pytest.mark.parametrize("num", [0, -3, True])
def test_bad_num_regimes(num):
    with pytest.raises(ValueError, match=r"`num_regimes` must be an int >= 1"):
        mt.rmse_by_regime(P, P, R, num)


@pytest.mark.parametrize("idx", [-1, True])
def test_bad_crisis_index(idx):
    with pytest.raises(ValueError, match=r"`crisis_index` must be an int >= 0, got crisis_in"):
        mt.detection_latency(P, R, 1.0, crisis_index=idx)


def test_bad_quiet_index():
    with pytest.raises(ValueError, match=r"`quiet_index` must be an int >= 0"):
        mt.false_alarm_rate(P, R, 1.0, quiet_index=-2)


def test_negative_dt():
    with pytest.raises(ValueError, match=r"`dt` must be finite and >= 0; got dt="):
        mt.recovery_time(P, R, np.array([1.0, -1.0, 1.0]), crisis_index=2)


def test_onsets_not_boolean():
    with pytest.raises(ValueError, match=r"`onsets` must be a boolean mask, got dtype int"):
        mt.tracking_latency(P, P, R.tolist(), 1.0)


def test_negative_variance():
    with pytest.raises(ValueError, match=r"`variance` must be >= 0 \(NaN for a missing step\)"):
        mt.coverage(P, -P, P)
    with pytest.raises(ValueError, match=r"`variance` must be > 0 \(NaN for a missing step\)"):
        mt.nees(P, np.array([1.0, 0.0, nan]), P)


def test_empty_path():
    with pytest.raises(ValueError, match=r"`p_crisis` must have at least one step, got shape"):
        mt.detection_latency(np.zeros((2, 0)), np.zeros((2, 0), int), 1.0, crisis_index=2)


def test_nees_state_shapes():
    with pytest.raises(ValueError, match=r"state dimensions disagree"):
        mt.nees_state(np.zeros((3, 2)), np.ones((3, 1, 1)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"`means` and `states` must be \[\.\.\., T, n\]"):
        mt.nees_state(np.zeros(3), np.ones((3, 1, 1)), np.zeros(3))


def test_bad_latencies():
    with pytest.raises(ValueError, match=r"`latencies` must be >= 0, \+inf .* \[-1\.0\]"):
        mt.summarise_latencies([1.0, -1.0, nan])


def test_namespace():
    assert dj.metrics.rmse is mt.rmse
    assert functools.partial(mt.detection_latency, crisis_index=2)(P, R, 1.0).shape == (3,)


def test_transition_counts():
    r = np.random.default_rng(7).integers(0, 3, (4, 5, 30))
    ref = np.zeros((3, 3), int)
    for path in r.reshape(-1, 30):
        for a, b in zip(path[:-1], path[1:], strict=True):
            ref[a, b] += 1
    assert_same(mt.transition_counts(r, 3), ref)
    assert_same(jax.jit(mt.transition_counts, static_argnums=1)(jnp.asarray(r), 3), ref)
    assert_same(mt.transition_counts([2], 3), np.zeros((3, 3), int))  # one step: no move
    with pytest.raises(ValueError, match=r"`regimes` must be regime indices in \[0, num_regimes"):
        mt.transition_counts([0, 3], 3)
    with pytest.raises(ValueError, match=r"`num_regimes` must be an int >= 1"):
        mt.transition_counts([0, 1], 0)
