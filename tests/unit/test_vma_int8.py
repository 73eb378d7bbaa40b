"""VMA's int8 query embedding (MEMSERVE_QUERY_EMBEDDING=int8): the export records how it was
made, CPU workers of the onnx backend run it when asked, and it ranks a memory as the float32
graph does."""

from __future__ import annotations

import numpy as np
import torch

from app.kinds.vma.onnx import OnnxVMA
from app.worker.backends import Backend
from app.worker.onnx import CPU_EP, CUDA_EP, Placement, place
from models.checkpoint import load_checkpoint, read_card
from models.data.strokes import synthetic_drawings
from models.export import graph_paths
from models.quantize import CALIBRATION, quantize_convs, stroke_batches
from models.vma import VMA, similarity
from tests.conftest import REPO

SHIPPED = REPO / "checkpoints"


def _engines() -> tuple[OnnxVMA, OnnxVMA]:
    model, card = load_checkpoint("vma-omniglot", SHIPPED)
    assert isinstance(model, VMA)
    paths = graph_paths(card, SHIPPED)
    where = place("cpu", paths["decoder"])
    return OnnxVMA(model, paths, where, 1), OnnxVMA(model, paths, where, 1, int8_query=True)


def test_the_card_says_how_the_int8_graph_was_made_and_export_repeats_it() -> None:
    graphs = read_card("vma-omniglot", SHIPPED)["onnx"]["graphs"]
    assert graphs["query_embedding_int8"]["int8"] == CALIBRATION
    fp32 = (SHIPPED / graphs["query_embedding"]["file"]).read_bytes()
    once, again = (quantize_convs(fp32, stroke_batches("x")) for _ in range(2))
    assert once == again, "calibration on generated strokes is deterministic"
    assert b"QuantizeLinear" in once and len(once) < len(fp32) / 2, "int8 weights, a third of the bytes"


@torch.inference_mode()
def test_int8_embeddings_rank_a_memory_as_fp32_ones_do() -> None:
    exact, fast = _engines()
    assert (exact.query_graph, fast.query_graph) == ("query_embedding", "query_embedding_int8")
    assert "query_embedding_int8" not in exact.graphs and "query_embedding" not in fast.graphs
    chars = torch.from_numpy(synthetic_drawings(20, 6, seed=9).astype(np.float32))  # (C, D, S, S)
    memory = exact.memory_embedding(chars[:, 0].unsqueeze(1))  # (20, D): one shot of 20 characters
    queries = chars[:, 1:].flatten(0, 1).unsqueeze(1)  # (C (D - 1), 1, S, S)
    e32, e8 = exact.query_embedding(queries), fast.query_embedding(queries)
    assert not torch.equal(e32, e8), "the int8 graph ran"
    assert torch.nn.functional.cosine_similarity(e32, e8).min() > 0.97
    top32, top8 = similarity(memory, e32).argmax(-1), similarity(memory, e8).argmax(-1)
    assert (top32 == top8).float().mean() >= 0.95, "the same exemplar comes first"


def test_an_export_without_the_int8_graph_runs_float32() -> None:
    model, card = load_checkpoint("vma-omniglot", SHIPPED)
    assert isinstance(model, VMA)
    paths = {k: v for k, v in graph_paths(card, SHIPPED).items() if k != "query_embedding_int8"}
    engine = OnnxVMA(model, paths, place("cpu", paths["decoder"]), 1, int8_query=True)
    assert engine.query_graph == "query_embedding" and "query_embedding" in engine.graphs


def test_int8_runs_on_onnx_runtime_cpu_workers_only() -> None:
    cpu = torch.device("cpu")
    on_cpu, on_gpu = Placement(CPU_EP, 0), Placement(CUDA_EP, 0)
    assert Backend("onnx", cpu, 1, placement=on_cpu, query_embedding="int8").int8_query()
    assert not Backend("onnx", cpu, 1, placement=on_cpu).int8_query(), "fp32 unless asked"
    assert not Backend("onnx", cpu, 1, placement=on_gpu, query_embedding="int8").int8_query()
    assert not Backend("torch", cpu, 1, query_embedding="int8").int8_query()
