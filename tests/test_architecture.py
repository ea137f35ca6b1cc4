"""The layering contract: each room imports only the rooms below it, and the workflow parses without torch.

    core  <-  solvers  <-  surrogates  <-  inference  <-  benchmarks  <-  workflow (rules, scripts)

``core`` imports nothing of the project (and never torch); ``solvers`` only ``core``; ``surrogates`` only
``core`` and ``solvers`` (not the inference library, the programs or the workflow); ``inference`` no
programs; ``fisiocomPinn`` is a thin layer over ``surrogates``.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"core", "solvers", "surrogates", "inference", "benchmarks", "fisiocomPinn", "workflow"}
ALLOWED = {
    "core": set(),
    "solvers": {"core"},
    "surrogates": {"core", "solvers"},
    "inference": {"core", "solvers", "surrogates"},
    "benchmarks": {"core", "solvers", "surrogates", "inference"},
    "fisiocomPinn": {"core", "solvers", "surrogates"},
}


def imports_of(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file (anywhere in it, functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_each_room_imports_only_the_rooms_below_it(room):
    bad = []
    for f in sorted((ROOT / room).rglob("*.py")):
        wrong = (imports_of(f) & PROJECT) - ALLOWED[room] - {room}
        if wrong:
            bad.append(f"{f.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_core_never_imports_torch():
    offenders = [str(f.relative_to(ROOT)) for f in (ROOT / "core").rglob("*.py") if "torch" in imports_of(f)]
    assert not offenders


def test_the_workflow_parses_without_importing_torch(tmp_path):
    """Parsing the workflow (every dry-run, every cluster job) must not pay for importing torch."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['snakemake', '-n', '--quiet', 'all', '--config', 'results_dir=" + str(tmp_path) + "']\n"
        "from snakemake.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "False", "parsing the workflow imported torch"
