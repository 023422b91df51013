"""Backbones match torchvision's topology and its blocks; the reference stem and the head are as SLIC specifies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.video import r2plus1d_18, r3d_18

from slic.models import BACKBONES, Classifier, Encoder, ProjectionHead, build_backbone, count_parameters


def shapes(module: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for v in module.state_dict().values()]


def test_backbones_have_torchvision_layers() -> None:
    for name, reference in (("r3d_18", r3d_18()), ("r2plus1d_18", r2plus1d_18())):
        reference.fc = torch.nn.Identity()
        assert shapes(build_backbone(name=name)) == shapes(reference), name


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_equals_the_one_built_from_torchvisions_blocks(name: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """slic.models writes torchvision's video-ResNet blocks itself (importing torchvision costs slic search 1.6 s):
    built from one seed, ours and one made of torchvision's own blocks have the same parameter names and values
    (the same initialisation draws, in the same order) and give the same outputs and gradients."""
    from torchvision.models.video import resnet

    from slic import models

    torch.manual_seed(3)
    ours = build_backbone(name=name)
    for block in ("BasicBlock", "Conv2Plus1D", "Conv3DSimple"):
        monkeypatch.setattr(models, block, getattr(resnet, block))
    torch.manual_seed(3)
    theirs = build_backbone(name=name)
    assert any(isinstance(m, resnet.BasicBlock) for m in theirs.modules())
    assert not any(isinstance(m, resnet.BasicBlock) for m in ours.modules())
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference) and all(torch.equal(mine[k], reference[k]) for k in mine)
    clips = torch.randn(2, 3, 4, 16, 16)
    outputs = [net.train()(clips) for net in (ours, theirs)]
    assert torch.equal(outputs[0], outputs[1])
    for output in outputs:
        output.square().sum().backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), theirs.parameters()))


def test_reference_stem_is_hara_3d_resnet() -> None:
    stem = build_backbone(name="r3d_18_reference").stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7, 7), (1, 2, 2), (3, 3, 3))
    assert not any(isinstance(m, torch.nn.MaxPool3d) for m in build_backbone(name="r3d_18_reference").modules())


def test_narrow_variant_keeps_topology_at_quarter_width() -> None:
    narrow, full = build_backbone(name="r3d_18_narrow"), build_backbone(name="r3d_18")
    assert narrow.feature_dim == 128 and full.feature_dim == 512
    assert len(shapes(narrow)) == len(shapes(full))
    assert count_parameters(narrow) < count_parameters(full) / 12


def test_encoder_maps_clips_to_embeddings() -> None:
    torch.manual_seed(0)
    model = Encoder(backbone="r3d_18_narrow", hidden_dim=64, out_dim=16).eval()
    clips = torch.randn(3, 3, 8, 32, 32)
    out = model(clips)
    assert out.shape == (3, 16)
    assert torch.allclose(out[1], model(clips[1:2])[0], atol=1e-5)  # eval: no batch coupling


def test_projection_head_layers() -> None:
    head = ProjectionHead(in_dim=512)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (head.net[0].in_features, head.net[0].out_features, head.net[3].out_features) == (512, 2048, 128)


def test_classifier_head() -> None:
    backbone = build_backbone(name="r3d_18_narrow")
    classifier = Classifier(backbone=backbone, feature_dim=128, classes=5).eval()
    assert classifier(torch.randn(2, 3, 8, 32, 32)).shape == (2, 5)
    assert classifier.dropout.p == 0.9


def test_head_output_norm_removes_the_shared_offset() -> None:
    torch.manual_seed(0)
    features = torch.randn(64, 512)
    plain, normed = ProjectionHead(in_dim=512, hidden_dim=256), ProjectionHead(in_dim=512, hidden_dim=256,
                                                                                output_norm=True)
    normed.load_state_dict(plain.state_dict(), strict=False)  # the same Linear/BN weights, plus the output BN
    with torch.no_grad():
        plain.net[3].bias.fill_(3.0)  # a shared offset, as training leaves in the last Linear
        normed.net[3].bias.fill_(3.0)
        unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
        cos_plain = (unit(plain(features)) @ unit(plain(features)).T).mean()
        cos_normed = (unit(normed(features)) @ unit(normed(features)).T).mean()
    assert type(normed.net[-1]).__name__ == "BatchNorm1d" and not normed.net[-1].affine
    assert cos_plain > 0.9          # every pair almost parallel: the collapse the option removes
    assert abs(cos_normed) < 0.1    # centred: unrelated inputs are unrelated again


def test_checkpoints_from_before_head_output_norm_still_load(tmp_path) -> None:
    from dataclasses import asdict

    from slic.config import PretrainConfig
    from slic.checkpoints import load_encoder

    cfg = PretrainConfig(backbone="r3d_18_tiny", hidden_dim=32, out_dim=8, head_output_norm=False)
    model = Encoder(backbone="r3d_18_tiny", hidden_dim=32, out_dim=8)
    legacy = {k: v for k, v in asdict(cfg).items() if k not in ("head_output_norm", "frame_step")}
    torch.save({"model": model.state_dict(), "config": legacy}, tmp_path / "best.pt")
    loaded, config = load_encoder(tmp_path / "best.pt")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) and not m.affine for m in loaded.modules())
    assert config["frame_step"] == 1  # trained on consecutive frames, as every clip was before the option


def test_channels_last_model_gives_the_same_embeddings_and_takes_either_layout() -> None:
    from slic.models import to_device

    torch.manual_seed(0)
    plain = Encoder(backbone="r3d_18_tiny", hidden_dim=32, out_dim=8).eval()
    fast = to_device(Encoder(backbone="r3d_18_tiny", hidden_dim=32, out_dim=8), torch.device("cpu")).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    clips = torch.randn(4, 3, 8, 32, 32)
    with torch.no_grad():
        expected = plain(clips)
        assert torch.allclose(fast(clips), expected, atol=1e-5)
        assert torch.allclose(fast(clips.contiguous(memory_format=torch.channels_last_3d)), expected, atol=1e-5)


def test_served_embeddings_take_every_frame_step_th_frame() -> None:
    from slic.serving import embed_video

    torch.manual_seed(0)
    model = Encoder(backbone="r3d_18_tiny", hidden_dim=32, out_dim=8).eval()
    frames = torch.randint(0, 256, (40, 24, 32, 3), dtype=torch.uint8).numpy()
    strided = embed_video(model, frames, clip_len=8, size=16, clips=3, frame_step=2)
    assert np.allclose(strided, embed_video(model, frames[::2], clip_len=8, size=16, clips=3))
    assert not np.allclose(strided, embed_video(model, frames, clip_len=8, size=16, clips=3))
