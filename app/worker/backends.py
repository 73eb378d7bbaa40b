"""The two inference backends a worker can run its models on: PyTorch or ONNX Runtime.

``MEMSERVE_BACKEND=torch`` runs the checkpoints' modules on ``MEMSERVE_DEVICE`` (the first
GPU under ``auto`` when there is one). ``onnx`` runs the graphs ``memserve export`` wrote
next to each checkpoint (verified against the hashes in its card) with the CUDA execution
provider when it can and the CPU provider otherwise; its tensors between graphs stay on the
CPU. Either way, `Backend.describe` is what the heartbeat and ``/health/ready`` report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from app import registry
from app.config import Settings, SettingsError
from models.export import StaleExport, graph_paths
from models.vma_bf16 import cpu_has_bf16_matrix_units

if TYPE_CHECKING:  # onnxruntime is imported only by workers that run the onnx backend
    from app.worker.onnx import Placement

log = logging.getLogger("memserve.worker")


def pick_device(setting: str) -> torch.device:
    """The device named by MEMSERVE_DEVICE; `auto` takes the first GPU when there is one."""
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"MEMSERVE_DEVICE={setting} but no CUDA device is visible")
    return dev


@dataclass
class Backend:
    """A worker's backend, its device and, for ONNX Runtime, the provider it got."""

    name: str
    device: torch.device  # where runners keep their tensors
    threads: int
    setting: str = "auto"  # MEMSERVE_DEVICE, for ONNX Runtime's placement
    placement: Placement | None = None  # ONNX Runtime's, once the first graph has been opened
    decoder_precision: str = "fp32"  # MEMSERVE_DECODER_PRECISION
    query_embedding: str = "fp32"  # MEMSERVE_QUERY_EMBEDDING

    def describe(self) -> dict[str, Any]:
        """What a heartbeat (and so /health/ready) says about where the models run."""
        p = self.placement
        if p is None:
            return {"backend": self.name, "device": str(self.device), "provider": None, "fallback": None}
        where = f"cuda:{p.device_id}" if p.ort_device == "cuda" else str(self.device)
        return {"backend": self.name, "device": where, "provider": p.provider, "fallback": p.fallback}

    def int8_query(self) -> bool:
        """Whether VMA's query embedding runs on its int8 graph: asked for, on ONNX Runtime's CPU
        provider (elsewhere the float32 graph runs). Call after `graphs`."""
        on_cpu = self.placement is not None and self.placement.ort_device == "cpu"
        return self.name == "onnx" and on_cpu and self.query_embedding == "int8"

    def on_gpu(self) -> bool:
        """Whether this worker's arithmetic runs on a GPU: torch's device, or ONNX Runtime's
        placement (which may be CUDA beside a CPU-only torch). Call after `graphs`."""
        placed = self.placement
        return self.device.type != "cpu" or (placed is not None and placed.ort_device != "cpu")

    def bf16_decoder(self) -> bool:
        """Whether VMA's decoder runs in bfloat16 here (asked for, on a CPU worker). Call after
        `graphs` (the ONNX placement decides where the worker runs)."""
        if self.decoder_precision != "bf16":
            return False
        if self.on_gpu():
            raise SettingsError("MEMSERVE_DECODER_PRECISION=bf16 is for CPU workers: set fp32")
        if not cpu_has_bf16_matrix_units():
            log.warning(
                "MEMSERVE_DECODER_PRECISION=bf16 on a CPU without AMX bfloat16 tiles: slower than fp32"
            )
        return True

    def serve(self, model: Any, card: dict[str, Any], card_dir: Path) -> Any:
        """Wrap a loaded checkpoint for its kind's runner, on this backend (its kind's `serve`)."""
        kind = registry.get(str(card.get("kind")))
        if kind is None:
            raise SettingsError(
                f"a checkpoint of kind {card.get('kind')!r}, which this service does not serve"
            )
        return kind.worker().serve(model, card, card_dir, self)

    def graphs(self, card: dict[str, Any], card_dir: Path) -> tuple[dict[str, Path], Placement]:
        """The checkpoint's exported graphs and where ONNX Runtime runs them (placed once)."""
        try:
            paths = graph_paths(card, card_dir)
        except StaleExport as e:
            raise SettingsError(f"MEMSERVE_BACKEND=onnx: {e} (or set MEMSERVE_BACKEND=torch)") from e
        return paths, self.placement or self._place(next(iter(paths.values())))

    def _place(self, probe: Path) -> Placement:
        from app.worker.onnx import nvidia_gpu_present, place

        self.placement = p = place(self.setting, probe, self.threads)
        where = f"cuda:{p.device_id}" if p.ort_device == "cuda" else "cpu"
        if not p.fallback:
            log.info("onnx backend on %s (%s)", where, p.provider)
        elif self.setting == "auto" and nvidia_gpu_present() is not True:
            log.info("onnx backend on cpu: %s", p.fallback)  # a host without a GPU: as expected
        else:  # a GPU asked for by name, or one this host has, left unused
            log.warning("onnx backend on cpu although MEMSERVE_DEVICE=%s: %s", self.setting, p.fallback)
        return p


def open_backend(settings: Settings) -> Backend:
    """The backend the settings ask for; fails fast with the setting to change."""
    if settings.backend == "torch":
        return Backend(
            "torch", pick_device(settings.device), settings.torch_threads,
            decoder_precision=settings.decoder_precision,
        )  # fmt: skip
    if settings.device not in ("auto", "cpu", "cuda") and not settings.device.startswith("cuda:"):
        raise SettingsError(f"MEMSERVE_DEVICE={settings.device}: use auto, cpu, cuda or cuda:N")
    return Backend(
        "onnx", torch.device("cpu"), settings.torch_threads, setting=settings.device,
        decoder_precision=settings.decoder_precision, query_embedding=settings.query_embedding,
    )  # fmt: skip
