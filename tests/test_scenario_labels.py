"""Scenario labels that mean what the model's regimes mean, scripted events on a
regime-switching background, per-path Poisson arrivals (issue 15, items 7 and 8)."""

import jax
import numpy as np
import pytest

import drift_jax as dj

OBS = dj.scenarios.default_observation()
DT = 0.1
Q, TR, C = 0, 1, 2


@pytest.fixture(scope="module")
def cascade_run():
    paths = dj.scenarios.liquidation_cascade(jax.random.key(1), 16, 1400)
    imm = dj.seed_imm(OBS)
    res = jax.vmap(lambda z: dj.filter(imm, z, DT))(paths.features)
    return paths, imm, res


def _finite(x):
    x = np.asarray(x)
    return x[np.isfinite(x)]


def test_recovery_reads_zero_with_the_old_labels(cascade_run):
    """The issue's case: labelled Crisis through the flat hold (t in [60, 102)), the
    model's P(Crisis) has fallen back long before the label ends: recovery reads 0."""
    paths, _, res = cascade_run
    t = np.asarray(paths.times)
    old = np.where(t < 60, Q, np.where(t < 102, C, np.where(t < 132, TR, Q)))
    rec = _finite(dj.metrics.recovery_time(res.p_crisis, old, DT, crisis_index=C))
    assert rec.size == 16
    assert np.median(rec) == 0.0  # measured: 0.0 on every path
    # During the hold the filter says Trending: mean probabilities (Q, T, C) measured
    # (0.27, 0.44, 0.29) over t in [70, 102).
    hold = (t >= 70) & (t < 102)
    mean = np.asarray(res.regime_probs)[hold].mean(axis=0)
    assert mean[TR] > mean[Q] and mean[TR] > mean[C]


def test_recovery_reads_true_with_the_new_labels(cascade_run):
    paths, imm, res = cascade_run
    labels = np.asarray(paths.regimes)
    t = np.asarray(paths.times)
    # Crisis is the fall (the 21 steps overlapping [60, 62]); the hold is Trending.
    assert np.all((labels == C).sum(axis=1) == 21)
    assert np.all(labels[:, (t[0] > 62.05) & (t[0] < 131.95)] == TR)
    rec = _finite(dj.metrics.recovery_time(res.p_crisis, labels, DT, crisis_index=C))
    # How long P(Crisis) outlasts the fall: measured median 2.0 s, p90 2.4 s.
    assert rec.size == 16
    assert 1.0 <= np.median(rec) <= 3.0 and np.percentile(rec, 90) <= 4.0
    det = _finite(dj.metrics.detection_latency(res.p_crisis, labels, DT, crisis_index=C))
    assert det.size == 16 and np.all(det <= 1.0)  # detected during the fall, measured 0.2-0.7 s
    report = dj.monte_carlo(imm, paths)
    row = report.table.iloc[0]
    assert 1.0 <= row["recovery_median_s"] <= 3.0 and row["recovery_p90_s"] <= 4.0
    assert row["detect_fraction"] == 1.0


def test_poisson_arrivals_per_path():
    rate, horizon, B = 5.0, 40.0, 200
    paths = dj.simulate(dj.seed_imm(), jax.random.key(3), B, 300, 1.0 / rate, sampling="poisson")
    t = np.asarray(paths.times)
    assert t[:, -1].min() > horizon  # every path runs past the window
    counts = (t <= horizon).sum(axis=1)
    mean, expected = counts.mean(), rate * horizon
    se = np.sqrt(expected / B)
    assert abs(mean - expected) < 5 * se
    # Poisson: the variance equals the mean (within 5 SE of the sample variance).
    assert abs(counts.var(ddof=1) - expected) < 5 * expected * np.sqrt(2 / (B - 1))
    assert len({tuple(row[:5]) for row in t}) == B  # each path its own event times


def test_cascade_on_a_regime_switching_background():
    imm = dj.seed_imm(OBS)
    key, B, T = jax.random.key(7), 8, 1500
    starts = np.linspace(40.0, 80.0, B)
    script = dict(level=-40.0, fall_time=1.5, hold_time=20.0, recovery_time=10.0)
    paths = dj.scenarios.cascade_on_background(
        imm, key, B, T, 0.1, start=starts, sampling="poisson", **script
    )
    background = dj.simulate(imm, key, B, T, 0.1, sampling="poisson")
    t = np.asarray(paths.times)
    np.testing.assert_array_equal(t, np.asarray(background.times))
    added = np.asarray(paths.drift - background.drift)
    for i in range(B):
        ref = dj.scenarios.cascade_profile(t[i], starts[i], -40.0, 1.5, 20.0, 10.0)
        np.testing.assert_allclose(added[i], ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            np.asarray(paths.features[i] - background.features[i]),
            ref[:, None] * np.asarray(OBS.loadings)[None, :],
            rtol=0,
            atol=1e-10,
        )
        # Exactly where requested: nothing before the start or after the recovery.
        assert np.all(added[i][t[i] < starts[i]] == 0.0)
        assert np.all(added[i][t[i] >= starts[i] + 31.5] == 0.0)
    labels, bg = np.asarray(paths.regimes), np.asarray(background.regimes)
    t_prev = np.concatenate([np.zeros((B, 1)), t[:, :-1]], axis=1)
    fall = (t >= starts[:, None]) & (t_prev < starts[:, None] + 1.5)
    rest = (t >= starts[:, None] + 1.5) & (t < starts[:, None] + 31.5) & ~fall
    np.testing.assert_array_equal(labels[fall], C)
    np.testing.assert_array_equal(labels[rest], TR)
    np.testing.assert_array_equal(labels[~fall & ~rest], bg[~fall & ~rest])
    assert len(np.unique(bg)) == 3  # the background does switch regimes
    np.testing.assert_allclose(
        np.asarray(paths.returns - background.returns), added * np.asarray(paths.dt), atol=1e-12
    )
    with pytest.raises(ValueError, match=r"`start` must be a number or one per path"):
        dj.scenarios.cascade_on_background(imm, key, B, 100, 0.1, start=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"`fall_time` must be finite and >= 0"):
        dj.scenarios.cascade_on_background(imm, key, 2, 100, 0.1, fall_time=-1.0)
