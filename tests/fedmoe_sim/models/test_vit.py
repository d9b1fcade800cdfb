"""ViT / CLIP image model (models/vit.py) on tiny random configs: no download ever happens."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoe_sim.config import ModelConfig
from fedmoe_sim.data.base import Benchmark, Domain
from fedmoe_sim.models import VitExpertModel, build_model, mean_routing_vectors, routing_inputs
from fedmoe_sim.models.vit import FFN_TARGETS, _random_vit

VIT = ModelConfig(backbone="vit", vit_width=32, vit_layers=2, vit_patch=4, lora_rank=4, lora_alpha=8.0)


def _random_state(model, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in model.expert_state().items()}


def _rgb_benchmark(n: int = 12, side: int = 32) -> Benchmark:
    rng = np.random.default_rng(0)
    x = rng.random((n, 3, side, side), dtype=np.float32)
    y = (np.arange(n) % 4).astype(np.int64)
    return Benchmark("rgb-test", "image", 4, (Domain("d", x, y, x, y),))


@pytest.fixture(scope="module")
def model(digits_benchmark):
    return build_model(digits_benchmark, VIT)


@pytest.fixture(scope="module")
def digits_x(digits_benchmark, model):
    return model.prepare(digits_benchmark.domains[0].x_train[:16])


def test_lora_targets_are_the_ffn_linears_only():
    def hit(name: str) -> bool:
        return re.fullmatch(FFN_TARGETS, name) is not None
    assert hit("layers.1.mlp.fc1") and hit("layers.1.mlp.fc2") and hit("encoder.layers.0.mlp.fc2")
    assert not hit("layers.1.attention.o_proj") and not hit("encoder.layers.0.self_attn.out_proj")
    assert not hit("layers.1.attention.q_proj") and not hit("embeddings.patch_embeddings.projection")


def test_expert_is_ffn_lora_and_the_head(model):
    spec = model.expert_spec()
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in model._expert.values()}
    assert set(spec) == {f"vit.layers.{i}.mlp.{fc}.lora_{ab}.weight" for i in range(2) for fc in ("fc1", "fc2")
                         for ab in ("A", "B")} | {"head.weight", "head.bias"}
    assert spec["vit.layers.0.mlp.fc1.lora_A.weight"] == ((4, 32), "float32")
    assert spec["vit.layers.1.mlp.fc2.lora_B.weight"] == ((32, 4), "float32")
    assert spec["head.weight"] == ((10, 32), "float32")
    backbone = model.backbone_state()
    assert "vit.layers.0.attention.o_proj.weight" in backbone and not set(spec) & set(backbone)
    assert not any("lora" in k for k in backbone)


def test_shapes_on_1x8x8_and_3x32x32(model, digits_x):
    assert digits_x.shape == (16, 1, 8, 8) and model(digits_x).shape == (16, 10)
    assert model.features(digits_x).shape == (16, 32)
    rgb = _rgb_benchmark()
    big = build_model(rgb, ModelConfig(backbone="vit", vit_width=32, vit_layers=1, vit_patch=8, lora_rank=4))
    x = big.prepare(rgb.domains[0].x_train)
    assert x.shape == (12, 3, 32, 32) and big(x).shape == (12, 4)
    hs, mask = routing_inputs(big, x)
    assert len(hs) == 1 and hs[0].shape == (12, 1 + 16, 32) and bool(mask.all())   # CLS + 4x4 patches
    with pytest.raises(ValueError, match=r"vit inputs must be \[N, 3, 32, 32\]"):
        big.prepare(np.zeros((2, 1, 32, 32), np.float32))


def test_expert_state_round_trip_and_shared_frozen_backbone(digits_benchmark, model, digits_x):
    state = _random_state(model, 1)
    model.load_expert_state(state)
    for k, v in model.expert_state().items():
        np.testing.assert_array_equal(v, state[k])
    other = build_model(digits_benchmark, VIT)
    q = "layers.0.attention.q_proj.weight"
    assert other.base_model().get_parameter(q) is model.base_model().get_parameter(q)   # one copy per process
    other.load_expert_state(state)
    with torch.no_grad():
        torch.testing.assert_close(other(digits_x), model(digits_x))
    with pytest.raises(ValueError, match="missing key"):
        model.load_expert_state({"head.bias": state["head.bias"]})
    model.reset_expert(0)
    assert not model.expert_state()["vit.layers.1.mlp.fc2.lora_B.weight"].any()      # B = 0: starts at M0


def test_the_random_backbone_is_seed_0_whatever_the_global_rng(digits_benchmark, model):
    before = model.backbone_state()
    _random_vit.cache_clear()
    torch.manual_seed(1234)
    rebuilt = build_model(digits_benchmark, VIT).backbone_state()
    assert set(rebuilt) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(rebuilt[k], v)


def test_features_ignore_the_expert(model, digits_x):
    model.reset_expert(0)
    f0, out0 = model.features(digits_x), model(digits_x).detach()
    torch.testing.assert_close(out0, model.head(f0))                  # fresh expert = M0 + head
    model.load_expert_state(_random_state(model, 2))
    torch.testing.assert_close(model.features(digits_x), f0)
    assert not torch.allclose(model(digits_x), out0, atol=1e-3)


def test_sgd_steps_lower_the_loss(digits_benchmark, model, digits_x):
    y = torch.as_tensor(digits_benchmark.domains[0].y_train[:16])
    model.reset_expert(0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(digits_x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert F.cross_entropy(model(digits_x), y).item() < losses[0] - 0.1
    assert model.expert_state()["vit.layers.1.mlp.fc2.lora_B.weight"].any()       # the FFN LoRA moved too


def test_routing_vectors_are_token_means_of_ffn_inputs(model, digits_x):
    model.load_expert_state(_random_state(model, 3))
    hs, mask = routing_inputs(model, digits_x)
    assert len(hs) == 2 and hs[0].shape == (16, 5, 32) and mask.shape == (16, 5) and bool(mask.all())
    base = model.base_model()
    t = base.embeddings(digits_x)                                       # M0+expert layer by layer, by hand
    layer = base.layers[0]
    t = t + layer.attention(layer.layernorm_before(t))[0]
    torch.testing.assert_close(hs[0], layer.layernorm_after(t))
    for v, h, one in zip(mean_routing_vectors(model, digits_x, batch_size=5), hs,
                         mean_routing_vectors(model, digits_x, batch_size=16), strict=True):
        np.testing.assert_allclose(v, h.mean(dim=(0, 1)).detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(v, one, atol=1e-5)


def _save_vit(path):
    """A tiny random 3x16x16 ViT with its own mean/std, saved as a hub checkpoint would be."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(5)
    vit = ViTModel(ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.1))
    vit.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.2, 0.4, 0.6],
                                                               "image_std": [0.5, 0.25, 0.125]}))
    return vit.eval()


def test_pretrained_vit_checkpoint_loads_offline_with_its_preprocessing(tmp_path, digits_benchmark, digits_x):
    saved = _save_vit(tmp_path)
    cfg = ModelConfig(backbone="vit", pretrained=str(tmp_path), lora_rank=4)
    model = build_model(digits_benchmark, cfg)                          # 1x8x8 digits -> 3x16x16 checkpoint
    torch.testing.assert_close(model.base_model().get_parameter("layers.1.mlp.fc2.weight"),
                               saved.get_parameter("layers.1.mlp.fc2.weight"))
    assert model.base_model().config.hidden_dropout_prob == 0.0         # dropout off: train == eval
    raw = torch.as_tensor(digits_benchmark.domains[0].x_train[:4])
    x = model.prepare(raw.numpy())
    mean, std = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1), torch.tensor([0.5, 0.25, 0.125]).view(3, 1, 1)
    torch.testing.assert_close(x, (raw.expand(-1, 3, -1, -1) - mean) / std)
    assert model(x).shape == (4, 10)
    hs, _ = routing_inputs(model, x)
    assert hs[0].shape == (4, 1 + 16, 32)                                # resized to 16x16: 4x4 patches
    pixels = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), saved(pixel_values=pixels).last_hidden_state.mean(1))


def test_clip_vision_checkpoint_gets_lora_on_its_mlp(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    vision = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
                bos_token_id=0, eos_token_id=1)
    torch.manual_seed(6)
    clip = CLIPModel(CLIPConfig(vision_config=vision, text_config=text)).eval()
    clip.save_pretrained(tmp_path)                                       # a full CLIP: its vision tower is used
    bench = _rgb_benchmark(n=4, side=32)
    model = build_model(bench, ModelConfig(backbone="vit", pretrained=str(tmp_path), lora_rank=4))
    assert "vit.encoder.layers.1.mlp.fc2.lora_B.weight" in model.expert_spec()
    assert not any("self_attn" in k for k in model.expert_spec())
    x = model.prepare(bench.domains[0].x_train)                          # OpenAI mean/std, resized 32 -> 16
    pixels = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        hidden = clip.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(model.features(x), clip.vision_model.post_layernorm(hidden).mean(1))


def test_missing_or_foreign_checkpoint_is_one_clear_error(tmp_path, digits_benchmark):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(missing)))):
        build_model(digits_benchmark, ModelConfig(backbone="vit", pretrained=str(missing)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        build_model(digits_benchmark, ModelConfig(backbone="vit", pretrained=str(tmp_path)))
    partial = tmp_path / "partial"                                      # config asks for a layer the weights lack
    _save_vit(partial)
    config = json.loads((partial / "config.json").read_text())
    (partial / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="has no weights for .* backbone tensors"):
        build_model(digits_benchmark, ModelConfig(backbone="vit", pretrained=str(partial)))


def test_vit_needs_images_and_a_patch_that_fits(digits_benchmark, text_benchmark):
    with pytest.raises(ValueError, match="model.backbone=vit needs an image benchmark"):
        build_model(text_benchmark, VIT)
    with pytest.raises(ValueError, match="vit_patch must divide"):
        build_model(digits_benchmark, ModelConfig(backbone="vit", vit_width=32, vit_layers=1, vit_patch=3))
    with pytest.raises(ValueError, match="vit_width must split into 3 attention heads"):
        build_model(digits_benchmark, ModelConfig(backbone="vit", vit_width=100, vit_layers=1))
    assert isinstance(build_model(digits_benchmark, VIT), VitExpertModel)
