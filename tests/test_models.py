import pytest
import torch
import torchvision

from dtl_ray.errors import ModelError
from dtl_ray.method import domain, models


@pytest.mark.parametrize("layer,dim", [(None, 64), ("block2", 32), ("block1", 16)])
def test_smallcnn_tap_shapes(layer, dim):
    g, width = models.build_backbone("smallcnn")
    assert width == 64
    tap = domain.FeatureTap(g, layer).eval()
    assert tap(torch.zeros(3, 3, 32, 32)).shape == (3, dim)


@pytest.mark.parametrize("layer,dim", [(None, 512), ("layer3", 256), ("layer4", 512)])
def test_resnet18_tap_shapes(layer, dim):
    g, width = models.build_backbone("resnet18")
    assert width == 512
    tap = domain.FeatureTap(g, layer).eval()
    assert tap(torch.zeros(2, 3, 64, 64)).shape == (2, dim)


@pytest.mark.parametrize("backbone,size,stages,dim", [
    ("smallcnn", 32, ["block1.5", "block2.5", "block3.5", "block3"], 2 * (16 + 32 + 64) + 64),
    ("resnet18", 64, ["relu", "layer1", "layer2", "layer3", "layer4"],
     2 * (64 + 64 + 128 + 256) + 512)])
def test_the_styles_tap_reads_every_stage(backbone, size, stages, dim):
    g, _ = models.build_backbone(backbone)
    tap = domain.FeatureTap(g, domain.STYLES).eval()
    assert tap.stages == stages
    x = torch.rand(3, 3, size, size)
    f = tap(x)
    assert f.shape == (3, dim)
    # the last stage's mean is the pooled penultimate (the content); the rest is style
    torch.testing.assert_close(f[:, -g(x).shape[1]:], g(x))
    # a change of rendering only (brightness and contrast) moves the early statistics most
    styled = (x * 0.5 + 0.4).clamp(0, 1)
    moved = (tap(styled) - f).abs() / (f.abs() + 1e-3)
    first = 2 * {"smallcnn": 16, "resnet18": 64}[backbone]
    assert moved[:, :first].mean() > moved[:, -g(x).shape[1]:].mean()
    assert not any(h for m in g.modules() for h in m._forward_hooks.values())  # none left


def test_a_standardised_discriminator_scales_by_its_training_features():
    d = domain.discriminator(domain.STYLES, 3, 8).eval()
    f = torch.tensor([[1.0, 100.0, 0.0], [3.0, 300.0, 0.0]])
    d.fit_scale(f)
    torch.testing.assert_close(d.shift, torch.tensor([2.0, 200.0, 0.0]))
    assert d.scale[2] > 0  # a constant feature does not divide by zero
    state = d.state_dict()
    again = domain.discriminator(domain.STYLES, 3, 8).eval()
    again.load_state_dict(state)  # the scale is part of its saved state
    torch.testing.assert_close(again(f), d(f))
    assert "shift" not in domain.discriminator(None, 3, 8).state_dict()  # old runs load


def test_unknown_layer_and_backbone_are_clear_errors():
    g, _ = models.build_backbone("smallcnn")
    with pytest.raises(ModelError, match="not a node of the backbone"):
        domain.FeatureTap(g, "block9")
    with pytest.raises(ModelError, match="unknown backbone 'resnet19'"):
        models.build_backbone("resnet19")


def test_torchvision_weights_load_from_a_local_state_dict(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    g, _ = models.build_backbone("resnet18", reference.state_dict())
    torch.testing.assert_close(g.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(g.layer4[1].bn2.running_mean, reference.layer4[1].bn2.running_mean)
    assert isinstance(g.fc, torch.nn.Identity)  # the 1000-class head is gone


def test_weights_of_another_model_are_refused():
    with pytest.raises(ModelError, match="do not fit resnet18"):
        models.build_backbone("resnet18", torchvision.models.resnet34(weights=None).state_dict())


def test_classifier_and_discriminator_shapes():
    clf = models.build_classifier("smallcnn", 7)
    assert clf(torch.zeros(4, 3, 32, 32)).shape == (4, 7)
    d = domain.Discriminator(64, 16)
    assert d(torch.zeros(5, 64)).shape == (5,)


def _trainable(model):
    return {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters()
            if p.requires_grad}


def test_set_trainable_modes():
    clf = models.build_classifier("smallcnn", 3)
    models.set_trainable(clf, "head")
    assert _trainable(clf) == {"head.weight", "head.bias"}
    models.set_trainable(clf, "last_block")
    assert _trainable(clf) == {"head.weight", "head.bias", "backbone.block3"}
    models.set_trainable(clf, "all")
    assert all(p.requires_grad for p in clf.parameters())
    r = models.build_classifier("resnet18", 3)
    models.set_trainable(r, "last_block")
    assert {n.split(".")[1] for n, p in r.named_parameters()
            if p.requires_grad and n.startswith("backbone")} == {"layer4"}


def test_gradient_reversal_flips_the_backbones_gradient_only():
    import torch

    from dtl_ray.method import domain, models

    torch.manual_seed(0)
    g, disc = models.SmallCNN(), domain.Discriminator(64, 16).eval()  # no dropout draws
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0.0, 1.0] * 4)

    def grads(scale):
        g.zero_grad()
        disc.zero_grad()
        f = g(x)
        if scale is not None:
            f = domain.grad_reverse(f, scale)
        torch.nn.functional.binary_cross_entropy_with_logits(disc(f), y).backward()
        return ([p.grad.clone() for p in g.parameters()],
                [p.grad.clone() for p in disc.parameters()])

    plain_g, plain_d = grads(None)
    rev_g, rev_d = grads(1.0)
    half_g, _ = grads(0.5)
    assert any(t.abs().sum() > 0 for t in plain_g)
    for a, b, c in zip(plain_g, rev_g, half_g):
        torch.testing.assert_close(b, -a)
        torch.testing.assert_close(c, -0.5 * a)
    for a, b in zip(plain_d, rev_d):  # the domain head itself still descends
        torch.testing.assert_close(a, b)
    assert domain.dann_scale(0.0) == 0.0 and 0.99 < domain.dann_scale(1.0) < 1.0


def test_models_with_auxiliary_heads_give_logits_in_train_mode():
    """inception_v3 returns (logits, aux) while training; its aux head is dropped."""
    model = models.build_classifier("inception_v3", 3).train()
    out = model(torch.rand(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_weights_by_name_are_resolved_downloaded_once_and_loaded(tmp_path, monkeypatch):
    """`model.weights: IMAGENET1K_V1` (or DEFAULT, or the enum's full name): resolved with
    torchvision's weights API, fetched through torchvision's own download call (the only thing
    substituted here: nothing is downloaded in tests) once, on the driver, saved in the run's
    folder; the classifier every stage builds starts from exactly those tensors."""
    import torchvision.models._api as api

    from dtl_ray import config
    from dtl_ray.method import builders
    from dtl_ray.pipeline import preflight

    reference = torchvision.models.resnet18(weights=None).state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return reference

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_download)
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        cfg = config.load_config(overrides=[
            "source.uri=/s", "target.uri=/t", f"storage={tmp_path}", "name=r",
            "model.backbone=resnet18", f"model.weights={name}"])
        cfg = preflight.resolve_weights(preflight.absolute(cfg))
        assert cfg.model.weights == str(tmp_path / "r" / "weights" / f"{name}.pth")
        # the weights' transforms (resize 256, crop 224) at the default image size 224
        assert cfg.model.frame == (224, 256)
        model = builders.classifier(cfg.model, 3)
        got = model.backbone.state_dict()
        for k, v in reference.items():
            if not k.startswith("fc."):  # (the head is replaced)
                assert torch.equal(got[k], v), k
        again = preflight.resolve_weights(config.load_config(overrides=[
            "source.uri=/s", "target.uri=/t", f"storage={tmp_path}", "name=r",
            "model.backbone=resnet18", f"model.weights={name}"]))
        assert again.model.weights == cfg.model.weights
    # torchvision's URL for the weights; the second resolution of each name read the saved
    # file instead of downloading again
    assert calls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url] * 3
    # another image size keeps the weights' ratio; a resize_size given is kept
    for extra, frame in (("model.image_size=64", (64, 73)), ("model.resize_size=300", (224, 300))):
        cfg = preflight.resolve_weights(config.load_config(overrides=[
            "source.uri=/s", "target.uri=/t", f"storage={tmp_path}", "name=r",
            "model.backbone=resnet18", "model.weights=DEFAULT", extra]))
        assert cfg.model.frame == frame, extra


@pytest.mark.parametrize("backbone,name,message", [
    ("resnet18", "IMAGENET1K_V9", "is not a weights name of resnet18: choose from "
                                  "IMAGENET1K_V1, DEFAULT"),
    ("resnet18", "ResNet50_Weights.IMAGENET1K_V1", "are not resnet18's: its weights are "
                                                   "ResNet18_Weights"),
    ("smallcnn", "DEFAULT", "model.backbone smallcnn has none"),
])
def test_a_bad_weights_name_is_one_line_before_anything_runs(backbone, name, message,
                                                              tmp_path, capsys):
    from dtl_ray import cli

    f = tmp_path / "c.yaml"
    f.write_text("# x\n")
    (tmp_path / "s").mkdir()
    args = ["run", str(f), "--check", "--set", f"source.uri={tmp_path}/s", "--set",
            f"target.uri={tmp_path}/t", "--set", f"storage={tmp_path}/out", "--set",
            f"model.backbone={backbone}", "--set", f"model.weights={name}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
