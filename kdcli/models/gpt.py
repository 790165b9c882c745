"""A GPT decoder for next-token prediction, written to be read (after Karpathy's nanoGPT).

    tokens [B, T] ──features──▶ [B, T, n_embd] ──head──▶ logits [B, T, V]

`features` (the trunk): token embedding + learned position embedding, dropout, n_layer
pre-norm blocks, final LayerNorm. Its output is the penultimate representation (one
n_embd vector per token) that `kdcli cka` compares by default.

`head`: the output projection, tied to the token embedding (Press & Wolf, 2017): the
logit of token v is the dot product of the final hidden state with v's embedding row.

Each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
  attn: causal multi-head self-attention (F.scaled_dot_product_attention, is_causal=True)
  mlp:  Linear(C, 4C) → GELU → Linear(4C, C)

Initialisation as nanoGPT (and GPT-2): every Linear and Embedding weight ~ N(0, 0.02²),
biases 0, LayerNorm 1 and 0; the two projections that write into the residual stream in
each block (attn.proj, mlp.proj) ~ N(0, (0.02/√(2·n_layer))²), so the residual stream's
variance does not grow with depth.

The builder's `num_classes` is the vocabulary V and `input_shape` is (T,), the dataset's
window length. Registered sizes (parameters at V=2048, T=128, embedding counted once):
  gpt          n_layer 4, n_head 4, n_embd 128        (the plain builder)
  gpt_student  n_layer 4, n_head 4, n_embd 128        ≈ 1.07 M (0.79 M in the blocks)
  gpt_teacher  n_layer 6, n_head 8, n_embd 256        ≈ 5.30 M (4.74 M in the blocks)
  test_gpt     n_layer 1, n_head 2, n_embd 16         (tests)
Every size takes --model-arg n_layer, n_head, n_embd, block, dropout, vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.models.registry import register_model
from kdcli.models.zoo import Classifier


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions ≤ t only (to every
    position with causal=False: the ViT student, kdcli/models/vit.py)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, causal: bool = True):
        super().__init__()
        self.n_head = n_head
        self.causal = causal
        self.dropout = dropout  # on the attention weights, in training only
        self.qkv = nn.Linear(n_embd, 3 * n_embd)  # queries, keys and values of all heads at once
        self.proj = nn.Linear(n_embd, n_embd)  # writes into the residual stream
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]: each head attends on its own slice of C.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # softmax(q·kᵀ/√head_dim + causal mask)·v, by PyTorch's fused kernel.
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd)  # writes into the residual stream
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: each sublayer reads a normalised copy of the residual stream
    and adds its output back to it."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, causal: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, causal)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Tokens [B, T] (integers < vocab_size, T ≤ block) -> final hidden states [B, T, n_embd]."""

    def __init__(self, vocab_size: int, block: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float):
        super().__init__()
        self.block = block
        self.wte = nn.Embedding(vocab_size, n_embd)  # token embedding; also the output projection
        self.wpe = nn.Embedding(block, n_embd)  # one learned vector per position 0 .. block-1
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.ndim != 2:
            raise ValueError(f"GPT takes token ids of shape [batch, T], got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block:
            raise ValueError(f"an input of {T} tokens exceeds the model's block={self.block} "
                             "positions (it has no learned position beyond that); pass at most "
                             f"{self.block} tokens")
        # Positions per token, [B, T] like idx, so wpe's output is [B, T, C] as every other
        # layer's (kdcli cka's hooks read a row per token from the first two dimensions).
        pos = torch.arange(T, device=idx.device).expand_as(idx)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


class TiedHead(nn.Module):
    """Hidden states [B, T, n_embd] -> logits [B, T, V] = h · wteᵀ, with the token embedding's
    own weight: the head has no parameter of its own.

    The embedding belongs to the trunk (features.wte) and is only *referenced* here, through
    an attribute nn.Module does not register (set with object.__setattr__). Registering it
    twice, as a submodule or as nanoGPT does with `lm_head.weight = wte.weight`, would give
    `state_dict()` two names for one tensor, and safetensors (kdcli's checkpoint format)
    refuses to save tensors that share memory. Unregistered, the weight appears once in
    parameters(), state_dict() and named_modules() (as features.wte.weight), and hooks on
    features.wte see one call per forward pass. `forward` reads `.weight` when it runs, so
    load_state_dict and .to(device) keep the tie, and copy.deepcopy copies the reference
    through its memo, so a copy's head uses the copy's own embedding.
    """

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # a reference, not a submodule

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.embedding.weight)

    def extra_repr(self) -> str:
        v, c = self.embedding.weight.shape
        return f"in_features={c}, out_features={v}, weight=features.wte.weight (tied)"


class GPT(Classifier):
    """features (Trunk) -> head (TiedHead): logits for the next token at every position."""

    def __init__(self, vocab_size: int, block: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float):
        trunk = Trunk(vocab_size, block, n_layer, n_head, n_embd, dropout)
        super().__init__(trunk, TiedHead(trunk.wte))
        self.vocab_size, self.block = vocab_size, block
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        # Each block adds two projections to the residual stream: 2·n_layer terms in all.
        for block in self.features.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.n_layer))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    return value


@register_model("gpt")
def gpt(num_classes: int, input_shape, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
        block: int | None = None, dropout: float = 0.0, vocab_size: int | None = None) -> nn.Module:
    """A GPT for windows of T = input_shape[0] tokens from a vocabulary of num_classes.

    block: learned positions (the longest input), default T. vocab_size: None takes the
    dataset's vocabulary; a number must equal it (a model meant for another tokenizer).
    """
    if len(input_shape) != 1:
        raise ValueError(f"a GPT takes token windows of shape (T,), the dataset gives samples of "
                         f"shape {tuple(input_shape)}")
    T = _positive_int("the window length T", input_shape[0])
    if vocab_size is not None and vocab_size != num_classes:
        raise ValueError(f"the model's vocab_size={vocab_size} cannot take the dataset's "
                         f"vocabulary of {num_classes} tokens")
    vocab = _positive_int("the vocabulary size", num_classes)
    n_layer, n_head, n_embd = (_positive_int(k, v) for k, v in
                               (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)))
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head} (each head gets "
                         "n_embd/n_head dimensions)")
    block = T if block is None else _positive_int("block", block)
    if T > block:
        raise ValueError(f"window length T={T} of the dataset exceeds the model's block={block} "
                         f"positions; pass --model-arg block={T} (or more) or a shorter window")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return GPT(vocab, block, n_layer, n_head, n_embd, float(dropout))


@register_model("gpt_student")
def gpt_student(num_classes: int, input_shape, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                block: int | None = None, dropout: float = 0.0,
                vocab_size: int | None = None) -> nn.Module:
    """≈1.07 M parameters at V=2048, T=128 (0.79 M of them in the blocks)."""
    return gpt(num_classes, input_shape, n_layer, n_head, n_embd, block, dropout, vocab_size)


@register_model("gpt_teacher")
def gpt_teacher(num_classes: int, input_shape, n_layer: int = 6, n_head: int = 8, n_embd: int = 256,
                block: int | None = None, dropout: float = 0.0,
                vocab_size: int | None = None) -> nn.Module:
    """≈5.3 M parameters at V=2048, T=128 (4.74 M of them in the blocks)."""
    return gpt(num_classes, input_shape, n_layer, n_head, n_embd, block, dropout, vocab_size)


@register_model("test_gpt")
def test_gpt(num_classes: int, input_shape, n_layer: int = 1, n_head: int = 2, n_embd: int = 16,
             block: int | None = None, dropout: float = 0.0,
             vocab_size: int | None = None) -> nn.Module:
    """Tiny, for tests."""
    return gpt(num_classes, input_shape, n_layer, n_head, n_embd, block, dropout, vocab_size)
