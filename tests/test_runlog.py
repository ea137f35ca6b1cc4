"""benchmarks.runlog: a Snakemake run's wall time and seconds per rule, read from Snakemake's own log."""
import pytest

from benchmarks.runlog import main, markdown, parse_log, read_logs
from core.errors import InvalidInputError

# The shape Snakemake 9 writes (snakemake/logging.py: job_info, job_finished, job_error), trimmed:
# two trainings at once, one dataset job before them, one training that fails, one interrupted.
LOG = """\
Building DAG of jobs...
Provided cores: 2
[Fri Nov 27 20:13:35 2026]
localrule dataset_test:
    output: results/datasets/D/test.npz
    jobid: 11
    reason: Missing output files: results/datasets/D/test.npz
    wildcards: problem=D
    resources: tmpdir=/tmp
Select jobs to execute...
[Fri Nov 27 20:13:39 2026]
Finished jobid: 11 (Rule: dataset_test)
1 of 5 steps (20%) done
[Fri Nov 27 20:13:40 2026]
rule train:
    input: results/datasets/C/n1000/train.npz
    jobid: 3
    wildcards: problem=C, surrogate=pinn, n=1000, arch=mlp3x64, seed=0
    threads: 1
[Fri Nov 27 20:13:41 2026]
localrule train:
    jobid: 4
    wildcards: problem=C, surrogate=ddnn, n=1000, arch=mlp3x64, seed=0
[Fri Nov 27 20:15:41 2026]
Finished jobid: 4 (Rule: train)
2 of 5 steps (40%) done
[Fri Nov 27 20:15:42 2026]
Job 7: a rule with a message
Reason: Missing output files
[Fri Nov 27 20:16:00 2026]
Error in rule train:
    message: None
    jobid: 3
    log: results/logs/train.log (check log file(s) for error details)
[Fri Nov 27 20:16:02 2026]
Finished jobid: 7 (Rule: figure_speed)
3 of 5 steps (60%) done
[Fri Nov 27 20:16:03 2026]
localrule export_onnx:
    jobid: 9
    wildcards: problem=C, surrogate=ddnn, n=1000, arch=mlp3x64, seed=0
"""


def test_jobs_their_seconds_and_the_wall_time_are_read_from_the_log():
    run = parse_log(LOG, "test.log")
    by_id = {j.jobid: j for j in run.jobs}
    assert set(by_id) == {11, 3, 4, 7, 9}
    assert by_id[11].rule == "dataset_test" and by_id[11].seconds == 4
    assert by_id[4].rule == "train" and by_id[4].seconds == 120
    assert by_id[4].wildcards == "problem=C, surrogate=ddnn, n=1000, arch=mlp3x64, seed=0"
    assert by_id[3].failed and by_id[3].seconds == 140  # ended by its error
    assert by_id[7].rule == "figure_speed" and by_id[7].seconds == 20  # named by its "Finished" line
    assert [j.jobid for j in run.unfinished] == [9] and by_id[9].end is None
    assert run.wall_s == (16 * 60 + 3) - (13 * 60 + 35)  # first job's start to the last stamp
    assert run.busy_s == 4 + 120 + 20  # finished jobs only
    rules = run.per_rule()
    assert rules["train"] == {"jobs": 1, "seconds": 120, "longest": 120, "longest_job": by_id[4].wildcards}
    assert set(rules) == {"dataset_test", "train", "figure_speed"}


def test_the_markdown_names_failed_and_unfinished_jobs():
    md = markdown(parse_log(LOG, "test.log"))
    assert "**0:02:28** (2.5 min)" in md
    assert "**1 failed**: train (problem=C, surrogate=pinn" in md
    assert "**1 never finished** (interrupted): export_onnx" in md
    assert "| train | 1 | 120 | 120 | problem=C, surrogate=ddnn, n=1000, arch=mlp3x64, seed=0 |" in md
    # rules sorted by their seconds, the largest first
    assert md.index("| train |") < md.index("| figure_speed |") < md.index("| dataset_test |")


def test_jobs_a_stop_interrupts_are_not_counted_as_failed():
    """After "Terminating processes on user request" (Ctrl-C, or make gpu-grid's GRID_DEADLINE) the errors
    Snakemake reports are the stop's: those jobs are interrupted, not failed."""
    stopped = LOG + """Terminating processes on user request, this might take some time.
[Fri Nov 27 20:16:30 2026]
Error in rule export_onnx:
    message: None
    jobid: 9
"""
    run = parse_log(stopped, "stopped.log")
    by_id = {j.jobid: j for j in run.jobs}
    assert by_id[9].interrupted and not by_id[9].failed and by_id[9].seconds == 27
    assert [j.jobid for j in run.failed] == [3] and run.unfinished == []
    assert 9 not in {j.jobid for j in run.finished} and run.busy_s == 4 + 120 + 20
    md = markdown(run)
    assert "**1 failed**: train (problem=C, surrogate=pinn" in md
    assert "**1 interrupted** when the run was stopped: export_onnx (problem=C" in md
    assert "never finished" not in md


def test_a_resumed_run_sums_the_wall_time_of_its_logs(tmp_path):
    a, b = tmp_path / "a.snakemake.log", tmp_path / "b.snakemake.log"
    a.write_text(LOG)
    b.write_text(LOG.replace("Fri Nov 27", "Sat Nov 28"))
    one = read_logs([a])
    two = read_logs([a, b])
    assert two.wall_s == 2 * one.wall_s and len(two.jobs) == 2 * len(one.jobs)
    assert two.first.day == 27 and two.last.day == 28


def test_a_log_without_jobs_or_a_missing_log_is_refused_naming_it(tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="empty.log: no Snakemake job found"):
        parse_log("Building DAG of jobs...\nNothing to be done.\n", "empty.log")
    with pytest.raises(InvalidInputError, match="nope.log: no such Snakemake log"):
        read_logs([tmp_path / "nope.log"])
    assert main([str(tmp_path / "nope.log")]) == 2
    assert "no such Snakemake log" in capsys.readouterr().err
