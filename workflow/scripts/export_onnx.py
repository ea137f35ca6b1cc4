"""Rule export_onnx: export, then compare onnxruntime with eager torch on the validation inputs."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import onnxruntime as ort  # noqa: E402

from core.io import load_dataset, write_json  # noqa: E402
from inference.backends import Runner, check_against_torch  # noqa: E402
from inference.export import export_onnx  # noqa: E402
from surrogates.datasets import expected_provenance  # noqa: E402
from surrogates.network import load_checkpoint  # noqa: E402
from surrogates.scoring import expected_model  # noqa: E402
from surrogates.config import validate_config  # noqa: E402

study = validate_config(snakemake.config)  # the workflow's study, from the configuration it validated

w = snakemake.wildcards
# the checkpoint must be the model this folder names, and the validation set that problem's
net, _ = load_checkpoint(snakemake.input.model,
                         expect=expected_model(study, w.problem, w.surrogate, int(w.n), int(w.seed), w.arch))
X = load_dataset(snakemake.input.val, expect=expected_provenance(study.problem(w.problem), study, "val",
                                                                  int(w.n)))[0]["X"]
path = export_onnx(net, snakemake.output.onnx)
sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
runner = Runner(lambda x: x.astype("float32"), lambda x: sess.run(["y"], {"x": x})[0], lambda y: y)
err = check_against_torch(net, runner, X, "fp32", "onnxruntime")
write_json(snakemake.output.check, {"max_rel_diff_vs_torch": err, "rows": int(len(X)), "onnxruntime": ort.__version__})
print(f"onnxruntime vs torch: {err:.3g} of the output range on {len(X)} validation rows")
