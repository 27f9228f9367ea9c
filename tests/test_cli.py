"""The command line end to end (calibrate -> fit -> golden -> filter) on a generated history,
and every bad input with its message and exit code."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pandas as pd
import pytest

import drift_jax as dj
from drift_jax._io.cli import main

# Its tests share an expensive module fixture: one test worker runs them all (make test
# distributes with --dist loadgroup), so the fixture is built once.
pytestmark = pytest.mark.xdist_group("test_cli")

FEATURES = ["bim", "dbim", "bpg", "sweep"]


def make_history(seed: int = 0, T: int = 800) -> pd.DataFrame:
    """Poisson-sampled events (5 per second) of a drift that is quiet, then falls by
    40 bps/s for 20 s (a cascade), seen through 4 correlated features; the price moves by
    the drift plus noise. 3% of feature values are missing."""
    rng = np.random.default_rng(seed)
    t = 1_000.0 + np.cumsum(rng.exponential(0.2, T))
    mu = np.zeros(T)
    for k in range(1, T):
        dt = t[k] - t[k - 1]
        mu[k] = mu[k - 1] * math.exp(-0.1 * dt) + 0.5 * math.sqrt(dt) * rng.normal()
    cascade = (t > t[0] + 80) & (t < t[0] + 100)
    mu = mu - 40.0 * cascade
    loadings = np.array([1.0, 0.8, 0.5, 1.2])
    std = np.array([8.0, 7.0, 5.0, 12.0])
    corr = np.array(
        [[1.0, 0.7, 0.5, 0.2], [0.7, 1.0, 0.6, 0.2], [0.5, 0.6, 1.0, 0.1], [0.2, 0.2, 0.1, 1.0]]
    )
    noise = rng.multivariate_normal(np.zeros(4), corr * np.outer(std, std), T)
    z = mu[:, None] * loadings + noise
    z[rng.random(z.shape) < 0.03] = np.nan
    dt = np.diff(t, prepend=t[0] - 0.2)
    r = mu * dt + 4.0 * np.sqrt(dt) * rng.normal(size=T)
    price = 100.0 * np.cumprod(1.0 + r / 1e4)
    df = pd.DataFrame({"time": t, "price": price})
    for k, name in enumerate(FEATURES):
        df[name] = z[:, k]
    return df


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run the four verbs once; the tests below read what they wrote."""
    d = tmp_path_factory.mktemp("cli")
    hist = d / "history.csv"
    make_history().to_csv(hist, index=False)
    start, fitted = d / "start.toml", d / "fitted.toml"
    codes = [
        main(
            ["calibrate", str(hist), "--time-column", "time", "--price-column", "price"]
            + ["--horizon", "2", "-o", str(start)]
        ),
        main(
            ["fit", str(hist), "--config", str(start), "--price-column", "price"]
            + ["--steps", "15", "--quiet", "-o", str(fitted)]
        ),
        main(["golden", str(fitted), str(hist), "--rows", "300", "-o", str(d / "golden.json")]),
        main(["filter", str(fitted), str(hist), "-o", str(d / "filtered.parquet")]),
    ]
    return d, codes


def test_pipeline_exit_codes_and_files(pipeline):
    d, codes = pipeline
    assert codes == [0, 0, 0, 0]
    for name in ("start.toml", "fitted.toml", "fitted.md", "fitted.png", "golden.json"):
        assert (d / name).stat().st_size > 0, name
    assert (d / "fitted.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_writes_the_calibration(pipeline):
    d, _ = pipeline
    cfg = dj.load_config(d / "start.toml")
    hist = pd.read_csv(d / "history.csv")
    cal = dj.calibrate_observation(
        hist, time_column="time", price_column="price", horizon=2.0, columns=FEATURES
    )
    assert cfg.feature_names == tuple(FEATURES)
    np.testing.assert_allclose(cfg.model.observation.loadings, cal.loadings, rtol=1e-15)
    np.testing.assert_allclose(cfg.model.observation.cov, cal.cov, rtol=1e-14)
    seed = dj.seed_imm(cal.observation)
    np.testing.assert_array_equal(cfg.model.transition, seed.transition)  # copied values
    assert cfg.model.regime_names == ("Quiet", "Trending", "Crisis")
    # sigma_base = sqrt(sum r^2 / sum dt) of the simple returns, steps 1..T-1.
    t, p = hist["time"].to_numpy(), hist["price"].to_numpy()
    r, dt = 1e4 * (p[1:] / p[:-1] - 1), np.diff(t)
    np.testing.assert_allclose(float(cfg.risk.sigma_base), np.sqrt(np.sum(r**2) / np.sum(dt)))
    assert cfg.metadata["horizon_s"] == 2.0 and cfg.metadata["rows"] == 800


def test_fit_equals_the_api(pipeline):
    """The fitted config holds what dj.fit gives on the same inputs (15 Adam steps)."""
    d, _ = pipeline
    start = dj.load_config(d / "start.toml")
    h = dj.read_history(d / "history.csv", columns=FEATURES, price_column="price")
    res = dj.fit(
        start.model, h.features, h.dt, returns=h.returns, risk=start.risk, steps=15,
        optimizer=optax.adam(1e-2), progress=False,  # the CLI's --optimizer adam default
    )  # fmt: skip
    got = dj.load_config(d / "fitted.toml")
    for a, b in zip(res.model.dynamics, got.model.dynamics, strict=True):
        np.testing.assert_allclose([a.theta, a.sigma], [b.theta, b.sigma], rtol=1e-12)
    np.testing.assert_allclose(res.model.transition, got.model.transition, rtol=1e-12)
    np.testing.assert_allclose(res.risk.sigma_base, got.risk.sigma_base, rtol=1e-12)
    assert got.metadata["fit_steps"] == 15 and got.metadata["fit_converged"] is False
    assert got.metadata["created_by"].startswith("drift-jax calibrate")  # kept from start
    report = (d / "fitted.md").read_text()
    assert "| `dynamics[2].sigma` |" in report and "converged: **False**" in report
    assert "![loss, estimates and regimes](fitted.png)" in report


def test_golden_matches_the_streaming_estimator(pipeline):
    d, _ = pipeline
    g = dj.load_golden(d / "golden.json")
    cfg = dj.load_config(d / "fitted.toml")
    assert g["num_steps"] == 300 and g["feature_names"] == FEATURES
    assert dj.config_from_toml(g["config_toml"]).model.transition.tolist() == (
        cfg.model.transition.tolist()
    )  # the embedded config is the fitted one, read back exactly
    est = dj.IMMDriftEstimator(cfg.model)
    worst = 0.0
    for s in g["steps"]:
        z = [math.nan if x is None else x for x in s["z"]]
        est = est.update_observation(z, s["dt"])
        got = [float(est.drift_rate_per_sec()), float(est.drift_variance())]
        got += [float(p) for p in est.regime_probabilities()]
        got += [float(est.sigma_effective(cfg.risk.sigma_base, cfg.risk.crisis_amplifier))]
        got += [float(est.log_likelihood)]
        want = [s["drift_rate_per_sec"], s["drift_variance"], *s["regime_probabilities"]]
        want += [s["sigma_effective"], s["log_likelihood"]]
        gaps = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(got, want, strict=True)]
        worst = max(worst, *gaps)
        assert bool(est.is_crisis(cfg.risk.threshold)) == s["is_crisis"]
    assert worst < 1e-13, worst


def test_golden_inputs_are_the_history(pipeline):
    d, _ = pipeline
    g = dj.load_golden(d / "golden.json")
    hist = pd.read_csv(d / "history.csv").iloc[:300]
    t = hist["time"].to_numpy()
    assert [s["t"] for s in g["steps"]] == t.tolist()  # read back exactly (repr floats)
    dts = [s["dt"] for s in g["steps"]]
    assert dts[0] == t[1] - t[0] and dts[1:] == np.diff(t).tolist()  # the stated rule
    z = np.array([[math.nan if x is None else x for x in s["z"]] for s in g["steps"]])
    np.testing.assert_array_equal(z, hist[FEATURES].to_numpy())  # NaN <-> null, exact
    assert "null" in (d / "golden.json").read_text()


def test_filter_table_equals_dj_filter(pipeline):
    d, _ = pipeline
    out = pd.read_parquet(d / "filtered.parquet")
    cfg = dj.load_config(d / "fitted.toml")
    h = dj.read_history(d / "history.csv", columns=FEATURES)
    res = dj.filter(cfg.model, h.features, h.dt)
    assert len(out) == 800
    np.testing.assert_allclose(out["drift"], res.drift, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out["drift_var"], res.drift_var, rtol=1e-13)
    np.testing.assert_allclose(out["p_Crisis"], res.p_crisis, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out["log_likelihood_step"], res.log_likelihoods, rtol=1e-13)
    assert out["is_crisis"].tolist() == (np.asarray(res.p_crisis) > 0.3).tolist()
    assert out["dt"].iloc[0] == h.times[1] - h.times[0]
    # The cascade's fall (80 s after the first event) shows up as Crisis within 2 s, and
    # the drift follows it down (-40 bps/s); before, Crisis stays near its quiet level.
    t = out["time"] - out["time"].iloc[0]
    assert out["p_Crisis"][(t > 80) & (t < 82)].mean() > 0.5
    assert out["p_Crisis"][t < 75].mean() < 0.2
    assert out["drift"][(t > 85) & (t < 100)].mean() < -30


def test_filter_writes_csv(tmp_path, pipeline):
    d, _ = pipeline
    out = tmp_path / "f.csv"
    assert main(["filter", str(d / "fitted.toml"), str(d / "history.csv"), "-o", str(out)]) == 0
    a, b = pd.read_csv(out), pd.read_parquet(d / "filtered.parquet")
    np.testing.assert_array_equal(a["drift"], b["drift"])  # %.17g round-trips float64


# --- bad input: the message names the file, the column and the row ----------------------


@pytest.fixture(scope="module")
def config_path(pipeline):
    return pipeline[0] / "fitted.toml"


def _run_bad(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"drift-jax {argv[0]}: error: ")
    return err


def _write(tmp_path, df, name="h.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("verb", ["golden", "filter"])
def test_missing_feature_column(tmp_path, capsys, config_path, verb):
    path = _write(tmp_path, make_history(T=50).drop(columns="bpg"))
    out = str(tmp_path / ("o.json" if verb == "golden" else "o.csv"))
    err = _run_bad(capsys, [verb, str(config_path), path, "-o", out])
    assert path in err and "['bpg'] not found" in err and "'sweep'" in err


def test_missing_time_column(tmp_path, capsys, config_path):
    path = _write(tmp_path, make_history(T=50).rename(columns={"time": "ts"}))
    err = _run_bad(capsys, ["filter", str(config_path), path, "-o", str(tmp_path / "o.csv")])
    assert f"{path}: time column 'time' not found" in err and "'ts'" in err
    ok = ["filter", str(config_path), path, "--time-column", "ts", "-o", str(tmp_path / "o.csv")]
    assert main(ok) == 0


def test_non_increasing_time(tmp_path, capsys, config_path):
    # equal timestamps are dt = 0 steps by default (issue 15); --equal-times error rejects
    # them as before, and a time that goes back is an error either way
    df = make_history(T=50)
    df.loc[17, "time"] = df.loc[16, "time"]
    path = _write(tmp_path, df)
    argv = ["golden", str(config_path), path, "-o", str(tmp_path / "g.json")]
    err = _run_bad(capsys, argv + ["--equal-times", "error"])
    assert path in err and "strictly increasing; row 17" in err and "row 16" in err
    assert main(argv) == 0
    assert "equal timestamps: 1 step(s) of dt = 0" in capsys.readouterr().out
    df.loc[17, "time"] = df.loc[16, "time"] - 0.01
    path = _write(tmp_path, df, "back.csv")
    err = _run_bad(capsys, ["golden", str(config_path), path, "-o", str(tmp_path / "g.json")])
    assert path in err and "must not decrease" in err and "row 17" in err and "row 16" in err


def test_non_numeric_column(tmp_path, capsys, config_path):
    df = make_history(T=50).astype({"dbim": object})
    df.loc[23, "dbim"] = "n/a?"
    path = _write(tmp_path, df)
    err = _run_bad(capsys, ["filter", str(config_path), path, "-o", str(tmp_path / "o.csv")])
    assert path in err and "'dbim' must be numeric" in err and "row 23: 'n/a?'" in err


def test_inf_value(tmp_path, capsys, config_path):
    df = make_history(T=50)
    df.loc[31, "sweep"] = np.inf
    path = _write(tmp_path, df)
    err = _run_bad(capsys, ["filter", str(config_path), path, "-o", str(tmp_path / "o.csv")])
    assert path in err and "'sweep'" in err and "inf at row 31" in err


def test_empty_files(tmp_path, capsys, config_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    err = _run_bad(capsys, ["filter", str(config_path), str(empty), "-o", str(tmp_path / "o.csv")])
    assert f"{empty}: the file is empty" in err
    header = tmp_path / "header.csv"
    header.write_text("time,bim,dbim,bpg,sweep\n")
    out = str(tmp_path / "g.json")
    err = _run_bad(capsys, ["golden", str(config_path), str(header), "-o", out])
    assert f"{header}: the table has a header" in err and "no data rows" in err


def test_config_feature_count_mismatch(tmp_path, capsys):
    model = dj.seed_imm(dj.Observation([1.0, 0.5], [[4.0, 1.0], [1.0, 4.0]]))
    cfg = dj.save_config(tmp_path / "two.toml", model)  # no feature names: all columns
    path = _write(tmp_path, make_history(T=50))
    err = _run_bad(capsys, ["filter", str(cfg), path, "-o", str(tmp_path / "o.csv")])
    assert "the model has 2 feature(s) but the history gives 5 feature column(s)" in err
    # 'price' counts as a feature here: --columns picks the two the model reads.
    ok = ["filter", str(cfg), path, "--columns", "bim", "bpg", "-o", str(tmp_path / "o.csv")]
    assert main(ok) == 0


def test_bad_or_missing_config(tmp_path, capsys):
    path = _write(tmp_path, make_history(T=50))
    err = _run_bad(capsys, ["filter", str(tmp_path / "nope.toml"), path, "-o", "o.csv"])
    assert "nope.toml' does not exist" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(dj.config_to_toml(dj.seed_imm()).replace("sigma = 5.0", "sigma = -5.0"))
    err = _run_bad(capsys, ["filter", str(bad), path, "-o", str(tmp_path / "o.csv")])
    assert str(bad) in err and "regimes[2]" in err


def test_bad_output_suffix(tmp_path, capsys, config_path):
    path = _write(tmp_path, make_history(T=50))
    err = _run_bad(capsys, ["golden", str(config_path), path, "-o", str(tmp_path / "g.txt")])
    assert "must end with one of .json" in err


def test_single_row_needs_first_dt(tmp_path, capsys, config_path):
    path = _write(tmp_path, make_history(T=1))
    err = _run_bad(capsys, ["golden", str(config_path), path, "-o", str(tmp_path / "g.json")])
    assert "pass `first_dt`" in err
    out = tmp_path / "g.json"
    assert main(["golden", str(config_path), path, "--first-dt", "0.25", "-o", str(out)]) == 0
    assert dj.load_golden(out)["steps"][0]["dt"] == 0.25


def test_calibrate_errors(tmp_path, capsys):
    path = _write(tmp_path, make_history(T=300))
    base = ["calibrate", path, "--horizon", "2", "-o", str(tmp_path / "c.toml")]
    err = _run_bad(capsys, base + ["--price-column", "mid"])
    assert f"{path}: price column 'mid' not found" in err
    df = make_history(T=300)
    df.loc[5, "price"] = -1.0
    bad = _write(tmp_path, df, "neg.csv")
    err = _run_bad(capsys, ["calibrate", bad, "--price-column", "price", "--horizon", "2"]
                   + ["-o", str(tmp_path / "c.toml")])  # fmt: skip
    assert bad in err and "-1.0 at row 5" in err
    err = _run_bad(capsys, base + ["--price-column", "price", "--shrinkage", "lots"])
    assert "--shrinkage must be" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["calibrate", "h.csv", "-o", "c.toml"],  # --price-column and --horizon required
        ["calibrate", "h.csv", "--price-column", "p", "--horizon", "-1", "-o", "c.toml"],
        ["fit", "h.csv", "-o", "f.toml"],  # --config required
        ["fit", "h.csv", "--config", "c.toml", "--steps", "0", "-o", "f.toml"],
        ["fit", "h.csv", "--config", "c", "--price-column", "p", "--returns-column", "r"]
        + ["-o", "f.toml"],
        ["golden", "c.toml"],
        ["filter", "c.toml", "h.csv", "-o", "o.csv", "--first-dt", "0"],
        ["smooth", "c.toml"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    if not argv:
        assert main(argv) == 2
        return
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: drift-jax" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["calibrate", "fit", "golden", "filter"])
def test_help_on_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: drift-jax {verb}" in out and "-o OUTPUT" in out and "first step" in out


def test_the_installed_commands(tmp_path, config_path):
    """`python -m drift_jax` and the `drift-jax` entry point, as a shell runs them."""
    path = _write(tmp_path, make_history(T=50))
    exe = Path(sys.executable).with_name("drift-jax")
    cmds = [[sys.executable, "-m", "drift_jax"], [str(exe)]]
    for cmd in cmds:
        ok = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and "calibrate" in ok.stdout
    out = tmp_path / "o.csv"
    run = subprocess.run(
        cmds[0] + ["filter", str(config_path), path, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert len(pd.read_csv(out)) == 50
    bad = subprocess.run(
        cmds[1] + ["filter", str(config_path), str(tmp_path / "none.csv"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    usage = subprocess.run(cmds[1] + ["filter"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2


def test_golden_json_reads_back_exactly(pipeline):
    d, _ = pipeline
    text = (d / "golden.json").read_text()
    g = json.loads(text)
    # One step per line, and the file reproduces itself when written again.
    assert sum(line.startswith('  {"t": ') for line in text.splitlines()) == 300
    again = d / "again.json"
    dj.save_golden(again, g)
    assert again.read_text() == text
