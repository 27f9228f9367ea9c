"""The specification's verification tests, with the specification's regimes and ``Pi``.

The specification fixes the regimes (Quiet theta 0.10 sigma 0.3, Trending 0.02 / 1.0,
Crisis 0.005 / 5.0) and the transition matrix (``dj.seed_imm``) but not the cycle length
or the feature noise; each test states the ``dt`` (s) and the observation noise ``R``
((bps/s)^2) it uses. Where a claim holds only in part under these parameters, the test
asserts what does hold and its docstring gives the numbers; nothing is loosened.
"""

import equinox as eqx
import numpy as np

import drift_jax as dj

_filter = eqx.filter_jit(dj.filter)
QUIET, TRENDING, CRISIS = 0, 1, 2


def _calm_then(segment, R, dt, seed=None, calm_steps=None):
    """``calm_steps`` of calm data (zeros, or N(0, R) noise with ``seed``), then ``segment``."""
    n = int(round(60.0 / dt)) if calm_steps is None else calm_steps
    calm = np.zeros(n) if seed is None else np.random.default_rng(seed).normal(0, R**0.5, n)
    return np.concatenate([calm, segment]), n


def test_imm_quiet_to_crisis_transition():
    """R = 4 (feature noise sd 2 bps/s), dt = 0.5 s. After 60 s of calm noisy data the
    filter sits in Quiet (measured P = 0.78 / 0.20 / 0.023); one observation of -10 bps/s
    (5 noise sd) moves the weight to Crisis (measured 0.0076 / 0.019 / 0.973)."""
    R, dt = 4.0, 0.5
    zs, n = _calm_then([-10.0], R, dt, seed=1)
    res = _filter(dj.seed_imm(dj.Observation.scalar(R)), zs, dt)
    before, after = np.asarray(res.regime_probs[n - 1]), np.asarray(res.regime_probs[n])
    assert np.argmax(before) == QUIET and before[QUIET] > 0.7 and before[CRISIS] < 0.05
    assert np.argmax(after) == CRISIS and after[CRISIS] > 0.95
    assert after[QUIET] < 0.01
    assert bool(res.p_crisis[n] > 0.3) and not bool(res.p_crisis[n - 1] > 0.3)  # is_crisis flips


def _first_step_response(R, dt, step=-10.0):
    """Each member's first-step move after a step in the data, and its Kalman gain.

    After ``120`` calm (zero) observations every member's estimate is exactly 0, so the
    innovation ``step`` is the same for all and each member moves by ``K_j * step``. For a
    scalar state the posterior variance is ``(1 - K) P^- = K R``, so ``K_j = P_j / R``.
    """
    zs, n = _calm_then([step], R, dt, calm_steps=120)
    res = _filter(dj.seed_imm(dj.Observation.scalar(R)), zs, dt)
    assert np.all(np.asarray(res.model_drifts[n - 1]) == 0.0)
    move = np.asarray(res.model_drifts[n] - res.model_drifts[n - 1])
    gain = np.asarray(res.model_drift_vars[n]) / R
    np.testing.assert_allclose(move, gain * step, rtol=1e-12)
    return move, gain


def test_imm_crisis_tracks_faster():
    """ "Responds" = the member's first-step move after a step in the data = its Kalman gain
    times the (common) innovation. R = 4, dt = 0.5 s, a -10 bps/s step after 60 s of calm:
    the Crisis member moves by 9.3 bps/s (gain 0.93), Quiet by 0.91 (gain 0.091): 10.2x."""
    move, gain = _first_step_response(R=4.0, dt=0.5)
    assert gain[CRISIS] > gain[TRENDING] > gain[QUIET]
    assert move[CRISIS] / move[QUIET] >= 5.0
    np.testing.assert_allclose(move[CRISIS] / move[QUIET], 10.23, rtol=1e-3)


def test_imm_crisis_tracks_faster_depends_on_feature_noise_and_dt():
    """The 5x holds when the features are noisy relative to the Quiet member's process noise,
    not always: both gains tend to 1 as ``R -> 0``. Measured Crisis/Quiet gain ratio:

    =========  =======  =======  =======  =======  =======
    R \\ dt     0.1      0.25     0.5      1.0      2.0
    =========  =======  =======  =======  =======  =======
    0.25       5.37     3.92     3.06     2.41     1.93
    1          8.02     6.83     5.71     4.65     3.72
    4          8.88     10.02    10.23    9.84     8.89
    9          8.08     10.81    13.00    14.77    15.30
    =========  =======  =======  =======  =======  =======

    So the claim holds for R >= 4 at every dt here, for R = 1 only with dt <= 0.5 s, and for
    R = 0.25 only at dt = 0.1 s. What holds everywhere: Crisis responds faster (ratio > 1.9).
    """
    ratios = {}
    for R in (0.25, 1.0, 4.0, 9.0):
        for dt in (0.1, 0.25, 0.5, 1.0, 2.0):
            move, _ = _first_step_response(R, dt)
            ratios[R, dt] = move[CRISIS] / move[QUIET]
    assert min(ratios.values()) > 1.9
    assert all(ratios[R, dt] >= 5.0 for R in (4.0, 9.0) for dt in (0.1, 0.25, 0.5, 1.0, 2.0))
    assert all(ratios[1.0, dt] >= 5.0 for dt in (0.1, 0.25, 0.5))
    assert all(ratios[1.0, dt] < 5.0 for dt in (1.0, 2.0))
    assert ratios[0.25, 0.1] >= 5.0 and all(ratios[0.25, dt] < 5.0 for dt in (0.25, 0.5, 1, 2))


def test_imm_reversal_recovery():
    """R = 4, dt = 0.5 s, noisy features (seed 2): 60 s calm, 20 s of drift -20 bps/s, then
    the drift reverts to 0. Measured: P(Quiet) <= 0.34 during the trend; after the reversal
    it first exceeds 0.5 after 6.5 s, and over 15-30 s after the reversal Quiet is the most
    probable regime at every step (P(Quiet) >= 0.54) with P(Crisis) <= 0.13."""
    R, dt = 4.0, 0.5
    n0, n1, n2 = 120, 40, 60  # 60 s calm, 20 s trend, 30 s after the reversal
    drift = np.concatenate([np.zeros(n0), np.full(n1, -20.0), np.zeros(n2)])
    zs = drift + np.random.default_rng(2).normal(0.0, R**0.5, drift.size)
    res = _filter(dj.seed_imm(dj.Observation.scalar(R)), zs, dt)
    p = np.asarray(res.regime_probs)
    assert np.max(p[n0 + 2 : n0 + n1, QUIET]) < 0.4  # the trend moved the weight away
    after = p[n0 + n1 :]
    first = (np.argmax(after[:, QUIET] > 0.5) + 1) * dt
    assert after[:, QUIET].max() > 0.5 and first <= 30.0
    np.testing.assert_allclose(first, 6.5)
    late = after[int(15 / dt) :]  # 15-30 s after the reversal
    assert np.all(np.argmax(late, axis=1) == QUIET)
    assert np.all(late[:, QUIET] > 0.5) and np.all(late[:, CRISIS] < 0.3)


# --- joint vs independent vector update inside the IMM ------------------------------------

CORR = np.array(
    [
        [1.0, 0.8, 0.7, 0.6],
        [0.8, 1.0, 0.75, 0.65],
        [0.7, 0.75, 1.0, 0.7],
        [0.6, 0.65, 0.7, 1.0],
    ]
)
SCALES = np.array([1.0, 1.2, 0.8, 1.5])
R4 = CORR * np.outer(SCALES, SCALES)
ALPHA = np.array([1.0, 0.9, 1.1, 0.8])


def _cascade_features(T=60, seed=4):
    drift = np.concatenate(
        [np.zeros(T // 2), np.linspace(0.0, -15.0, T // 4), np.full(T // 4, -15.0)]
    )
    noise = np.random.default_rng(seed).multivariate_normal(np.zeros(4), R4, size=T)
    return drift[:, None] * ALPHA[None, :] + noise


def test_vector_update_less_confident():
    """4 features, pairwise correlations 0.6-0.8 (``CORR``), sd 0.8-1.5, loadings 0.8-1.1;
    dt = 0.5 s; 30 s calm, then a ramp to -15 bps/s. The joint update's information
    ``alpha^T R^-1 alpha = 2.50`` against the independent updates' ``sum alpha_k^2 / R_kk =
    3.74``: independent updates count the correlated features 1.5x.

    What holds: (1) in one IMM cycle from the same state (the joint filter's, at every
    step) every member's posterior drift variance is larger with the joint update (measured
    ratio >= 1.13 Quiet, >= 1.32 Trending, 1.48 Crisis); (2) running each filter on its own,
    the Trending and Crisis members' variances are larger at every step (ratios >= 1.31 and
    1.48). What does NOT hold: the Quiet member's and the mixture variance are not larger at
    every step when each filter runs on its own — the independent filter's over-confident
    members disagree more, and the mixing/mixture spread terms inflate its variance
    (measured Quiet ratio down to 0.68, mixture variance smaller with the joint update at
    20 of 60 steps, ratio down to 0.52).
    """
    dt, zs = 0.5, _cascade_features()
    info_joint = ALPHA @ np.linalg.solve(R4, ALPHA)
    info_indep = np.sum(ALPHA**2 / np.diag(R4))
    np.testing.assert_allclose([info_joint, info_indep], [2.4962, 3.7376], rtol=1e-4)

    est = dj.IMMDriftEstimator(dj.seed_imm(dj.Observation(ALPHA, R4)))
    ratios = []
    for z in zs:
        joint = est.update_vector(z, ALPHA, R4, dt, update="joint")
        indep = est.update_vector(z, ALPHA, R4, dt, update="independent")
        ratios.append(np.asarray(joint.state.covs[:, 0, 0] / indep.state.covs[:, 0, 0]))
        est = joint
    ratios = np.array(ratios)
    assert np.all(ratios[:, QUIET] > 1.1)
    assert np.all(ratios[:, TRENDING] > 1.3)
    assert np.all(ratios[:, CRISIS] > 1.45)

    joint_run = _filter(dj.seed_imm(dj.Observation(ALPHA, R4, update="joint")), zs, dt)
    indep_run = _filter(dj.seed_imm(dj.Observation(ALPHA, R4, update="independent")), zs, dt)
    run = np.asarray(joint_run.model_drift_vars / indep_run.model_drift_vars)
    assert np.all(run[:, TRENDING] > 1.25) and np.all(run[:, CRISIS] > 1.45)
    # Not a claim that holds throughout (see the docstring): pinned so a change shows.
    assert np.min(run[:, QUIET]) < 1.0
    assert np.any(np.asarray(joint_run.drift_var) < np.asarray(indep_run.drift_var))


# --- P(Crisis) under sustained bearish observations --------------------------------------


def test_regime_probability_monotonic():
    """R = 4, dt = 1 s; 60 s of calm (zero) observations, then 40 s of sustained bearish
    observations that get worse: ``z = -1 bps/s x (seconds since the onset)`` (noise-free
    features: their expected value under a drift accelerating at -1 bps/s^2). P(Crisis)
    increases strictly at every step of the window, from 0.0096 to 0.55 (smallest
    increase 9.3e-4).

    The claim is specific to a drift that keeps getting worse; see the next two tests for
    a constant bearish level (it does not hold) and other ``dt`` / rates (nearly holds)."""
    R, dt = 4.0, 1.0
    zs, n = _calm_then(-1.0 * dt * np.arange(1, 41), R, dt)
    pc = np.asarray(_filter(dj.seed_imm(dj.Observation.scalar(R)), zs, dt).p_crisis)[n - 1 :]
    assert np.all(np.diff(pc) > 0)
    assert pc[0] < 0.02 and pc[-1] > 0.5


def test_regime_probability_constant_bearish_level_peaks_then_decays():
    """Sustained observations at a constant bearish level do NOT give a monotone P(Crisis):
    R = 4, dt = 1 s, 60 s calm then z = -10 bps/s for 40 s. P(Crisis) jumps to 0.97 on
    the first observation, then falls at every step for 20 s as the Trending and Quiet
    members, which explain a persistent level with less process noise, catch up, and
    settles at 0.040 (the last 10 s move it by < 1e-8)."""
    R, dt = 4.0, 1.0
    zs, n = _calm_then(np.full(40, -10.0), R, dt)
    res = _filter(dj.seed_imm(dj.Observation.scalar(R)), zs, dt)
    pc = np.asarray(res.p_crisis)[n:]
    assert pc[0] > 0.95 and np.all(np.diff(pc[:20]) < 0)
    assert pc[-1] < 0.05 and np.max(np.abs(np.diff(pc[-10:]))) < 1e-8
    assert np.argmax(np.asarray(res.regime_probs[-1])) != CRISIS


def test_regime_probability_nearly_monotonic_for_other_ramps():
    """Other cycle lengths and rates of a worsening drift: P(Crisis) rises overall (end/start
    > 5) but may dip briefly. Measured largest single-step decrease over 40 s:
    (R, dt, rate) = (4, 0.5, 1): 5.6e-4; (4, 1, 0.5): 3.2e-4; (4, 0.25, 1): 3.2e-4;
    (1, 1, 1): 1.8e-3; (4, 1, 2): none; end/start 7.0-135. Asserted: below 4e-3 (about
    twice the largest)."""
    for R, dt, rate in [
        (4.0, 0.5, 1.0),
        (4.0, 1.0, 0.5),
        (4.0, 0.25, 1.0),
        (1.0, 1.0, 1.0),
        (4.0, 1.0, 2.0),
    ]:
        steps = int(round(40 / dt))
        zs, n = _calm_then(-rate * dt * np.arange(1, steps + 1), R, dt, calm_steps=400 - steps)
        res = _filter(dj.seed_imm(dj.Observation.scalar(R)), zs, dt)
        pc = np.asarray(res.p_crisis)[n - 1 :]
        assert pc[-1] > 5 * pc[0], (R, dt, rate)
        assert np.min(np.diff(pc)) > -4e-3, (R, dt, rate)
