"""VMA's decoder p(x|z, m_a) in bfloat16 (``MEMSERVE_DECODER_PRECISION=bf16``), for CPUs with
AMX bfloat16 tiles.

The likelihood bound of a classify request and every sample run the decoder, whose three
transposed convolutions are most of a request's arithmetic. PyTorch's oneDNN kernels run them in
bfloat16 on AMX tiles, with the maps kept channels-last; its first layer, a small matmul, stays
float32. A drawing's bound moves by about 0.1 nats; alone the decoder is about twice as fast as
the float32 graph at batches of 8 or more, in a worker beside ONNX Runtime's graphs the gain is
smaller and depends on the worker keeping its core (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from models.vma import Decoder

CL = torch.channels_last


def cpu_has_bf16_matrix_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has AMX bfloat16 tiles (Linux's ``amx_bf16`` flag); False where it cannot tell."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


class _ToBf16(nn.Module):
    """A float32 layer whose output goes on in bfloat16."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x.float()).to(torch.bfloat16)


class Bf16Decoder:
    """A bfloat16, channels-last copy of a `Decoder`; takes and gives float32 tensors."""

    def __init__(self, decoder: Decoder) -> None:
        dev = next(decoder.parameters()).device
        assert dev.type == "cpu", "the bfloat16 decoder is for CPU workers"
        net = copy.deepcopy(decoder).to(torch.bfloat16).to(memory_format=CL).eval()
        net.channels_last = True
        # The first layer, a (1 x 128) @ (128 x 512) product per drawing, is faster in float32 (a
        # bfloat16 matmul this small costs more to set up than to run), and z stays unrounded.
        net.fc = _ToBf16(copy.deepcopy(decoder.fc))
        if decoder.warp is not None:  # its transforms in float32: a bfloat16 shift is coarse
            net.warp = copy.deepcopy(decoder.warp).float()
        self.net = net

    @staticmethod
    def maps(feats: list[Tensor]) -> list[Tensor]:
        """m_a's pyramid in the decoder's dtype and layout (kept so by the worker's prior cache)."""
        return [f.to(torch.bfloat16).contiguous(memory_format=CL) for f in feats]

    @torch.inference_mode()
    def __call__(self, z: Tensor, c_m: Tensor, feats: list[Tensor]) -> Tensor:
        """z, c_m (N, z_dim) and the pyramid (any dtype and layout) -> logits (N, 1, S, S) float32."""
        logits = self.net(z.float(), c_m.float(), self.maps(feats))  # (N, 1, S, S) bf16, channels-last
        return logits.float().contiguous()
