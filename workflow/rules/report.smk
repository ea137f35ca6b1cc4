# The HTML report:  snakemake --report results/report.html
# Every figure and table is registered with report(..., caption=...) in its rule; the front page is
# workflow/report/workflow.rst and results/provenance.json carries machine, versions and configuration.


report: "../report/workflow.rst"
