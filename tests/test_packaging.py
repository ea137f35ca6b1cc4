"""Set-up promises: pinned dependencies agree, imports need no GPU, the README's commands are CI's."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_pins() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = data["dependencies"] + data["optional-dependencies"]["test"]
    pins = {}
    for r in reqs:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^;\s]+)", r).groups()
        pins[_norm(name)] = version
    return pins


def _environment_pins() -> dict:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for r in dep["pip"]:
                name, version = r.split("==")
                pins[_norm(name)] = version
        else:
            name, _, version = dep.partition("=")
            if name not in ("python", "pip"):
                pins[_norm(name)] = version
    return pins


def test_every_dependency_is_pinned_exactly_and_environment_yml_agrees():
    py = _pyproject_pins()
    assert py["torch"] == "2.13.0"
    assert py == _environment_pins()


def test_packages_import_without_gpu_libraries():
    code = (
        "import sys\n"
        "sys.modules['cupy'] = None\n"
        "sys.modules['tensorrt'] = None\n"
        "sys.modules['triton'] = None\n"
        "import core, solvers, surrogates, training, inference, benchmarks\n"
        "import training.train, inference.backends, inference.kernels.triton_mlp, benchmarks.speedup\n"
        "t, Y = solvers.simulate('fhn', [[0.5, 0.0]], 1.0, backend='auto')\n"
        "assert solvers.available_backends()['cuda'] is not None\n"
        "assert Y.shape == (101, 1, 2)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    head = (ROOT / "README.md").read_text().splitlines()[:12]
    text = "\n".join(head)
    assert "make run" in text and "make test" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
