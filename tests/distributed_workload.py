"""The batch work that tests/test_distributed.py runs once in one process and once as 2
processes of a ``jax.distributed`` run (``python -m drift_jax.launch -n 2 <this file>
OUT``): Monte Carlo over a simulator and over in-memory paths, the market-making backtest
and ``dj.fit_batch``. Run as a script, each process writes what it got to
``OUT/p<index>.pkl``; run with the argument ``die``, process 1 exits in the middle of the
run (``die_midway``).

Chunk sizes and counts are odd on purpose: blocks of unequal size, a process with a
padded block, and a last chunk smaller than the others.
"""

import pickle
import sys
from pathlib import Path

import jax
import numpy as np

FIELDS = ("regimes", "drift", "drift_rate", "features", "returns", "dt")


def _mc(report) -> dict:
    return {"table": report.table, "latencies": report.latencies, "info": report.info}


def workload() -> dict:
    import drift_jax as dj

    mm = dj.market_making
    imm = dj.seed_imm(dj.Observation.scalar(4.0))
    ou = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
    estimators = {"imm": imm, "ou": ou}
    key = jax.random.key(7)
    sim = dj.simulator(imm, 80, 0.5, jump_mean=[0.0, 0.0, -30.0], return_vol=[1.0, 1.5, 4.0])
    out = {}
    out["mc_simulator"] = _mc(
        dj.monte_carlo(estimators, sim, key=key, n_paths=11, chunk_size=4, progress=False)
    )
    paths = dj.simulate(
        imm, key, n_paths=5, n_steps=80, dt=0.5, sampling="poisson", missing_prob=0.1
    )
    out["paths"] = {f: np.asarray(getattr(paths, f)) for f in FIELDS}
    out["mc_paths"] = _mc(dj.monte_carlo({"ou": ou}, paths, chunk_size=3, progress=False))
    strategy = mm.GLFTStrategy(gamma=0.1, k=0.5, A=1.0, sigma=1.0, inventory_limit=3)
    bt = mm.backtest(
        {"none": mm.NoSignal(), "ou": ou},
        paths,
        strategy,
        key=jax.random.key(11),
        chunk_size=3,
        traces=3,
        progress=False,
    )
    out["backtest"] = {
        "table": bt.table,
        "per_path": bt.per_path,
        "events": bt.events,
        "common": bt.common,
        "info": bt.info,
        "traces": jax.tree.map(np.asarray, bt.traces),
    }
    start = dj.KalmanModel(dj.OU(0.1, 0.5), dj.Observation.scalar(2.0))
    zs = np.asarray(paths.features[:3, :, 0])
    fit = dj.fit_batch(start, zs, 0.5, steps=6, progress=False)
    out["fit_batch"] = jax.tree.map(np.asarray, fit)
    return out


def die_midway() -> None:
    """Process 1 exits after a first exchange; process 0 then waits on it in a second."""
    import os

    import drift_jax as dj

    model = dj.KalmanModel(dj.OU(0.02, 1.0), dj.Observation.scalar(4.0), 0.0, 1.0)
    sim = dj.simulator(model, 50, 0.5)
    dj.monte_carlo(model, sim, key=jax.random.key(1), n_paths=4, progress=False)
    if jax.process_index() == 1:
        os._exit(3)
    dj.monte_carlo(model, sim, key=jax.random.key(2), n_paths=4, progress=False)


def main() -> None:
    jax.config.update("jax_enable_x64", True)  # as tests/conftest.py does for the suite
    if sys.argv[1] == "die":
        die_midway()
        return
    out_dir = Path(sys.argv[1])
    result = workload()
    result["process"] = (jax.process_index(), jax.process_count())
    with open(out_dir / f"p{jax.process_index()}.pkl", "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
