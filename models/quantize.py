"""int8 copies of serving graphs for ONNX Runtime's CPU provider (`memserve export`).

Every classify request runs the query embedding h_q(x): four 3x3 convolutions of 64 feature
maps, most of a `samples: 0` request's arithmetic. Its convolutions quantized (weights int8 per
output channel, activations uint8 with ranges from calibration, everything else float32), it
runs about 1.4x faster on the CPU provider with few-shot accuracy unchanged (measured in
docs/benchmarks.md). The ranges come from generated pen strokes, not from a dataset, so
export needs no data and gives the same bytes again on the same machine.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models.data.strokes import synthetic_drawings

# What the card records of how an int8 graph was made (and what a reader needs to redo it).
CALIBRATION: dict[str, Any] = {
    "drawings": "synthetic pen strokes, 256 characters x 4 drawings (seed 5)",
    "method": "MinMax",
    "weights": "int8 with a 7-bit range, per output channel",
    "activations": "uint8",
    "quantized_ops": ["Conv"],
}


def stroke_batches(input_name: str, batch: int = 64) -> list[dict[str, np.ndarray]]:
    """The calibration drawings as feeds of one image input (n, 1, S, S) float32."""
    images = synthetic_drawings(256, 4, seed=5).astype(np.float32)
    images = images.reshape(-1, 1, *images.shape[2:])  # (C, D, S, S) -> (C D, 1, S, S)
    return [{input_name: images[i : i + batch]} for i in range(0, len(images), batch)]


def quantize_convs(graph: bytes, feeds: list[dict[str, np.ndarray]]) -> bytes:
    """``graph`` (ONNX bytes) with its convolutions in int8, ranges calibrated on ``feeds``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    logging.disable(logging.WARNING)  # the tool's advice to pre-process, on the root logger
    try:
        return _quantize(graph, Feeds())
    finally:
        logging.disable(logging.NOTSET)


def _quantize(graph: bytes, reader: Any) -> bytes:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        quantize_static(
            src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
            # 7-bit weights: CPUs without VNNI (AVX2 only) sum uint8 x int8 products in pairs into
            # saturating int16, and full-range weights overflowed there (embedding cosine down to
            # 0.96 against float32; 0.999 with the reduced range, on the same drawings).
            reduce_range=True,
        )  # fmt: skip
        return onnx.load(dst).SerializeToString()
