"""Monte Carlo throughput on CPU: simulate + filter, path-steps/s, 1 vs 2 devices.

For the scalar IMM (one feature) and the IMM with 4 correlated features (joint update),
in float32 and float64, on 1 device and on 2 devices (the host's cores split into two
XLA devices with ``--xla_force_host_platform_device_count=2``; each configuration runs in
its own process, because the flag must be set before JAX starts):

- ``simulate+filter``: one compiled function draws ``B`` paths of ``T`` steps
  (``dj.simulator``: regime chain, drift, 4 or 1 features, returns) and filters each
  (``benchmarks/_mc_kernels.py``); best of 3 after a warm-up;
- ``dj.monte_carlo``: the full report (simulation chunk by chunk, the filter, every
  metric, pooling on the host), second call (the first compiles).

- bounded memory: ``dj.monte_carlo`` over 1e7 and 1e8 path-steps (10,000 and 100,000
  paths x 1,000 steps, scalar IMM, float32, chunks of 4,096 paths generated on the fly),
  each in a fresh process: peak RSS should not grow with the number of paths.

Writes the ``montecarlo`` section of ``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/bench_montecarlo.py [--B 8192] [--T 1000] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(devices: int, dtype_name: str, B: int, T: int) -> list[dict]:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    import _mc_kernels as k

    import drift_jax as dj

    assert len(jax.devices()) == devices, jax.devices()
    dtype = {"float32": jnp.float32, "float64": jnp.float64}[dtype_name]
    rows = []
    for name, model in k.models(dtype).items():
        sim = k.simulator(model, T)
        run = k.simulate_and_filter(sim, B, jax.devices())
        key = jax.random.key(0)
        out = jax.block_until_ready(run(key))
        k.check_finite(out)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(run(key))
            best = min(best, time.perf_counter() - t0)
        dj.monte_carlo({"imm": model}, sim, key=jax.random.key(0), n_paths=B, chunk_size=B)
        rep = dj.monte_carlo({"imm": model}, sim, key=jax.random.key(0), n_paths=B, chunk_size=B)
        rows.append(
            {
                "model": name,
                "dtype": dtype_name,
                "devices": devices,
                "sim_filter": B * T / best,
                "seconds": best,
                "monte_carlo": rep.info["path_steps_per_s"],
                "rmse": float(rep.table.loc["imm", "rmse"]),
            }
        )
    return rows


def big_run(n_paths: int, T: int, chunk: int) -> dict:
    """dj.monte_carlo over n_paths x T path-steps streamed from a simulator; peak RSS."""
    import resource

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    import _mc_kernels as k

    import drift_jax as dj

    model = k.models(jnp.float32)["scalar IMM (m=1)"]
    sim = k.simulator(model, T)
    t0 = time.perf_counter()
    rep = dj.monte_carlo(
        {"imm": model},
        sim,
        key=jax.random.key(1),
        n_paths=n_paths,
        chunk_size=chunk,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    return {
        "path_steps": n_paths * T,
        "seconds": seconds,
        "rate": n_paths * T / seconds,
        "peak_rss_mib": rss,
        "chunk_mib": chunk * T * 4 * 6 / 2**20,
        "rmse": float(rep.table.loc["imm", "rmse"]),
    }


def process_run(dtype_name: str, B: int, T: int) -> None:
    """In each process of a ``python -m drift_jax.launch -n P`` run: ``dj.monte_carlo`` over
    a simulator (the second call; the first compiles); process 0 prints the row."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    import _mc_kernels as k

    import drift_jax as dj

    dtype = {"float32": jnp.float32, "float64": jnp.float64}[dtype_name]
    model = k.models(dtype)["scalar IMM (m=1)"]
    sim = k.simulator(model, T)
    args = ({"imm": model}, sim)
    kwargs = {"key": jax.random.key(0), "n_paths": B, "chunk_size": 1024, "progress": False}
    dj.monte_carlo(*args, **kwargs)
    t0 = time.perf_counter()
    rep = dj.monte_carlo(*args, **kwargs)
    seconds = time.perf_counter() - t0
    if dj.distributed.is_main_process():
        row = {
            "processes": dj.distributed.process_count(),
            "dtype": dtype_name,
            "seconds": seconds,
            "rate": B * T / seconds,
            "rmse": float(rep.table.loc["imm", "rmse"]),
            "nees": float(rep.table.loc["imm", "nees"]),
        }
        print("ROW " + json.dumps(row), flush=True)


def process_rows(B: int, T: int) -> list[dict]:
    """1 vs 2 local processes (``python -m drift_jax.launch``) on the same cores."""
    rows = []
    for dtype in ("float32", "float64"):
        for n in (1, 2):
            cmd = [sys.executable, "-m", "drift_jax.launch", "-n", str(n), "--timeout", "900"]
            cmd += [__file__, "--process-worker", dtype, "--B", str(B), "--T", str(T)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            line = next(x for x in out.splitlines() if "ROW " in x)
            rows.append(json.loads(line.split("ROW ", 1)[1]))
            print(f"done: {n} process(es), {dtype}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=8192, help="paths")
    ap.add_argument("--T", type=int, default=1000, help="steps per path")
    ap.add_argument("--quick", action="store_true", help="B=256, T=200; no RESULTS.md")
    ap.add_argument("--worker", nargs=2, metavar=("DEVICES", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--big", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--process-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    B, T = (256, 200) if args.quick else (args.B, args.T)
    if args.process_worker:
        process_run(args.process_worker, B, T)
        return
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], B, T)))
        return
    big_sizes = (200, 2_000) if args.quick else (10_000, 100_000)
    big_chunk = 512 if args.quick else 4_096
    if args.big:
        print(json.dumps(big_run(args.big, 1_000, big_chunk)))
        return
    sys.path.insert(0, str(HERE))
    from _report import machine_info, machine_markdown, markdown_table, write_section

    rows = []
    for devices in (1, 2):
        for dtype in ("float32", "float64"):
            cmd = [sys.executable, __file__, "--B", str(B), "--T", str(T)]
            cmd += ["--worker", str(devices), dtype]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows += json.loads(out.strip().splitlines()[-1])
            print(f"done: {devices} device(s), {dtype}", flush=True)
    bigs = []
    for n in big_sizes:
        cmd = [sys.executable, __file__, "--big", str(n)] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        bigs.append(json.loads(out.splitlines()[-1]))
        print(f"done: bounded-memory run, {n} paths", flush=True)
    procs = process_rows(B, T)
    one_process = {r["dtype"]: r["rate"] for r in procs if r["processes"] == 1}
    base = {(r["model"], r["dtype"]): r["sim_filter"] for r in rows if r["devices"] == 1}
    table = markdown_table(
        [
            "model",
            "dtype",
            "devices",
            "simulate+filter path-steps/s",
            "vs 1 device",
            "dj.monte_carlo path-steps/s (with metrics)",
            "RMSE (bps/s)",
        ],
        [
            [
                r["model"],
                r["dtype"],
                r["devices"],
                f"{r['sim_filter']:.3g}",
                f"{r['sim_filter'] / base[(r['model'], r['dtype'])]:.2f}x",
                f"{r['monte_carlo']:.3g}",
                f"{r['rmse']:.3f}",
            ]
            for r in rows
        ],
    )
    body = (
        f"## Monte Carlo throughput (`benchmarks/bench_montecarlo.py`)\n\n"
        f"B = {B} paths x T = {T} steps (dt 0.5 s) of `dj.seed_imm` regimes with a -30 bps/s "
        "jump into Crisis; each configuration in a fresh process. The 2-device rows split "
        "the same cores into two XLA devices (`--xla_force_host_platform_device_count=2`): "
        "XLA:CPU runs one device's work on one thread, so this is how a batch uses 2 cores.\n\n"
        f"{table}\n\n"
        "Bounded memory (`dj.monte_carlo` streaming a simulator, scalar IMM, float32, "
        f"chunks of {big_chunk} paths, each size in a fresh process):\n\n"
        + markdown_table(
            [
                "path-steps",
                "seconds",
                "path-steps/s (with metrics)",
                "peak RSS (MiB)",
                "all paths at once would need (GiB)",
                "RMSE",
            ],
            [
                [
                    f"{b['path_steps']:.0e}",
                    f"{b['seconds']:.1f}",
                    f"{b['rate']:.3g}",
                    f"{b['peak_rss_mib']:.0f}",
                    f"{b['path_steps'] * 4 * 6 / 2**30:.2f}",
                    f"{b['rmse']:.3f}",
                ]
                for b in bigs
            ],
        )
        + "\n\n"
        "Several processes (`python -m drift_jax.launch -n P`: P local CPU processes of one "
        "`jax.distributed` run, gloo collectives on localhost, each with one XLA device, "
        f"on the same 2 cores): `dj.monte_carlo` over B = {B} simulated paths x T = {T} "
        "steps, scalar IMM, chunks of 1,024 paths, second call. Each process computes its "
        "block of every chunk and the per-path statistics are gathered to all processes. "
        "XLA:CPU computes one device's work on one thread, so one process with one device "
        "uses one core and two processes use both (as two devices in one process do, "
        "above): the ratio is that gain less the per-chunk exchange. The numbers are the "
        "same bit for bit (RMSE and NEES columns).\n\n"
        + markdown_table(
            ["dtype", "processes", "seconds", "path-steps/s", "vs 1 process", "RMSE", "NEES"],
            [
                [
                    r["dtype"],
                    r["processes"],
                    f"{r['seconds']:.2f}",
                    f"{r['rate']:.3g}",
                    f"{r['rate'] / one_process[r['dtype']]:.2f}x",
                    repr(r["rmse"]),
                    repr(r["nees"]),
                ]
                for r in procs
            ],
        )
        + "\n\n"
        f"{machine_markdown(machine_info())}\n"
    )
    print(body)
    if not args.quick:
        write_section("montecarlo", body)


if __name__ == "__main__":
    main()
