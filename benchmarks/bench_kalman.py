"""Kalman filter benchmark: drift_jax against dynamax on one long scalar OU series.

Usage::

    python benchmarks/bench_kalman.py                 # T = 1,000,000, writes RESULTS.md
    python benchmarks/bench_kalman.py --quick         # T = 10,000, ~20 s, writes nothing
    python benchmarks/bench_kalman.py --T 200000 --repeats 5 --no-write

One series of ``T`` steps from the scalar OU model ``dj.KalmanModel(dj.OU(theta, sigma),
dj.Observation.scalar(R), m0, P0)``, float64, the same data for every computation:

- drift_jax ``dj.filter(...).log_likelihood``, sequential (``lax.scan``) and parallel
  (associative scan), forward and ``value_and_grad`` with respect to the model (the
  sequential gradient with ``checkpoint=True``, the default, and ``checkpoint=False``);
- dynamax ``lgssm_filter`` on the same model, forward and ``value_and_grad``, and its
  log-likelihood and gradient compared with ours.

Each computation runs in a fresh process (same seed, same data): it is jitted, compiled,
run once, then timed; the figure is the best of ``--repeats`` runs (``block_until_ready``).
A process that does not finish within ``--timeout`` is tried once more, then reported as
such (the parallel filter at T = 1e6 has been seen to hang inside XLA:CPU's runtime on a
2-core machine). Peak memory is reported two ways: the temporary buffers XLA plans for the
compiled program (``memory_analysis()``), and the peak resident set size of the process.

XLA:CPU compiles a ``while`` loop into one native function only when one iteration touches
fewer than ``xla_cpu_small_while_loop_byte_threshold`` bytes (1 kB by default); otherwise
it runs the loop body operation by operation, tens of ns per operation. The column "loops
whole" says how many of a program's ``while`` loops XLA compiled into one function, and the
whole table is measured a second time with that threshold raised (``--threshold``).

Targets (issue 2): sequential forward >= 20x dynamax's steps/s; sequential
``value_and_grad`` <= 3x the sequential forward time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the library never does; a script may

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from dynamax.linear_gaussian_ssm import lgssm_filter  # noqa: E402
from dynamax.linear_gaussian_ssm.inference import (  # noqa: E402
    ParamsLGSSM,
    ParamsLGSSMDynamics,
    ParamsLGSSMEmissions,
    ParamsLGSSMInitial,
)

import drift_jax as dj  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_info, machine_markdown, markdown_table, write_section  # noqa: E402

# The model: drift half-life ~1.4 s, sampled every 100 ms, one noisy feature.
THETA, SIGMA, R_NOISE, DT, M0, P0 = 0.5, 2.0, 4.0, 0.1, 0.0, 1.0
SEED = 0
THRESHOLD_FLAG = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold={}"

# name -> (label, the forward it is compared with)
COMPUTATIONS = {
    "seq_fwd": ("drift_jax sequential forward", None),
    "par_fwd": ("drift_jax parallel forward", None),
    "seq_vg": ("drift_jax sequential value_and_grad (checkpoint=True)", "seq_fwd"),
    "seq_vg_nockpt": ("drift_jax sequential value_and_grad (checkpoint=False)", "seq_fwd"),
    "par_vg": ("drift_jax parallel value_and_grad", "par_fwd"),
    "dynamax_fwd": ("dynamax lgssm_filter forward", None),
    "dynamax_vg": ("dynamax lgssm_filter value_and_grad", "dynamax_fwd"),
}


# --- the data and the computations ------------------------------------------------------


def make_model() -> dj.KalmanModel:
    return dj.KalmanModel(dj.OU(THETA, SIGMA), dj.Observation.scalar(R_NOISE), M0, P0)


def simulate(T: int, seed: int = SEED) -> jax.Array:
    """``T`` observations ``z_t = mu_t + eps_t`` of the euler-discretised OU drift."""
    rng = np.random.default_rng(seed)
    a, q = np.exp(-THETA * DT), SIGMA**2 * DT
    mu = M0 + np.sqrt(P0) * rng.standard_normal()
    shocks = np.sqrt(q) * rng.standard_normal(T)
    mus = np.empty(T)
    for t in range(T):  # ~0.5 s for 1e6 steps; only done once
        mu = a * mu + shocks[t]
        mus[t] = mu
    return jnp.asarray(mus + np.sqrt(R_NOISE) * rng.standard_normal(T))


def dynamax_params(model: dj.KalmanModel) -> ParamsLGSSM:
    """The same model as dynamax's ``ParamsLGSSM``.

    dynamax's initial distribution is that of the first state, before the first update;
    ours is the prior one step earlier (predict, then update with ``z_0``), so dynamax
    gets the predicted moments ``F m0`` and ``F P0 F^T + Q``.
    """
    F, Q = model.dynamics.transition(DT)
    H = model.observation.loadings[:, None]
    R = model.observation.cov
    n, m = F.shape[0], H.shape[0]
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=F @ model.init_mean, cov=F @ model.init_cov @ F.T + Q),
        dynamics=ParamsLGSSMDynamics(
            weights=F, bias=jnp.zeros(n), input_weights=jnp.zeros((n, 0)), cov=Q
        ),
        emissions=ParamsLGSSMEmissions(
            weights=H, bias=jnp.zeros(m), input_weights=jnp.zeros((m, 0)), cov=R
        ),
    )


def log_likelihood(method: str, checkpoint: bool = True):
    if method == "dynamax":
        return lambda model, zs: lgssm_filter(dynamax_params(model), zs[:, None]).marginal_loglik
    return lambda model, zs: (
        dj.filter(model, zs, DT, method=method, checkpoint=checkpoint).log_likelihood
    )


def computation(name: str):
    """The jitted function ``(model, zs) -> ...`` benchmarked under ``name``."""
    method = {"seq": "sequential", "par": "parallel", "dynamax": "dynamax"}[name.split("_")[0]]
    ll = log_likelihood(method, checkpoint=not name.endswith("nockpt"))
    if "_vg" in name:
        value_and_grad = eqx.filter_value_and_grad(ll)
        return jax.jit(lambda model, zs: value_and_grad(model, zs))
    return jax.jit(ll)


def compile_computation(name: str, model, zs):
    """Compile ``name`` for these arguments: the executable and its compile time."""
    t0 = time.perf_counter()
    compiled = computation(name).lower(model, zs).compile()
    return compiled, time.perf_counter() - t0


def loops_compiled_whole(compiled) -> str:
    """``"k/n"``: ``k`` of the program's ``n`` while loops became one native function."""
    text = compiled.as_text()
    whole = text.count('xla_cpu_small_call="true"')
    return f"{whole}/{text.count(' while(')}"


def best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- one measurement (JSON-able numbers) ------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    ``VmHWM`` (Linux) starts afresh at ``exec``; ``ru_maxrss`` would carry over the
    high-water mark of the parent that forked this process.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(name: str, T: int, repeats: int) -> dict:
    """Compile, inspect, run and time computation ``name`` (``"data"``: only the data)."""
    model, zs = make_model(), simulate(T)
    if name == "data":
        return {"peak_rss": peak_rss_bytes()}
    compiled, compile_seconds = compile_computation(name, model, zs)
    analysis = compiled.memory_analysis()
    seconds = best_time(compiled, model, zs, repeats=repeats)
    value = compiled(model, zs)
    ll, grad = value if "_vg" in name else (value, None)
    return {
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "temp_bytes": None if analysis is None else int(analysis.temp_size_in_bytes),
        "loops_whole": loops_compiled_whole(compiled),
        "log_likelihood": float(ll),
        "grad": None if grad is None else [np.ravel(g).tolist() for g in jax.tree.leaves(grad)],
        "peak_rss": peak_rss_bytes(),
    }


def run_worker(name: str, args, extra_xla_flags: str) -> dict:
    """``measure(name)`` in a fresh process (tried twice); ``{"failed": why}`` if it fails."""
    env = dict(os.environ)
    if extra_xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + extra_xla_flags).strip()
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, "--worker", name, "--T", str(args.T), "--repeats"]
    cmd.append(str(args.repeats))
    why = ""
    for attempt in (1, 2):
        try:
            done = subprocess.run(
                cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            why = f"no result within {args.timeout:.0f} s (twice)"
            log(f"    attempt {attempt}: timed out after {args.timeout:.0f} s")
            continue
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        why = f"exit code {done.returncode}"
        break
    return {"failed": why}


# --- report -----------------------------------------------------------------------------


def fmt_rate(T: int, seconds: float) -> str:
    rate = T / seconds
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


def ok(result: dict | None) -> bool:
    return result is not None and "failed" not in result


def speed_table(runs: dict[str, dict], T: int) -> str:
    headers = ["computation"]
    for setting in runs:
        headers += [f"{setting}: best s", "steps/s", "x fwd", "loops whole"]
    rows = []
    for name, (label, forward) in COMPUTATIONS.items():
        if not any(name in run for run in runs.values()):
            continue
        row = [label]
        for run in runs.values():
            r = run.get(name)
            if not ok(r):
                row += ["" if r is None else r["failed"], "", "", ""]
                continue
            f = run.get(forward)
            ratio = f"{r['seconds'] / f['seconds']:.1f}" if forward and ok(f) else ""
            row += [f"{r['seconds']:.4f}", fmt_rate(T, r["seconds"]), ratio, r["loops_whole"]]
        rows.append(row)
    return markdown_table(headers, rows)


TARGETS = [
    ("sequential forward steps/s / dynamax steps/s >= 20", "dynamax_fwd", "seq_fwd", 20.0),
    ("sequential value_and_grad time / forward time <= 3", "seq_vg", "seq_fwd", 3.0),
]


def target_cell(run: dict, i: int) -> str:
    _, numerator, denominator, bound = TARGETS[i]
    if not (ok(run.get(numerator)) and ok(run.get(denominator))):
        return "not measured"
    value = run[numerator]["seconds"] / run[denominator]["seconds"]
    passed = value >= bound if i == 0 else value <= bound
    return f"{value:.1f} ({'pass' if passed else 'FAIL'})"


def targets_table(runs: dict[str, dict]) -> str:
    rows = [[t[0]] + [target_cell(run, i) for run in runs.values()] for i, t in enumerate(TARGETS)]
    return markdown_table(["target", *runs], rows)


def max_rel_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """Largest ``|a - b| / |b|`` over matching leaves."""
    return max(
        float(np.max(np.abs(np.subtract(x, y)) / np.abs(y))) for x, y in zip(a, b, strict=True)
    )


def agreement_rows(run: dict) -> list[str]:
    def ll(name):
        return run[name]["log_likelihood"] if ok(run.get(name)) else None

    def grad_diff(name, reference):
        if ok(run.get(name)) and ok(run.get(reference)):
            return f"{max_rel_diff(run[name]['grad'], run[reference]['grad']):.1e}"
        return ""

    seq = ll("seq_fwd")
    return [
        "" if seq is None else f"{seq:.6f}",
        "" if seq is None or ll("par_fwd") is None else f"{ll('par_fwd') - seq:.2e}",
        "" if seq is None or ll("dynamax_fwd") is None else f"{ll('dynamax_fwd') - seq:.2e}",
        grad_diff("seq_vg", "seq_vg_nockpt"),
        grad_diff("seq_vg", "dynamax_vg"),
        grad_diff("par_vg", "seq_vg"),
    ]


def agreement_table(runs: dict[str, dict]) -> str:
    checks = [
        "log-likelihood, sequential",
        "log-likelihood: parallel - sequential",
        "log-likelihood: dynamax - sequential",
        "gradient: checkpoint=True vs False, max relative difference",
        "gradient: sequential vs dynamax, max relative difference",
        "gradient: parallel vs sequential, max relative difference",
    ]
    columns = [agreement_rows(run) for run in runs.values()]
    rows = [[check] + [col[i] for col in columns] for i, check in enumerate(checks)]
    return markdown_table(["check", *runs], rows)


def memory_table(run: dict) -> str:
    base = run.get("seq_fwd")
    rows = []
    for name, (label, _) in COMPUTATIONS.items():
        r = run.get(name)
        if not ok(r):
            continue
        peak, base_peak = r["peak_rss"], base["peak_rss"] if ok(base) else None
        rows.append(
            [
                label,
                f"{r['compile_seconds']:.1f}",
                "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.1f}",
                "" if peak is None else f"{peak / 2**20:.0f}",
                "" if peak is None or base_peak is None else f"{(peak - base_peak) / 2**20:+.0f}",
            ]
        )
    headers = ["computation", "compile s", "XLA temp MiB", "peak RSS MiB", "RSS - seq. forward"]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=1_000_000, help="steps in the series")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="T = 10,000, one process, XLA defaults only, no parallel method, no writing",
    )
    parser.add_argument(
        "--skip-parallel", action="store_true", help="leave out the parallel method"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--threshold",
        type=int,
        default=65536,
        help="xla_cpu_small_while_loop_byte_threshold of the second run (0: no second run)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds allowed to each worker process"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.T, args.repeats)))
        return
    if args.quick:
        args.T, args.threshold, args.skip_parallel, args.no_write = 10_000, 0, True, True
    names = [n for n in COMPUTATIONS if not (args.skip_parallel and n.startswith("par_"))]

    settings = {"XLA_FLAGS as set" if os.environ.get("XLA_FLAGS") else "XLA defaults": ""}
    if args.threshold:
        settings[f"threshold {args.threshold:,} B"] = THRESHOLD_FLAG.format(args.threshold)
    load_before = os.getloadavg()[0]
    runs: dict[str, dict] = {}
    data_rss = None
    for setting, flags in settings.items():
        runs[setting] = {}
        for name in names:
            log(f"{setting}: {name}, T = {args.T:,} ...")
            if args.quick:  # in this process: no process start-up, no isolation
                runs[setting][name] = measure(name, args.T, args.repeats)
            else:
                runs[setting][name] = run_worker(name, args, flags)
    if not args.quick:
        data_rss = run_worker("data", args, "").get("peak_rss")
    load_after = os.getloadavg()[0]

    first = next(iter(runs))
    memory_note = (
        f"Compile time and memory ({first}). XLA temp: the temporary buffers XLA plans for "
        "the compiled program. Peak RSS: the process that built the data, compiled and ran "
        "the computation"
    )
    if data_rss:
        memory_note += f" (building the data alone: {data_rss / 2**20:.0f} MiB)"
    if args.quick:  # one process: its peak RSS is cumulative, not per computation
        for result in runs[first].values():
            result["peak_rss"] = None
    intro = (
        "### Kalman filter: drift_jax vs dynamax (`benchmarks/bench_kalman.py`)\n\n"
        f"One series of T = {args.T:,} steps, scalar OU model (theta={THETA}, "
        f"sigma={SIGMA}, R={R_NOISE}, dt={DT}), float64, the same data for every row; "
        f"jitted, best of {args.repeats} runs after a warm-up run, "
        + ("all in one process (--quick). " if args.quick else "each in a fresh process. ")
        + f"Load average {load_before:.1f} before, {load_after:.1f} after, on "
        f"{os.cpu_count()} cores (shared machine: compare ratios). `x fwd`: the time divided "
        "by that of the matching forward pass. `loops whole`: how many of the program's "
        "`while` loops XLA:CPU compiled into one function, which it does only when one "
        "iteration touches fewer bytes than `xla_cpu_small_while_loop_byte_threshold` (1 kB "
        "by default; the second setting raises it through `XLA_FLAGS=--xla_backend_extra_"
        "options=xla_cpu_small_while_loop_byte_threshold=N`); otherwise the loop body runs "
        "operation by operation."
    )
    body = "\n\n".join(
        [
            intro,
            speed_table(runs, args.T),
            "Targets (issue 2):\n\n" + targets_table(runs),
            "Agreement (same data, same model):\n\n" + agreement_table(runs),
            memory_note + ":\n\n" + memory_table(runs[first]),
            "Machine:\n\n" + machine_markdown(machine_info()),
        ]
    )
    print("\n" + body)
    if not args.no_write:
        print(f"\nwritten to {write_section('kalman', body)}")


if __name__ == "__main__":
    main()
