"""AdaIN style transfer: statistics, the CLI end to end on bundled images, bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from normlab.cli import main
from normlab.style import load_image, random_encoder, save_image, strip, style_loss, stylize

pytest.importorskip("skimage")


def test_adain_output_has_the_style_statistics():
    import normlab.functional as F

    g = torch.Generator().manual_seed(0)
    c = torch.randn(2, 4, 9, 9, generator=g, dtype=torch.float64) * 3 + 2
    s = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64) * 0.5 - 1
    y = F.adaptive_instance_norm(c, s, eps=1e-12)
    torch.testing.assert_close(y.mean((2, 3)), s.mean((2, 3)))
    torch.testing.assert_close(y.std((2, 3), correction=0), s.std((2, 3), correction=0))


def test_stylize_moves_the_statistics_towards_the_style():
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 32, 32, generator=g) * 0.2 + 0.4  # flat grey
    style = torch.rand(1, 3, 32, 32, generator=g)  # high-contrast noise
    enc = random_encoder()
    with torch.no_grad():
        s_feats = enc(style)
        before = style_loss(enc(content), s_feats).item()
    out = stylize(content, style, enc, steps=40)
    with torch.no_grad():
        after = style_loss(enc(out), s_feats).item()
    assert after < 0.5 * before
    assert out.min() >= 0 and out.max() <= 1


def test_cli_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo.png"
    t0 = time.perf_counter()
    assert main(["style", "--demo", "--size", "96", "--steps", "30", "--out", str(out)]) == 0
    assert time.perf_counter() - t0 < 20
    img = load_image(out, 96)
    strip_img = load_image(tmp_path / "demo-strip.png", 96 * 3)
    assert img.shape[1] == 3 and strip_img.shape[3] > 2 * strip_img.shape[2]
    assert "strip (content | style | result)" in capsys.readouterr().out


def test_cli_files_and_strip(tmp_path):
    g = torch.Generator().manual_seed(1)
    save_image(torch.rand(1, 3, 40, 60, generator=g), tmp_path / "c.png")
    save_image(torch.rand(1, 3, 30, 30, generator=g), tmp_path / "s.png")
    out = tmp_path / "o.png"
    assert main(["style", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "--size", "48",
                 "--steps", "5", "--out", str(out)]) == 0
    assert load_image(out, 48).shape == (1, 3, 32, 48)
    s = strip(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 20, 10))
    assert s.shape == (1, 3, 20, 20 + 4 + 10)


@pytest.mark.parametrize("make,message", [
    (lambda d: [str(d / "missing.png"), str(d / "s.png")], "no such image file"),
    (lambda d: [str(d / "text.png"), str(d / "s.png")], "not an image"),
    (lambda d: [str(d / "s.png"), str(d / "s.png"), "--encoder", str(d / "bad.pth")],
     "keys do not match a torchvision VGG-19: features.0.weight"),
    (lambda d: [str(d / "s.png"), str(d / "s.png"), "--encoder", str(d / "text.png")],
     "not a readable PyTorch state dict"),
])
def test_cli_bad_input_writes_nothing(tmp_path, capsys, make, message):
    save_image(torch.rand(1, 3, 16, 16), tmp_path / "s.png")
    (tmp_path / "text.png").write_text("not an image")
    torch.save({"features.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    out = tmp_path / "out.png"
    assert main(["style", *make(tmp_path), "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out-strip.png").exists()


def test_vgg19_state_dict_loads(tmp_path):
    from normlab.style.core import _VGG19_CONVS, load_encoder

    sd = {}
    for idx, cin, cout in _VGG19_CONVS:
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3) * 0.01
        sd[f"features.{idx}.bias"] = torch.zeros(cout)
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # the rest of a VGG-19 is ignored
    torch.save(sd, tmp_path / "vgg.pth")
    enc = load_encoder(tmp_path / "vgg.pth")
    feats = enc(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    assert np.isfinite(feats[-1].numpy()).all()


def test_the_smallest_size_and_a_thin_image_run(tmp_path):
    """--size at the encoder's minimum (16) and a 1:20 image no longer fail in padding."""
    from normlab.style.core import MIN_SIZE

    save_image(torch.rand(1, 3, 10, 200), tmp_path / "thin.png")
    out = tmp_path / "o.png"
    assert main(["style", str(tmp_path / "thin.png"), str(tmp_path / "thin.png"), "--size",
                 str(MIN_SIZE), "--steps", "1", "--out", str(out)]) == 0
    assert min(load_image(out, MIN_SIZE).shape[2:]) >= MIN_SIZE
    assert main(["style", str(tmp_path / "thin.png"), str(tmp_path / "thin.png"), "--steps",
                 "1", "--out", str(out)]) == 0
