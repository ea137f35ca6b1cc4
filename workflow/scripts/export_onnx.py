"""Rule export_onnx: export, then compare onnxruntime with eager torch on the validation inputs."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir)))
from _log import to_log  # noqa: E402

to_log(snakemake)
import onnxruntime as ort  # noqa: E402

from benchmarks.inference import Runner, check_against_torch, export_onnx  # noqa: E402
from surrogates.io import load_dataset, write_json  # noqa: E402
from surrogates.network import load_checkpoint  # noqa: E402

net, _ = load_checkpoint(snakemake.input.model)
path = export_onnx(net, snakemake.output.onnx)
sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
runner = Runner(lambda x: x.astype("float32"), lambda x: sess.run(["y"], {"x": x})[0], lambda y: y)
X = load_dataset(snakemake.input.val)[0]["X"]
err = check_against_torch(net, runner, X, "fp32", "onnxruntime")
write_json(snakemake.output.check, {"max_rel_diff_vs_torch": err, "rows": int(len(X)), "onnxruntime": ort.__version__})
print(f"onnxruntime vs torch: {err:.3g} of the output range on {len(X)} validation rows")
