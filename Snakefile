# The surrogate benchmark pipeline. This file only includes the stages and defines `rule all`;
# each stage lives in workflow/rules/<stage>.smk and calls package functions through short scripts.
#   snakemake --cores all                       the configured grid (config/config.yaml)
#   snakemake --cores all --configfile config/quick.yaml   a small, fast preset
configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        dataset_targets(),
        rules.accuracy_table.output,
        rules.transfer_table.output if transfers() else [],
        trained(filename="onnx_check.json"),
        rules.speedup_table.output,
        rules.benchmark_solver.output,
        rules.figure_speed.output,
        figure_targets(),
        rules.provenance.output,
    default_target: True
