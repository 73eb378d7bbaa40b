"""The addressing networks of VMA: h(m_a) and h_q(x), the embeddings q(a|x) and p(a|M) compare.

Two choices beyond the paper, both options of ``VMAConfig`` (the defaults keep the shipped
version 1 and 2 checkpoints as they were):

* ``frame_span`` > 0 (with ``conv4``): before embedding, every drawing is re-framed so that its ink's bounding
  box is centred and its longer side spans ``frame_span`` pixels. People draw a character
  small or large, off centre, with a thin or thick pen; the class should not depend on that.
  The re-framing is a differentiable resampling (``grid_sample``) inside the network, so
  training, evaluation, serving and the ONNX graphs all see the same thing, and the stored
  exemplars stay exactly what the user sent. Only addressing sees framed drawings: the
  generative parts model the pixels as drawn.
* ``address_net = "conv4"``: four blocks of 3x3 conv, batch norm, ReLU and 2x2 max-pool
  (28 -> 14 -> 7 -> 3 -> 1) with ``address_channels`` feature maps, then one linear map into
  the matching space; the paper's convolutions have 48 or 64 maps, and normalisation makes
  the deeper stack train quickly. ``"pyramid"`` is the version 1 and 2 embedder (see
  ``models.vma``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrameInk(nn.Module):
    """Resample each drawing so its ink's bounding box is centred with its longer side ``span`` px.

    x (N, 1, S, S) in [0, 1] -> (N, 1, S, S). A drawing without ink (nothing above 0.5) is
    left as it is. Built from elementwise ops, max-reductions and ``grid_sample`` so that it
    exports to ONNX as it runs here.
    """

    def __init__(self, image_size: int, span: int) -> None:
        super().__init__()
        assert 0 < span <= image_size, "frame span must lie in (0, image_size]"
        self.size, self.span = image_size, span
        coords = torch.arange(image_size, dtype=torch.float32)
        self.register_buffer("coords", coords, persistent=False)
        # Output pixel centres in normalised units (align_corners=False): u_j = (2j + 1) / S - 1.
        self.register_buffer("unit", (2 * coords + 1) / image_size - 1, persistent=False)

    def _extent(self, ink_along: Tensor) -> tuple[Tensor, Tensor]:
        """ink_along (N, S) in {0, 1} -> first and last inked index (N,) each, as floats."""
        big = float(self.size)
        first = torch.where(ink_along > 0, self.coords, big).amin(-1)
        last = torch.where(ink_along > 0, self.coords, -1.0).amax(-1)
        return first, last

    def forward(self, x: Tensor) -> Tensor:
        s = self.size
        ink = (x[:, 0] > 0.5).to(x.dtype)  # (N, 1, S, S) -> (N, S, S)
        r0, r1 = self._extent(ink.amax(-1))  # rows with ink: (N, S) -> (N,)
        c0, c1 = self._extent(ink.amax(-2))  # columns with ink
        has_ink = r1 >= 0
        extent = torch.maximum(r1 - r0, c1 - c0) + 1.0
        scale = torch.where(has_ink, extent / self.span, torch.ones_like(extent))  # input px per output px
        cy = torch.where(has_ink, (r0 + r1) / 2, torch.full_like(r0, (s - 1) / 2))
        cx = torch.where(has_ink, (c0 + c1) / 2, torch.full_like(c0, (s - 1) / 2))
        # Input position of output pixel j, normalised: (2 c + 1) / S - 1 + scale * u_j.
        gx = ((2 * cx + 1) / s - 1)[:, None] + scale[:, None] * self.unit  # (N, S) along width
        gy = ((2 * cy + 1) / s - 1)[:, None] + scale[:, None] * self.unit  # (N, S) along height
        grid = torch.stack(
            [gx[:, None, :].expand(-1, s, -1), gy[:, :, None].expand(-1, -1, s)], dim=-1
        )  # (N, S, S, 2): (x, y) per output pixel
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Conv4Embedder(nn.Module):
    """Image -> vector: four conv-BN-ReLU-maxpool blocks (28 -> 1), then a linear map."""

    def __init__(self, image_size: int, channels: int, frame_span: int, out_dim: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        size = image_size
        for i in range(4):
            conv = nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1)
            blocks += [conv, nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
            size //= 2
        assert size >= 1, "image too small for four 2x2 pools"
        ch = channels
        self.frame = FrameInk(image_size, frame_span) if frame_span > 0 else None
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(ch * size * size, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.frame is not None:
            x = self.frame(x)
        y = self.blocks(2.0 * x - 1.0)  # centred pixels, as in the pyramid
        return self.out(y.flatten(1))  # (N, C, s, s) -> (N, C s s) -> (N, out)
