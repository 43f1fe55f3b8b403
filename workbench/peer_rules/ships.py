"""Ships: ydyjya/SafetyHeadAttribution, ``lib/SHIPS/get_ships.py``, ``pd_diff.py``.

Adaptation: a forward hook on ``q_proj`` for the reference's edit of ``query_states`` inside
its own Llama attention class (the same tensor, scaled before RoPE).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workbench.peer_rules.common import decoder_layers, n_layers_heads


def ships_kl(base_pd: torch.Tensor, mask_pd: torch.Tensor) -> torch.Tensor:
    """``pd_diff.kl_divergence``: ``sum(p * log(p / q))`` after adding 1e-12 to both."""
    epsilon = 1e-12
    base_pd = base_pd + epsilon
    mask_pd = mask_pd + epsilon
    return torch.sum(base_pd * torch.log(base_pd / mask_pd))


@torch.no_grad()
def get_ships(
    model: torch.nn.Module,
    tokenizer: Any,
    input_text: str,
    scale_factor: float = 1e-5,
    layers: tuple[int, int] | None = None,
) -> np.ndarray:
    """``SHIPS.get_ships`` with ``mask_cfg = {"mask_qkv": ["q"], "scale_factor": 1e-5,
    "mask_type": "scale_mask"}`` (the quick-start / Sahara configuration): for every head,
    its query states scaled by ``scale_factor`` before RoPE (``CustomLlamaAttention``:
    ``query_states[:, head_idx] *= scale_factor``; here a hook on ``q_proj`` scales the
    head's slice of the projection, the same tensor), then KL between the softmax of the last
    position's logits without and with the scaling. Input: ``tokenizer(input_text)`` (no chat
    template, ``use_tem=False``). ``layers=(start, end)`` scans those layers only, as
    ``get_ships(layers=...)``. Returns (layers, heads), NaN for layers not scanned."""
    n_layers, n_heads = n_layers_heads(model)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // n_heads
    inputs = tokenizer(input_text, return_tensors="pt")

    def one_forward_pass() -> torch.Tensor:
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return torch.softmax(out.logits[:, -1, :], dim=-1)

    base_pd = one_forward_pass()
    start_layer, end_layer = (0, n_layers) if layers is None else layers
    res = np.full((n_layers, n_heads), np.nan)
    for layer in range(start_layer, end_layer):
        q_proj = decoder_layers(model)[layer].self_attn.q_proj
        for head in range(n_heads):

            def scale(_module, _inp, out, head=head):
                out = out.clone()
                out[..., head * head_dim : (head + 1) * head_dim] *= scale_factor
                return out

            handle = q_proj.register_forward_hook(scale)
            try:
                now_pd = one_forward_pass()
            finally:
                handle.remove()
            res[layer, head] = float(ships_kl(base_pd, now_pd))
    return res
