"""benchmarks.gpu_share: K training processes started together (the protocol, on the CPU)."""
import shutil

import pytest

from benchmarks import gpu_share


def test_processes_start_their_timed_steps_together_and_the_rate_is_over_the_whole_span():
    r = gpu_share.run_together(2, 60, "cpu", "auto")
    assert r["processes"] == 2 and len(r["per_process"]) == 2 and all(x > 0 for x in r["per_process"])
    # the aggregate is over the span from the first start to the last end: never above the sum of the rates
    assert 0 < r["network_it_per_s"] <= sum(r["per_process"]) * 1.0001
    assert r["span_s"] >= 60 / max(r["per_process"]) * 0.999


def test_a_failing_worker_is_reported_with_its_error_and_the_sweep_goes_on():
    rows = gpu_share.sweep([1], 20, "cpu", "no-such-engine", mps="off")
    assert len(rows) == 1 and "failed" in rows[0] and "no-such-engine" in rows[0]["failed"]
    assert "MPS off, 1 process(es): RuntimeError" in gpu_share.describe(rows)


@pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is not None, reason="this machine has MPS")
def test_without_mps_on_the_machine_the_mps_rows_say_why():
    rows = gpu_share.sweep([1], 20, "cpu", "auto", mps="on")
    assert rows == [{"mps": "on", "skipped": "no nvidia-cuda-mps-control on PATH"}]


def test_describe_gives_the_ratio_to_one_process_alone():
    rows = [{"mps": "off", "processes": 1, "network_it_per_s": 1000.0, "per_process": [1000.0]},
            {"mps": "off", "processes": 4, "network_it_per_s": 1500.0, "per_process": [370.0, 380.0, 375.0, 376.0]}]
    text = gpu_share.describe(rows)
    assert "4 process(es): 1500 network-it/s together (1.50x one alone), each 370-380 it/s" in text


def test_an_mps_daemon_whose_clients_fail_is_stopped_again_and_the_workflow_runs_without(tmp_path, monkeypatch):
    """A stand-in nvidia-cuda-mps-control that starts (exit 0) and records what it is told: on this CPU machine
    the CUDA client under it fails, so the daemon is told to quit and no MPS variable is exported."""
    import subprocess
    import sys

    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "nvidia-cuda-mps-control"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n"
                    f"if [ $# -gt 0 ]; then echo \"$*\" >> {calls}; [ -d \"$CUDA_MPS_PIPE_DIRECTORY\" ] || exit 3\n"
                    f"else echo \"stdin: $(cat)\" >> {calls}; fi\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    env, note = gpu_share.mps_for_workflow()
    assert env is None and note.startswith("MPS started but a CUDA client failed under it (") and note.endswith("; stopped")
    assert calls.read_text().splitlines() == ["-d", "stdin: quit"]
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_share", "--daemon", "start"], capture_output=True,
                         text=True, cwd=gpu_share.ROOT)
    assert res.returncode == 0 and res.stdout == "" and "MPS: off: MPS started but a CUDA client failed" in res.stderr


def test_a_worker_that_is_not_ready_in_time_is_killed_not_waited_for():
    import time

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="a worker said nothing more within 1 s"):
        gpu_share.run_together(1, 10, "cpu", "auto", timeout=1.0)  # importing torch alone takes longer
    assert time.monotonic() - t0 < 10


def test_in_process_times_the_networks_one_after_the_other_and_side_by_side():
    r = gpu_share.in_process(2, 30, "cpu")
    assert set(r) == {"sequential", "side_by_side"} and all(v > 0 for v in r.values())
