"""Send a rule script's output to the rule's log file, and a failure's reason where Snakemake shows it.

An uncaught error is written in full to the log and, as one line (``error in rule NAME: ...``), to the
job's own stderr, which Snakemake prints beside its "Error in rule" summary: the reason is seen even when
the log cannot be written (a full disk leaves it empty) or is not read."""
import sys
import traceback


def to_log(snakemake):
    rule = getattr(snakemake, "rule", "?")
    if snakemake.log:
        try:
            fh = open(snakemake.log[0], "w", buffering=1)
            sys.stdout = sys.stderr = fh
        except OSError as exc:  # the job still runs; its reason for failing goes to stderr below
            print(f"rule {rule}: cannot write its log {snakemake.log[0]}: {exc.strerror or exc}", file=sys.__stderr__)

    def report(kind, exc, tb):
        try:
            from core.cli import describe

            line = f"error in rule {rule}: {describe(exc)}"
        except Exception:  # noqa: BLE001  (the reason must come out, whatever failed)
            line = f"error in rule {rule}: {kind.__name__}: {exc}"
        try:
            sys.__stderr__.write(line + "\n")
            sys.__stderr__.flush()
        except Exception:  # noqa: BLE001
            pass
        if sys.stderr is not sys.__stderr__:
            try:
                traceback.print_exception(kind, exc, tb, file=sys.stderr)
                print(line, file=sys.stderr, flush=True)
            except Exception:  # noqa: BLE001  (a full disk: the log cannot take it)
                pass

    sys.excepthook = report
