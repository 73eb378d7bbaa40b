"""Export a checkpoint's serving graphs to ONNX (`memserve export`).

What serving runs, as graphs with a dynamic batch axis ``n`` on every input and output:

* MemNet ``step``: one time step of B sessions, the whole recurrent state in and out
  (x, h, ring-buffer keys and values, count, write position, an ``active`` mask for rows
  whose chunk has ended) -> (y, h', keys', values', count', pos'). Forecasts feed y back.
  ``steps``: `CHUNK_STEPS` of them in one graph, x (B, K, D) and active (B, K) -> y and std
  (B, K, D) and the state after them: a long chunk runs K steps per call, which spares
  ONNX Runtime's per-call cost and the binding of every step's inputs K - 1 times in K.
* VMA ``memory_embedding`` h(m), ``query_embedding`` h_q(x), ``z_prior`` (p(z|m_a) with the
  decoder's context and m_a's pyramid), ``z_posterior`` q(z|m_a, x) (the likelihood bound
  of classify needs it), ``decoder`` p(x|z, m_a) as logits, and ``log_weight``: the three
  composed into one importance log weight per row, the bound's work in one call. Serving
  composes them exactly as the PyTorch backend composes the same modules (`models.vma.VMAParts`).
  ``query_embedding_int8``: h_q(x) with its convolutions in int8 (`models.quantize`), which CPU
  workers run when ``MEMSERVE_QUERY_EMBEDDING=int8``.

The graphs go to ``<dir>/<name>-onnx/<graph>.onnx``, and the card gains an ``onnx`` section:
opset, the torch version that exported them, the sha256 of the weights they came from and
each graph's file, sha256, inputs and outputs. Export is repeatable: the same weights and
the same torch give byte-identical graphs (a test exports twice and compares hashes).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import logging
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint import load_checkpoint, read_card, resolve_card_path, write_card
from models.memnet import MemNet, MemNetState
from models.memnet_block import block_dist
from models.quantize import CALIBRATION, quantize_convs, stroke_batches
from models.vma import VMA

OPSET = 18
STEP_INPUTS = ("x", "h", "keys", "values", "count", "pos", "stats", "active")
STEP_OUTPUTS = ("y", "std", "h_out", "keys_out", "values_out", "count_out", "pos_out", "stats_out")
# Steps per call of the ``steps`` graph. Measured on a 2-core CPU (memnet-universal, 32 sessions
# x 96 points, one thread): 0.27 ms per step through ``step``, 0.20 with 8 steps per call,
# 0.19 with 16 and 0.27 with 32 (a larger graph, and twice the export time per doubling). With
# the block form (`models.memnet_block`), 8, 10 and 16 steps per call were within 5 % of each
# other at 100 and 1,000 points per session.
CHUNK_STEPS = 8
# Graphs that also get an int8 copy, ``<name>_int8`` (`models.quantize`), for the CPU provider.
INT8_GRAPHS = ("query_embedding",)


@dataclass
class GraphSpec:
    """One graph: the module to trace, example inputs (by name, in order) and output names."""

    name: str
    module: nn.Module
    inputs: dict[str, Tensor]
    outputs: tuple[str, ...]


# ------------------------------------------------------------------ MemNet
class _Step(nn.Module):
    def __init__(self, model: MemNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, h, keys, values, count, pos, stats, active):  # type: ignore[no-untyped-def]
        y, std, s = self.model.step_dist(x, MemNetState(h, keys, values, count, pos, stats), active)
        return y, std, s.h, s.keys, s.values, s.count, s.pos, s.stats


class _Steps(nn.Module):
    """`CHUNK_STEPS` steps in one block (`block_dist`): x (B, K, D), active (B, K) -> y, std
    (B, K, D) and the state; the ring buffers are written once per block, not once per step."""

    def __init__(self, model: MemNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, h, keys, values, count, pos, stats, active):  # type: ignore[no-untyped-def]
        y, std, s = block_dist(self.model, x, MemNetState(h, keys, values, count, pos, stats), active)
        return y, std, s.h, s.keys, s.values, s.count, s.pos, s.stats


def memnet_graphs(model: MemNet) -> list[GraphSpec]:
    """The batched step with its state and ring buffer as inputs and outputs, and K of them."""
    b, k = 3, CHUNK_STEPS
    st = model.initial_state(b)
    state = (st.h, st.keys, st.values, st.count, st.pos, st.stats)
    x = torch.zeros(b, model.config.input_dim)
    active = torch.tensor([True, False, True])
    one = dict(zip(STEP_INPUTS, (x, *state, active), strict=True))
    xs = torch.zeros(b, k, model.config.input_dim)
    actives = torch.ones(b, k, dtype=torch.bool)
    actives[1, k // 2 :] = False  # a row whose chunk ends inside the block
    block = dict(zip(STEP_INPUTS, (xs, *state, actives), strict=True))
    return [
        GraphSpec("step", _Step(model), one, STEP_OUTPUTS),
        GraphSpec("steps", _Steps(model), block, STEP_OUTPUTS),
    ]


# --------------------------------------------------------------------- VMA
class _Call(nn.Module):
    """Wraps one VMA method as a module whose outputs are a flat tuple of tensors."""

    def __init__(self, model: VMA, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        if self.method == "decode":
            z, c_m, *feats = args
            return (self.model.decode(z, c_m, list(feats)),)
        if self.method == "z_prior":
            mu, log_std, c_m, feats = self.model.z_prior(*args)
            return (mu, log_std, c_m, *feats)
        if self.method == "z_posterior":
            return tuple(self.model.z_posterior(*args))
        return (getattr(self.model, self.method)(*args),)


def feat_names(model: VMA) -> tuple[str, ...]:
    """Names of m_a's pyramid maps passed from z_prior to the decoder, finest first, top last."""
    return tuple(f"feat{i}" for i in range(model.config.n_levels + 1))


class _TapConv(nn.Module):
    """A 3x3 convolution to one map (the decoder's last layer), computed as a 1x1 convolution to
    the nine taps' maps and a fixed 3x3 convolution that takes one tap from each.

    The same sum in another order. ONNX Runtime's CPU kernels run a convolution with a single
    output map far below their speed on wider ones: this layer was a quarter of the likelihood
    bound's time (140 of 564 us per drawing, 2-core CPU, one thread); as two convolutions it is
    about 25 us.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()
        assert w.shape[0] == 1 and w.shape[2:] == (3, 3) and conv.padding == (1, 1), "a 3x3 conv to one map"
        assert conv.bias is not None, "the decoder's last conv has a bias"
        taps = w[0].permute(1, 2, 0).reshape(9, -1)  # (C, 3, 3) -> (3, 3, C) -> (9, C)
        self.register_buffer("spread", taps.view(9, -1, 1, 1).clone())  # (9, C) -> (9, C, 1, 1)
        pick = torch.zeros(1, 9, 3, 3)
        for t in range(9):
            pick[0, t, t // 3, t % 3] = 1.0
        self.register_buffer("pick", pick)
        self.register_buffer("bias", conv.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, self.spread), self.pick, self.bias, padding=1)


def for_onnx_runtime(model: VMA) -> VMA:
    """A copy of the model with the same function, laid out for ONNX Runtime's kernels."""
    model = copy.deepcopy(model).eval()
    assert isinstance(model.decoder.out, nn.Conv2d), "the decoder ends in a conv"
    model.decoder.out = _TapConv(model.decoder.out)
    return model


def vma_graphs(model: VMA) -> list[GraphSpec]:
    """h(m), h_q(x), p(z|m_a) with the pyramid, q(z|m_a, x), the decoder, and the importance
    log weight of one (x, m_a, z noise) in one graph (the classify bound's whole per-candidate
    work: m_a's pyramid stays inside ONNX Runtime instead of passing out and back in)."""
    c = model.config
    model = for_onnx_runtime(model)
    n = 3
    img = torch.rand(n, 1, c.image_size, c.image_size).round()
    with torch.no_grad():
        mu, _, c_m, feats = model.z_prior(img)
    feats_in = dict(zip(feat_names(model), feats, strict=True))
    # Pairs of distinct tensors: the exporter traces one tensor passed twice as a single input.
    return [
        GraphSpec("memory_embedding", _Call(model, "h_mem"), {"m": img}, ("h",)),
        GraphSpec("query_embedding", _Call(model, "h_query"), {"x": img}, ("e",)),
        GraphSpec(
            "z_prior",
            _Call(model, "z_prior"),
            {"m_a": img},
            ("mu", "log_std", "c_m", *feat_names(model)),
        ),
        GraphSpec(
            "z_posterior", _Call(model, "z_posterior"), {"x": img, "m_a": 1.0 - img}, ("mu", "log_std")
        ),
        GraphSpec("decoder", _Call(model, "decode"), {"z": mu, "c_m": c_m, **feats_in}, ("logits",)),
        GraphSpec(
            "log_weight",
            _Call(model, "log_weight"),
            {"x": img, "m_a": 1.0 - img, "eps": torch.randn_like(mu)},
            ("log_w",),
        ),
    ]


# ------------------------------------------------------------------ export
def graph_specs(model: nn.Module) -> list[GraphSpec]:
    """The serving graphs of a loaded model."""
    if isinstance(model, MemNet):
        return memnet_graphs(model)
    if isinstance(model, VMA):
        return vma_graphs(model)
    raise ValueError(f"no serving graphs for {type(model).__name__}")


def export_graph(spec: GraphSpec, opset: int = OPSET) -> bytes:
    """The ONNX bytes of one graph, with axis 0 of every input and output dynamic."""
    batch = torch.export.Dim("n")
    dynamic: tuple[Any, ...] = tuple({0: batch} for _ in spec.inputs)
    if isinstance(spec.module, _Call):  # forward(*args): one spec for the args tuple
        dynamic = (dynamic,)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not our concern
        program = torch.onnx.export(
            spec.module.eval(),
            tuple(spec.inputs.values()),
            dynamo=True,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes=dynamic,
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    assert program is not None, "the exporter returned no program"
    return canonical(program.model_proto).SerializeToString()


def canonical(proto: Any) -> Any:
    """The graph without what says where and how it was exported (source paths and lines,
    the local build tag of torch): those would make the same weights give different bytes."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.metadata_props[:]
    del proto.metadata_props[:]
    proto.producer_version = proto.producer_version.split("+")[0]
    return proto


def onnx_dir(card_path: Path) -> Path:
    """Where a checkpoint's graphs live: ``<dir>/<name>-onnx``."""
    return card_path.parent / f"{card_path.stem}-onnx"


def export_checkpoint(name_or_path: str | Path, directory: str | Path | None = None) -> dict[str, Any]:
    """Export every serving graph of a checkpoint next to it and record them in its card."""
    card_path = resolve_card_path(name_or_path, directory)
    model, card = load_checkpoint(card_path)
    out_dir = onnx_dir(card_path)
    out_dir.mkdir(exist_ok=True)
    graphs: dict[str, Any] = {}
    for spec in graph_specs(model):
        data = export_graph(spec)
        graphs[spec.name] = _write_graph(out_dir, spec.name, data, spec)
        if spec.name in INT8_GRAPHS:
            int8 = quantize_convs(data, stroke_batches(next(iter(spec.inputs))))
            graphs[f"{spec.name}_int8"] = {
                **_write_graph(out_dir, f"{spec.name}_int8", int8, spec),
                "int8": CALIBRATION,
            }
    card = read_card(card_path)  # re-read: only the onnx section changes
    card["onnx"] = {
        "opset": OPSET,
        "torch": torch.__version__.split("+")[0],
        "weights_sha256": card["files"]["sha256"],
        "graphs": graphs,
    }
    write_card(card_path, card)
    return card["onnx"]


def _write_graph(out_dir: Path, name: str, data: bytes, spec: GraphSpec) -> dict[str, Any]:
    """Write one graph's bytes; its entry in the card."""
    path = out_dir / f"{name}.onnx"
    path.write_bytes(data)
    path.chmod(0o644)
    return {
        "file": f"{out_dir.name}/{path.name}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "inputs": list(spec.inputs),
        "outputs": list(spec.outputs),
    }


class StaleExport(RuntimeError):
    """A checkpoint's ONNX graphs are missing, altered or from other weights."""


def graph_paths(card: dict[str, Any], card_dir: Path) -> dict[str, Path]:
    """The verified graph files of a card: present, hashes as recorded, from these weights."""
    name = card.get("name", "?")
    fix = f"run `memserve export --model {name}`"
    onnx = card.get("onnx")
    if not onnx:
        raise StaleExport(f"checkpoint {name} has no ONNX graphs: {fix}")
    if onnx.get("weights_sha256") != card["files"]["sha256"]:
        raise StaleExport(f"the ONNX graphs of {name} were exported from other weights: {fix}")
    paths = {}
    for graph, info in onnx["graphs"].items():
        path = card_dir / info["file"]
        if not path.exists():
            raise StaleExport(f"{path} is missing: {fix}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != info["sha256"]:
            raise StaleExport(f"{path} does not match the sha256 in its card: {fix}")
        paths[graph] = path
    return paths


def servable(card: dict[str, Any]) -> bool:
    """Whether serving runs this kind of model (only those get graphs)."""
    return card.get("kind") in ("memnet", "vma")


def main(argv: list[str] | None = None) -> int:
    """`memserve export [--model NAME | --all] [--dir DIR]`."""
    p = argparse.ArgumentParser(prog="memserve export", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", action="append", help="checkpoint name (repeatable)")
    which.add_argument("--all", action="store_true", help="every MemNet and VMA checkpoint in --dir")
    p.add_argument("--dir", default="checkpoints", help="checkpoint directory")
    args = p.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    directory = Path(args.dir)
    if args.all:
        names = sorted(c.stem for c in directory.glob("*.json") if servable(read_card(c)))
    else:
        names = args.model
    for name in names:
        section = export_checkpoint(name, directory)
        for graph, info in section["graphs"].items():
            print(f"{name}: {info['file']}  {info['bytes']:,} B  sha256 {info['sha256'][:16]}  ({graph})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
