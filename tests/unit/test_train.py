"""Training entry point: tiny runs on generated data, resume, vma placeholder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.data.timeseries import mackey_glass
from models.evaluate import validation_view
from models.train import is_spike, main
from tests.conftest import tiny_vma_training

TINY = [
    "--hidden", "8", "--key-dim", "4", "--value-dim", "4", "--capacity", "8",
    "--seq-len", "8", "--burn-in", "4", "--free-steps", "2", "--free-ramp", "1",
    "--batch-size", "8", "--steps-per-epoch", "6", "--lr", "1e-2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mg.npy"
    np.save(path, mackey_glass(400)[:, None])
    return path


def run(tmp_path: Path, data: Path, name: str, epochs: int, *extra: str) -> dict:
    argv = ["memnet", "--data", str(data), "--name", name, "--epochs", str(epochs)]
    argv += ["--out", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), *TINY, *extra]
    assert main(argv) == 0
    return json.loads((tmp_path / "runs" / name / "last.json").read_text())


def test_tiny_run_writes_loadable_checkpoint(tmp_path: Path, data_file: Path) -> None:
    meta = run(tmp_path, data_file, "tiny", 4)
    losses = [h["train"] for h in meta["history"]]
    assert losses[-1] < losses[0], losses
    model, card = load_checkpoint("tiny", directory=tmp_path / "ck")
    assert card["training"]["command"].startswith("memserve train memnet --data")
    assert card["data"]["train"] == 320 and card["data"]["test"] == 80
    assert card["config"]["hidden_dim"] == 8
    y, _ = model(torch.zeros(1, 3, 1))
    assert torch.isfinite(y).all()


def test_resume_continues_and_matches_uninterrupted(tmp_path: Path, data_file: Path) -> None:
    # A wall-time budget this small stops the run after its first epoch, like a crash.
    first = run(tmp_path, data_file, "a", 3, "--max-minutes", "1e-6")
    assert [h["epoch"] for h in first["history"]] == [0]
    meta = run(tmp_path, data_file, "a", 3, "--resume")
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]
    full = run(tmp_path, data_file, "b", 3)
    # Same seed, per-epoch sampling and restored Adam moments: the same run.
    np.testing.assert_allclose(
        [h["train"] for h in meta["history"]], [h["train"] for h in full["history"]], rtol=1e-4
    )
    a, _ = load_checkpoint("a", directory=tmp_path / "ck")
    b, _ = load_checkpoint("b", directory=tmp_path / "ck")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


def test_spike_guard() -> None:
    recent = [1.0] * 20
    assert not is_spike(5.0, recent, 10.0)
    assert is_spike(11.0, recent, 10.0)
    assert is_spike(float("nan"), recent, 10.0) and is_spike(float("inf"), [], 0.0)
    assert not is_spike(1e7, recent, 0.0)  # disabled
    assert not is_spike(1e7, [1.0] * 3, 10.0)  # too few losses for a median yet


def test_fine_tune_never_ends_worse_on_val(tmp_path: Path, data_file: Path) -> None:
    run(tmp_path, data_file, "base", 3)
    # A learning rate this large wrecks the model; the starting weights must survive.
    meta = run(tmp_path, data_file, "ft", 2, "--init", "base", "--lr", "5", "--spike-factor", "0")
    assert meta["best_val"] <= meta["init_val"]
    base, _ = load_checkpoint("base", directory=tmp_path / "ck")
    ft, card = load_checkpoint("ft", directory=tmp_path / "ck")
    assert card["training"]["init"] == "base"
    if meta["best_epoch"] < 0:
        for pa, pb in zip(base.state_dict().values(), ft.state_dict().values(), strict=True):
            torch.testing.assert_close(pa, pb)


def test_validation_view_is_the_end_of_train() -> None:
    series = np.arange(100, dtype=np.float32)[:, None]
    part, n_fit = validation_view(series, 80, 0.1)
    assert n_fit == 72 and len(part) == 80 and part[-1, 0] == 79


def test_train_vma_writes_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    common = ["--out", str(tmp_path / "ck"), *tiny_vma_training(tmp_path)]
    assert main(["vma", "--steps", "4", *common]) == 0
    _, card = load_checkpoint("vma-omniglot", tmp_path / "ck")
    assert card["kind"] == "vma" and card["config"]["channels"] == 4
    assert card["training"]["steps"] in (2, 4) and len(card["training"]["history"]) == 2
    assert np.isfinite(card["training"]["best_val_nll"])
    assert main(["vma", "--steps", "6", "--resume", *common]) == 0
    meta = json.loads((tmp_path / "runs" / "vma-omniglot" / "last.json").read_text())
    assert meta["step"] == 6 and [h["step"] for h in meta["history"]] == [2, 4, 6]
    wide = ["--init", "vma-omniglot", "--init-dir", str(tmp_path / "ck"), "--widen", "6", "--name", "wide"]
    assert main(["vma", "--steps", "2", *common, *wide]) == 0
    _, card = load_checkpoint("wide", tmp_path / "ck")
    assert card["config"]["channels"] == 6 and card["training"]["widen"] == 6


TINY_UNIVERSAL = [
    "--hidden", "8", "--key-dim", "4", "--value-dim", "4", "--capacity", "8", "--batch-size", "4",
    "--steps-per-epoch", "3", "--lr", "1e-2", "--residual", "--predict-scale", "--scale-window", "16",
    "--free-steps", "3", "--branch-every", "8", "--free-ramp", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def universal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the generated corpus: a universal checkpoint in miniature."""
    out = tmp_path_factory.mktemp("universal")
    argv = ["memnet", "--data", "corpus", "--corpus-length", "24", "--name", "tiny-universal",
            "--epochs", "2", "--out", str(out), "--runs", str(out / "runs"), "--no-eval",
            *TINY_UNIVERSAL]  # fmt: skip
    assert main(argv) == 0
    return out


def test_corpus_training_writes_a_session_scaled_card(universal: Path) -> None:
    model, card = load_checkpoint("tiny-universal", universal)
    assert card["data"]["source"] == "corpus" and card["normalization"]["units"] == "session"
    gens = card["data"]["generators"]
    assert gens and json.dumps(gens)  # every family and its ranges, JSON-clean
    assert card["config"]["scale_window"] == 16 and card["config"]["residual"] is True
    with torch.inference_mode():
        y, std, _ = model.forward_dist(torch.full((1, 5, 1), 3e5))
    assert torch.isfinite(y).all() and (std > 0).all()


def _csv_with_dates_and_gaps(path: Path, n: int = 240, dims: int = 1) -> None:
    t = np.arange(n)
    cols = [100 + 20 * np.sin(2 * np.pi * t / 12 + k) + 0.5 * t for k in range(dims)]
    lines = ["date," + ",".join(f"v{k}" for k in range(dims))]
    for i in range(n):
        cells = ["" if (i in (50, 51, 130) and k == 0) else f"{c[i]:.4f}" for k, c in enumerate(cols)]
        lines.append(f"2000-{i // 12 + 1:03d}-{i % 12 + 1:02d}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def test_fine_tune_from_the_universal_on_a_csv_with_dates_and_gaps(tmp_path: Path, universal: Path) -> None:
    csv = tmp_path / "monthly.csv"
    _csv_with_dates_and_gaps(csv)
    argv = ["memnet", "--data", str(csv), "--init", str(universal / "tiny-universal.json"),
            "--fill", "linear", "--name", "mine", "--epochs", "2", "--out", str(tmp_path / "ck"),
            "--runs", str(tmp_path / "runs"),
            "--batch-size", "4", "--steps-per-epoch", "3", "--train-frac", "0.7", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    _, card = load_checkpoint("mine", tmp_path / "ck")
    assert card["data"]["columns"] == ["v0"] and card["data"]["ignored_columns"] == ["date"]
    assert card["data"]["filled"] == 3 and card["config"]["scale_window"] == 16
    metrics = card["metrics"]  # `memserve train` evaluates into the card at the end
    assert {"model", "persistence", "ar20"} <= set(metrics["one_step"]) and "10" in metrics["horizons"]
    assert card["training"]["init_from"]["command"].startswith("memserve train memnet --data corpus")


def test_a_multivariate_csv_trains_a_model_of_its_dimension(tmp_path: Path) -> None:
    csv = tmp_path / "two.csv"
    _csv_with_dates_and_gaps(csv, dims=2)
    argv = ["memnet", "--data", str(csv), "--fill", "previous", "--name", "two", "--epochs", "1",
            "--out", str(tmp_path / "ck"), "--runs", str(tmp_path / "runs"), *TINY]  # fmt: skip
    assert main(argv) == 0
    model, card = load_checkpoint("two", tmp_path / "ck")
    assert model.config.input_dim == 2 and card["data"]["columns"] == ["v0", "v1"]


def test_a_gap_without_fill_is_refused_naming_its_row(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "gappy.csv"
    _csv_with_dates_and_gaps(csv)
    argv = ["memnet", "--data", str(csv), "--name", "x", "--out", str(tmp_path), "--runs", str(tmp_path)]
    assert main(argv) == 2
    assert "row 52, column 'v0' is missing a value" in capsys.readouterr().err


def test_the_class_term_is_minus_log_of_the_served_posterior_scores() -> None:
    """The trainer's class term trains exactly what `classify` serves: -log p(c|x)."""
    from models.train_vma import class_loss
    from models.vma import VMA, VMAConfig

    torch.manual_seed(0)
    model = VMA(VMAConfig(channels=8, hidden_dim=32, match_dim=16, z_dim=4)).eval()
    x = (torch.rand(6, 1, 28, 28) > 0.7).float()
    m = (torch.rand(1, 4, 1, 28, 28) > 0.7).float()
    memory_labels, query_labels = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 2, 1, 0])
    loss = class_loss(model, x, m, (query_labels, memory_labels), 3)
    h_m = model.memory_embedding(m[0]).unsqueeze(0)
    scores, _ = model.classify(x, h_m, None, memory_labels[None], 3)
    want = -scores.gather(1, query_labels[:, None]).log().mean()
    assert torch.allclose(loss.detach(), want, atol=1e-5)
