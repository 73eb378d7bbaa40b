"""Teacher-forcing a series through a MemNet, one step at a time: what the evaluations share."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from models.memnet import MemNet, MemNetState


@torch.inference_mode()
def stream(
    model: MemNet, z: np.ndarray, begin: int, keep: set[int], progress: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[int, MemNetState]]:
    """Teacher-force z[begin:] through the model; y[t - begin] predicts z[t + 1].

    Returns the predictions and their stds (T - begin, D) (stds 0 for a model without a
    predictive scale) and the state after the input at each t in keep.
    """
    device = model.log_sigma.device
    state = model.initial_state(1, device)
    xs = torch.from_numpy(z).to(device)
    ys, sds, kept = [], [], {}
    for t in tqdm(range(begin, len(z)), desc="stream", disable=not progress, leave=False):
        y, sd, state = model.step_dist(xs[t : t + 1], state)
        ys.append(y)
        sds.append(sd)
        if t in keep:
            kept[t] = state
    return torch.cat(ys).cpu().numpy(), torch.cat(sds).cpu().numpy(), kept
