"""`memserve export`: the graphs it writes, their card entries, and that they are repeatable."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.cli import main as cli_main
from models.checkpoint import load_checkpoint, read_card
from models.export import StaleExport, feat_names, graph_paths
from models.memnet import STATS_ROWS
from tests.conftest import REPO

SHIPPED = REPO / "checkpoints"
SERVED = ["memnet-mackey-glass", "memnet-santafe", "memnet-universal", "vma-omniglot"]
GRAPHS = {
    "memnet": {"step", "steps"},
    "vma": {
        "memory_embedding",
        "query_embedding",
        "query_embedding_int8",
        "z_prior",
        "z_posterior",
        "decoder",
        "log_weight",
    },
}


def _copy(name: str, dst: Path) -> None:
    for suffix in (".json", ".safetensors"):
        shutil.copy(SHIPPED / f"{name}{suffix}", dst / f"{name}{suffix}")


@pytest.mark.parametrize("name", SERVED)
def test_shipped_graphs_are_recorded_and_match_their_weights(name: str) -> None:
    card = read_card(name, SHIPPED)
    paths = graph_paths(card, SHIPPED)  # raises unless present, unaltered and from these weights
    assert set(paths) == GRAPHS[card["kind"]]
    for graph, info in card["onnx"]["graphs"].items():
        assert paths[graph].read_bytes()[:2] and info["bytes"] == paths[graph].stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("name", SERVED)
def test_export_is_repeatable_and_gives_the_shipped_graphs(name: str, tmp_path: Path) -> None:
    """Two exports of the same weights are byte-identical, and equal to what is shipped
    when the same torch exported them (the card records which)."""
    hashes = []
    for run in ("a", "b"):
        d = tmp_path / run
        d.mkdir()
        _copy(name, d)
        assert cli_main(["export", "--model", name, "--dir", str(d)]) == 0
        graphs = read_card(name, d)["onnx"]["graphs"]
        for info in graphs.values():
            assert hashlib.sha256((d / info["file"]).read_bytes()).hexdigest() == info["sha256"]
        hashes.append({g: info["sha256"] for g, info in graphs.items()})
    assert hashes[0] == hashes[1]
    shipped = read_card(name, SHIPPED)["onnx"]
    if shipped["torch"] == torch.__version__.split("+")[0]:
        assert hashes[0] == {g: info["sha256"] for g, info in shipped["graphs"].items()}


def test_batch_axis_is_dynamic() -> None:
    card = read_card("memnet-santafe", SHIPPED)
    sess = ort.InferenceSession(str(graph_paths(card, SHIPPED)["step"]), providers=["CPUExecutionProvider"])
    c = card["config"]
    for b in (1, 7):
        feeds = {
            "x": np.zeros((b, 1), np.float32),
            "h": np.zeros((b, c["hidden_dim"]), np.float32),
            "keys": np.zeros((b, c["capacity"], c["key_dim"]), np.float32),
            "values": np.zeros((b, c["capacity"], c["value_dim"]), np.float32),
            "count": np.zeros(b, np.int64),
            "pos": np.zeros(b, np.int64),
            "stats": np.zeros((b, STATS_ROWS, 1), np.float32),
            "active": np.ones(b, bool),
        }
        y, _std, _h, keys, _values, count, pos, _stats = sess.run(None, feeds)
        assert y.shape == (b, 1) and keys.shape == feeds["keys"].shape
        assert count.tolist() == [1] * b and pos.tolist() == [1] * b


def test_stale_or_altered_graphs_are_refused(tmp_path: Path) -> None:
    name = "memnet-santafe"
    _copy(name, tmp_path)
    card = read_card(name, tmp_path)
    card.pop("onnx")
    with pytest.raises(StaleExport, match="no ONNX graphs: run `memserve export --model memnet-santafe`"):
        graph_paths(card, tmp_path)
    shutil.copytree(SHIPPED / f"{name}-onnx", tmp_path / f"{name}-onnx")
    card = read_card(name, SHIPPED)
    graph_paths(card, tmp_path)
    other = json.loads(json.dumps(card))
    other["files"]["sha256"] = "0" * 64  # retrained weights, graphs not re-exported
    with pytest.raises(StaleExport, match="exported from other weights"):
        graph_paths(other, tmp_path)
    step = tmp_path / card["onnx"]["graphs"]["step"]["file"]
    step.write_bytes(step.read_bytes() + b"\0")
    with pytest.raises(StaleExport, match="does not match the sha256"):
        graph_paths(card, tmp_path)
    step.unlink()
    with pytest.raises(StaleExport, match="is missing"):
        graph_paths(card, tmp_path)


def test_export_needs_a_model_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["export"])
    assert "--model" in capsys.readouterr().err


def test_shipped_vma_graphs_compute_what_torch_computes() -> None:
    """Every graph against the network on inputs that differ per argument (a graph traced with
    one tensor passed as two inputs would read only one of them)."""
    model, card = load_checkpoint("vma-omniglot", SHIPPED)
    paths = graph_paths(card, SHIPPED)
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(5, 1, 28, 28, generator=gen) > 0.8).float()
    m_a = (torch.rand(5, 1, 28, 28, generator=gen) > 0.8).float()

    def run(graph: str, **inputs: torch.Tensor) -> list[np.ndarray]:
        sess = ort.InferenceSession(str(paths[graph]), providers=["CPUExecutionProvider"])
        return sess.run(None, {k: v.numpy() for k, v in inputs.items()})

    with torch.no_grad():
        mu, log_std = model.z_posterior(x, m_a)
        mu_p, _, c_m, feats = model.z_prior(m_a)
        logits = model.decode(mu, c_m, feats)
        expected = {
            "z_posterior": ([mu, log_std], run("z_posterior", x=x, m_a=m_a)),
            "query_embedding": ([model.h_query(x)], run("query_embedding", x=x)),
            "memory_embedding": ([model.h_mem(m_a)], run("memory_embedding", m=m_a)),
            "z_prior": ([mu_p], run("z_prior", m_a=m_a)[:1]),
        }
    for graph, (want, got) in expected.items():
        for w, g in zip(want, got, strict=True):
            assert np.abs(w.numpy() - g).max() < 1e-4, f"{graph} differs from the network"
    dec = run("decoder", z=mu, c_m=c_m, **dict(zip(feat_names(model), feats, strict=True)))
    assert np.abs(logits.numpy() - dec[0]).max() < 1e-3
    # The bound's graph: one importance log weight per row, as the network's parts compose it.
    eps = torch.randn(5, model.config.z_dim, generator=gen)
    with torch.no_grad():
        log_w = model.log_weight(x, m_a, eps)
    (got,) = run("log_weight", x=x, m_a=m_a, eps=eps)
    assert got.shape == (5,) and np.isfinite(got).all(), "log_weight must be finite"
    assert np.abs(log_w.numpy() - got).max() < 1e-2, "log_weight differs from the network"
