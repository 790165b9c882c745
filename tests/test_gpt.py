"""The GPT decoder (kdcli/models/gpt.py): shapes, causality, tied weights through a
checkpoint, attention against a float64 reference, sizes, layers for cka, seeded init."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kdcli.errors import ConfigError
from kdcli.models import build_model, resolve_model_args
from kdcli.models.gpt import CausalSelfAttention
from kdcli.models.layers import LayerHooks, default_layer, list_layers
from kdcli.task import Task

V, T, B = 50, 12, 3
TASK = Task("sequence", V, "permutation", primary="test_loss", pi="relative_reduction")


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str = "test_gpt", vocab: int = V, window: int = T, seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_model(name, **resolve_model_args(name, vocab, (window,), extra)).eval()


def tokens(n: int = B, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n, length), generator=torch.Generator().manual_seed(seed))


def test_logits_for_every_position():
    model = make()
    x = tokens()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (B, T, V) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert torch.equal(model.head(model.features(x)), out)
        assert model.features(x).shape == (B, T, 16)


def test_shorter_inputs_work_longer_ones_fail():
    model = make(window=8, block=16)
    assert model.features.wpe.weight.shape[0] == 16
    with torch.no_grad():
        x = tokens(length=16)
        assert model(x[:, :5]).shape == (B, 5, V)
        # A prefix gives the same logits as the start of the whole window (causal, learned positions).
        assert torch.allclose(model(x[:, :5]), model(x)[:, :5], atol=1e-6)
        with pytest.raises(ValueError, match="17 tokens exceeds the model's block=16"):
            model(tokens(length=17))


def test_window_longer_than_block_is_a_config_error():
    args = resolve_model_args("test_gpt", V, (T,), {"block": T - 1})
    with pytest.raises(ConfigError) as info:
        build_model("test_gpt", **args)
    msg = str(info.value)
    assert f"window length T={T}" in msg and f"block={T - 1}" in msg and f"--model-arg block={T}" in msg


@pytest.mark.parametrize("extra, words", [
    ({"n_embd": 15}, "must be a multiple of n_head=2"),
    ({"vocab_size": V + 1}, f"vocab_size={V + 1} cannot take the dataset's vocabulary of {V} tokens"),
    ({"n_layer": 0}, "n_layer must be an integer ≥ 1"),
    ({"n_head": 2.0}, "n_head must be an integer"),
    ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
])
def test_bad_arguments_are_config_errors(extra, words):
    with pytest.raises(ConfigError) as info:
        build_model("test_gpt", **resolve_model_args("test_gpt", V, (T,), extra))
    assert words in str(info.value)


def test_image_shaped_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"token windows of shape \(T,\)"):
        build_model("gpt", **resolve_model_args("gpt", 10, (1, 8, 8)))


def test_vocab_size_equal_to_the_dataset_builds():
    assert make(vocab_size=V)(tokens()).shape == (B, T, V)


def test_causal_later_tokens_do_not_change_earlier_logits():
    model = make(n_layer=2)
    x = tokens()
    with torch.no_grad():
        ref = model(x)
        for t in (0, 4, T - 2):
            y = x.clone()
            y[:, t + 1:] = (y[:, t + 1:] + 1 + torch.arange(T - t - 1)) % V  # every later token differs
            out = model(y)
            assert torch.equal(out[:, :t + 1], ref[:, :t + 1]), t
            assert not torch.allclose(out[:, t + 1:], ref[:, t + 1:])


def test_head_is_tied_to_the_token_embedding():
    model = make()
    wte = model.features.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "features.wte.weight" in names and not any(n.startswith("head") for n in names)
    assert sum(p is wte for p in model.parameters()) == 1
    x = tokens()
    with torch.no_grad():
        h = model.features(x)
        assert torch.allclose(model(x), h @ wte.T, atol=1e-6)
        before = model.head(h)
        wte[7] += 1.0  # token 7's embedding row: the head's row for token 7 moves with it
        out = model.head(h)  # the same hidden states
        assert torch.allclose(out[..., 7], before[..., 7] + h.sum(-1), atol=1e-5)
        assert torch.equal(out[..., :7], before[..., :7])
    # Gradients of the output reach the shared weight, once.
    model(x)[..., 3].sum().backward()
    assert wte.grad is not None and wte.grad[3].abs().sum() > 0


def test_state_dict_has_no_shared_tensors():
    sd = make("test_gpt", n_layer=2).state_dict()
    ptrs = [t.untyped_storage().data_ptr() for t in sd.values()]
    assert len(set(ptrs)) == len(ptrs)
    assert not any(k.startswith("head") for k in sd)


def test_deepcopy_ties_to_its_own_embedding():
    model = make()
    twin = copy.deepcopy(model)
    assert twin.head.embedding is twin.features.wte and twin.features.wte is not model.features.wte
    x = tokens()
    with torch.no_grad():
        before = model(x)
        twin.features.wte.weight.mul_(2)
        assert torch.equal(model(x), before)  # the original is untouched
        h = twin.features(x)
        assert torch.allclose(twin.head(h), h @ twin.features.wte.weight.T, atol=1e-6)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    from kdcli.io.checkpoint import load_model, save_model

    args = resolve_model_args("test_gpt", V, (T,), {"n_layer": 2})
    torch.manual_seed(3)
    model = build_model("test_gpt", **args).eval()
    path = tmp_path / "model.safetensors"
    save_model(path, model, model_name="test_gpt", model_args=args, dataset={"fingerprint": "f" * 64},
               run_id="r", num_classes=V)
    loaded, info = load_model(path)
    assert info["model_args"] == args
    loaded.eval()
    assert loaded.head.embedding is loaded.features.wte
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _reference_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q·Kᵀ/√d + causal mask)·V per head, heads concatenated, output projection; float64."""
    x = x.double()
    w_qkv, b_qkv = attn.qkv.weight.double(), attn.qkv.bias.double()
    n, C = x.shape[1], x.shape[2]
    H = attn.n_head
    d = C // H
    qkv = x @ w_qkv.T + b_qkv
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)  # -inf above the diagonal
    heads = []
    for h in range(H):
        q, k, v = (qkv[..., i * C + h * d:i * C + (h + 1) * d] for i in range(3))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
        heads.append(torch.softmax(scores, dim=-1) @ v)
    y = torch.cat(heads, dim=-1)
    return y @ attn.proj.weight.double().T + attn.proj.bias.double()


def test_attention_matches_a_float64_reference():
    model = make(n_embd=24, n_head=3)
    attn = model.features.blocks[0].attn
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 0.3)  # sharper attention than the init's, so the mask matters
        x = torch.randn(B, T, 24, generator=torch.Generator().manual_seed(2))
        ref = _reference_attention(attn, x)
        assert torch.allclose(attn(x).double(), ref, atol=1e-5, rtol=1e-4)
        assert torch.allclose(copy.deepcopy(attn).double()(x.double()), ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name, low, high", [("gpt_student", 0.9e6, 1.2e6), ("gpt_teacher", 3e6, 10e6),
                                             ("gpt", 0.9e6, 1.2e6), ("test_gpt", 1e4, 1e5)])
def test_parameter_counts(name, low, high):
    torch.manual_seed(0)
    model = build_model(name, **resolve_model_args(name, 2048, (128,)))
    assert low <= sum(p.numel() for p in model.parameters()) <= high


def test_layers_for_cka():
    model = make()
    assert default_layer(model) == "features"
    layers = {layer.name: layer for layer in list_layers(model, tokens(2), TASK)}
    assert layers["features"].default and layers["features"].shape == (16,)
    assert layers["features"].calls == 1 and layers["features.wte"].calls == 1  # the head adds no call
    assert layers["head"].shape == (V,)
    per_token = {n: la.shape for n, la in layers.items() if la.shape is not None}
    assert per_token["features.wpe"] == (16,)  # positions per token too, not a [T, C] table
    assert all(len(shape) == 1 for shape in per_token.values()), per_token
    with LayerHooks(model, ["features"], TASK) as hooks, torch.no_grad():
        out = hooks.forward(tokens(2))
    assert out["features"].shape == (2 * T, 16)  # a row per token
    assert torch.allclose(out["features"][T + 1], model.features(tokens(2))[1, 1])


def test_seeded_init_is_deterministic_and_follows_nanogpt():
    a, b = make(seed=5, n_layer=2).state_dict(), make(seed=5, n_layer=2).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = make(seed=6, n_layer=2).state_dict()
    assert not torch.equal(a["features.wte.weight"], c["features.wte.weight"])
    torch.manual_seed(0)
    big = build_model("gpt", **resolve_model_args("gpt", 512, (64,), {"n_layer": 8}))
    assert big.features.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert big.features.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert big.features.blocks[0].attn.qkv.bias.abs().max() == 0


def test_dropout_is_active_in_training_only():
    model = make(dropout=0.5)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))
