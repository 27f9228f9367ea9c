"""The demo (``make demo``) and its synthetic data: run in-process at a small size.

The data is ``dj.scenarios.liquidation_cascade`` (tested in ``test_scenarios.py``); here
its demo form (``demo.make_data``) and the public defaults the demo relies on.
"""

import contextlib
import io
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import drift_jax as dj
from drift_jax import demo

# Its tests share an expensive module fixture: one test worker runs them all (make test
# distributes with --dist loadgroup), so the fixture is built once.
pytestmark = pytest.mark.xdist_group("test_demo")

EXPECTED_ROWS = (
    "OU [mu] joint",
    "OU [mu] independent",
    "OUAccel [mu, mu_dot] joint",
    "OUAccel [mu, mu_dot] independent",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    # One run for the whole module (the demo compiles 4 filters); its output is kept.
    out = tmp_path_factory.mktemp("demo_output") / "nested"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rep = demo.main(out_dir=out, num_steps=1000, seed=3)
    return rep, out, printed.getvalue()


def test_demo_table_rows_and_numbers(report):
    rep, _, _ = report
    assert len(rep.sections) == len(demo.SECTIONS) == 2
    rows = {r.name: r for r in rep.sections[0].rows}
    assert tuple(rows) == EXPECTED_ROWS
    for r in rows.values():
        assert math.isfinite(r.rmse) and 0.0 < r.rmse < 10.0
        assert math.isfinite(r.log_likelihood)
        assert 0.0 <= r.coverage <= 1.0
        # The estimate reaches 50% then 90% of the drop, but not before the truth does.
        assert 1.0 <= r.t50 <= r.t90 < 30.0
    for model in ("OU [mu]", "OUAccel [mu, mu_dot]"):
        joint, indep = rows[f"{model} joint"], rows[f"{model} independent"]
        # Positively correlated features: the joint update is less confident (docs/design.md).
        assert joint.mean_std > indep.mean_std
        # The true R explains the features better than its diagonal.
        assert joint.log_likelihood > indep.log_likelihood
    table = rep.sections[0].table
    for name in EXPECTED_ROWS:
        assert name in table


def test_demo_writes_nonempty_png(report):
    rep, out, _ = report
    fig = rep.sections[0].figure
    assert fig == out / "demo_kalman.png"
    data = fig.read_bytes()
    assert len(data) > 10_000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_prints_table(report):
    rep, out, printed = report
    assert "RMSE" in printed and "t90%" in printed
    assert rep.sections[0].table in printed
    assert f"plot: {out / 'demo_kalman.png'}" in printed


def test_demo_imm_section_beats_the_single_filter(report):
    """The IMM section: the IMM tracks the cascade faster and with a smaller error than
    the single OU filter (theta 0.02), is calibrated, and raises the crisis alarm within a
    few seconds of the onset with few alarms before it."""
    rep, out, printed = report
    section = rep.sections[1]
    rows = {r.name: r for r in section.rows}
    assert tuple(rows) == ("IMM [mu] (seed_imm)", "IMM [mu, mu_dot]", "single OU [mu] theta=0.02")
    single = rows["single OU [mu] theta=0.02"]
    for name in ("IMM [mu] (seed_imm)", "IMM [mu, mu_dot]"):
        imm = rows[name]
        assert imm.rmse < single.rmse
        assert imm.t90 < single.t90
        assert imm.log_likelihood > single.log_likelihood
        assert imm.coverage > 0.9
    data = rep.data
    res = dj.filter(demo.imm_models(data)["IMM [mu] (seed_imm)"], data.features, data.dt)
    latency, false_alarms = demo.crisis_alarm(np.asarray(res.p_crisis), data)
    assert 0.0 <= latency < 3.0
    assert false_alarms < 0.05
    assert section.figure == out / "demo_imm.png"
    assert section.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert section.table in printed


def test_crossing_time_on_the_truth():
    data = demo.make_data(1000, seed=0, background_sigma=0.0)
    # A linear fall over 2 s: 50% after 1 s, 90% after 1.8 s (to the 0.1 s grid).
    assert demo.crossing_time(data.drift, data, 0.5) == pytest.approx(1.0, abs=1e-9)
    assert demo.crossing_time(data.drift, data, 0.9) == pytest.approx(1.8, abs=1e-9)
    assert math.isnan(demo.crossing_time(np.zeros_like(data.drift), data, 0.5))


def test_demo_data_shape_and_levels():
    s = demo.make_data(2000, seed=1)
    assert s.t.shape == s.dt.shape == s.drift.shape == (2000,)
    assert s.features.shape == (2000, 4)
    np.testing.assert_allclose(s.t, 0.1 * np.arange(1, 2001))
    np.testing.assert_allclose(np.cumsum(s.dt), s.t, rtol=1e-12)
    np.testing.assert_array_equal(s.loadings, dj.scenarios.default_loadings())
    np.testing.assert_array_equal(s.cov, dj.scenarios.default_feature_cov())
    assert (s.cascade_start, s.cascade_level) == (60.0, -50.0)
    quiet, held = s.drift[s.t < 60.0], s.drift[(s.t >= 62.0) & (s.t <= 100.0)]
    assert np.max(np.abs(quiet)) < 5.0
    assert abs(np.mean(held) + 50.0) < 3.0
    assert np.max(np.abs(s.drift[s.t > 135.0])) < 5.0  # recovered
    # The noise has the requested covariance (to sampling error).
    noise = s.features - s.drift[:, None] * s.loadings[None, :]
    np.testing.assert_allclose(np.cov(noise.T), s.cov, atol=0.15 * s.cov.max())
    # Path 0 of the public scenario with the same key, as documented.
    paths = dj.scenarios.liquidation_cascade(jax.random.key(1), 1, 2000, 0.1)
    np.testing.assert_array_equal(s.features, np.asarray(paths.features[0]))


def test_demo_data_is_seeded():
    a, b, c = demo.make_data(300, seed=5), demo.make_data(300, seed=5), demo.make_data(300, 6)
    np.testing.assert_array_equal(a.features, b.features)  # same seed, same process
    assert not np.array_equal(a.features, c.features)


def test_cascade_profile_pieces():
    t = np.array([0.0, 10.0, 11.0, 12.0, 30.0, 52.0, 57.0, 62.0, 70.0])
    profile = dj.scenarios.cascade_profile
    c = profile(t, 10.0, -50.0, fall_time=2.0, hold_time=40.0, recovery_time=10.0)
    np.testing.assert_allclose(c, [0, 0, -25, -50, -50, -50, -25, 0, 0])
    jump = profile(t, 10.0, -50.0, fall_time=0.0, hold_time=1.0, recovery_time=0.0)
    # The hold covers [10, 11); at 11 the instant recovery is done.
    np.testing.assert_allclose(jump, [0, -50, 0, 0, 0, 0, 0, 0, 0])


def test_public_defaults():
    """The default features and the seed constants, as the notebooks and benchmarks use them."""
    names = dj.scenarios.DEFAULT_FEATURE_NAMES
    alpha, R = dj.scenarios.default_loadings(), dj.scenarios.default_feature_cov()
    assert names == ("bim", "dbim", "bpg", "sweep") and alpha.shape == (4,)
    np.testing.assert_allclose(np.sqrt(np.diag(R)), [8.0, 7.0, 5.0, 12.0])
    for update in ("joint", "independent"):
        obs = dj.scenarios.default_observation(update)
        assert obs.update == update
        np.testing.assert_array_equal(np.asarray(obs.loadings), alpha)
        np.testing.assert_allclose(np.asarray(obs.cov), R, rtol=1e-14)
    f32 = dj.scenarios.default_observation(dtype=jnp.float32)
    assert f32.loadings.dtype == f32.cov_chol.dtype == jnp.float32
    alpha[0] = 99.0  # each call returns a fresh array
    assert dj.scenarios.default_loadings()[0] == 1.0

    assert dj.REGIME_NAMES == ("Quiet", "Trending", "Crisis") == dj.seed_imm().regime_names
    assert dict(dj.SEED_REGIMES) == {
        "Quiet": (0.10, 0.3),
        "Trending": (0.02, 1.0),
        "Crisis": (0.005, 5.0),
    }
    imm = dj.seed_imm()
    np.testing.assert_array_equal(np.asarray(imm.transition), dj.SEED_TRANSITION)
    for name, dyn in zip(dj.REGIME_NAMES, imm.dynamics, strict=True):
        assert (float(dyn.theta), float(dyn.sigma)) == dj.SEED_REGIMES[name]
    # Read-only, so nobody changes dj.seed_imm() by accident.
    with pytest.raises(ValueError, match="read-only"):
        dj.SEED_TRANSITION[0, 0] = 0.5
    with pytest.raises(TypeError):
        dj.SEED_REGIMES["Quiet"] = (1.0, 1.0)


def test_version_from_the_package_metadata(monkeypatch):
    import importlib.metadata as metadata

    assert dj.__version__ == metadata.version("drift_jax")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert dj._package_version() == "0+unknown"  # a source tree that was never installed


def test_readme_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("## Example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(example, "README.md:example", "exec"), namespace)
    res, est = namespace["res"], namespace["est"]
    assert np.isfinite(float(res.log_likelihood))
    assert res.drift.shape == (200,) and float(res.drift[-1]) < 0.0
    assert np.isfinite(float(namespace["grads"].dynamics.theta))
    assert float(est.drift_variance()) > 0.0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_readme_imm_example_runs(tmp_path, monkeypatch, capsys):
    """Every python block of the README runs, in order (the IMM block saves a file)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md:block{k}", "exec"), namespace)
    capsys.readouterr()
    res, exact, est = namespace["res"], namespace["exact"], namespace["est"]
    probs = np.asarray(res.regime_probs)
    assert probs.shape == (200, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert namespace["batch"].shape == (2,)
    assert exact.regime_probs.shape == (8, 3)
    assert float(est.regime_probabilities()[2]) > 0.3 and bool(est.is_crisis())
    assert (tmp_path / "imm_state.eqx").stat().st_size > 0
    # "Scaling out": one process outside a cluster; the report saved by process 0.
    assert namespace["report"].info["processes"] == 1
    assert namespace["report"].info["n_paths"] == 64
    assert (tmp_path / "results" / "cascades.csv").stat().st_size > 0
