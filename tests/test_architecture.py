"""The layering contract: each room imports only the rooms below it, and the workflow parses without torch.

    core  <-  solvers  <-  surrogates  <-  training   <-  benchmarks  <-  workflow (rules, scripts)
                                       <-  inference  <-

``core`` imports nothing of the project (and never torch); ``solvers`` only ``core``; ``surrogates`` only
``core`` and ``solvers`` (not training, the inference library, the programs or the workflow); ``training``
and ``inference`` are siblings (neither imports the other, nor the programs); ``fisiocomPinn`` is a thin
layer over ``surrogates`` and ``training``. No room outgrows the others (a share of the lines), and the
modules inside a room import each other without cycles.
"""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"core", "solvers", "surrogates", "training", "inference", "benchmarks", "fisiocomPinn", "workflow"}
ALLOWED = {
    "core": set(),
    "solvers": {"core"},
    "surrogates": {"core", "solvers"},
    "training": {"core", "solvers", "surrogates"},
    "inference": {"core", "solvers", "surrogates"},
    "benchmarks": {"core", "solvers", "surrogates", "training", "inference"},
    "fisiocomPinn": {"core", "solvers", "surrogates", "training"},
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


# ---------------------------------------------------------------- the rooms' sizes and their modules' imports
ROOM_SHARE_MAX = 0.35  # no room holds more than this share of the project's Python lines (tests not counted)


def python_lines(room_dir: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in room_dir.rglob("*.py"))


def test_no_room_holds_more_than_its_share_of_the_code():
    lines = {room: python_lines(ROOT / room) for room in sorted(PROJECT) if (ROOT / room).is_dir()}
    total = sum(lines.values())
    big = {room: f"{n / total:.0%} ({n} of {total} lines)" for room, n in lines.items() if n > ROOM_SHARE_MAX * total}
    assert not big, f"rooms over {ROOM_SHARE_MAX:.0%} of the Python lines: {big}"


def module_imports(package_dir: Path) -> dict[str, set[str]]:
    """Each module of the package under ``package_dir`` and the modules of the same package it imports
    (anywhere in the file, lazy imports included; ``from . import x`` counts ``x`` and the package itself)."""
    root = package_dir.parent
    modules = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in modules.items():
        here = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        wanted = []
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                wanted += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                    else node.module
                wanted += [base] + [f"{base}.{a.name}" for a in node.names]
        edges = set()
        for target in wanted:
            while target and target not in modules:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as the list of its modules (the first one closing it again), or ``None``."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_no_import_cycle_between_the_modules_of_a_room(room):
    cycle = import_cycle(module_imports(ROOT / room))
    assert cycle is None, f"import cycle in {room}: {' -> '.join(cycle)}"


def test_the_cycle_check_sees_a_cycle_of_lazy_imports(tmp_path):
    """The check above can fail: two modules importing each other inside functions (as a configuration
    reader and a dataset writer once did) are a cycle; a one-way import is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def load():\n    from .datasets import max_rows\n")
    (pkg / "datasets.py").write_text("import os\n\ndef main():\n    from pkg.config import load\n")
    (pkg / "sub" / "leaf.py").write_text("from .. import datasets\nfrom ..config import load\n")
    graph = module_imports(pkg)
    assert graph["pkg.sub.leaf"] == {"pkg", "pkg.datasets", "pkg.config"}
    assert import_cycle(graph) == ["pkg.config", "pkg.datasets", "pkg.config"]
    (pkg / "datasets.py").write_text("import os\n")
    assert import_cycle(module_imports(pkg)) is None


# ---------------------------------------------------------------- the study is read through its attributes
# The configuration becomes a frozen, typed study (surrogates.study.Study) in the configuration modules; the
# rest of the project reads its attributes (study.speed.t_end, study.training("C").lr, study.problem("C")),
# never the validated dictionary's keys, and never builds problems or training settings from a dictionary.
CONFIG_MODULES = {"core/config.py", "surrogates/config.py", "surrogates/study.py", "surrogates/problems.py"}
SECTIONS = tuple(yaml.safe_load((ROOT / "core" / "config.schema.yaml").read_text())["properties"])
RAW_READS = re.compile(
    r"\b(?:cfg|config|study|STUDY)\[\s*[\"'](?:" + "|".join(SECTIONS) + r")[\"']"  # cfg["speed"], config["results_dir"]
    r"|\[\s*[\"'](?:training|speed|solver|datasets|problems)[\"']\s*\]"  # ["training"] of any name
    r"|\b(?:problem_from_config|training_settings)\s*\("  # a problem or settings built from a dictionary
    r"|\bload_config\([^()]*\)\s*\["  # load_config(...)["results_dir"]
    r"|\bas_dict\(\)\s*\[")  # the validated dictionary, read by key


def raw_config_reads(text: str, name: str) -> list[str]:
    """``name:line: code`` of each read of the configuration by key in ``text`` (full-line comments skipped)."""
    return [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
            if not line.lstrip().startswith("#") and RAW_READS.search(line)]


def source_files() -> list[Path]:
    """The project's code outside tests/: every room's Python, the Snakefile and the workflow's rules."""
    files = [f for room in sorted(PROJECT) for f in sorted((ROOT / room).rglob("*.py"))]
    return files + [ROOT / "Snakefile", *sorted((ROOT / "workflow").rglob("*.smk"))]


def test_the_study_is_read_through_its_attributes_outside_the_configuration_modules():
    bad = []
    for f in source_files():
        name = str(f.relative_to(ROOT))
        if name not in CONFIG_MODULES:
            bad += raw_config_reads(f.read_text(), name)
    assert not bad, "read the study's attributes (surrogates.study.Study), not the configuration's keys:\n" + "\n".join(bad)


@pytest.mark.parametrize("line", [
    'n = cfg["training"]["seeds"]', "t = config['speed']['t_end']", 'lay = Layout(study["results_dir"])',
    'sp = snakemake.config["speed"]', 'd = c["datasets"]', "p = problem_from_config(name, cfg)",
    "s = training_settings(cfg, p)", 'out = load_config(*paths)["results_dir"]', 'x = study.as_dict()["solver"]',
    'names = list(spec["problems"])',
])
def test_the_scan_names_a_read_by_key(line):
    assert raw_config_reads(f"import x\n\n    {line}  # a read\n", "planted.py") == [f"planted.py:3: {line}  # a read"]


@pytest.mark.parametrize("line", [
    "n = study.seeds", "t = study.speed.t_end", "p = study.problem(name)", "lr = study.training(p).lr",
    'hidden = cfg["hidden"]', 'block = config["BLOCK_M"]', '# cfg["training"] in a comment', "s = study.as_dict()",
])
def test_the_scan_leaves_attribute_reads_and_other_mappings_alone(line):
    assert raw_config_reads(line, "fine.py") == []
