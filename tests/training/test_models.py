"""Model registry, pretrained weight loading and checkpoints."""
from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch

from edge_app.errors import InputError, IntegrityError, UsageError
from edge_app.preprocess import PreprocessSpec
from training import weights as W
from training.models import create_model, efficientnet_lite0_imagenet_state, list_models, load_checkpoint, \
    save_checkpoint

FAST = ["tiny", "mobilenet_v2", "efficientnet_lite0", "resnet50", "vit"]


def _check(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, 7, embed_dim=32, pretrained=False, image_size=size).eval()
    assert isinstance(model.preprocess, PreprocessSpec)
    assert model.preprocess.size == (size, size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, emb = model(x)
        feats = model.features(x)
    assert logits.shape == (2, 7)
    assert emb.shape == (2, 32) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert feats.ndim == 2 and feats.shape[0] == 2
    with torch.no_grad():
        assert torch.allclose(model.embedding(x), emb, atol=1e-6)
        assert torch.allclose(model.logits(x), logits, atol=1e-5)
    assert model.config["name"] == name and model.config["num_classes"] == 7


@pytest.mark.parametrize("name", FAST)
def test_registry_builds_model(name: str) -> None:
    _check(name, 64 if name != "vit" else 64)


@pytest.mark.slow
def test_registry_builds_resnet101() -> None:
    _check("resnet101", 64)


def test_list_models_and_errors() -> None:
    assert set(list_models()) >= {"tiny", "mobilenet_v2", "efficientnet_lite0", "resnet50", "resnet101", "vit"}
    with pytest.raises(UsageError, match="unknown model"):
        create_model("alexnet", 3)
    with pytest.raises(UsageError):
        create_model("tiny", 0)
    with pytest.raises(UsageError, match="does not take"):
        create_model("tiny", 3, vit_depth=2)
    with pytest.raises(UsageError, match="multiple of the patch"):
        create_model("vit", 3, image_size=70)


def test_vit_stems_keep_the_token_grid_and_checkpoints_rebuild_their_own_stem(tmp_path) -> None:
    torch.manual_seed(0)
    conv = create_model("vit", 3, embed_dim=16, image_size=32, patch=8, vit_dim=32, vit_depth=1, vit_heads=2)
    patch = create_model("vit", 3, embed_dim=16, image_size=32, patch=8, vit_dim=32, vit_depth=1, vit_heads=2,
                         vit_stem="patch")
    assert conv.config["vit_stem"] == "conv" and patch.config["vit_stem"] == "patch"
    stem = conv.backbone.patch_embed
    # log2(8) = 3 stride-2 3x3 convs (with BN + ReLU), then a 1x1 projection to the token width
    assert [m.stride for m in stem if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3 + [(1, 1)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in stem) == 3
    x = torch.randn(2, 3, 32, 32)
    for m in (conv, patch):
        assert m.backbone.patch_embed(x).shape == (2, 32, 4, 4)  # the same 4x4 token grid either way
    with pytest.raises(UsageError, match="power-of-two"):
        create_model("vit", 3, image_size=36, patch=12)
    with pytest.raises(UsageError, match="stem must be"):
        create_model("vit", 3, image_size=32, patch=8, vit_stem="hybrid")
    # a checkpoint written before the stem option existed (no vit_stem in its config) is a patch-stem ViT
    path = save_checkpoint(tmp_path / "old.pt", patch.eval(), ["a", "b", "c"])
    obj = torch.load(path, weights_only=True)
    del obj["config"]["vit_stem"]
    torch.save(obj, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.config["vit_stem"] == "patch"
    with torch.no_grad():
        assert torch.equal(loaded(x)[1], patch(x)[1])
    conv_path = save_checkpoint(tmp_path / "conv.pt", conv.eval(), ["a", "b", "c"])
    with torch.no_grad():
        assert torch.equal(load_checkpoint(conv_path)[0](x)[1], conv(x)[1])


def test_embedding_is_separate_tensor_from_classifier_input() -> None:
    model = create_model("tiny", 3, embed_dim=16).eval()
    captured = {}
    model.classifier.register_forward_hook(lambda m, inp, out: captured.setdefault("z", inp[0]))
    with torch.no_grad():
        _, emb = model(torch.randn(4, 3, 64, 64))
    assert captured["z"] is not emb
    assert torch.allclose(torch.nn.functional.normalize(captured["z"], dim=1), emb, atol=1e-6)


def test_mobilenet_pretrained_missing_file_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PARTLENS_WEIGHTS", str(tmp_path))
    with pytest.raises(InputError, match="MobileNetV2 ImageNet weights not found"):
        create_model("mobilenet_v2", 3, pretrained=True)


def test_foreign_weights_file_is_integrity_error(tmp_path) -> None:
    bad = tmp_path / "w.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(IntegrityError, match="do not fit"):
        create_model("mobilenet_v2", 3, weights=bad)


@pytest.mark.data
def test_mobilenet_v2_local_weights_load_all_keys() -> None:
    path = W.weights_dir() / W.MOBILENET_V2_FILE
    if not path.is_file():
        pytest.skip(f"{path} absent (set PARTLENS_WEIGHTS)")
    ref = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("mobilenet_v2", 3)
    got = model.backbone.body.state_dict()
    feat_keys = [k for k in ref if k.startswith("features.")]
    assert len(feat_keys) == len(got)
    for k in feat_keys:
        assert torch.equal(got[k[len("features."):]], ref[k]), k
    assert model.preprocess.mean == (0.5, 0.5, 0.5) and model.preprocess.std == (0.5, 0.5, 0.5)


def _reference_lite0_mapping(src: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """An independent, name-based mapping of efficientnet-lite-pytorch names onto timm names."""
    stage_sizes = [1, 2, 2, 3, 3, 4, 1]
    flat = [(s, i) for s, n in enumerate(stage_sizes) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = OrderedDict()
    for k, v in src.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", k)
        if m:
            b, layer, param = int(m.group(1)), m.group(2), m.group(3)
            s, i = flat[b]
            table = ds if s == 0 else ir
            out[f"blocks.{s}.{i}.{table[layer]}.{param}"] = v
        else:
            layer, param = k.split(".", 1)
            out[f"{top[layer]}.{param}"] = v
    return out


def test_efficientnet_lite0_mapping_matches_reference() -> None:
    import timm

    try:
        src = W.load_state_dict_file(W.efficientnet_lite0_package_file())
    except InputError as exc:
        pytest.skip(str(exc))
    net_a = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net_b = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net_a.load_state_dict(efficientnet_lite0_imagenet_state(net_a), strict=True)
    net_b.load_state_dict(_reference_lite0_mapping(src), strict=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        la, lb = net_a(x), net_b(x)
    assert torch.equal(la, lb)
    # and our PartModel's backbone carries exactly those weights
    model = create_model("efficientnet_lite0", 3).eval()
    with torch.no_grad():
        assert torch.allclose(model.features(x), net_a.forward_head(net_a.forward_features(x), pre_logits=True),
                              atol=1e-5)


def test_efficientnet_mapping_rejects_shape_mismatch() -> None:
    src = OrderedDict(a=torch.zeros(3), b=torch.zeros(2))
    dst = OrderedDict(x=torch.zeros(3), y=torch.zeros(4))
    with pytest.raises(IntegrityError, match="does not match"):
        W.map_by_order(src, dst, "test")


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    model = create_model("vit", 3, embed_dim=24, image_size=32, patch=8, vit_dim=48, vit_depth=2, vit_heads=2,
                         resize="letterbox").eval()
    path = save_checkpoint(tmp_path / "c.pt", model, ["a", "b", "c"], {"top1": 0.5}, 4, {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert meta["labels"] == ["a", "b", "c"] and meta["epoch"] == 4 and meta["metrics"]["top1"] == 0.5
    assert meta["extra"] == {"note": "x"} and meta["format"] == "partlens-ckpt/1"
    assert loaded.preprocess == model.preprocess and loaded.preprocess.resize == "letterbox"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_checkpoint_label_count_mismatch(tmp_path) -> None:
    with pytest.raises(UsageError):
        save_checkpoint(tmp_path / "c.pt", create_model("tiny", 3), ["a"], {}, 0)


@pytest.mark.parametrize("content", [b"", b"garbage bytes", None])
def test_corrupt_or_foreign_checkpoint(tmp_path, content) -> None:
    path = tmp_path / "c.pt"
    if content is None:
        torch.save({"format": "something-else", "state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(IntegrityError, match=str(path.name)):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", create_model("tiny", 2), ["a", "b"], {}, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError):
        load_checkpoint(path)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_freeze_stages_keeps_bn_stats() -> None:
    model = create_model("tiny", 3)
    model.freeze_stages(2)
    model.train()
    first = model.stages()[0]
    assert not any(p.requires_grad for p in first.parameters())
    assert not first.training and model.stages()[2].training
    with pytest.raises(UsageError):
        model.freeze_stages(99)


def test_freeze_bn_default_for_folded_mobilenet() -> None:
    torch.manual_seed(0)
    mnv2 = create_model("mobilenet_v2", 3, pretrained=False, image_size=64)
    assert mnv2.config["freeze_bn"] is True
    x = torch.randn(4, 3, 64, 64)
    mnv2.eval()
    with torch.no_grad():
        ref = mnv2.features(x)
    mnv2.train()
    with torch.no_grad():
        assert torch.allclose(mnv2.features(x), ref, atol=1e-5)  # batch statistics unused
    assert mnv2.neck[1].training  # the embedding head's BN still trains
    tiny = create_model("tiny", 3, embed_dim=8).train()
    assert tiny.config["freeze_bn"] is False and tiny.backbone.body[0][1].training
    assert create_model("mobilenet_v2", 3, pretrained=False, freeze_bn=False).config["freeze_bn"] is False


# -- found by an audit of the model registry (20th session) -------------------------------------------------------
def test_checkpoint_weights_are_hashed_and_bad_fields_are_integrity_errors(tmp_path) -> None:
    import torch

    from edge_app.errors import IntegrityError
    from training.models import create_model, load_checkpoint, save_checkpoint

    model = create_model("tiny", 3, pretrained=False)
    path = save_checkpoint(tmp_path / "a.pt", model, ["a", "b", "c"])
    load_checkpoint(path)
    obj = torch.load(path, weights_only=True)
    key = next(k for k, v in obj["state_dict"].items() if v.is_floating_point() and v.numel() > 4)
    obj["state_dict"][key].view(-1)[0] += 1.0  # bytes changed on disk: torch's reader does not notice
    for name, edit in (("tampered", None), ("labels", {"labels": None}), ("preprocess", {"preprocess": "x"}),
                       ("size", {"preprocess": {**obj["preprocess"], "size": [obj["preprocess"]["size"][0] * 2] * 2}})):
        doc = dict(obj)
        if edit is not None:  # the other fields wrong, the weights intact
            doc.update(edit)
            doc["state_dict"] = torch.load(path, weights_only=True)["state_dict"]
        torch.save(doc, tmp_path / f"{name}.pt")
        with pytest.raises(IntegrityError):
            load_checkpoint(tmp_path / f"{name}.pt")


def test_freezing_fewer_stages_again_unfreezes_the_rest() -> None:
    from training.models import create_model

    model = create_model("tiny", 3, pretrained=False)
    model.train()
    model.freeze_stages(2)
    model.freeze_stages(1)
    stages = model.stages()
    assert all(not p.requires_grad for p in stages[0].parameters())
    assert all(p.requires_grad for s in stages[1:] for p in s.parameters())
    assert stages[1].training and not stages[0].training
