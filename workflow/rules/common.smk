# Shared set-up: validate the configuration once, when the workflow loads, and derive the targets.
from snakemake.utils import min_version

min_version("9.0")

from surrogates.problems import problem_from_config, speed_problem_of, validate_config

# Fails at load, naming the key, on unknown keys, wrong types, empty ranges, unknown models, ...
config.update(validate_config(config))

PROBLEMS = list(config["problems"])
RESULTS = config["results_dir"].rstrip("/")


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


# ---------------------------------------------------------------- training targets
from surrogates.train import training_settings

SURROGATES = list(config["training"]["surrogates"])
MODELS = f"{RESULTS}/models"


def arch_of(problem):
    return training_settings(config, problem)["architecture"]


def model_dir(problem, surrogate, n, seed):
    return f"{MODELS}/{problem}/{surrogate}/n{n}/{arch_of(problem)}/seed{seed}"


def trained(problem=None, surrogate=None, filename="metrics.json"):
    """Every training target of the configured grid (optionally of one problem / surrogate)."""
    out = []
    for kind, problems in config["training"]["surrogates"].items():
        for p in problems:
            if (problem and p != problem) or (surrogate and kind != surrogate):
                continue
            for n in sizes(p):
                for seed in config["training"]["seeds"]:
                    out.append(f"{model_dir(p, kind, n, seed)}/{filename}")
    return out


def test_sidecars():
    return [f"{RESULTS}/datasets/{p}/test.json" for p in PROBLEMS]


wildcard_constraints:
    surrogate="|".join(["ddnn", "pinn", "pinn_seed", "itnn"]),
    arch=r"[A-Za-z0-9_]+",
    seed=r"[0-9]+",


# ---------------------------------------------------------------- speed and figures
FIG = f"{RESULTS}/figures"


def speed_wants_gpu():
    """Whether the timing job should hold the GPU resource. On a cluster the job runs on another node than
    this one, so the profile sets the resource there and the job script resolves `auto` where it runs."""
    d = config["speed"]["device"]
    if d == "auto":
        import torch

        return torch.cuda.is_available()
    return d == "cuda"


def speed_models():
    out = {}
    for k in config["speed"]["surrogates"]:
        p = speed_problem_of(config, k)  # an ITNN is trained on the step problem (D), timed on C's cells
        out[k] = f"{model_dir(p, k, max(sizes(p)), config['training']['seeds'][0])}/best_model.pth"
    return out


def figure_targets():
    out = [rules.figure_error_vs_size.output.png, rules.figure_training_curves.output.png]
    if config["training"]["surrogates"].get("itnn"):
        out.append(rules.figure_rollout_error.output.png)
    if "C" in PROBLEMS and any("C" in v for v in config["training"]["surrogates"].values()):
        out.append(rules.figure_trajectories.output.png)
    if "hh_m" in PROBLEMS and any("hh_m" in v for v in config["training"]["surrogates"].values()):
        out.append(rules.figure_hh_m.output.png)
    return out
