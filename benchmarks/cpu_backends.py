"""CPU inference: torch vs onnxruntime rows/s for each configured architecture, and the faster one.

    python -m benchmarks.cpu_backends [--rows 262144] [--threads 2]

Networks are built with the configured architectures and problem C's input box (the speed is
independent of the trained weights); each backend is checked against torch before it is timed.
"""
from __future__ import annotations

import argparse
import sys

import torch

from surrogates.network import MLP
from surrogates.problems import load_config, problem_from_config

from surrogates.losses import problem_box

from .inference import fastest_cpu_backend
from .machine import machine_info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--config", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    p = problem_from_config("C", cfg)
    info = machine_info(gpu=False)
    print(f"{info['cpu']}, {a.threads} threads, torch {info.get('torch')}, onnxruntime {info.get('onnxruntime')}")
    print("| architecture | params | torch rows/s | onnxruntime rows/s | picked |")
    print("|---|---:|---:|---:|---|")
    for name, hidden in cfg["training"]["architectures"].items():
        torch.manual_seed(0)
        net = MLP(len(p.inputs), len(p.outputs), hidden, input_range=problem_box(p)).eval()
        best, rates = fastest_cpu_backend(net, rows=a.rows)
        print(f"| {name} | {net.n_params} | {rates['torch']:.3g} | {rates['onnxruntime']:.3g} | {best} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
