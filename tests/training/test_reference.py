"""The frozen ImageNet reference branch fused into a trained embedding (``partlens add-reference``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edge_app.errors import IntegrityError, UsageError
from training.models import add_reference, add_reference_to_checkpoint, create_model, load_checkpoint, \
    save_checkpoint


def _tiny():
    torch.manual_seed(0)
    return create_model("tiny", 3, embed_dim=16, pretrained=False, image_size=32).eval()


def test_fused_cosine_is_the_weighted_sum_of_both_cosines() -> None:
    model = _tiny()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits0, trained = model(x)
        add_reference(model, 0.7, allow_random=True)
        logits, fused = model(x)
        ref = F.normalize(model.reference(x), dim=1)
    assert model.embed_dim == 16 + 64 and fused.shape == (4, 80) and model.config["reference_weight"] == 0.7
    assert torch.allclose(fused.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.equal(logits, logits0)  # the classifier is untouched
    expect = 0.7 * (trained @ trained.T) + 0.3 * (ref @ ref.T)
    assert torch.allclose(fused @ fused.T, expect, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model.embedding(x), fused, atol=1e-6)
        logits_e, pre = model.heads(x)  # what the exporter outputs: the runtime normalises it
    assert torch.allclose(F.normalize(pre, dim=1), fused, atol=1e-6)


def test_reference_stays_frozen_in_training_mode() -> None:
    model = add_reference(_tiny(), 0.5, allow_random=True)
    stats = {k: v.clone() for k, v in model.reference.state_dict().items()}
    model.train()
    assert not model.reference.training and not any(p.requires_grad for p in model.reference.parameters())
    model(torch.randn(8, 3, 32, 32) * 3)  # a training-mode batch must not move BatchNorm statistics
    assert all(torch.equal(v, model.reference.state_dict()[k]) for k, v in stats.items())


def test_reference_refusals() -> None:
    with pytest.raises(UsageError, match="no pretrained weights"):
        add_reference(_tiny())
    with pytest.raises(UsageError, match=r"in \(0, 1\)"):
        add_reference(_tiny(), 1.0, allow_random=True)
    model = add_reference(_tiny(), 0.5, allow_random=True)
    with pytest.raises(UsageError, match="already has a reference"):
        add_reference(model, 0.5, allow_random=True)


def test_checkpoint_with_reference_round_trips(tmp_path) -> None:
    model = add_reference(_tiny(), 0.6, allow_random=True)
    path = save_checkpoint(tmp_path / "r.pt", model, ["a", "b", "c"], {}, 2, {"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert loaded.reference_weight == 0.6 and loaded.embed_dim == 80
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {k: v for k, v in raw["state_dict"].items() if not k.startswith("reference.")}
    torch.save(raw, tmp_path / "cut.pt")
    with pytest.raises(IntegrityError):  # the reference weights are part of the checkpoint
        load_checkpoint(tmp_path / "cut.pt")


def test_add_reference_cli_keeps_the_training_record(tmp_path, capsys) -> None:
    """The real thing: efficientnet_lite0 with its ImageNet weights as the reference."""
    from edge_app.cli import main

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 2, embed_dim=32, pretrained=False, image_size=64).eval()
    extra = {"train_config": {"data": "/x"}, "data_path": "/x", "split": {"source": "file"}, "optimizer": {}}
    src = save_checkpoint(tmp_path / "run.pt", model, ["a", "b"], {"val_top1": 0.5}, 3, extra)
    out = tmp_path / "run-ref.pt"
    assert main(["add-reference", str(src), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    fused, meta = load_checkpoint(out)
    assert fused.reference_weight == 0.5 and fused.embed_dim == 32 + 1280
    assert meta["extra"]["train_config"] == {"data": "/x"} and meta["extra"]["split"] == {"source": "file"}
    assert "optimizer" not in meta["extra"] and meta["extra"]["reference"]["weight"] == 0.5
    assert meta["labels"] == ["a", "b"] and meta["epoch"] == 3
    imagenet = create_model("efficientnet_lite0", 1, pretrained=True, image_size=64).backbone.state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in fused.reference.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fused.logits(x), model.logits(x))
    assert main(["add-reference", str(src), "--out", str(out)]) == 2  # never overwrites
    assert main(["add-reference", str(out), "--out", str(tmp_path / "again.pt")]) == 2
    assert "already has a reference" in capsys.readouterr().err
    assert meta["extra"]["reference"]["from_checkpoint"] == str(src.resolve())
