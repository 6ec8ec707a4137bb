"""A small feed-forward stylization network trained on the fly (Ulyanov et al. 2016), with
batch or instance norm, and the contrast-independence measurement of the lab's claim.

The generator is ``[Conv3x3 (reflect padding) -> Norm -> ReLU] x 3 -> Conv3x3 -> sigmoid``.
With reflect padding, a contrast change ``a * x + b`` (a > 0) of the content reaches the first
norm as a per-channel affine map of its input, which instance norm removes exactly and batch
norm (eval mode, running statistics) does not.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from torch import nn

from normlab import nn as nl
from normlab.style.core import demo_image, random_encoder, style_loss

__all__ = ["Stylizer", "contrast_change", "train_stylizer"]

_CONTENT_IMAGES = ("astronaut", "coffee", "rocket")
_TEST_IMAGE = "chelsea"  # never trained on
_STYLE_IMAGE = "immunohistochemistry"


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "instance":
        return nl.InstanceNorm2d(c, affine=True)
    if kind == "batch":
        return nl.BatchNorm2d(c)
    raise ValueError(f"norm must be 'batch' or 'instance', got {kind!r}")


class Stylizer(nn.Module):
    def __init__(self, norm: str = "instance", width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in (width, 2 * width, width):
            layers += [nn.Conv2d(cin, c, 3, padding=1, padding_mode="reflect"), _norm(norm, c),
                       nn.ReLU()]
            cin = c
        layers += [nn.Conv2d(cin, 3, 3, padding=1, padding_mode="reflect"), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def low_contrast(x: torch.Tensor) -> torch.Tensor:
    return x * 0.3 + 0.35


def contrast_change(model: nn.Module, content: torch.Tensor) -> tuple[float, torch.Tensor,
                                                                     torch.Tensor]:
    """Relative L2 change of the eval-mode output when the content's contrast drops to 30%:
    ``||G(c) - G(0.3 c + 0.35)|| / ||G(c)||``, and the two outputs."""
    model.eval()
    with torch.no_grad():
        a, b = model(content), model(low_contrast(content))
    return float((a - b).norm() / a.norm()), a, b


def _png_b64(img: torch.Tensor) -> str:
    from PIL import Image

    arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def train_stylizer(norm: str, seed: int, steps: int = 150, size: int = 64, batch: int = 4,
                   style_weight: float = 10.0, lr: float = 3e-3) -> dict:
    """Train a stylizer towards the bundled style image on random crops of bundled content
    images; measure its contrast change on an unseen image. Returns a lab result dict."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(100 + seed)
    contents = [demo_image(n, 2 * size) for n in _CONTENT_IMAGES]
    style = demo_image(_STYLE_IMAGE, size)
    test = demo_image(_TEST_IMAGE, size)
    enc = random_encoder()
    with torch.no_grad():
        s_feats = enc(style)
    model = Stylizer(norm)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    evals = []

    def crops():
        out = []
        for _ in range(batch):
            im = contents[int(torch.randint(len(contents), (1,), generator=g))]
            y = int(torch.randint(im.shape[2] - size + 1, (1,), generator=g))
            x = int(torch.randint(im.shape[3] - size + 1, (1,), generator=g))
            out.append(im[:, :, y:y + size, x:x + size])
        return torch.cat(out)

    loss_value = None
    for step in range(1, steps + 1):
        c = crops()
        y = model(c)
        feats = enc(y)
        with torch.no_grad():
            c_feats = enc(c)
        loss = ((feats[-1] - c_feats[-1]) ** 2).mean() + style_weight * style_loss(
            feats, [f.expand(batch, -1, -1, -1) for f in s_feats])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if step % max(1, steps // 5) == 0 or step == steps:
            change, _, _ = contrast_change(model, test)
            evals.append({"step": step, "train_loss": loss_value, "contrast_change": change})
            model.train()
    change, a, b = contrast_change(model, test)
    return {"status": "ok", "error": None, "evals": evals,
            "final": {"contrast_change": change, "train_loss": loss_value},
            "images": {"content": _png_b64(test), "low_contrast_content":
                       _png_b64(low_contrast(test)), "output": _png_b64(a),
                       "output_low_contrast": _png_b64(b)}}
