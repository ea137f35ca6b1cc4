"""Several training processes on one GPU: does sharing it pay, with and without NVIDIA MPS?

    python -m benchmarks.gpu_share [--processes 1 4 8] [--steps 10000] [--engine auto] [--mps auto|on|off]

The GPU profile lets several training jobs share the GPU (``gpu_jobs``). Each job is its own process, and
without MPS (the Multi-Process Service) the GPU runs one process's kernels at a time, switching between
them; a small network's captured step leaves most of the chip idle, so sharing pays only if kernels of
different processes can run side by side, which is what MPS does. Measured on an H200 (2026-11-28, the
paper's grid through ``make gpu-grid``, no MPS): with ~7.5 jobs at a time each training took 5-11x as long
as alone, so the GPU did about the work of one job after the other.

This program measures it directly: for each K of ``--processes`` it starts K identical training processes
(problem C's 3x64 network on random data of C's shape, batch 1024, the Trainer's default GPU path: the
captured fused step), lets each warm up (graph capture, kernel compilation), starts their timed steps
together and reports the aggregate network-iterations per second (K x steps / the span from the first
start to the last end) against one process alone. With ``--mps auto`` (default) it repeats the sweep under
an MPS control daemon of its own (started with a private pipe directory, stopped after) where
``nvidia-cuda-mps-control`` exists. Used by ``make gpu-check`` (step ``share``); on a CPU it runs the same
protocol on the CPU (how the tests check it), which says nothing about a GPU.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _data(rows: int = 100_000):
    """Random rows of C's shape, (t, u0, w0, I) -> (u, w)."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 1.0, (rows, 4)).astype(np.float32)
    Y = np.stack([np.sin(3 * X[:, 0] + X[:, 1]), X[:, 2] * X[:, 3]], axis=1).astype(np.float32)
    return X, Y


def _trainer(out, X, Y, seed: int, steps: int, device: str, engine: str):
    import torch

    from surrogates.losses import DataLoss
    from surrogates.network import MLP
    from training.trainer import Trainer

    torch.manual_seed(seed)
    net = MLP(4, 2, [("SiLU", 64)] * 3, input_range=([0.0] * 4, [1.0] * 4)).to(device)
    tr = Trainer(net, out, val_every=max(steps, 1), lr=3e-3, engine=engine, progress=False)
    tr.add_loss(DataLoss(X, Y, batch_size=1024, seed=seed, name="data"))
    return tr


def in_process(k: int, steps: int, device: str, engine: str = "auto") -> dict:
    """K networks in this process: one after the other, then side by side (:mod:`training.side_by_side`,
    each in its own thread and stream), after a warm-up. ``{"sequential", "side_by_side"}``: network-it/s."""
    from benchmarks.training_speed import _sync
    from training.side_by_side import train_side_by_side

    X, Y = _data()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        _trainer(Path(d) / "warm", X, Y, 0, 200, device, engine).train(200)
        for mode in ("sequential", "side_by_side"):
            trainers = [_trainer(Path(d) / f"{mode}{s}", X, Y, s, steps, device, engine) for s in range(k)]
            _sync(device)
            t0 = time.perf_counter()
            if mode == "sequential":
                for t in trainers:
                    t.train(steps)
            else:
                train_side_by_side(trainers, steps)
            _sync(device)
            out[mode] = k * steps / (time.perf_counter() - t0)
    return out


def worker(steps: int, device: str, engine: str, rows: int = 100_000) -> None:
    """One training process: build, warm up, say ``ready``, wait for ``go`` on stdin, train ``steps``
    steps, print ``{"t0": .., "t1": ..}`` (wall-clock seconds: comparable across processes)."""
    import torch

    from benchmarks.training_speed import _sync

    torch.set_num_threads(1)
    X, Y = _data(rows)
    with tempfile.TemporaryDirectory() as d:
        warm = min(200, steps)  # a first run warms up (kernels, capture); the second is timed
        _trainer(Path(d) / "warm", X, Y, 0, warm, device, engine).train(warm)
        timed = _trainer(Path(d) / "timed", X, Y, 0, steps, device, engine)
        _sync(device)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        t0 = time.time()
        timed.train(steps)
        _sync(device)
        t1 = time.time()
    print(json.dumps({"t0": t0, "t1": t1, "steps": steps}), flush=True)


def _last_error(stderr: str) -> str:
    """The exception line of a worker's traceback (its last line), else the end of what it wrote."""
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    return lines[-1][-300:] if lines else "(nothing on stderr)"


def run_together(k: int, steps: int, device: str, engine: str, env: dict | None = None,
                 timeout: float = 300.0) -> dict:
    """K workers started together: ``{"processes", "steps", "span_s", "network_it_per_s", "per_process"}``."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_share", "--worker", "--steps", str(steps), "--device", device,
           "--engine", engine]
    environ = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(k)]  # stderr: a file never fills as a pipe can
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                              env=environ) for log in logs]
    lines = [queue.Queue() for _ in procs]
    for p, q in zip(procs, lines):  # each worker's stdout read by a thread: waits below have a deadline
        threading.Thread(target=lambda p=p, q=q: [q.put(x.strip()) for x in p.stdout] + [q.put(None)],
                         daemon=True).start()
    deadline = time.monotonic() + timeout

    def next_line(i):
        try:
            return lines[i].get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"a worker said nothing more within {timeout:.0f} s") from None

    def failure(i, what):
        procs[i].wait(timeout=10)
        logs[i].seek(0)
        return RuntimeError(f"a worker {what} (exit {procs[i].returncode}): {_last_error(logs[i].read())}")

    try:
        for i in range(k):
            while (line := next_line(i)) != "ready":  # anything a library prints first is skipped
                if line is None:
                    raise failure(i, "did not start")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for i in range(k):
            while (line := next_line(i)) is not None and not line.startswith("{"):
                pass
            if line is None:
                raise failure(i, "failed")
            results.append(json.loads(line))
    finally:
        for p, log in zip(procs, logs):
            if p.poll() is None:
                p.kill()
            log.close()
    span = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    per = [r["steps"] / (r["t1"] - r["t0"]) for r in results]
    return {"processes": k, "steps": steps, "span_s": span, "network_it_per_s": k * steps / span,
            "per_process": per}


def mps_start() -> tuple[dict | None, str]:
    """``(env, note)``: the environment of a private MPS control daemon started here, or ``None`` and why not."""
    ctl = shutil.which("nvidia-cuda-mps-control")
    if ctl is None:
        return None, "no nvidia-cuda-mps-control on PATH"
    base = Path(tempfile.mkdtemp(prefix="mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(base / "log")}
    for v in env.values():
        Path(v).mkdir()
    res = subprocess.run([ctl, "-d"], env={**os.environ, **env}, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=30)
    if res.returncode != 0:
        return None, f"nvidia-cuda-mps-control -d failed (exit {res.returncode}): {(res.stderr or res.stdout)[-300:]}"
    return env, f"MPS control daemon started ({ctl})"


def mps_for_workflow() -> tuple[dict | None, str]:
    """:func:`mps_start`, then a CUDA initialisation under it (a subprocess) to see that clients can use it;
    where they cannot, the daemon is stopped again and ``None`` says why."""
    env, note = mps_start()
    if env is None:
        return None, note
    probe = "import torch; torch.zeros(1, device='cuda').add_(1); torch.cuda.synchronize()"
    try:
        res = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=90)
        ok, why = res.returncode == 0, _last_error(res.stderr)
    except subprocess.TimeoutExpired:
        ok, why = False, "a CUDA initialisation under it did not finish in 90 s"
    if not ok:
        mps_stop(env)
        return None, f"MPS started but a CUDA client failed under it ({why}); stopped"
    return env, note


def mps_stop(env: dict) -> None:
    ctl = shutil.which("nvidia-cuda-mps-control")
    if ctl:
        subprocess.run([ctl], input="quit\n", env={**os.environ, **env}, capture_output=True, text=True, timeout=30)


def sweep(counts, steps: int, device: str, engine: str, mps: str = "auto") -> list[dict]:
    """Rows for each K of ``counts``, without MPS and (``mps`` auto/on, where it starts) with it; a row that
    could not be measured says why."""
    rows = []
    modes = ["off"] if mps == "off" else (["on"] if mps == "on" else ["off", "on"])
    for mode in modes:
        env, note = (None, "")
        if mode == "on":
            env, note = mps_start()
            if env is None:
                rows.append({"mps": "on", "skipped": note})
                continue
        try:
            for k in counts:
                try:
                    rows.append({"mps": mode, **run_together(k, steps, device, engine, env)})
                except Exception as exc:  # recorded: the other counts still run
                    rows.append({"mps": mode, "processes": k, "failed": f"{type(exc).__name__}: {exc}"[:400]})
        finally:
            if env is not None:
                mps_stop(env)
    return rows


def describe(rows: list[dict]) -> str:
    """One line per row: aggregate network-iterations/s and its ratio to one process alone (same MPS mode)."""
    alone = {r["mps"]: r["network_it_per_s"] for r in rows if r.get("processes") == 1 and "network_it_per_s" in r}
    out = []
    for r in rows:
        head = f"MPS {r['mps']}" + (f", {r['processes']} process(es)" if "processes" in r else "")
        if "network_it_per_s" in r:
            ratio = f" ({r['network_it_per_s'] / alone[r['mps']]:.2f}x one alone)" if r["mps"] in alone else ""
            out.append(f"{head}: {r['network_it_per_s']:.0f} network-it/s together{ratio}, each "
                       f"{min(r['per_process']):.0f}-{max(r['per_process']):.0f} it/s")
        else:
            out.append(f"{head}: {r.get('skipped') or r.get('failed')}")
    return "; ".join(out)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--device", default=None, help="default: cuda where torch sees one, else cpu")
    ap.add_argument("--engine", default="auto", help="the Trainer's engine (auto, fused, triton, ...)")
    ap.add_argument("--mps", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--daemon", choices=["start", "stop"],
                    help="start: an MPS daemon for a workflow (its variables printed as shell exports, nothing if "
                         "none could be used, the reason on stderr); stop: the one the CUDA_MPS_* variables name")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.daemon == "start":
        env, note = mps_for_workflow()
        print(f"MPS: {'on' if env else 'off'}: {note}", file=sys.stderr)
        for k, v in (env or {}).items():
            print(f"export {k}={v}")
        return 0
    if a.daemon == "stop":
        env = {k: os.environ[k] for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY") if k in os.environ}
        if env:
            mps_stop(env)
        return 0
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.worker:
        worker(a.steps, a.device, a.engine)
        return 0
    if any(k < 1 for k in a.processes) or a.steps < 1:
        ap.error("--processes and --steps must be >= 1")
    rows = sweep(a.processes, a.steps, a.device, a.engine, a.mps if a.device == "cuda" else "off")
    print(describe(rows))
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
