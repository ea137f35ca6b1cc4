"""benchmarks.training_speed: the upstream trainer's row (run from a checkout in a child process) and the table."""
import json
import textwrap

import pytest

from benchmarks import training_speed as ts
from core.errors import InvalidInputError

FAKE_TRAINER = textwrap.dedent('''
    import json, math, os
    import torch

    class Trainer:  # the upstream constructor's signature; records what it was given
        def __init__(self, n_epochs, model, device="cpu", batch_size=1000, target=[], data=[], patience=300,
                     tolerance=1e-3, val_steps=None, print_steps=5000, validation=None, optimizer=None):
            self.model, self.opt, self.batch = model, optimizer, batch_size
            self.X, self.Y = data, target
            self.n_it = int(n_epochs * math.ceil(len(data) * (1 - validation) / batch_size))
            shapes = [list(p.shape) for p in model.parameters()]
            with open(os.environ["FAKE_UPSTREAM_LOG"], "w") as f:
                json.dump({"shapes": shapes, "batch": batch_size, "rows": len(data), "device": device,
                           "n_it": self.n_it, "module": __file__}, f)

        def train(self):
            if os.environ.get("FAKE_UPSTREAM_FAIL"):
                raise RuntimeError("upstream broke")
            for i in range(self.n_it):
                self.opt.zero_grad()
                a = (i * self.batch) % (len(self.X) - self.batch)
                loss = torch.mean((self.model(self.X[a:a + self.batch]) - self.Y[a:a + self.batch]) ** 2)
                loss.backward()
                self.opt.step()
            return self.model, {}
''')


@pytest.fixture()
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "Pinn-Torch"
    (root / "fisiocomPinn").mkdir(parents=True)
    (root / "fisiocomPinn" / "__init__.py").write_text("")
    (root / "fisiocomPinn" / "Trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("FAKE_UPSTREAM_LOG", str(tmp_path / "seen.json"))
    return root


def test_the_upstream_trainer_runs_from_its_checkout_on_the_same_network_and_batch(checkout, tmp_path):
    """The child imports the checkout's fisiocomPinn (not this project's layer of the same name) and trains the
    configured 3x64 net of problem C at the given batch, about the asked number of steps."""
    rate = ts.upstream_rate(str(checkout), [], "C", [("SiLU", 64), ("Sigmoid", 64), ("Sigmoid", 64)], 1024, 150,
                            1e-3, "cpu")
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert rate > 0 and seen["module"] == str(checkout / "fisiocomPinn" / "Trainer.py")
    assert seen["shapes"] == [[64, 4], [64], [64, 64], [64], [64, 64], [64], [2, 64], [2]]
    assert seen["batch"] == 1024 and seen["rows"] == 100_000 and seen["device"] == "cpu"
    assert 150 <= seen["n_it"] < 150 + 97  # whole passes of 97 batches (99,000 training rows)


def test_an_upstream_that_is_missing_or_fails_is_a_clear_error(checkout, tmp_path, monkeypatch):
    with pytest.raises(InvalidInputError, match="no fisiocomPinn/Trainer.py there"):
        ts.upstream_rate(str(tmp_path), [], "C", [("Tanh", 8)], 64, 10, 1e-3, "cpu")
    monkeypatch.setenv("FAKE_UPSTREAM_FAIL", "1")
    with pytest.raises(InvalidInputError, match="(?s)upstream trainer from .* failed: .*upstream broke"):
        ts.upstream_rate(str(checkout), [], "C", [("Tanh", 8)], 64, 10, 1e-3, "cpu")


def test_the_table_has_a_ratio_to_upstream_only_where_it_was_measured():
    info = {"cpu": "test CPU"}
    rows = [{"problem": "C", "network": "mlp3x64", "batch": 1024, "variant": "reference (plain eager loop)",
             "it_per_s": 500.0, "vs_reference": 1.0}]
    plain = ts.table(rows, {}, info, "cpu", 100, 1)
    assert "x upstream" not in plain and "| 500 | 1.00 |" in plain
    rows = [{**rows[0], "vs_upstream": 1.25}, {**rows[0], "variant": ts.UPSTREAM, "it_per_s": 400.0,
                                               "vs_reference": 0.8, "vs_upstream": 1.0}]
    text = ts.table(rows, {}, info, "cpu", 100, 1)
    assert "| x reference | x upstream |" in text and "| 500 | 1.00 | 1.25 |" in text and "| 400 | 0.80 | 1.00 |" in text


def test_a_variant_that_fails_is_reported_and_the_others_are_measured(monkeypatch):
    """A variant that raises (e.g. a kernel new to the GPU at hand) is tried once, reported as failed in the
    table, and every other variant keeps its figures."""
    from surrogates.config import load_config

    calls = []

    def fake_rate(p, hidden, X, Y, batch, iters, lr, device, engine, physics=None, capture="auto"):
        calls.append(engine)
        if engine == "autograd":
            raise RuntimeError("no such kernel")
        return 100.0 if engine == "fused" else 50.0

    monkeypatch.setattr(ts, "reference_loop", lambda *a: 50.0)
    monkeypatch.setattr(ts, "trainer_rate", fake_rate)
    monkeypatch.setattr(ts, "cohort_rate", lambda *a, **k: 120.0)
    monkeypatch.setattr(ts, "row_costs", lambda *a, **k: {})
    results, _ = ts.measure(load_config(), 10, 2, "cpu")
    by = {(r["problem"], r["variant"]): r for r in results}
    # C: the trainer's and the PINN's autograd variants, D: the trainer's; none tried again in the second round
    assert calls.count("autograd") == 3
    by = {r["variant"]: r for r in results if r["problem"] == "D"}
    assert by["trainer, fused engine"]["it_per_s"] == 100.0 and by["trainer, fused engine"]["vs_reference"] == 2.0
    text = ts.table(results, {}, {"cpu": "test CPU"}, "cpu", 10, 2)
    assert "| trainer, autograd path | failed | failed |" in text and "| trainer, fused engine | 100 | 2.00 |" in text


def test_reference_writes_the_tracked_table_that_the_docs_are_generated_from(monkeypatch, tmp_path):
    """--reference writes benchmarks/reference/training_speed.md, which `benchmarks.docs` puts into the docs."""
    from benchmarks import docs

    rows = [{"problem": "C", "network": "mlp3x64", "batch": 1024, "variant": "reference (plain eager loop)",
             "it_per_s": 512.0, "vs_reference": 1.0}]
    monkeypatch.setattr(ts, "measure", lambda *a, **k: (rows, {}))
    monkeypatch.setattr(ts, "REFERENCE", tmp_path / "reference" / "training_speed.md")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"results_dir: {tmp_path / 'results'}\n")
    assert ts.main(["--reference", "--iterations", "1", "--rounds", "1", "--device", "cpu", "--config", str(cfg)]) == 0
    text = (tmp_path / "reference" / "training_speed.md").read_text()
    assert "| 512 | 1.00 |" in text
    assert docs.training(tmp_path / "reference") == text.rstrip("\n") + "\n"
