# Shared set-up: validate the configuration once, when the workflow loads, resolve results_dir, and derive
# the targets. Paths come from core.layout (the one definition of the run layout); nothing here imports
# torch, so parsing the workflow stays fast.
from snakemake.utils import min_version

min_version("9.0")

from core.layout import Layout, RUN_FILES
from core.lock import hold_for_process
from core.machine import cuda_device_count
from surrogates.config import validate_config
from surrogates.guard import check_finished_inputs
from surrogates.problems import SURROGATE_KINDS
from surrogates.transfer import transfer_grid

# Fails at load, naming the key, on unknown keys, wrong types, empty ranges, unknown models, K values the
# time grid cannot produce, sizes a design cannot provide, ... The study (surrogates.study.Study) is what the
# rules read; Snakemake's own config becomes the validated dictionary (its defaults filled in), which the
# scripts turn into the study again (each: validate_config(snakemake.config)).
STUDY = validate_config(config)
config.update(STUDY.as_dict())

LAYOUT = Layout(STUDY.results_dir)  # resolved to a real absolute path: one folder, however it is spelt
RESULTS = str(LAYOUT.root)
PROBLEMS = list(STUDY.problems)
SURROGATES = list(SURROGATE_KINDS)


onstart:
    # one run per results folder: a second run on it (from anywhere, however spelt) refuses at once
    if workflow.is_main_process:
        hold_for_process(LAYOUT.root, ".run.lock", "results_dir")


wildcard_constraints:
    problem="|".join(PROBLEMS),
    n=r"[1-9][0-9]*",
    surrogate="|".join(SURROGATES),
    arch=r"[A-Za-z0-9_]+",
    seed=r"[0-9]+",
    target="|".join(PROBLEMS),


def path(p):
    return str(p)


def job_record(rule, name):
    """The rule's ``benchmark:`` file for one job (its seconds, peak memory, CPU seconds; benchmarks.runlog)."""
    return path(LAYOUT.job_record(rule, name))


def split_pattern(part):
    return path(LAYOUT.split("{problem}", "{n}", part))


def run_pattern(kind):
    return path(LAYOUT.run_file(kind, "{problem}", "{surrogate}", "{n}", "{arch}", "{seed}"))


def sidecar(dataset):
    return path(LAYOUT.sidecar(dataset))


def sizes(problem):
    return STUDY.problem(problem).sizes


def dataset_targets():
    out = []
    for p in PROBLEMS:
        out.append(path(LAYOUT.test(p)))
        out += [path(LAYOUT.split(p, n, "train")) for n in sizes(p)]
    return out


# ---------------------------------------------------------------- training targets
def arch_of(problem):
    return STUDY.training(problem).architecture


def model_file(problem, surrogate, n, seed, kind="metrics"):
    return path(LAYOUT.run_file(kind, problem, surrogate, n, arch_of(problem), seed))


def trained(problem=None, surrogate=None, filename="metrics.json"):
    """Every training target of the configured grid (optionally of one problem / surrogate)."""
    kind = {v: k for k, v in RUN_FILES.items()}[filename]
    return [path(LAYOUT.run_file(kind, p, s, n, a, seed)) for p, s, n, a, seed in STUDY.training_grid()
            if (problem is None or p == problem) and (surrogate is None or s == surrogate)]


def ensembles():
    """The metrics of every ensemble of the configured grid (training.ensemble, with >= 2 seeds)."""
    return [path(LAYOUT.ensemble_file(p, s, n, a)) for p, s, n, a, _ in STUDY.ensemble_grid()]


def ensemble_members(w, kind="model"):
    """The files of one kind (best models, metrics) of the seeds an ensemble averages."""
    return [path(LAYOUT.run_file(kind, w.problem, w.surrogate, w.n, w.arch, seed)) for seed in STUDY.seeds]


def transfers():
    """The metrics of every ITNN rolled out over another trajectory problem it covers (surrogates.transfer)."""
    return [path(LAYOUT.transfer_file(p, s, n, a, t)) for p, s, n, a, t in transfer_grid(STUDY)]


def transfer_members(w):
    """The best models of the seeds of the ITNN configuration a transfer rolls out."""
    return [path(LAYOUT.run_file("model", w.problem, "itnn", w.n, w.arch, seed)) for seed in STUDY.seeds]


def test_sidecars():
    return [sidecar(LAYOUT.test(p)) for p in PROBLEMS]


# ---------------------------------------------------------------- speed and figures
def trains_on_gpu(problem):
    """Whether this problem's training jobs will use the GPU (training.device, `auto` resolved here)."""
    d = STUDY.training(problem).device
    return d == "cuda" or (d == "auto" and cuda_device_count() > 0)


def speed_wants_gpu():
    """Whether the timing job should hold the GPU resource. On a cluster the job runs on another node than
    this one, so the profile sets the resource there and the job script resolves `auto` where it runs."""
    d = STUDY.speed.device
    return cuda_device_count() > 0 if d == "auto" else d == "cuda"


def speed_model(kind):
    """(problem, n, seed) of the `kind` surrogate the speed benchmark times: largest n, first seed."""
    p, n, seed, _ = STUDY.speed_model(kind)  # an ITNN is trained on the step problem (D), timed on C's cells
    return p, n, seed


def speed_models():
    """The benchmark's inputs: per timed kind its network (input `KIND`), and per seed ensemble of
    speed.ensembles its members' networks (`ensemble_KIND`, a list) and its test score (`ensemble_KIND_score`:
    the MAE of its row)."""
    out = {}
    for k in STUDY.speed.surrogates:
        p, n, seed = speed_model(k)
        out[k] = model_file(p, k, n, seed, "model")
    for k, p, n, arch, seeds in STUDY.speed_ensembles():
        out[f"ensemble_{k}"] = [path(LAYOUT.run_file("model", p, k, n, arch, s)) for s in seeds]
        out[f"ensemble_{k}_score"] = path(LAYOUT.ensemble_file(p, k, n, arch))
    return out


def figure(name, ext="png"):
    return path(LAYOUT.figure(name, ext))


def figure_targets():
    trains = STUDY.surrogates
    out = [rules.figure_error_vs_size.output.png, rules.figure_training_curves.output.png,
           rules.figure_solver_throughput.output.png]
    if compared_with_ddnn():
        out.append(rules.figure_pinn_vs_ddnn.output.png)
    if trains.get("itnn"):
        out.append(rules.figure_rollout_error.output.png)
    out += [figure(f"trajectories_{p}") for p in trajectory_figures()]  # one per trajectory problem drawn over
    if "hh_m" in PROBLEMS and any("hh_m" in v for v in trains.values()):
        out.append(rules.figure_hh_m.output.png)
    return out
