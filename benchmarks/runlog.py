"""How long a Snakemake run's jobs took, read from the records Snakemake's own ``benchmark:`` directive writes:
one file per job, ``<results_dir>/benchmarks/jobs/<rule>/<job>.tsv`` (``core.layout.Layout.job_record``).

    python -m benchmarks.runlog --results results/gpu                # every job's latest record
    python -m benchmarks.runlog --config config/gpu.yaml --since 1764000000   # the jobs that ended after it

Prints the number of jobs, the span of the run (the first job's start to the last job's end), the time with
at least one job running (the union of the jobs' intervals: the pauses of a run resumed later do not count),
the jobs' summed seconds (summed / running time is how many jobs ran at once on average) and, per rule, the
number of jobs, their summed and longest seconds and the peak resident memory of its largest job (Snakemake
samples it every few seconds: a shorter peak can be missed; its sampled CPU seconds undercount the jobs that
end between two samples, and are left out). A job's seconds are Snakemake's measurement around its run (start-up included); its end is
the record's modification time (Snakemake writes it when the job ends) and its start that less its seconds.
A job that failed or was interrupted writes no record: Snakemake's exit status and its log name those.
A job run again replaces its record, so the folder holds each job's latest run.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidInputError
from core.layout import Layout


@dataclass
class Job:
    rule: str
    name: str          # the record's file name without .tsv: the job's wildcards
    seconds: float
    end: float         # seconds since the epoch
    max_rss_mb: float | None = None

    @property
    def start(self) -> float:
        return self.end - self.seconds


def _number(text: str | None) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None  # Snakemake writes NA (or nothing) where it measured nothing (a job faster than its sampling)
    return v if math.isfinite(v) else None


def read_record(path: Path, rule: str) -> Job:
    """One job from its ``benchmark:`` file (several rows, from ``repeat()``: their seconds summed)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the job record ({exc})") from None
    seconds = [_number(r.get("s")) for r in rows]
    if not rows or any(s is None or s < 0 for s in seconds):
        raise InvalidInputError(f"{path}: not a Snakemake benchmark record (no rows with a number of seconds in "
                                f"column 's')")
    rss = [v for r in rows if (v := _number(r.get("max_rss"))) is not None]
    return Job(rule, path.stem, float(sum(seconds)), path.stat().st_mtime, max(rss) if rss else None)


def read_records(folder, since: float | None = None) -> list[Job]:
    """Every job recorded under ``folder`` (``<rule>/<job>.tsv``), or only those that ended after ``since``
    (seconds since the epoch), by their start. Raises InvalidInputError where there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no job records (the folder does not exist: has the run executed a "
                                f"job since its rules record them?)")
    jobs = [read_record(p, p.parent.name) for p in sorted(folder.glob("*/*.tsv"))]
    if since is not None:
        jobs = [j for j in jobs if j.end >= since]
    if not jobs:
        raise InvalidInputError(f"{folder}: no job records" + (f" that ended after {_when(since)}" if since else ""))
    return sorted(jobs, key=lambda j: (j.start, j.rule, j.name))


def running_s(jobs: list[Job]) -> float:
    """Seconds during which at least one of the jobs ran (the union of their intervals)."""
    total, reach = 0.0, -math.inf
    for j in sorted(jobs, key=lambda j: j.start):
        if j.end > reach:
            total += j.end - max(j.start, reach)
            reach = j.end
    return total


def per_rule(jobs: list[Job]) -> dict[str, dict]:
    """rule -> jobs, seconds (summed), longest (seconds) and which job that was, peak RSS (MB)."""
    out: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "longest": 0.0, "longest_job": "",
                                                "max_rss_mb": None})
    for j in jobs:
        r = out[j.rule]
        r["jobs"] += 1
        r["seconds"] += j.seconds
        if j.seconds >= r["longest"]:
            r["longest"], r["longest_job"] = j.seconds, j.name
        if j.max_rss_mb is not None:
            r["max_rss_mb"] = max(r["max_rss_mb"] or 0.0, j.max_rss_mb)
    return dict(out)


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _when(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def markdown(jobs: list[Job]) -> str:
    """The run's times and the per-rule table, as Markdown lines (run.md, benchmarks/README.md)."""
    first, last = min(j.start for j in jobs), max(j.end for j in jobs)
    running, busy = running_s(jobs), sum(j.seconds for j in jobs)
    lines = [f"Jobs of the run (Snakemake's `benchmark:` records): {len(jobs)} jobs from {_when(first)} to "
             f"{_when(last)[11:] if _when(first)[:10] == _when(last)[:10] else _when(last)} "
             f"(span **{_hms(last - first)}**); at least one job running for **{_hms(running)}** "
             f"({running / 60:.1f} min); {busy / 3600:.2f} h of job time ({busy / max(running, 1.0):.2f} jobs at "
             f"a time on average)"]
    lines += ["", "| rule | jobs | job seconds (sum) | longest job (s) | that job | peak RSS (MB) |",
              "|---|---:|---:|---:|---|---:|"]
    for rule, r in sorted(per_rule(jobs).items(), key=lambda kv: -kv[1]["seconds"]):
        rss = "" if r["max_rss_mb"] is None else f"{r['max_rss_mb']:.0f}"
        lines.append(f"| {rule} | {r['jobs']} | {r['seconds']:.0f} | {r['longest']:.0f} | {r['longest_job']} | "
                     f"{rss} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from .cli import parser

    ap = parser(__doc__)
    ap.add_argument("--results", type=Path, default=None,
                    help="the run's results_dir (default: the configuration's)")
    ap.add_argument("--since", type=float, default=None, metavar="EPOCH_SECONDS",
                    help="only the jobs that ended after this time (e.g. the start of this run: `date +%%s`)")
    a = ap.parse_args(argv)
    try:
        if a.results is None:
            from surrogates.config import load_config

            a.results = load_config(*a.config).results_dir
        jobs = read_records(Layout(a.results).job_records, a.since)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(jobs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
