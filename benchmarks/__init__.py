"""Benchmark programs and reporting, built on the inference library (:mod:`inference`).

Programs (``python -m benchmarks.NAME``; each reads the configuration, ``--config`` presets merged over
``config/config.yaml``, and writes below its ``results_dir``): ``solver_throughput``, ``speedup``,
``cpu_backends``, ``surrogate_accuracy``, ``data_size``, ``training_speed``, ``gpu_check``. Reporting: ``tables``,
``figures``, ``reference`` (a run's tables into a tracked folder),
``runlog`` (a Snakemake run's job times from its `benchmark:` records).
These are programs, not tests: they warm up, repeat, and write the machine beside every number.
"""
