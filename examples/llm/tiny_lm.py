"""A small decoder-only transformer, built in code, and a byte-level tokenizer: an LLM with no download.

It stands in for a real model in ``batch_generate.py`` (swap in yours, or see docs/llm.md for vLLM):
random weights from a fixed seed, so every worker holds the same model and the text it generates is
noise, but the work is an LLM's: a prefill of the whole prompt batch, then one token per step with a
key/value cache, left-padded batches with attention masks, greedy decoding that stops per prompt at
its end-of-sequence token or at ``max_new_tokens``, greedy or sampled (each prompt from a random
generator seeded by its own text, so a slice done again generates the same text, whatever batch its
prompts land in).

* :class:`ByteTokenizer`: UTF-8 bytes are the tokens (0..255), plus BOS, EOS and PAD.
* :class:`TinyDecoder`: token and position embeddings, pre-norm blocks (causal self-attention through
  ``scaled_dot_product_attention``, a GELU MLP), a linear head to the vocabulary.
* :func:`generate`: greedy generation for a batch of prompts.
* :func:`length_batches`: dynamic batching by length, under a token budget.
"""

from __future__ import annotations

import zlib
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Cache = List[Tuple[torch.Tensor, torch.Tensor]]


class ByteTokenizer:
    """Bytes are tokens: any text round-trips, no vocabulary file."""

    BOS, EOS, PAD = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> List[int]:
        return [self.BOS] + list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x, mask, cache: Optional[Tuple[torch.Tensor, torch.Tensor]]):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # keys and values of the tokens before these
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x)), (k, v)


class TinyDecoder(torch.nn.Module):
    """A GPT-style decoder; ``forward`` takes the cache of earlier tokens and returns the new one."""

    def __init__(self, vocab_size: int = ByteTokenizer.vocab_size, dim: int = 64, heads: int = 4, layers: int = 2,
                 max_positions: int = 512):
        super().__init__()
        self.max_positions = max_positions
        self.embed = torch.nn.Embedding(vocab_size, dim)
        self.positions = torch.nn.Embedding(max_positions, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(dim)
        # Not tied to the embedding: with random weights a tied head scores the current token highest
        # and the "model" only ever repeats it.
        self.head = torch.nn.Linear(dim, vocab_size, bias=False)

    def forward(self, ids, positions, mask, cache: Optional[Cache] = None):
        x = self.embed(ids) + self.positions(positions)
        new_cache: Cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, cache[i] if cache is not None else None)
            new_cache.append(kv)
        return self.head(self.ln(x)), new_cache


def load_model(seed: int = 0) -> TinyDecoder:
    """The example's model: random weights from ``seed`` (every worker gets the same model)."""
    torch.manual_seed(seed)
    return TinyDecoder().eval()


def _allowed(vocab_size: int) -> torch.Tensor:
    """Logit mask for generation: printable ASCII and EOS (random weights would emit any byte)."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[32:127] = True
    allowed[ByteTokenizer.EOS] = True
    return allowed


@torch.no_grad()
def generate(model: TinyDecoder, tokenizer: ByteTokenizer, prompts: Sequence[str], max_new_tokens: int = 16,
             temperature: float = 0.0, use_cache: bool = True) -> List[str]:
    """Continuations of ``prompts`` (one batch), each stopped at EOS or ``max_new_tokens``.

    ``temperature`` 0 is greedy decoding; above 0, tokens are sampled, each prompt with a generator
    seeded by its text.

    Prompts are left-padded to one length, so every row's next token comes out at the last position;
    the mask keeps each token from attending to padding or to later tokens. ``use_cache=False``
    recomputes the whole sequence at every step (slow; the tests check it agrees with the cache).
    """
    encoded = [tokenizer.encode(p)[-(model.max_positions - max_new_tokens):] for p in prompts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.PAD, dtype=torch.long)
    valid = torch.zeros(len(encoded), width, dtype=torch.bool)
    for row, e in enumerate(encoded):
        ids[row, width - len(e):] = torch.tensor(e)
        valid[row, width - len(e):] = True
    allowed = _allowed(model.embed.num_embeddings)
    finished = torch.zeros(len(encoded), dtype=torch.bool)
    out: List[List[int]] = [[] for _ in encoded]
    cache: Optional[Cache] = None
    generators = [torch.Generator().manual_seed(zlib.crc32(p.encode("utf-8"))) for p in prompts]
    step_ids, seen = ids, valid
    for _ in range(max_new_tokens):
        positions = (seen.long().cumsum(1) - 1).clamp(min=0)
        if cache is None or not use_cache:
            n = seen.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            # A padding position attends to itself only, so that no row of the mask is all False.
            mask = (causal & seen[:, None, None, :]) | torch.eye(n, dtype=torch.bool)
            logits, cache = model(step_ids, positions, mask)
        else:
            logits, cache = model(step_ids[:, -1:], positions[:, -1:], seen[:, None, None, :], cache)
        logits = logits[:, -1].masked_fill(~allowed, float("-inf"))
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(generators)])
        else:
            token = logits.argmax(-1)
        for row in range(len(encoded)):
            if not finished[row]:
                if token[row].item() == tokenizer.EOS:
                    finished[row] = True
                else:
                    out[row].append(token[row].item())
        if bool(finished.all()):
            break
        step_ids = torch.cat([step_ids, token[:, None]], dim=1)
        seen = torch.cat([seen, torch.ones(len(encoded), 1, dtype=torch.bool)], dim=1)
    return [tokenizer.decode(o) for o in out]


def length_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> List[List[int]]:
    """Indices of prompts grouped into batches of similar length (dynamic batching).

    Sorting by length wastes little compute on padding; a batch grows while ``rows * longest`` stays
    within ``max_batch_tokens`` (so short prompts go in large batches, long ones in small) and its
    rows within ``max_batch_size``. Every index is in exactly one batch; a prompt longer than the
    budget gets a batch of its own.
    """
    batches: List[List[int]] = []
    current: List[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        longest = lengths[i]  # sorted: the newest is the longest
        if current and ((len(current) + 1) * longest > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
