"""benchmarks.runlog: a Snakemake run's job times, read from the records of its `benchmark:` directive."""
import os

import pytest

from benchmarks.runlog import main, markdown, per_rule, read_records, running_s
from core.errors import InvalidInputError
from core.layout import Layout

# The columns Snakemake 9 writes (snakemake/benchmark.py: BenchmarkRecord.get_header), max_rss in MB
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
T0 = 1_764_000_000.0  # 2025-11-24, seconds since the epoch


def record(folder, rule, name, seconds, end, rss="512.00", rows=1):
    path = folder / rule / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t900.1\t400.2\t450.3\t1.2\t3.4\t98.0\t10.5\n" * rows)
    os.utime(path, (end, end))  # Snakemake writes the record when the job ends
    return path


@pytest.fixture
def run(tmp_path):
    """A dataset job, then two trainings side by side, then (after a pause: a resumed run) an export."""
    folder = Layout(tmp_path / "results").job_records
    record(folder, "dataset_split", "C_n300", 4.0, T0 + 4)
    record(folder, "train", "C_pinn_n300_mlp3x64_seed0", 140.0, T0 + 150, rss="700.5")
    record(folder, "train", "C_ddnn_n300_mlp3x64_seed0", 120.0, T0 + 125, rss="NA")
    record(folder, "export_onnx", "C_ddnn_n300_mlp3x64_seed0", 3.0, T0 + 1000)
    return folder


def test_jobs_their_seconds_and_memory_are_read_from_the_records(run):
    jobs = read_records(run)
    assert [(j.rule, j.name) for j in jobs] == [("dataset_split", "C_n300"), ("train", "C_ddnn_n300_mlp3x64_seed0"),
                                               ("train", "C_pinn_n300_mlp3x64_seed0"),
                                               ("export_onnx", "C_ddnn_n300_mlp3x64_seed0")]  # by their start
    by = {j.name + j.rule: j for j in jobs}
    pinn = by["C_pinn_n300_mlp3x64_seed0train"]
    assert pinn.seconds == 140 and pinn.start == T0 + 10 and pinn.max_rss_mb == 700.5
    ddnn = by["C_ddnn_n300_mlp3x64_seed0train"]
    assert ddnn.max_rss_mb is None  # NA: measured nothing
    # at least one job running: 0-4, 5-150 (the trainings overlap), 997-1000; not the pause between
    assert running_s(jobs) == 4 + 145 + 3
    rules = per_rule(jobs)
    assert rules["train"] == {"jobs": 2, "seconds": 260, "longest": 140, "longest_job": "C_pinn_n300_mlp3x64_seed0",
                              "max_rss_mb": 700.5}
    assert set(rules) == {"dataset_split", "train", "export_onnx"}


def test_the_markdown_gives_the_span_the_running_time_and_one_row_per_rule(run):
    md = markdown(read_records(run))
    assert "4 jobs from " in md and "(span **0:16:40**)" in md  # T0 to T0 + 1000
    assert "at least one job running for **0:02:32** (2.5 min)" in md
    assert f"{(4 + 140 + 120 + 3) / 3600:.2f} h of job time" in md
    assert "| train | 2 | 260 | 140 | C_pinn_n300_mlp3x64_seed0 | 700 |" in md
    # rules sorted by their seconds, the largest first
    assert md.index("| train |") < md.index("| dataset_split |") < md.index("| export_onnx |")


def test_since_keeps_the_jobs_of_one_session_and_repeats_are_summed(run):
    assert [j.rule for j in read_records(run, since=T0 + 500)] == ["export_onnx"]
    record(run, "benchmark_speed", "speed", 2.5, T0 + 2000, rows=3)  # repeat(..., 3): three rows
    speed = read_records(run, since=T0 + 1500)
    assert len(speed) == 1 and speed[0].seconds == 7.5
    with pytest.raises(InvalidInputError, match="no job records that ended after"):
        read_records(run, since=T0 + 5000)


def test_a_missing_folder_or_a_bad_record_is_refused_naming_it(run, tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="nope: no job records"):
        read_records(tmp_path / "nope")
    assert main(["--results", str(tmp_path / "elsewhere")]) == 2
    assert "no job records" in capsys.readouterr().err
    bad = run / "train" / "C_itnn_n300_mlp3x64_seed0.tsv"
    bad.write_text("hello\n")
    with pytest.raises(InvalidInputError, match="C_itnn_n300_mlp3x64_seed0.tsv: not a Snakemake benchmark record"):
        read_records(run)


def test_the_program_prints_the_table_of_a_results_folder(run, capsys):
    assert main(["--results", str(run.parents[1])]) == 0
    assert "| train | 2 | 260 |" in capsys.readouterr().out
