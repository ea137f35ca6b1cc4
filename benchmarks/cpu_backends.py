"""CPU inference: torch vs onnxruntime rows/s for each configured architecture, and the faster one.

    python -m benchmarks.cpu_backends [--rows 262144] [--threads 2]

Networks are built with the configured architectures and the input box of ``speed.problem`` (the speed
is independent of the trained weights); each backend is checked against torch before it is timed.
"""
from __future__ import annotations

import sys

import torch

from benchmarks import cli
from core.machine import machine_info
from inference.backends import fastest_cpu_backend
from surrogates.config import load_config
from surrogates.network import MLP


def main(argv=None) -> int:
    return cli.run_main(lambda: _main(argv))  # errors (the project's, the OS's): one line, status 2


def _main(argv) -> int:
    ap = cli.parser(__doc__)
    ap.add_argument("--rows", type=cli.integer(1), default=262144)
    ap.add_argument("--threads", type=cli.integer(1), default=torch.get_num_threads())
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    study = load_config(*a.config)
    p = study.problem(study.speed.problem)
    info = machine_info(gpu=False)
    print(f"{info['cpu']}, {a.threads} threads, torch {info.get('torch')}, onnxruntime {info.get('onnxruntime')}")
    print("| architecture | params | torch rows/s | onnxruntime rows/s | picked |")
    print("|---|---:|---:|---:|---|")
    for name, hidden in study.architectures.items():
        torch.manual_seed(0)
        net = MLP(len(p.inputs), len(p.outputs), hidden, input_range=p.box()).eval()
        best, rates = fastest_cpu_backend(net, rows=a.rows)
        print(f"| {name} | {net.n_params} | {rates['torch']:.3g} | {rates['onnxruntime']:.3g} | {best} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
