"""dj.monte_carlo: the numbers equal direct computations, and do not depend on chunking or
on the number of devices."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import drift_jax as dj

KEY = jax.random.key(7)


def _setup():
    imm = dj.seed_imm(dj.Observation.scalar(4.0))
    single = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
    sim = dj.simulator(imm, 300, 0.5, jump_mean=[0.0, 0.0, -30.0], return_vol=[1, 1.5, 4])
    return imm, single, sim


def test_table_equals_direct_computation():
    imm, single, sim = _setup()
    paths = sim.sample(KEY, 0, 30)
    report = dj.monte_carlo({"imm": imm, "ou": single}, paths, chunk_size=10)
    assert list(report.table.index) == ["imm", "ou"]
    for name, model in (("imm", imm), ("ou", single)):
        res = jax.vmap(lambda z, m=model: dj.filter(m, z, 0.5))(paths.features)
        err = np.asarray(res.drift - paths.drift)
        var = np.asarray(res.drift_var)
        row = report.table.loc[name]
        np.testing.assert_allclose(row["rmse"], np.sqrt(np.mean(err**2)), rtol=1e-12)
        regimes = np.asarray(paths.regimes)
        for j, rn in enumerate(imm.regime_names):
            want = np.sqrt(np.mean(err[regimes == j] ** 2))
            np.testing.assert_allclose(row[f"rmse_{rn}"], want, rtol=1e-12)
        np.testing.assert_allclose(row["coverage_2sigma"], np.mean(err**2 <= 4 * var), rtol=1e-12)
        np.testing.assert_allclose(row["nees"], np.mean(err**2 / var), rtol=1e-12)
        ll = np.asarray(res.log_likelihood).sum() / err.size
        np.testing.assert_allclose(row["loglik_per_step"], ll, rtol=1e-12)
    # Regime-dependent metrics against dj.metrics called on the whole batch.
    res = jax.vmap(lambda z: dj.filter(imm, z, 0.5))(paths.features)
    lat = dj.metrics.detection_latency(res.p_crisis, paths.regimes, 0.5, crisis_index=2)
    summary = dj.metrics.summarise_latencies(lat)
    assert summary["episodes"] > 20
    # Exact although the filters are compiled differently: latencies are multiples of dt
    # (only a p_crisis within an ulp of the threshold could move one).
    assert report.table.loc["imm", "detect_median_s"] == summary["median"]
    assert report.table.loc["imm", "detect_fraction"] == summary["detected_fraction"]
    np.testing.assert_array_equal(
        np.sort(report.latencies["imm"]["detection"]), np.sort(np.asarray(lat)[~np.isnan(lat)])
    )
    rate = dj.metrics.false_alarm_rate_per_hour(res.p_crisis, paths.regimes, 0.5, quiet_index=0)
    np.testing.assert_allclose(report.table.loc["imm", "false_alarms_per_hour"], float(rate))
    # A single filter has no P(Crisis): those columns are NaN, tracking latencies are not.
    assert np.isnan(report.table.loc["ou", "detect_median_s"])
    assert np.isfinite(report.table.loc["ou", "track50_median_s"])


def test_chunked_simulated_and_in_memory_agree():
    imm, single, sim = _setup()
    est = {"imm": imm, "ou": single}
    whole = dj.monte_carlo(est, sim.sample(KEY, 0, 30), chunk_size=30)
    chunked = dj.monte_carlo(est, sim.sample(KEY, 0, 30), chunk_size=10)
    streamed = dj.monte_carlo(est, sim, key=KEY, n_paths=30, chunk_size=10, progress=False)
    # Per-path values are identical; per-path sums over time are reduced by XLA, whose
    # order may differ with the batch shape: equal to the last few ulps, not bitwise.
    pd.testing.assert_frame_equal(whole.table, chunked.table, check_exact=False, rtol=1e-13)
    pd.testing.assert_frame_equal(chunked.table, streamed.table, check_exact=True)
    for name in est:
        for k, v in whole.latencies[name].items():  # multiples of dt, as above
            np.testing.assert_array_equal(v, streamed.latencies[name][k])
    assert streamed.info["path_steps"] == 30 * 300


def test_same_numbers_on_four_forced_devices(tmp_path):
    code = textwrap.dedent(
        f"""
        import jax
        jax.config.update("jax_enable_x64", True)
        import drift_jax as dj
        assert len(jax.devices()) == 4
        imm = dj.seed_imm(dj.Observation.scalar(4.0))
        single = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
        sim = dj.simulator(imm, 300, 0.5, jump_mean=[0.0, 0.0, -30.0], return_vol=[1, 1.5, 4])
        rep = dj.monte_carlo({{"imm": imm, "ou": single}}, sim, key=jax.random.key(7),
                             n_paths=30, chunk_size=10, progress=False)
        assert rep.info["devices"] == 4
        rep.table.to_pickle({str(tmp_path / "t.pkl")!r})
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    got = pd.read_pickle(tmp_path / "t.pkl")
    imm, single, sim = _setup()
    ref = dj.monte_carlo({"imm": imm, "ou": single}, sim, key=KEY, n_paths=30, chunk_size=10)
    # 4 devices hold 3 (padded) paths each instead of 10 on one: sums over time may be
    # reduced in another order (see above).
    pd.testing.assert_frame_equal(got, ref.table, check_exact=False, rtol=1e-13)


def test_irregular_steps_and_extended_members():
    obs = dj.Observation([1.0, 0.8], [[4.0, 2.0], [2.0, 9.0]])
    imm = dj.seed_imm(obs, extended=True)
    paths = dj.simulate(imm, KEY, 12, 200, 0.5, sampling="poisson", missing_prob=0.2)
    one = dj.seed_imm(dj.Observation.scalar(9.0, loading=0.8), extended=True)
    report = dj.monte_carlo({"ext": imm, "second": (one, [1])}, paths)
    res = jax.vmap(dj.filter, in_axes=(None, 0, 0))(imm, paths.features, paths.dt)
    err = np.asarray(res.drift - paths.drift)
    np.testing.assert_allclose(report.table.loc["ext", "rmse"], np.sqrt(np.mean(err**2)))
    # (model, feature indices): the model sees only those features.
    res1 = jax.vmap(dj.filter, in_axes=(None, 0, 0))(one, paths.features[..., 1], paths.dt)
    err1 = np.asarray(res1.drift - paths.drift)
    np.testing.assert_allclose(report.table.loc["second", "rmse"], np.sqrt(np.mean(err1**2)))


def test_save(tmp_path):
    imm, single, sim = _setup()
    report = dj.monte_carlo({"imm": imm}, sim.sample(KEY, 0, 8))
    report.save(tmp_path / "mc" / "run")
    back = pd.read_csv(tmp_path / "mc" / "run.csv", index_col=0)
    np.testing.assert_allclose(back.loc["imm", "rmse"], report.table.loc["imm", "rmse"])
    assert "| imm |" in (tmp_path / "mc" / "run.md").read_text()
    lat = np.load(tmp_path / "mc" / "run.npz")
    np.testing.assert_array_equal(lat["imm/detection"], report.latencies["imm"]["detection"])


@pytest.mark.parametrize(
    ("estimators", "kwargs", "match"),
    [
        ({}, {}, "estimators"),
        ({"x": dj.OU(0.1, 1.0)}, {}, "estimators"),
        (
            {"four": dj.seed_imm(dj.Observation(jnp.ones(4), jnp.eye(4)))},
            {},
            "observes 4 feature",
        ),
        ({"bad": (dj.seed_imm(), [5])}, {}, "feature indices"),
        (None, {"chunk_size": 0}, "chunk_size"),
        (None, {"threshold": 1.5}, "threshold"),
        (None, {"n_paths": 3}, "n_paths"),
    ],
)
def test_bad_input(estimators, kwargs, match):
    imm, _, sim = _setup()
    paths = sim.sample(KEY, 0, 4)
    with pytest.raises(ValueError, match=match):
        dj.monte_carlo({"imm": imm} if estimators is None else estimators, paths, **kwargs)


def test_simulator_source_needs_key_and_count():
    imm, _, sim = _setup()
    with pytest.raises(ValueError, match="key"):
        dj.monte_carlo(imm, sim, n_paths=4)
    with pytest.raises(ValueError, match="n_paths"):
        dj.monte_carlo(imm, sim, key=KEY, n_paths=0)
    with pytest.raises(ValueError, match="paths"):
        dj.monte_carlo(imm, np.zeros((3, 10)))
