"""How long a Snakemake run took, read from its own log (``.snakemake/log/*.snakemake.log``).

    python -m benchmarks.runlog .snakemake/log/2026-11-27T201333.798130.snakemake.log

Prints the run's wall time (first job's start to the last job's end), the busy seconds of all jobs (their
sum; busy / wall is how many jobs ran at once on average) and, per rule, the number of jobs, their summed and
longest seconds. Jobs that failed or never finished (an interrupted run) are counted and named. Several logs
(a run resumed after an interruption) are read one after the other: the wall time is the sum of each log's.

The times are Snakemake's own stamps (one-second resolution) around each job: a job's seconds include its
start-up (Python, imports), not only the work its log reports.
"""
from __future__ import annotations

import datetime as _dt
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidInputError

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d{1,2} \d\d:\d\d:\d\d \d{4})\]\s*$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):\s*$")
_JOBID = re.compile(r"^\s+jobid: (\d+)\s*$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*?)\s*$")
_MESSAGE = re.compile(r"^Job (\d+): ")  # a rule with a `message:` is announced so, without its name
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)\s*$")
_ERROR = re.compile(r"^Error in rule (\w+):\s*$")
_STOP = "Terminating processes on user request"  # Snakemake stopped (Ctrl-C, SIGINT, a deadline): errors after it are the stop's


@dataclass
class Job:
    rule: str
    jobid: int
    start: _dt.datetime
    end: _dt.datetime | None = None
    failed: bool = False
    interrupted: bool = False  # ended by the run's stop (Snakemake terminating on request), not by its own error
    wildcards: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else (self.end - self.start).total_seconds()


@dataclass
class Run:
    """The jobs of one or more Snakemake logs and the run's wall time."""
    logs: list[str]
    jobs: list[Job] = field(default_factory=list)
    wall_s: float = 0.0
    first: _dt.datetime | None = None
    last: _dt.datetime | None = None

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.end is not None and not j.failed and not j.interrupted]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.failed]

    @property
    def interrupted(self) -> list[Job]:
        return [j for j in self.jobs if j.interrupted]

    @property
    def unfinished(self) -> list[Job]:
        return [j for j in self.jobs if j.end is None and not j.failed and not j.interrupted]

    @property
    def busy_s(self) -> float:
        return sum(j.seconds for j in self.finished)

    def per_rule(self) -> dict[str, dict]:
        """rule -> jobs, seconds (summed), longest (seconds) and which job that was, over finished jobs."""
        out: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "longest": 0.0, "longest_job": ""})
        for j in self.finished:
            r = out[j.rule]
            r["jobs"] += 1
            r["seconds"] += j.seconds
            if j.seconds >= r["longest"]:
                r["longest"], r["longest_job"] = j.seconds, j.wildcards
        return dict(out)


def _stamp(text: str) -> _dt.datetime:
    return _dt.datetime.strptime(text, "%a %b %d %H:%M:%S %Y")


def parse_log(text: str, name: str = "log") -> Run:
    """The jobs one Snakemake log records (start, end, failure). Raises InvalidInputError when it has none."""
    run = Run(logs=[name])
    jobs: dict[int, Job] = {}
    stamp: _dt.datetime | None = None
    pending: str | None = None  # the rule of a header whose jobid line is not read yet (started at `stamp`)
    job: Job | None = None      # the job whose header is being read (wildcards)
    error_rule: str | None = None
    stopping = False
    for line in text.splitlines():
        if line.startswith(_STOP):
            stopping = True
        if m := _STAMP.match(line):
            stamp, pending, job, error_rule = _stamp(m.group(1)), None, None, None
            run.last = stamp
        elif (m := _START.match(line)) and stamp is not None:
            pending, job = m.group(1), None
        elif (m := _MESSAGE.match(line)) and stamp is not None and int(m.group(1)) not in jobs:
            jobs[int(m.group(1))] = Job("?", int(m.group(1)), stamp)  # named by its "Finished" line
        elif m := _ERROR.match(line):
            error_rule, pending, job = m.group(1), None, None
        elif m := _JOBID.match(line):
            jid = int(m.group(1))
            if error_rule is not None:
                if (j := jobs.get(jid)) is not None:
                    j.rule = error_rule if j.rule == "?" else j.rule
                    j.end = j.end or stamp
                    if stopping:
                        j.interrupted = True
                    else:
                        j.failed = True
                error_rule = None
            elif pending is not None and jid not in jobs:
                job = jobs[jid] = Job(pending, jid, stamp)
                pending = None
        elif (m := _WILDCARDS.match(line)) and job is not None:
            job.wildcards = m.group(1)
        elif m := _DONE.match(line):
            jid = int(m.group(1))
            if jid in jobs and stamp is not None:
                jobs[jid].end = stamp
                if jobs[jid].rule == "?":
                    jobs[jid].rule = m.group(2)
    if not jobs:
        raise InvalidInputError(f"{name}: no Snakemake job found in it (is it a .snakemake/log/*.snakemake.log "
                                f"of a run that executed jobs, not a dry run?)")
    run.jobs = sorted(jobs.values(), key=lambda j: (j.start, j.jobid))
    run.first = min(j.start for j in run.jobs)
    run.wall_s = (run.last - run.first).total_seconds()
    return run


def read_logs(paths) -> Run:
    """One run from one or more logs (a resumed run): jobs of all, wall time the sum of each log's."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise InvalidInputError("no Snakemake log given")
    runs = []
    for p in paths:
        if not p.is_file():
            raise InvalidInputError(f"{p}: no such Snakemake log")
        runs.append(parse_log(p.read_text(errors="replace"), str(p)))
    out = Run(logs=[str(p) for p in paths])
    for r in runs:
        out.jobs += r.jobs
        out.wall_s += r.wall_s
    out.first, out.last = runs[0].first, runs[-1].last
    return out


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def markdown(run: Run) -> str:
    """The run's wall time and the per-rule table, as Markdown lines (run.md, benchmarks/README.md)."""
    rules = sorted(run.per_rule().items(), key=lambda kv: -kv[1]["seconds"])
    lines = [f"Wall time of the run (Snakemake's log: {', '.join(Path(p).name for p in run.logs)}): "
             f"**{_hms(run.wall_s)}** ({run.wall_s / 60:.1f} min), {run.first:%Y-%m-%d %H:%M:%S} to "
             f"{run.last:%H:%M:%S}; {len(run.finished)} jobs finished, {run.busy_s / 3600:.2f} h of job time "
             f"({run.busy_s / max(run.wall_s, 1.0):.2f} jobs at a time on average)"]
    if run.failed:
        lines[0] += f"; **{len(run.failed)} failed**: " + ", ".join(f"{j.rule} ({j.wildcards})" for j in run.failed)
    if run.interrupted:
        lines[0] += (f"; **{len(run.interrupted)} interrupted** when the run was stopped: "
                     + ", ".join(f"{j.rule} ({j.wildcards})" for j in run.interrupted))
    if run.unfinished:
        lines[0] += (f"; **{len(run.unfinished)} never finished** (interrupted): "
                     + ", ".join(f"{j.rule} ({j.wildcards})" for j in run.unfinished))
    lines += ["", "| rule | jobs | job seconds (sum) | longest job (s) | that job |", "|---|---:|---:|---:|---|"]
    for rule, r in rules:
        lines.append(f"| {rule} | {r['jobs']} | {r['seconds']:.0f} | {r['longest']:.0f} | {r['longest_job']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path, help="Snakemake log(s), in the order they ran")
    a = ap.parse_args(argv)
    try:
        run = read_logs(a.logs)
    except InvalidInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(run), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
