"""Give the trained models of a results folder written before checkpoints and records carried checksums of
their content their checksums, so that they stay usable (every consumer refuses a file without one):

    python -m surrogates.adopt results/            # every models/**/best_model.pth and metrics.json below it

Each file without its checksum is rewritten through the project's own writer (:func:`~surrogates.network.
save_checkpoint`, :func:`core.io.write_record`) with the same weights and fields, atomically. What it cannot
vouch for is left alone and named: a file that has a checksum that does not match (changed after it was
written), weights that are not finite, a file that is not a checkpoint of this project. Run it once, on a
folder you trust, with no run using it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from core.cli import Parser, run_main
from core.errors import InvalidInputError
from core.io import CONTENT_KEY, read_json, read_record, write_record

from .network import CHECKPOINT_FORMAT, MLP, load_checkpoint, save_checkpoint


def adopt_checkpoint(path: Path) -> bool:
    """Add ``weights_sha256`` to a checkpoint that lacks it; True when it was rewritten."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (damaged or not a checkpoint: named, left alone)
        raise InvalidInputError(f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "state_dict" not in ckpt:
        raise InvalidInputError(f"{path} is not a checkpoint of this project")
    if "weights_sha256" in ckpt:
        load_checkpoint(path)  # has one: it must match
        return False
    model = MLP(**ckpt["config"])
    save_checkpoint(model, path, state=ckpt["state_dict"], meta=ckpt.get("meta", {}))  # refuses NaN weights
    return True


def adopt_record(path: Path) -> bool:
    """Add ``content_sha256`` to a record (metrics.json) that lacks it; True when it was rewritten."""
    rec = read_json(path, "metrics file")
    if isinstance(rec, dict) and CONTENT_KEY in rec:
        read_record(path)  # has one: it must match
        return False
    if not isinstance(rec, dict):
        raise InvalidInputError(f"metrics file {path} is damaged (not a JSON mapping)")
    write_record(path, rec)
    return True


def adopt(root) -> tuple[list[Path], list[str]]:
    """Adopt every checkpoint and record below ``root``/models; returns (rewritten files, problems found)."""
    models = Path(root) / "models"
    if not models.is_dir():
        raise InvalidInputError(f"{root} holds no models/ folder: not a results folder of this project")
    done, problems = [], []
    for pattern, fn in (("best_model.pth", adopt_checkpoint), ("metrics.json", adopt_record)):
        for f in sorted(models.rglob(pattern)):
            try:
                if fn(f):
                    done.append(f)
            except InvalidInputError as exc:
                problems.append(str(exc))
    return done, problems


def main(argv=None) -> int:
    ap = Parser(prog="python -m surrogates.adopt", description=__doc__)
    ap.add_argument("results", type=Path, help="a results folder (results_dir)")
    a = ap.parse_args(argv)

    def body():
        done, problems = adopt(a.results)
        print(f"{len(done)} file(s) given their checksums below {a.results}")
        for p in problems:
            print(f"left alone: {p}", file=sys.stderr)
        return 1 if problems else 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
