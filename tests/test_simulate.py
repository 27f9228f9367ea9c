"""dj.simulate reproduces its model: statistical checks with stated tolerances.

Tolerances are multiples (5 to 6) of each statistic's standard error at the sample size
used, so a correct simulator fails with probability < 1e-6 per assertion; the keys are
fixed, so the tests are deterministic.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj
from drift_jax._simulation.simulate import empirical_transition_counts
from drift_jax._simulation.synthetic import default_feature_cov, default_loadings

from .conftest import tree_allclose

KEY = jax.random.key(20261128)


def _four_feature_imm(**kw):
    return dj.seed_imm(dj.Observation(default_loadings(), default_feature_cov()), **kw)


def test_transition_frequencies_match_pi():
    imm = dj.seed_imm()
    paths = dj.simulate(imm, KEY, n_paths=1000, n_steps=600, dt=0.5)
    counts = empirical_transition_counts(paths.regimes, 3)
    rows = counts.sum(axis=1, keepdims=True)
    freq = counts / rows
    Pi = np.asarray(imm.transition)
    se = np.sqrt(Pi * (1 - Pi) / rows)
    assert rows.min() > 100_000
    np.testing.assert_array_less(np.abs(freq - Pi), 5 * se + 1e-12)
    # The chain starts from init_probs (the stationary distribution) and stays there.
    occupancy = np.bincount(np.asarray(paths.regimes).ravel(), minlength=3) / paths.regimes.size
    np.testing.assert_allclose(occupancy, np.asarray(imm.init_probs), atol=0.01)


@pytest.mark.parametrize("discretisation", ["euler", "exact"])
def test_per_regime_autocorrelation_and_noise(discretisation):
    """Within regime j: regression of mu_k on mu_{k-1} gives F_j, residual variance Q_j."""
    imm = dj.seed_imm(discretisation=discretisation)
    dt = 0.5
    paths = dj.simulate(imm, KEY, n_paths=600, n_steps=800, dt=dt)
    x, s = np.asarray(paths.drift), np.asarray(paths.regimes)
    prev, now = x[:, :-1], x[:, 1:]
    for j, member in enumerate(imm.dynamics):
        stay = (s[:, 1:] == j) & (s[:, :-1] == j)
        a_hat = np.sum(now[stay] * prev[stay]) / np.sum(prev[stay] ** 2)
        F, Q = member.transition(dt)
        resid = now[stay] - a_hat * prev[stay]
        n = stay.sum()
        # Var(a_hat) = q / sum x^2; Var(sample variance) = 2 q^2 / n.
        se_a = np.sqrt(float(Q[0, 0]) / np.sum(prev[stay] ** 2))
        assert abs(a_hat - float(F[0, 0])) < 6 * se_a, (j, a_hat, float(F[0, 0]))
        if discretisation == "exact":
            assert abs(float(F[0, 0]) - np.exp(-float(member.theta) * dt)) < 1e-12
        q_hat = np.mean(resid**2)
        assert abs(q_hat / float(Q[0, 0]) - 1) < 6 * np.sqrt(2 / n), (j, q_hat, float(Q[0, 0]))


@pytest.mark.parametrize(
    "dynamics",
    [dj.OU(0.1, 0.3), dj.OU(0.02, 1.0, "exact"), dj.OUAccel(0.05, 0.5, 0.5, 0.3, "exact")],
)
def test_stationary_moments(dynamics):
    """Started from the stationary law, the law stays stationary (P = F P F^T + Q)."""
    dt = 0.5
    F, Q = (np.asarray(a) for a in dynamics.transition(dt))
    P = np.zeros_like(Q)
    for _ in range(20_000):  # fixed point of the Lyapunov equation
        P = F @ P @ F.T + Q
    model = dj.KalmanModel(dynamics, dj.Observation.scalar(1.0), 0.0, P)
    paths = dj.simulate(model, KEY, n_paths=20_000, n_steps=50, dt=dt)
    n = model.state_dim
    states = np.stack([paths.drift, paths.drift_rate], axis=-1)[..., :n]
    for k in (0, 49):
        emp = np.cov(states[:, k].T).reshape(n, n)
        se = np.sqrt((P**2 + np.outer(np.diag(P), np.diag(P))) / paths.num_paths)
        np.testing.assert_array_less(np.abs(emp - P), 6 * se)
        np.testing.assert_array_less(
            np.abs(states[:, k].mean(axis=0)), 6 * np.sqrt(np.diag(P) / 2e4)
        )


def test_feature_noise_covariance_and_returns():
    imm = _four_feature_imm()
    vol = np.array([1.0, 1.5, 4.0])
    paths = dj.simulate(imm, KEY, n_paths=200, n_steps=500, dt=0.25, return_vol=vol)
    alpha = np.asarray(imm.observation.loadings)
    noise = np.asarray(paths.features) - np.asarray(paths.drift)[..., None] * alpha
    noise = noise.reshape(-1, 4)
    R = np.asarray(imm.observation.cov)
    emp = np.cov(noise.T)
    se = np.sqrt((R**2 + np.outer(np.diag(R), np.diag(R))) / noise.shape[0])
    np.testing.assert_array_less(np.abs(emp - R), 6 * se)
    # Returns: (r - mu dt) / sqrt(dt) has the regime's volatility.
    dt = np.asarray(paths.dt)
    shock = (np.asarray(paths.returns) - np.asarray(paths.drift) * dt) / np.sqrt(dt)
    for j in range(3):
        sel = shock[np.asarray(paths.regimes) == j]
        assert abs(sel.std() / vol[j] - 1) < 6 / np.sqrt(2 * sel.size)


def test_jumps_on_entry():
    imm = dj.seed_imm()
    paths = dj.simulate(
        imm, KEY, 400, 400, 0.5, jump_mean=[0.0, 0.0, -50.0], jump_std=[0.0, 0.0, 5.0]
    )
    x = np.asarray(paths.drift)
    onset = np.asarray(paths.onsets("Crisis"))[:, 1:]
    F, Q = imm.dynamics[2].transition(0.5)
    jump = x[:, 1:][onset] - float(F[0, 0]) * x[:, :-1][onset]
    # jump + diffusion: mean -50, variance 25 + q
    sd = np.sqrt(25.0 + float(Q[0, 0]))
    assert onset.sum() > 500
    assert abs(jump.mean() + 50.0) < 6 * sd / np.sqrt(onset.sum())
    assert abs(jump.std() / sd - 1) < 6 / np.sqrt(2 * onset.sum())
    sym = dj.simulate(imm, KEY, 400, 400, 0.5, jump_mean=[0, 0, 50.0], symmetric_jumps=True)
    x = np.asarray(sym.drift)
    onset = np.asarray(sym.onsets(2))[:, 1:]
    signs = np.sign(x[:, 1:][onset] - float(F[0, 0]) * x[:, :-1][onset])
    assert abs(signs.mean()) < 6 / np.sqrt(onset.sum())


def test_poisson_sampling_and_missing():
    model = dj.KalmanModel(
        dj.OU(0.1, 0.3), dj.Observation(default_loadings(), default_feature_cov())
    )
    paths = dj.simulate(
        model, KEY, 100, 1000, 0.2, sampling="poisson", missing_prob=[0.0, 0.1, 0.5, 0.9]
    )
    dt = np.asarray(paths.dt)
    assert dt.min() > 0
    assert abs(dt.mean() / 0.2 - 1) < 6 / np.sqrt(dt.size)  # exponential: sd = mean
    assert abs(np.median(dt) / (0.2 * np.log(2)) - 1) < 0.02
    frac = np.isnan(np.asarray(paths.features)).mean(axis=(0, 1))
    np.testing.assert_allclose(frac, [0.0, 0.1, 0.5, 0.9], atol=6 * np.sqrt(0.25 / 1e5))
    assert np.all(paths.regimes == 0)


def test_reproducible_chunked_and_prefix():
    imm = _four_feature_imm(extended=True)
    a = dj.simulate(imm, KEY, 50, 80, 0.5, missing_prob=0.2, sampling="poisson")
    # chunk_size=25 and the 25-path prefix share one compiled shape.
    b = dj.simulate(imm, KEY, 50, 80, 0.5, missing_prob=0.2, sampling="poisson", chunk_size=25)
    c = dj.simulate(imm, KEY, 25, 80, 0.5, missing_prob=0.2, sampling="poisson")
    assert tree_allclose(a, b, rtol=0, atol=0)
    assert tree_allclose(a[:25], c, rtol=0, atol=0)
    d = dj.simulate(imm, jax.random.key(1), 50, 80, 0.5)
    assert not np.allclose(a.drift, d.drift)
    assert a.drift_rate.shape == (50, 80) and float(jnp.max(jnp.abs(a.drift_rate))) > 0


def test_same_paths_on_four_forced_devices(tmp_path):
    code = textwrap.dedent(
        f"""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import drift_jax as dj
        assert len(jax.devices()) == 4
        imm = dj.seed_imm(dj.Observation.scalar(4.0))
        p = dj.simulate(imm, jax.random.key(3), 30, 60, 0.5, return_vol=[1, 2, 3],
                        missing_prob=0.1, devices=4, chunk_size=11)
        np.savez({str(tmp_path / "p.npz")!r}, **{{k: np.asarray(getattr(p, k)) for k in
                 ("regimes", "drift", "features", "returns", "dt")}})
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    got = np.load(tmp_path / "p.npz")
    imm = dj.seed_imm(dj.Observation.scalar(4.0))
    ref = dj.simulate(imm, jax.random.key(3), 30, 60, 0.5, return_vol=[1, 2, 3], missing_prob=0.1)
    # Bit for bit (one machine): paths are keyed by fold_in(key, index), and the scalar
    # model's per-path arithmetic is the same elementwise program on any device split.
    for name in got.files:
        np.testing.assert_array_equal(got[name], np.asarray(getattr(ref, name)), err_msg=name)


def test_kalman_filter_on_simulated_data_is_calibrated():
    """True model: normalised innovations ~ N(0, 1); +-2 sigma coverage ~ 95.4%."""
    dyn = dj.OU(0.05, 1.0)
    model = dj.KalmanModel(dyn, dj.Observation.scalar(4.0), 0.0, 10.0)
    paths = dj.simulate(model, KEY, 400, 500, 0.5)
    res = jax.vmap(lambda z: dj.filter(model, z, 0.5))(paths.features)
    S = res.predicted_covs[..., 0, 0] + 4.0
    nu = np.asarray(res.innovations[..., 0] / jnp.sqrt(S)).ravel()
    n = nu.size
    # Under the true model the innovations are white: independent across steps too.
    assert abs(nu.mean()) < 6 / np.sqrt(n)
    assert abs(nu.var() - 1) < 6 * np.sqrt(2 / n)
    lag1 = np.mean(nu.reshape(400, 500)[:, 1:] * nu.reshape(400, 500)[:, :-1])
    assert abs(lag1) < 6 / np.sqrt(n)
    err = np.asarray(res.drift - paths.drift)
    inside = np.abs(err) <= 2 * np.sqrt(np.asarray(res.drift_var))
    assert abs(inside.mean() - 0.9545) < 0.005
    # Four correlated features, extended state: NIS has mean m = 4.
    obs = dj.Observation(default_loadings(), default_feature_cov())
    model4 = dj.KalmanModel(dj.OUAccel(0.05, 1.0, 0.5, 0.3), obs, 0.0, 10.0)
    p4 = dj.simulate(model4, KEY, 200, 400, 0.5)
    r4 = jax.vmap(lambda z: dj.filter(model4, z, 0.5))(p4.features)
    H, R = obs.matrices(2, jnp.float64)
    S4 = H @ r4.predicted_covs @ H.T + R[None, None]
    nis = jnp.einsum("...i,...ij,...j->...", r4.innovations, jnp.linalg.inv(S4), r4.innovations)
    assert abs(float(nis.mean()) / 4 - 1) < 6 * np.sqrt(2 / (4 * nis.size))


def test_imm_filter_on_simulated_data_coverage():
    """The IMM with the true model: coverage and NEES measured here (stated tolerances).

    Measured with key 1 (400 paths x 1000 steps, dt 0.5, 4 features with missing 10%):
    coverage 0.951 and NEES 0.953 over all steps; per regime coverage is high in Quiet
    (0.99) and low in Crisis (0.88: after a switch the mixture lags) on one feature.
    """
    imm = _four_feature_imm()
    paths = dj.simulate(imm, jax.random.key(1), 200, 1000, 0.5, missing_prob=0.1)
    res = jax.vmap(lambda z: dj.filter(imm, z, 0.5))(paths.features)
    err = np.asarray(res.drift - paths.drift)
    var = np.asarray(res.drift_var)
    coverage = np.mean(np.abs(err) <= 2 * np.sqrt(var))
    nees = np.mean(err**2 / var)
    assert 0.94 < coverage < 0.96
    assert 0.90 < nees < 1.05
    regimes = np.asarray(paths.regimes)
    per_regime = [np.mean((np.abs(err) <= 2 * np.sqrt(var))[regimes == j]) for j in range(3)]
    assert per_regime[0] > 0.97 and per_regime[2] < per_regime[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_paths": 0}, "n_paths"),
        ({"n_paths": 2.5}, "n_paths"),
        ({"n_steps": 0}, "n_steps"),
        ({"dt": -0.1}, "dt"),
        ({"dt": np.ones(7)}, "dt"),
        ({"return_vol": -1.0}, "return_vol"),
        ({"return_vol": [1.0, 2.0]}, "return_vol"),
        ({"jump_std": [0, 0, -1.0]}, "jump_std"),
        ({"missing_prob": 1.0}, "missing_prob"),
        ({"missing_prob": [0.1, 0.2]}, "missing_prob"),
        ({"sampling": "random"}, "sampling"),
        ({"sampling": "poisson", "dt": np.full(10, 0.5)}, "poisson"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"devices": 99}, "devices"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"n_paths": 2, "n_steps": 10, "dt": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dj.simulate(dj.seed_imm(), KEY, **args)


def test_bad_model():
    with pytest.raises(ValueError, match="model"):
        dj.simulate(dj.OU(0.1, 1.0), KEY, 2, 10, 0.5)
