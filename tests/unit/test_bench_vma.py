"""Unit tests of ``app.bench.vma``'s pure parts: arguments, drawings, plans, bodies, results."""

from __future__ import annotations

import argparse

import numpy as np
import orjson
import pytest

from app.bench import vma, vma_data


def test_parse_sizes_sorts_and_rejects_bad_sizes() -> None:
    assert vma.parse_sizes("2500, 32,512,32") == [32, 512, 2500]
    for bad in ("", "0,5", "a", "3.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            vma.parse_sizes(bad)


def test_parse_args_defaults_and_bounds() -> None:
    args = vma.parse_args(["--url", "http://h:1/", "--procs", "64", "--concurrency", "3"])
    assert args.memory == [32, 512, 2500] and args.url == "http://h:1" and args.procs == 3
    assert (args.sessions, args.images_per_request, args.sample_n, args.method) == (4, 1, 8, "posterior")
    for bad in (["--sample-n", "65"], ["--concurrency", "0"], ["--duration", "0"], ["--memory", "-1"]):
        with pytest.raises(SystemExit):
            vma.parse_args(bad)


def test_memory_plan_deals_characters_round_robin() -> None:
    plan = vma_data.memory_plan(n_chars=10, n_drawings=20, memory=10, shots=4, offset=8)
    chars, drawings = plan[:, 0], plan[:, 1]
    assert plan.shape == (10, 2)
    assert sorted(set(chars.tolist())) == [0, 8, 9]  # ceil(10 / 4) = 3 characters, wrapping at 10
    assert drawings.max() == 3 and np.bincount(chars)[[8, 9, 0]].tolist() == [4, 3, 3]
    assert len({(c, d) for c, d in plan.tolist()}) == 10  # no drawing twice
    with pytest.raises(ValueError):
        vma_data.memory_plan(n_chars=10, n_drawings=20, memory=10 * 19 + 1, shots=4, offset=0)


def test_queries_are_other_drawings_of_the_memory_characters() -> None:
    plan = vma_data.memory_plan(n_chars=50, n_drawings=20, memory=32, shots=4, offset=5)
    q = vma_data.query_plan(plan, 20, 200, np.random.default_rng(0))
    assert set(q[:, 0].tolist()) <= set(plan[:, 0].tolist())
    assert q[:, 1].min() >= 4 and q[:, 1].max() < 20


def test_synthetic_drawings_resemble_their_own_character() -> None:
    images = vma_data.synthetic_drawings(6, 5, seed=1)
    assert images.shape == (6, 5, 28, 28) and images.dtype == np.uint8
    assert set(np.unique(images).tolist()) == {0, 1} and images.sum(axis=(2, 3)).min() > 20

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    same = np.mean([iou(images[c, 0], images[c, d]) for c in range(6) for d in range(1, 5)])
    other = np.mean([iou(images[c, 0], images[(c + 1) % 6, d]) for c in range(6) for d in range(1, 5)])
    assert same > 2 * other
    assert np.array_equal(images, vma_data.synthetic_drawings(6, 5, seed=1))


def test_bodies_follow_the_api() -> None:
    images = vma_data.synthetic_drawings(40, 20)
    plan = vma_data.memory_plan(40, 20, 600, 15, 0)
    chunks = list(vma_data.exemplar_bodies(images, plan))
    assert [n for _, n in chunks] == [256, 256, 88]
    first = orjson.loads(chunks[0][0])["exemplars"]
    assert len(first) == 256 and first[0]["label"] == "0" and first[1]["label"] == "1"
    assert np.array_equal(np.array(first[0]["pixels"]), images[0, 0])
    body = orjson.loads(vma_data.classify_body(images, np.array([[1, 5], [2, 6]]), "importance"))
    assert body["method"] == "importance" and len(body["images"]) == 2
    assert set(np.unique(body["images"][1]["pixels"]).tolist()) <= {0, 1}
    samples = [orjson.loads(b) for b in vma_data.sample_bodies(8, "png", ["7", "9"])]
    free = {"n": 8, "format": "png"}
    assert samples == [free, {**free, "label": "7"}, free, {**free, "label": "9"}]
    anchored = [orjson.loads(b) for b in vma_data.sample_bodies(8, "png", ["7"], 1.0)]
    assert anchored == [{**free, "anchor": 1.0}, {**free, "anchor": 1.0, "label": "7"}]
    assert vma.parse_args(["--sample-anchor", "0.5"]).sample_anchor == 0.5


def test_shard_specs_keep_each_client_with_its_bodies() -> None:
    args = vma.parse_args(["--procs", "2", "--concurrency", "5", "--ceiling", "1.5"])
    clients = [(f"s{i % 2}", (f"b{i}".encode(),)) for i in range(5)]
    specs = vma.shard_specs(args, "samples", clients, 8, ceiling=True)
    assert [len(s.sids) for s in specs] == [2, 3]
    got = [(sid, b) for s in specs for sid, b in zip(s.sids, s.bodies, strict=True)]  # type: ignore[attr-defined]
    assert got == clients and all(s.ceiling and s.points == 8 for s in specs)
    assert not vma.shard_specs(args, "samples", clients, 8, ceiling=False)[0].ceiling


def test_memory_arithmetic() -> None:
    assert vma.bytes_per_exemplar(300 + 32 * 700, 300, 32) == 700
    assert vma.bytes_per_exemplar(1000, None, 32) is None and vma.bytes_per_exemplar(1000, 0, 0) is None
    assert vma.raw_exemplar_bytes({"match_dim": 128}) == 98 + 512
    assert vma.raw_exemplar_bytes(None) is None


def window(p50: float, units: int) -> vma.Window:
    lat = {"p50": p50, "p95": p50, "p99": 2 * p50, "mean": p50, "max": 3 * p50}
    return vma.Window(10.0, units, units, units, lat, {"429": 2}, 30.0, 1.5)


def test_targets_table_and_json() -> None:
    r = vma.VmaResult("http://x", "synthetic strokes", "posterior", 16, 1, 8, 1, ceiling_rps=5000.0)
    r.sizes = [
        vma.SizeResult(32, 4, 32.0, 20000.0, 600.0, window(10.0, 3000), window(20.0, 800)),
        vma.SizeResult(2500, 4, 2500.0, 2.6e6, 1100.0, window(25.0, 1500), None),
    ]
    ratio, name = r.p50_ratio()
    assert ratio == 2.5 and name.endswith("|M|=2500 / |M|=32")
    assert [t["ok"] for t in r.targets()] == [False, False, False]
    assert [t["value"] for t in r.targets()][1:] == [150.0, 1100.0]
    text = vma.format_table(r)
    assert "FAIL  classify p50" in text and "2,500" in text and "n/a" in text
    d = orjson.loads(orjson.dumps(r.to_dict()))
    assert d["p50_ratio"] == 2.5 and d["sizes"][0]["classify"]["units_per_s"] == 300.0
    assert d["sizes"][1]["samples"] is None
    r.sizes = r.sizes[:1]
    assert r.p50_ratio()[0] is None and r.targets()[0]["ok"] is None
