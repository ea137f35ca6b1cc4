"""Start a program with an interpreter that may lack the project's packages (``make gpu-check`` runs the GPU
machine's own Python): ``python -m benchmarks.launch benchmarks.gpu_check ARGS...``. A missing package is
one line naming the module and how to get it, instead of an import traceback. Imports only the standard
library before the program."""
from __future__ import annotations

import importlib
import sys

PIP_NAMES = {"yaml": "pyyaml", "sklearn": "scikit-learn", "cv2": "opencv-python"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m benchmarks.launch MODULE [ARGS...]", file=sys.stderr)
        return 2
    name, args = argv[0], argv[1:]
    try:
        program = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or str(exc)).split(".")[0]
        print(f"error: {name} needs the Python module {missing!r}, which this Python ({sys.executable}) lacks: "
              f"install it (pip install {PIP_NAMES.get(missing, missing)}), put its wheel in .whl/ (make wheels), "
              "or set GPU_PYTHON to an interpreter that has the project's packages", file=sys.stderr)
        return 2
    return program.main(args)


if __name__ == "__main__":
    sys.exit(main())
