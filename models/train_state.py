"""A training run's resumable state: weights, best weights and Adam moments as safetensors,
counters as JSON (no pickle). MemNet's and VMA's trainers resume from it (``--resume``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.checkpoint import state_tensors


def save_train_state(
    run_dir: Path, model: nn.Module, best: dict, opt: torch.optim.Optimizer, meta: dict
) -> None:
    """Weights, best weights and Adam moments as tensors; counters as JSON. No pickle."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in state_tensors(model).items()}
    tensors.update({f"best/{k}": v.contiguous() for k, v in best.items()})
    osd = opt.state_dict()
    for i, st in osd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"opt/{i}/{key}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(run_dir / "last.safetensors"))
    meta = {**meta, "param_groups": osd["param_groups"]}
    tmp = run_dir / "last.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(run_dir / "last.json")


def load_train_state(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Inverse of ``save_train_state``; returns (best weights, meta)."""
    tensors = load_file(str(run_dir / "last.safetensors"))
    meta = json.loads((run_dir / "last.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, i, key = k.split("/")
            state.setdefault(int(i), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return best, meta
