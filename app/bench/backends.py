"""``memserve bench backends``: the models' compute alone, torch against ONNX Runtime.

No HTTP, no Redis: the workers' own engines (`TorchMemNet`/`OnnxMemNet`, `VMA`/`OnnxVMA`)
on the shipped checkpoints, timed batch by batch, so the numbers say what the backend
costs and nothing else. MemNet: steps/s and p99 of one batched step at several batch
sizes. VMA: classified images/s as the worker computes them (h_q of every image, its
similarities to a memory, one decoder evaluation for the bound) at several batch sizes.
The end-to-end view is ``memserve bench stream|vma --backend torch,onnx``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.config import Settings
from app.kinds.memnet.runner import ServedMemNet
from app.kinds.vma.served import ServedVMA
from app.worker.backends import open_backend
from models.checkpoint import load_checkpoint


def _timed(fn: Callable[[], object], seconds: float) -> list[float]:
    """Wall time of each call of ``fn`` for about ``seconds`` (after two warm-up calls)."""
    fn()
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def memnet_case(served: ServedMemNet, batch: int, steps: int) -> Callable[[], object]:
    """One call: ``steps`` steps of ``batch`` sessions from an empty memory."""
    engine = served.engine
    x = torch.randn(batch, steps, engine.config.input_dim).to(served.device)
    lengths = torch.full((batch,), steps, device=served.device)

    def run() -> object:
        state = engine.initial_state(batch, served.device)
        return engine.run_steps(x, lengths, state)

    return run


def vma_case(served: ServedVMA, batch: int, memory: int) -> Callable[[], object]:
    """One call: classify ``batch`` drawings against a memory of ``memory`` exemplars."""
    engine, dev = served.model, served.device
    s = engine.config.image_size
    gen = torch.Generator().manual_seed(0)
    m = (torch.rand(memory, 1, s, s, generator=gen) > 0.8).float().to(dev)
    x = (torch.rand(batch, 1, s, s, generator=gen) > 0.8).float().to(dev)
    with torch.inference_mode():
        h = engine.memory_embedding(m)
    eps = torch.randn(batch, 1, 1, engine.config.z_dim, generator=gen).to(dev)

    @torch.inference_mode()
    def run() -> object:
        logits = engine.similarity(h, engine.query_embedding(x))  # (B, A)
        top = logits.argmax(dim=-1)
        return engine.candidate_log_weights(x, m[top].unsqueeze(1), 1, eps=eps)  # (B, 1)

    return run


def _row(kind: str, backend: str, batch: int, units: int, times: list[float], unit: str) -> dict:
    t = np.asarray(times)
    return {
        "model": kind, "backend": backend, "batch": batch,
        f"{unit}_per_s": units * len(t) / t.sum(), "p50_ms": 1e3 * float(np.percentile(t, 50)),
        "p99_ms": 1e3 * float(np.percentile(t, 99)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``memserve bench backends``."""
    p = argparse.ArgumentParser(prog="memserve bench backends", description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="torch,onnx", help="backends to compare, comma-separated")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both backends)")
    p.add_argument("--batch", default="1,16,64", help="batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=50, help="MemNet steps per timed call")
    p.add_argument("--memory", type=int, default=512, help="VMA exemplars in the memory")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per case")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (MEMSERVE_TORCH_THREADS)")
    p.add_argument("--dir", default="checkpoints", help="checkpoint directory")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    backends = args.backend.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    rows = []
    cases = [(b, n) for n in batches for b in backends]
    for backend, batch in tqdm(cases, desc="cases", unit="case"):
        overrides = {"backend": backend, "device": args.device, "torch_threads": args.threads}
        settings = Settings(**overrides)
        engine = open_backend(settings)
        for name in ("memnet-santafe", "vma-omniglot"):
            model, card = load_checkpoint(name, args.dir)
            served = engine.serve(model, card, Path(args.dir))
            if isinstance(served, ServedMemNet):
                t = _timed(memnet_case(served, batch, args.steps), args.seconds)
                t = [x / args.steps for x in t]  # per batched step
                rows.append(_row("memnet", backend, batch, batch, t, "steps"))
            else:
                t = _timed(vma_case(served, batch, args.memory), args.seconds)
                rows.append(_row("vma", backend, batch, batch, t, "images"))
        where = engine.describe()
        rows[-1]["where"] = rows[-2]["where"] = f"{where['device']} {where['provider'] or ''}".strip()
    print(_table(rows, backends))
    return 0


def _table(rows: list[dict], backends: list[str]) -> str:
    lines = [f"{'model':7} {'batch':>5} {'backend':8} {'rate':>12} {'p50 ms':>8} {'p99 ms':>8}  where"]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], backends.index(r["backend"]))):
        unit = "steps" if r["model"] == "memnet" else "images"
        lines.append(
            f"{r['model']:7} {r['batch']:5d} {r['backend']:8} {r[unit + '_per_s']:9,.0f}/s "
            f"{r['p50_ms']:8.3f} {r['p99_ms']:8.3f}  {r.get('where', '')}"
        )
    if len(backends) == 2:
        a, b = backends
        lines.append(f"ratio {b}/{a} of the rates (above 1: {b} is faster):")
        for model in ("memnet", "vma"):
            unit = "steps" if model == "memnet" else "images"
            by = {(r["backend"], r["batch"]): r[unit + "_per_s"] for r in rows if r["model"] == model}
            ratios = [f"batch {n}: {by[(b, n)] / by[(a, n)]:.2f}" for _, n in sorted(by) if _ == a]
            lines.append(f"  {model}: " + ", ".join(ratios))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
