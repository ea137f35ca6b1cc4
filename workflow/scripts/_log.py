"""Send a rule script's output to the rule's log file."""
import sys


def to_log(snakemake):
    if snakemake.log:
        fh = open(snakemake.log[0], "w", buffering=1)
        sys.stdout = sys.stderr = fh
