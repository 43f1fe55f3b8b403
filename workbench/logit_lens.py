"""The logit lens: read every layer's residual stream as if it were the last one.

nostalgebraist 2020, "interpreting GPT: the logit lens" (LessWrong): the residual stream after
block ``l`` is put through the model's own final norm and unembedding, giving a next-token
distribution per layer and position; where the model's final answer first becomes the top token
shows at which depth it is formed. The final norm, the unembedding and what the model does to
the unembedding's output (Cohere 2's logit scale, Gemma 2's final softcap) come from the
architecture table (:mod:`workbench.model_parts`), so at the last block the lens *is* the model's
own logits.

Differs from the blog post: stream 0 (``"embed"``) is the residual entering block 0 (token
embeddings plus anything the architecture adds before the first block), read the same way; the
post reads the embeddings too. No tuned-lens translators (Belrose et al. 2023) are applied.

Memory: the logits of one stream are (positions, vocabulary); they are reduced to the top-k and
the chosen token's probability and rank chunk by chunk, never kept for all layers at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from probes.checks import ArgumentError, describe, index_list, integer
from workbench.model_parts import block_output, decoder_blocks, final_logits, final_norm

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel

#: Positions whose (positions, vocabulary) logits are reduced at once.
CHUNK = 256
#: Label of stream 0, the residual entering block 0.
EMBED = "embed"


def token_id(lm: LoadedModel, name: str, value: Any) -> int:
    """A vocabulary id from a token id (int in 0..V-1) or a text (its *first* token, with the
    tokenizer's defaults minus special tokens: write ``" Paris"`` with its leading space).

    Raises :class:`~probes.checks.ArgumentError` naming ``name`` and the bad value."""
    vocab = int(lm.model.config.vocab_size) if hasattr(lm.model.config, "vocab_size") else None
    if isinstance(value, str):
        if not value:
            raise ArgumentError(f"{name} must be a non-empty text or a token id, got ''")
        ids = lm.tokenizer(value, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ArgumentError(f"{name} {value!r} tokenizes to nothing; give another text")
        return int(ids[0])
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ArgumentError(f"{name} must be a text or a token id, got {describe(value)}")
    return integer(name, value, minimum=0, maximum=None if vocab is None else vocab - 1)


def token_text(lm: LoadedModel, token: int) -> str:
    """How one token id reads (decoded alone; ``str(id)`` when the model has no tokenizer)."""
    if lm.tokenizer is None:
        return str(token)
    return lm.tokenizer.decode([int(token)])


@dataclass
class LogitLens:
    """The logit lens of one prompt.

    Attributes:
        tokens: the prompt's L token strings.
        positions: the P positions read (sorted).
        layers: the S = n_layers + 1 stream labels: ``"embed"``, then ``"L0"`` .. (after block).
        top_ids: (S, P, k) the lens' top-k token ids per stream and position.
        top_probs: (S, P, k) their probabilities.
        target_ids: (P,) the token whose probability and rank are followed at each position.
        target_probs: (S, P) its probability under each stream's lens.
        target_ranks: (S, P) its rank (1 = the lens' top token; ties count in its favour).
        final_ids: (P,) the model's own top-1 next token at each position.
    """

    tokens: list[str]
    positions: list[int]
    layers: list[str]
    top_ids: Tensor
    top_probs: Tensor
    target_ids: Tensor
    target_probs: Tensor
    target_ranks: Tensor
    final_ids: Tensor


class _Streams:
    """Keeps the residual stream (P, d) at ``positions`` entering block 0 and after every
    block, from forward hooks on the decoder blocks (removed on exit)."""

    def __init__(self, lm: LoadedModel, positions: Tensor) -> None:
        self.blocks = decoder_blocks(lm.model)
        self.positions = positions
        self.kept: dict[int, Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _Streams:
        def entering(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.kept[0] = self._pick(hidden)

        def after(index: int):
            def hook(module, args, output):
                self.kept[index + 1] = self._pick(block_output(output))

            return hook

        self.handles.append(self.blocks[0].register_forward_pre_hook(entering, with_kwargs=True))
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_hook(after(i)))
        return self

    def _pick(self, hidden: Tensor) -> Tensor:
        return hidden[0].detach().index_select(0, self.positions.to(hidden.device))

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()


def _positions(n_tokens: int, positions: Iterable[int] | None) -> list[int]:
    if positions is None:
        return list(range(n_tokens))
    return list(index_list("positions", positions, size=n_tokens, what="position"))


@torch.no_grad()
def logit_lens(
    lm: LoadedModel,
    prompt: str | Encoded,
    *,
    chat: bool = False,
    target: int | str | None = None,
    positions: Iterable[int] | None = None,
    top_k: int = 5,
) -> LogitLens:
    """The logit lens (nostalgebraist 2020) of every layer at ``positions`` of ``prompt``.

    Args:
        prompt: text (tokenized by :meth:`LoadedModel.encode`) or an :class:`Encoded`.
        target: the token followed at every position (id or text: its first token); None: at
            each position the prompt's own next token, at the last position the model's top-1.
        positions: positions to read (None: all); logits at position i predict token i + 1.
        top_k: how many top tokens to keep per stream and position (1..50).

    Returns a :class:`LogitLens`; one forward pass plus, per stream, the final norm and the
    unembedding of the P kept vectors.
    """
    top_k = integer("top_k", top_k, minimum=1, maximum=50)
    enc = lm.encode(prompt, chat=chat)
    n = enc.n_tokens
    kept_positions = _positions(n, positions)
    fixed = None if target is None else token_id(lm, "target", target)
    pos = torch.tensor(kept_positions, dtype=torch.long)
    with _Streams(lm, pos) as streams:
        logits = lm.forward(enc)[0]
    final_ids = logits.index_select(0, pos.to(logits.device)).argmax(-1).cpu()
    if fixed is not None:
        target_ids = torch.full((len(pos),), fixed, dtype=torch.long)
    else:
        ids = enc.input_ids[0]
        nxt = torch.cat([ids[1:], ids.new_full((1,), -1)])[pos]
        target_ids = torch.where(nxt < 0, final_ids, nxt)
    norm = final_norm(lm.model)
    n_streams = len(streams.blocks) + 1
    shape = (n_streams, len(pos))
    top_ids = torch.zeros(*shape, top_k, dtype=torch.long)
    top_probs = torch.zeros(*shape, top_k)
    target_probs, target_ranks = torch.zeros(shape), torch.zeros(shape, dtype=torch.long)
    for s in range(n_streams):
        resid = streams.kept[s]
        for lo in range(0, len(pos), CHUNK):
            hi = min(len(pos), lo + CHUNK)
            lens = final_logits(lm.model, norm(resid[lo:hi])).float()  # (p, V)
            logp = torch.log_softmax(lens, -1)
            values, indices = logp.topk(top_k, dim=-1)
            top_ids[s, lo:hi], top_probs[s, lo:hi] = indices.cpu(), values.exp().cpu()
            tid = target_ids[lo:hi].to(lens.device)
            own = lens.gather(1, tid[:, None])
            target_probs[s, lo:hi] = logp.gather(1, tid[:, None])[:, 0].exp().cpu()
            target_ranks[s, lo:hi] = ((lens > own).sum(-1) + 1).cpu()
    labels = [EMBED, *(f"L{i}" for i in range(n_streams - 1))]
    return LogitLens(
        tokens=list(enc.tokens),
        positions=kept_positions,
        layers=labels,
        top_ids=top_ids,
        top_probs=top_probs,
        target_ids=target_ids,
        target_probs=target_probs,
        target_ranks=target_ranks,
        final_ids=final_ids,
    )


__all__ = ["CHUNK", "EMBED", "LogitLens", "logit_lens", "token_id", "token_text"]
