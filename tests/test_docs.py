"""The docs: every generated results block is what the tracked reference tables give; the guides stay guides."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import docs
from core.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_block_is_what_the_reference_tables_give():
    bad = docs.stale()
    assert not bad, f"stale generated blocks {bad}: run `python -m benchmarks.reference --docs`"


def test_the_guides_carry_the_results_blocks():
    names = {p.name if p.parent == ROOT else str(p.relative_to(ROOT)): {m.group(2) for m in docs.BLOCK.finditer(p.read_text())}
             for p in docs.DOCS}
    assert {"glance"} <= names["README.md"]
    assert {"accuracy", "speed", "solver", "run", "training"} <= names["benchmarks/README.md"]


def test_a_changed_number_in_a_table_makes_the_check_fail_and_the_rewrite_fixes_it(tmp_path):
    ref = tmp_path / "reference"
    shutil.copytree(docs.REFERENCE, ref)
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    assert docs.stale([readme], ref) == []
    acc = pd.read_csv(ref / "accuracy.csv")
    row = (acc.problem == "C") & (acc.surrogate == "ddnn") & (acc.n_train == 100000)
    acc.loc[row, "mae_mean"] = 0.0123456
    acc.to_csv(ref / "accuracy.csv", index=False)
    assert docs.stale([readme], ref) == [f"{readme}: block glance"]
    assert docs.main(check=True, paths=[readme], ref=ref) == 1
    assert docs.main(paths=[readme], ref=ref) == 0
    assert "MAE 0.0123, max" in readme.read_text() and docs.stale([readme], ref) == []
    # only the block changed
    old, new = (ROOT / "README.md").read_text().splitlines(), readme.read_text().splitlines()
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new)) == 1


def test_a_bad_block_is_refused_naming_it(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown generated block 'nope'"):
        docs.render("<!-- BEGIN generated: nope -->\nx\n<!-- END generated -->\n")
    with pytest.raises(InvalidInputError, match="has no `<!-- END generated -->`"):
        docs.render("<!-- BEGIN generated: run -->\nx\n")
    with pytest.raises(InvalidInputError, match="accuracy.csv: missing"):
        docs.render("<!-- BEGIN generated: accuracy -->\n<!-- END generated -->\n", tmp_path)


def test_the_docs_cli_checks_through_benchmarks_reference():
    res = subprocess.run([sys.executable, "-m", "benchmarks.reference", "--docs", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_readme_is_a_short_guide_with_a_license_and_a_citation():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "Werneck" in text and "Neural Network Models as Surrogates" in text
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = (ROOT / "CITATION.cff").read_text()
    assert "cff-version:" in cff and "license: MIT" in cff
    for link in re.findall(r"\]\(([^)#]+)\)", text):  # every relative link points at a tracked path
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def _tracked_text_files():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no git checkout here: {e}")
    for name in files.splitlines():
        p = ROOT / name
        if p.suffix in {".py", ".md", ".yaml", ".yml", ".smk", ".sh", ".cff", ".bib", ".cpp", ".txt", ".toml", ".rst"} \
                or p.name in {"Makefile", "Snakefile", "run"}:
            if p.is_file():
                yield name, p.read_text(errors="replace")


def test_no_tracked_file_speaks_of_work_sessions_issues_or_device_calls():
    words = ("sess" + "ions?", "iss" + "ues?", "iss" + "ue's")  # spelt in pieces: this file is read by such checks too
    pattern = re.compile("|".join(rf"\b{w}\b" for w in words) + "|dev" + "ice call", re.I)
    allowed = re.compile(r"InferenceSession|SessionOptions|ort\.\w*Session|\bsess(ion)?\b\s*=")
    hits = []
    for name, text in _tracked_text_files():
        if name == "tests/test_docs.py":  # the pattern itself
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if pattern.search(allowed.sub("", line)):
                hits.append(f"{name}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_run_facts_read_both_summaries_of_a_reference_run():
    """run.md's wall time, date and job count, from the log summary of the tracked grid and from the summary of
    Snakemake's `benchmark:` records that benchmarks.runlog writes now (the LR1991 study's run.md)."""
    from benchmarks.docs import run_facts

    ref = ROOT / "benchmarks" / "reference"
    for folder in (ref, ref / "lr1991"):
        text = (folder / "run.md").read_text()
        facts = run_facts(folder)
        assert re.fullmatch(r"\d+:\d\d:\d\d", facts["wall"]) and f"**{facts['wall']}**" in text
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", facts["day"]) and facts["day"] in text and facts["jobs"] > 0
    assert "Wall time of the run" in (ref / "run.md").read_text()  # the older summary, still read
    lr = run_facts(ref / "lr1991")
    text = (ref / "lr1991" / "run.md").read_text()
    assert f"(span **{lr['wall']}**)" in text and f"{lr['jobs']} jobs from {lr['day']} " in text
