"""Grow a trained VMA's generative nets to more feature maps without changing what it computes.

The generative parts (the pyramid of p(z|m_a), q(z|m_a, x)'s pyramid, the decoder) of a model
trained at ``channels`` = C are copied into a model with C' > C maps per layer. Every new weight
that reads a new channel starts at zero, so the new channels are computed but nothing reads them
yet: the wider model gives exactly the old model's bound and samples at step 0, and training
then finds a use for the new maps (the zero weights get gradients as soon as the new channels
are non-zero, which their randomly initialised incoming weights make them). Starting the wider
model afresh would throw away hours of training; this keeps them.

Channel layouts the copy has to respect:
* conv and transposed-conv maps: old channels first, new ones after;
* a flattened top map (C, s, s) -> C s s: channel-major, so the old block is a prefix;
* the decoder's concatenations [y, skip] (2C channels): the old y maps go to [0, C), the old
  skip maps to [C', C' + C).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from models.vma import VMA


def _index_map(old: int, new: int, c_old: int, c_new: int) -> Tensor:
    """Where each of ``old`` entries of one dim lands among ``new``: (old,) int64."""
    if old == new:
        return torch.arange(old)
    if old == 2 * c_old and new == 2 * c_new:  # the decoder's [y, skip] concatenation
        return torch.cat([torch.arange(c_old), c_new + torch.arange(c_old)])
    assert new > old and old % c_old == 0 and new == old // c_old * c_new, (
        f"cannot widen a dim of {old} (channels {c_old}) to {new} (channels {c_new})"
    )
    return torch.arange(old)  # per-channel maps or a flattened channel-major top map: a prefix


def _input_dim(module: nn.Module) -> int | None:
    """The weight dim that reads the layer's input (None: the module holds no such weight)."""
    if isinstance(module, nn.ConvTranspose2d):
        return 0  # (in, out, k, k)
    if isinstance(module, nn.Conv2d | nn.Linear):
        return 1  # (out, in, ...)
    return None


def _widen_tensor(old: Tensor, fresh: Tensor, in_dim: int | None, c_old: int, c_new: int) -> Tensor:
    """``fresh`` (the wide model's init) with the entries reading new inputs zeroed, ``old`` copied in."""
    out = fresh.clone()
    maps = [_index_map(o, n, c_old, c_new) for o, n in zip(old.shape, fresh.shape, strict=True)]
    if in_dim is not None and old.shape[in_dim] != fresh.shape[in_dim]:
        is_new = torch.ones(fresh.shape[in_dim], dtype=torch.bool)
        is_new[maps[in_dim]] = False
        index = [slice(None)] * fresh.dim()
        index[in_dim] = is_new
        out[tuple(index)] = 0.0  # new inputs read by nothing yet: the old function is kept
    out[torch.meshgrid(*maps, indexing="ij")] = old
    return out


def widen(model: VMA, channels: int) -> VMA:
    """A VMA whose generative nets have ``channels`` maps and compute exactly what ``model``'s do.

    conv4 addressing nets (their own ``address_channels``) and e_p are copied unchanged;
    addressing nets of the "pyramid" kind share ``channels`` and grow the same way.
    """
    c_old = model.config.channels
    assert channels > c_old, f"channels must grow: the model has {c_old}"
    wide = VMA(dataclasses.replace(model.config, channels=channels))
    old_state = model.state_dict()
    modules = dict(wide.named_modules())
    state = {}
    for name, fresh in wide.state_dict().items():
        old = old_state[name]
        if old.shape == fresh.shape:
            state[name] = old.clone()
            continue
        owner, leaf = name.rsplit(".", 1)
        in_dim = _input_dim(modules[owner]) if leaf == "weight" else None
        state[name] = _widen_tensor(old, fresh, in_dim, c_old, channels)
    wide.load_state_dict(state)
    return wide
