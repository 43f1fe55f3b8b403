"""Add a vector to the residual stream at the last position: the function-vector intervention.

Todd et al. 2024 ("Function Vectors in Large Language Models", ICLR 2024; reference code
ericwtodd/function_vectors, ``add_function_vector`` in ``src/utils/intervention_utils.py``) add
a function vector ``v`` (d_model,) to the hidden state at the last token after one layer and
read the next-token prediction: on zero-shot prompts it makes the model perform the task.

Here the vector enters through the registered attention path, like every intervention (no
second hook system): at layer ``layer`` the per-head outputs ``z`` (B, Lq, H, D) of the last
query position get ``dz`` (H, D) added, with ``W_O dz = v`` solved once (least squares in
float64, ``W_O`` the layer's output projection, (d_model, H*D)). The attention block then
writes exactly ``attn_out + v`` into the residual stream (an output bias cancels: it is added
either way). Differences from the reference, and why:

* The vector lands after layer ``layer``'s attention block, before its MLP; the reference adds
  it to the output of the whole block ``layer`` (after the MLP). Ours equals the reference's
  ``layer - 1`` except that layer ``layer``'s attention at the last position does not see it.
* ``v`` must lie in the range of ``W_O`` (always, when ``W_O`` has full row rank, e.g. SmolLM2's
  576 x 576); otherwise the constructor refuses it, naming the part ``W_O`` cannot write.
* Architectures with a norm on the attention output (Gemma 2/3, OLMo 2) are refused: the norm
  would rescale the vector.
* During cached generation every forward's last position is the new token, so each decode
  step gets the vector too (the reference evaluates one next token).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probes import AttentionCall
from probes.checks import finite_tensor, integer, number
from workbench.interventions.base import Intervention, InterventionArgumentError
from workbench.lm import LoadedModel

#: Largest relative residual ``|W_O dz - v| / |v|`` accepted for the vector.
RANGE_TOLERANCE = 1e-4


class FunctionVector(Intervention):
    """Add ``scale * vector`` (d_model,) to the residual stream at the last position, after
    the attention block of ``layer`` (see the module docstring).

    ``vector``: a 1-D tensor (or list) of d_model finite numbers, e.g. one of the
    ``function_vector`` analyzer's vectors (:func:`workbench.analyzers.function_vector.
    function_vectors`). ``layer``: 0-based. ``scale``: any finite number (1 = as given).
    """

    name = "function_vector"

    def __init__(self, lm: LoadedModel, vector: Any, layer: int, scale: float = 1.0) -> None:
        top = lm.info.n_layers - 1 if isinstance(lm, LoadedModel) else None
        layer = integer("layer", layer, minimum=0, maximum=top)
        super().__init__(lm, f"L{layer}H*")  # every head of the layer (refuses a bad lm)
        self.layer = layer
        self.scale = number("scale", scale)
        d_model = int(lm.layout.out_projections[layer].weight.shape[0])
        if lm.layout.out_proj_transposed:
            d_model = int(lm.layout.out_projections[layer].weight.shape[1])
        vector = finite_tensor("vector", vector)
        if vector.dim() != 1 or vector.shape[0] != d_model:
            raise InterventionArgumentError(
                f"vector must be a 1-D tensor of {d_model} numbers (the model's residual "
                f"width), got shape {tuple(vector.shape)}"
            )
        from workbench.model_parts import attn_output_norms

        if attn_output_norms(lm.model) is not None:
            raise InterventionArgumentError(
                f"vector: {lm.info.name} normalizes each attention block's output, which would "
                "rescale the vector; this intervention supports models without that norm"
            )
        self.vector = vector.detach().double().cpu()
        self.delta = head_delta(lm, layer, self.vector)  # (H, D) float64

    def __repr__(self) -> str:
        return f"FunctionVector(layer={self.layer}, scale={self.scale:g})"

    def edit_output(self, call: AttentionCall, heads: tuple[int, ...], output: Tensor) -> Tensor:
        out = output.clone()
        out[:, -1] += (self.scale * self.delta).to(out.device, out.dtype)
        return out


def head_delta(lm: LoadedModel, layer: int, vector: Tensor) -> Tensor:
    """(H, D) float64 per-head outputs ``dz`` with ``W_O dz = vector`` at ``layer``
    (least squares; refused when ``W_O`` cannot write ``vector``)."""
    from workbench.analyzers.logit_attribution import head_out_weights

    writers = head_out_weights(lm, layer).double().cpu()  # (H, D, d_model)
    n_heads, head_dim, d_model = writers.shape
    w_o = writers.reshape(n_heads * head_dim, d_model).T  # (d_model, H*D): attn_out = W_O z
    dz = torch.linalg.lstsq(w_o, vector[:, None], driver="gelsd").solution[:, 0]
    miss = float((w_o @ dz - vector).norm())
    size = float(vector.norm())
    if miss > RANGE_TOLERANCE * max(size, 1e-30) and size > 0:
        raise InterventionArgumentError(
            f"vector: layer {layer}'s output projection cannot write it (relative residual "
            f"{miss / size:.2g} > {RANGE_TOLERANCE:g}); choose another layer or a vector in "
            "the range of that projection"
        )
    return dz.reshape(n_heads, head_dim)


__all__ = ["RANGE_TOLERANCE", "FunctionVector", "head_delta"]
