"""``python -m drift_jax.launch -n N script.py [args]``: run a script as N local CPU
processes joined into one ``jax.distributed`` run (gloo collectives on localhost).

This is for trying and testing multi-process runs on one machine; on a cluster use the
scheduler (see ``dj.distributed``). Each process gets ``DRIFT_JAX_COORDINATOR``,
``DRIFT_JAX_NUM_PROCESSES`` and ``DRIFT_JAX_PROCESS_ID``, joins the run
(``dj.distributed.initialize()``) and then executes the script as ``__main__`` with its
arguments. Output lines are prefixed ``[p<i>]``. When a process fails, the launcher waits
``--grace`` seconds for the others to fail on their own (drift_jax raises
``dj.distributed.ProcessGroupError`` at the next exchange), then stops them; the exit
code is the first failing process's. ``--timeout`` bounds the whole run.

Example::

    python -m drift_jax.launch -n 2 experiments/monte_carlo_regimes.py --quick
    python -m drift_jax.launch -n 2 --devices-per-process 4 -m mypackage.study
    python -m drift_jax.launch -n 8 --platform gpu study.py   # one GPU per process
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time

#: Heartbeat timeout of launched processes (s): how soon a silent process fails the run.
DEFAULT_HEARTBEAT_S = 20


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m drift_jax.launch",
        description="Run a script as N local CPU processes of one jax.distributed run.",
    )
    p.add_argument("-n", "--num-processes", type=int, default=2, help="processes (default 2)")
    p.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        help="CPU devices each process drives (XLA's forced host device count); "
        "default: XLA's default (one)",
    )
    p.add_argument(
        "--platform",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu (default): CPU processes; gpu: one GPU per process, round robin over the "
        "node's GPUs (CUDA_VISIBLE_DEVICES), each with its share of GPU memory",
    )
    p.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop every process after this many s"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="after one process fails, s to wait for the others before stopping them",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=DEFAULT_HEARTBEAT_S,
        help=f"s of silence after which a process counts as dead (default {DEFAULT_HEARTBEAT_S})",
    )
    p.add_argument("-m", dest="module", default=None, help="run a module instead of a script")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("target", nargs=argparse.REMAINDER, help="script.py [arguments]")
    return p


def _fail(message: str, code: int = 2) -> None:
    print(f"drift_jax.launch: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _child(args) -> None:
    """In a launched process: join the run, then run the target as ``__main__``."""
    import drift_jax as dj

    dj.distributed.initialize()
    if args.module is not None:
        sys.argv = [args.module, *args.target]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        script, *rest = args.target
        sys.argv = [script, *rest]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")


def _pump(stream, out, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def _child_env(args, port: int, i: int) -> dict:
    env = dict(os.environ)
    env["DRIFT_JAX_COORDINATOR"] = f"127.0.0.1:{port}"
    env["DRIFT_JAX_NUM_PROCESSES"] = str(args.num_processes)
    env["DRIFT_JAX_PROCESS_ID"] = str(i)
    env["DRIFT_JAX_HEARTBEAT_S"] = str(args.heartbeat)
    env["PYTHONUNBUFFERED"] = "1"
    if args.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    else:
        gpus = _visible_gpus()
        env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        # Processes that share a GPU share its memory (JAX preallocates 75% by default).
        per_gpu = -(-args.num_processes // len(gpus))
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.85 / per_gpu:.2f}")
    if args.devices_per_process is not None:
        flag = f"--xla_force_host_platform_device_count={args.devices_per_process}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    return env


def _visible_gpus() -> list[str]:
    """The node's GPU ids: CUDA_VISIBLE_DEVICES if set, else ``nvidia-smi -L``, else 0."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        ids = [str(k) for k, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]
    except (OSError, subprocess.SubprocessError):
        ids = []
    return ids or ["0"]


def _stop(procs, indices) -> None:
    for i in indices:
        if procs[i].poll() is None:
            procs[i].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for i in indices:
        try:
            procs[i].wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            procs[i].kill()
            procs[i].wait()


def launch(args) -> int:
    """Start the processes, stream their output, return the run's exit code."""
    n = args.num_processes
    port = free_port() if args.port is None else args.port
    cmd = [sys.executable, "-m", "drift_jax.launch", "--child"]
    if args.module is not None:
        cmd += ["-m", args.module]
    cmd += ["--", *args.target]
    procs, pumps = [], []
    for i in range(n):
        p = subprocess.Popen(
            cmd,
            env=_child_env(args, port, i),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        procs.append(p)
        for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
            t = threading.Thread(target=_pump, args=(stream, out, f"[p{i}] "), daemon=True)
            t.start()
            pumps.append(t)
    t0 = time.monotonic()
    failed_at = None
    first_failure = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            now = time.monotonic()
            if all(c is not None for c in codes):
                break
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad and first_failure is None:
                first_failure, failed_at = bad[0], now
            if first_failure is not None and now - failed_at > args.grace:
                alive = [i for i, c in enumerate(codes) if c is None]
                i, c = first_failure
                print(
                    f"drift_jax.launch: process {i} exited with code {c}; stopping process(es) "
                    f"{alive}, still running {args.grace:g} s later.",
                    file=sys.stderr,
                    flush=True,
                )
                _stop(procs, alive)
                break
            if args.timeout is not None and now - t0 > args.timeout:
                alive = [i for i, c in enumerate(codes) if c is None]
                print(
                    f"drift_jax.launch: --timeout {args.timeout:g} s reached; stopping "
                    f"process(es) {alive}.",
                    file=sys.stderr,
                    flush=True,
                )
                _stop(procs, alive)
                for t in pumps:
                    t.join(timeout=5)
                return 124
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(procs, range(n))
        return 130
    for t in pumps:
        t.join(timeout=5)
    codes = [p.returncode for p in procs]
    if first_failure is None:
        bad = [(i, c) for i, c in enumerate(codes) if c != 0]
        first_failure = bad[0] if bad else None
    if first_failure is None:
        return 0
    i, c = first_failure
    print(
        f"drift_jax.launch: process {i} failed (exit code {c}); exit codes {codes}.",
        file=sys.stderr,
        flush=True,
    )
    return c if c > 0 else 1


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.target and args.target[0] == "--":
        args.target = args.target[1:]
    if args.child:
        _child(args)
        return 0
    if args.num_processes < 1:
        _fail(f"-n must be at least 1, got {args.num_processes}.")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        _fail(f"--devices-per-process must be at least 1, got {args.devices_per_process}.")
    if args.module is None and not args.target:
        _fail("give a script to run (python -m drift_jax.launch -n 2 script.py ...) or -m module.")
    if args.module is None and not os.path.isfile(args.target[0]):
        _fail(f"script {args.target[0]!r} does not exist.")
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
