"""Batch work in a ``jax.distributed`` run of 2 local CPU processes (gloo collectives on
localhost, started by ``python -m drift_jax.launch``) gives every process the numbers of
one process: Monte Carlo over a simulator and over in-memory paths, the market-making
backtest and ``dj.fit_batch`` (tests/distributed_workload.py). Per-path values are
compared bit for bit: a path's numbers are specified not to depend on the batch it is
computed in (ordered sums, batches of at least 2: ``_core/ordered_sum.py``,
``_simulation/sharding.py``); pooled figures are sums in path order on the host.

Every launch has a bounded timeout and the launcher kills its processes on failure.
"""

import pickle
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import drift_jax as dj
from drift_jax._core import multihost
from tests import distributed_workload as wl

# Its tests share an expensive module fixture: one test worker runs them all (make test
# distributes with --dist loadgroup), so the fixture is built once.
pytestmark = pytest.mark.xdist_group("test_distributed")

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "tests" / "distributed_workload.py"


def launch(*args, timeout=400):
    cmd = [sys.executable, "-m", "drift_jax.launch", *map(str, args)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    proc, _ = launch("-n", 2, "--timeout", 360, WORKLOAD, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = [pickle.loads((out / f"p{i}.pkl").read_bytes()) for i in (0, 1)]
    return got, wl.workload()


def assert_same_arrays(a, b, where):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, where
    assert la, where
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)


def test_every_process_returns_the_same_report(runs):
    (p0, p1), _ = runs
    assert p0["process"] == (0, 2) and p1["process"] == (1, 2)
    for name in ("mc_simulator", "mc_paths"):
        pd.testing.assert_frame_equal(p0[name]["table"], p1[name]["table"], check_exact=True)
        assert_same_arrays(p0[name]["latencies"], p1[name]["latencies"], name)
    pd.testing.assert_frame_equal(p0["backtest"]["table"], p1["backtest"]["table"])
    assert_same_arrays(p0["fit_batch"], p1["fit_batch"], "fit_batch")


def test_monte_carlo_equals_one_process(runs):
    (p0, _), ref = runs
    for name in ("mc_simulator", "mc_paths"):
        got, want = p0[name], ref[name]
        assert got["info"]["processes"] == 2 and want["info"]["processes"] == 1
        assert got["info"]["devices"] == 2 and got["info"]["n_paths"] == want["info"]["n_paths"]
        # Per-event latencies (per path, in path order) bit for bit; pooled figures to 1e-12.
        assert_same_arrays(got["latencies"], want["latencies"], name)
        pd.testing.assert_frame_equal(got["table"], want["table"], check_exact=False, rtol=1e-12)
    # In-memory paths drawn by dj.simulate in 2 processes are the one-process paths.
    assert_same_arrays(p0["paths"], ref["paths"], "dj.simulate")


def test_backtest_equals_one_process(runs):
    (p0, _), ref = runs
    got, want = p0["backtest"], ref["backtest"]
    for part in ("per_path", "events", "common"):
        assert_same_arrays(got[part], want[part], part)
    # Traces: the first 3 paths of the run, whichever process computed them.
    assert_same_arrays(got["traces"], want["traces"], "traces")
    assert got["info"]["processes"] == 2
    pd.testing.assert_frame_equal(got["table"], want["table"], check_exact=False, rtol=1e-12)


def test_fit_batch_equals_one_process(runs):
    (p0, _), ref = runs
    # 3 instruments: blocks of 2 and 1 (padded), each fitted in its own process.
    assert p0["fit_batch"].loss_history.shape == (3, 6)
    assert_same_arrays(p0["fit_batch"], ref["fit_batch"], "fit_batch")


def test_a_dead_process_fails_the_others_with_a_clear_error():
    # Process 1 exits after a first Monte Carlo exchange; process 0 must fail at the next
    # one (not hang), naming what it was doing; the launcher reports who died.
    proc, seconds = launch(
        "-n", 2, "--timeout", 150, "--grace", 60, "--heartbeat", 5, WORKLOAD, "die", timeout=200
    )
    assert proc.returncode != 0
    assert "ProcessGroupError" in proc.stderr and "dj.monte_carlo: process 0 of 2" in proc.stderr
    assert "could not exchange results with the other processes" in proc.stderr
    assert "drift_jax.launch: process 1 failed (exit code 3)" in proc.stderr
    assert seconds < 150  # failed on its own, before the launcher's time limit


def test_launcher_time_limit_and_bad_arguments(tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(120)\n")
    proc, seconds = launch("-n", 2, "--timeout", 3, script, timeout=60)
    assert proc.returncode == 124 and seconds < 40
    assert "drift_jax.launch: --timeout 3 s reached; stopping process(es) [0, 1]" in proc.stderr
    proc, _ = launch("-n", 0, script, timeout=30)
    assert proc.returncode == 2 and "-n must be at least 1, got 0" in proc.stderr
    proc, _ = launch("-n", 2, tmp_path / "missing.py", timeout=30)
    assert proc.returncode == 2 and "missing.py' does not exist" in proc.stderr


def test_initialize_checks_its_arguments_before_joining():
    with pytest.raises(ValueError, match=r"`process_id` must be in \[0, num_processes\)"):
        dj.distributed.initialize("127.0.0.1:1", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="num_processes"):
        dj.distributed.initialize("127.0.0.1:1", num_processes=0, process_id=0)
    with pytest.raises(ValueError, match="cpu_collectives"):
        dj.distributed.initialize("127.0.0.1:1", 2, 0, cpu_collectives="nccl")
    assert not dj.distributed.is_initialized()
    if not dj.distributed._cluster_detected():  # a CI runner inside a cluster would join it
        # Without arguments, outside a cluster and the launcher: one process, nothing joined.
        dj.distributed.initialize()
        assert not dj.distributed.is_initialized()
    assert dj.distributed.process_count() == 1 and dj.distributed.is_main_process()


def test_a_single_path_is_the_same_path_as_in_a_batch():
    # A batch of one path compiles to other code (the batch axis dropped) whose exp / log
    # differ in the last bits; paths are drawn in batches of at least 2 so that path i
    # depends only on (key, i).
    model = dj.seed_imm(dj.Observation.scalar(4.0))
    key = jax.random.key(3)
    one = dj.simulate(model, key, n_paths=1, n_steps=120, dt=0.5)
    five = dj.simulate(model, key, n_paths=5, n_steps=120, dt=0.5)
    assert_same_arrays(one, five[:1], "dj.simulate")
    sim = dj.simulator(model, 120, 0.5)
    assert_same_arrays(sim.sample(key, 3, 1), five[3:4], "sample")


def test_shares_cover_every_path_once():
    # One process: the whole chunk; the split arithmetic with 3 processes by hand.
    sh = multihost.share(10, 7)
    assert (sh.first, sh.size, sh.block, sh.counts) == (10, 7, 7, (7,))
    block = -(-7 // 3)
    counts = [max(0, min(block, 7 - p * block)) for p in range(3)]
    assert counts == [3, 3, 1] and sum(counts) == 7
    joined = multihost._join({"x": np.arange(9).reshape(3, 3)}, (3, 3, 1))["x"]
    np.testing.assert_array_equal(joined, [0, 1, 2, 3, 4, 5, 6])
