"""The model registry: every registered model builds, runs forward and backward, and
rebuilds identically from the arguments a checkpoint records (timm's test_models style)."""

from __future__ import annotations

import json

import pytest
import torch

from kdcli.errors import ConfigError
from kdcli.models import build_model, model_names, resolve_model_args

NUM_CLASSES = 10
BATCH = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def input_shape(name: str) -> tuple[int, ...]:
    """Language models get windows of 12 tokens, 1-D models (MNIST-1D) [1, 40]; everything
    else a small RGB image."""
    if "gpt" in name:
        return (12,)
    return (1, 40) if "1d" in name or "mlp" in name else (3, 16, 16)


def sample(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A batch of model inputs: token ids for language models, floats otherwise."""
    if "gpt" in name:
        return torch.randint(0, NUM_CLASSES, (BATCH, *shape))
    return torch.randn(BATCH, *shape)


@pytest.mark.parametrize("name", model_names())
def test_forward_backward(name):
    shape = input_shape(name)
    args = resolve_model_args(name, NUM_CLASSES, shape)
    torch.manual_seed(0)
    model = build_model(name, **args)
    assert isinstance(model.features, torch.nn.Module)
    assert isinstance(model.head, torch.nn.Module)

    x = sample(name, shape)
    out = model(x)
    assert out.shape == (BATCH, *shape[:1] * ("gpt" in name), NUM_CLASSES)  # a row per token for LMs
    assert torch.isfinite(out).all()
    # features -> head is the whole model (cka reads the penultimate layer from `features`).
    assert torch.equal(model.head(model.features(x)), out)

    out.square().mean().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for pname, p in params:
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", model_names())
def test_resolved_args_rebuild_the_same_model(name):
    args = resolve_model_args(name, NUM_CLASSES, input_shape(name))
    assert args["num_classes"] == NUM_CLASSES
    assert args["input_shape"] == list(input_shape(name))
    # A checkpoint stores the args as JSON; what comes back must build the same weights.
    stored = json.loads(json.dumps(args))
    assert stored == args
    torch.manual_seed(123)
    a = build_model(name, **args).state_dict()
    torch.manual_seed(123)
    b = build_model(name, **stored).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: {k} differs between two builds with one seed"


def test_resolve_fills_in_defaults():
    args = resolve_model_args("cnn1d", 3, (1, 40), {"channels": 8})
    assert args == {"num_classes": 3, "input_shape": [1, 40], "channels": 8}
    args = resolve_model_args("resnet_cifar", 100, (3, 32, 32))
    assert args == {"num_classes": 100, "input_shape": [3, 32, 32], "depth": 20, "width": 16}
    model = build_model("cnn1d", **resolve_model_args("cnn1d", 3, (1, 40), {"channels": 8}))
    assert model.features[0].out_channels == 8


def test_resnet_cifar_depth_and_size():
    # He et al. (2016): depth 6n+2 with n basic blocks per stage; resnet20 (w=16) has ~0.27M params.
    model = build_model("resnet20", **resolve_model_args("resnet20", 10, (3, 32, 32)))
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 9
    n_params = sum(p.numel() for p in model.parameters())
    assert 260_000 < n_params < 280_000
    assert model(torch.randn(BATCH, 3, 32, 32)).shape == (BATCH, 10)


def test_torchvision_model():
    args = resolve_model_args("tv:resnet18", NUM_CLASSES, (3, 32, 32))
    torch.manual_seed(0)
    model = build_model("tv:resnet18", **args)
    torch.manual_seed(0)
    again = build_model("tv:resnet18", **json.loads(json.dumps(args)))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    out = model(torch.randn(BATCH, 3, 32, 32))
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()


def test_unknown_torchvision_model():
    with pytest.raises(ConfigError, match="tv:no_such_net"):
        build_model("tv:no_such_net", **resolve_model_args("tv:no_such_net", 10, (3, 32, 32)))


def test_unknown_model_lists_the_names():
    with pytest.raises(ConfigError) as info:
        resolve_model_args("no_such_model", 10, (1, 40))
    msg = str(info.value)
    assert "--model" in msg and "no_such_model" in msg
    for name in model_names():
        assert name in msg
    with pytest.raises(ConfigError, match="no_such_model"):
        build_model("no_such_model", num_classes=10, input_shape=[1, 40])


def test_unknown_model_arg_is_named():
    with pytest.raises(ConfigError) as info:
        resolve_model_args("cnn1d", 10, (1, 40), {"chanels": 8})
    msg = str(info.value)
    assert "--model-arg" in msg and "chanels" in msg
    assert "channels" in msg  # says what it accepts


def test_unknown_torchvision_model_arg_is_a_config_error():
    args = resolve_model_args("tv:resnet18", 10, (3, 32, 32), {"no_such_arg": 1})
    with pytest.raises(ConfigError, match="no_such_arg"):
        build_model("tv:resnet18", **args)


@pytest.mark.parametrize("shape,patches", [((1, 40), 10), ((3, 32, 32), 64)])
def test_vit_patches_signals_and_images(shape, patches):
    """The ViT student takes MNIST-1D signals and CIFAR-10 images: one token per patch."""
    torch.manual_seed(0)
    model = build_model("vit", **resolve_model_args("vit", NUM_CLASSES, shape, {"dim": 16, "depth": 2}))
    assert model.features.pos.shape == (1, patches, 16)
    x = torch.randn(BATCH, *shape)
    assert model(x).shape == (BATCH, NUM_CLASSES)
    assert model.features(x).shape == (BATCH, 16)


def test_vit_attention_is_bidirectional():
    """Unlike the GPT blocks it borrows, the first patch's state depends on the last patch."""
    torch.manual_seed(0)
    encoder = build_model("vit", **resolve_model_args("vit", NUM_CLASSES, (1, 40), {"dim": 16, "depth": 1})).features
    x = torch.randn(1, 1, 40)
    y = x.clone()
    y[..., -4:] += 1.0  # only the last patch changes
    first = [encoder.blocks(encoder.embed(v).flatten(2).transpose(1, 2) + encoder.pos)[:, 0] for v in (x, y)]
    assert (first[0] - first[1]).abs().max() > 1e-4


@pytest.mark.parametrize("args,match", [({"patch": 3}, "patch=3 must divide"),
                                        ({"dim": 10, "heads": 4}, "multiple of heads")])
def test_vit_bad_arguments_are_named(args, match):
    with pytest.raises(ConfigError, match=match):
        build_model("vit", **resolve_model_args("vit", NUM_CLASSES, (1, 40), args))


def test_vit_trains_on_images_and_signals(tmp_path):
    """The transformer student in a real run: a teacher-free label run on tiny RGB images
    (the CIFAR layout) and on MNIST-1D, through the registry and a checkpoint reload."""
    from kdcli.io.checkpoint import load_model
    from kdcli.stages import train
    from tests.conftest import tiny_config
    from tests.test_training import write_image_parquet

    images = write_image_parquet(tmp_path / "images")
    for name, kw in (("img", dict(dataset="parquet-images", dataset_args={}, data_dir=str(images), batch_size=16)),
                     ("sig", {})):
        res = train.run(tiny_config(tmp_path / name, model="vit", model_args={"dim": 8, "depth": 1, "heads": 2}, **kw))
        run = json.loads((res.run_dir / "run.json").read_text())
        assert run["model"]["name"] == "vit" and 0 <= run["final"]["test_acc"] <= 1
        model, _ = load_model(res.run_dir / "model.safetensors")
        assert model.features.pos.shape[1] == (4 if name == "img" else 10)  # 8×8 / 4×4 patches; 40 / 4
