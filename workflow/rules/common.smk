# Shared set-up: validate the configuration once, when the workflow loads, and derive the targets.
from snakemake.utils import min_version

min_version("9.0")

from surrogates.problems import problem_from_config, validate_config

# Fails at load, naming the key, on unknown keys, wrong types, empty ranges, unknown models, ...
config.update(validate_config(config))

PROBLEMS = list(config["problems"])
RESULTS = "results"


wildcard_constraints:
    problem="|".join(PROBLEMS),
    n=r"[1-9][0-9]*",


def sizes(problem):
    return problem_from_config(problem, config).sizes


def dataset_targets():
    out = []
    for p in PROBLEMS:
        out.append(f"{RESULTS}/datasets/{p}/test.npz")
        out += [f"{RESULTS}/datasets/{p}/n{n}/train.npz" for n in sizes(p)]
    return out
