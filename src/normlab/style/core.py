"""AdaIN style transfer (Huang & Belongie 2017), offline, by optimization on CPU.

The result image ``img`` is optimized (Adam on its pixels, starting from the content) so that
its encoder features at the deepest layer match ``AdaIN(f(content), f(style))`` (the content
loss) and the per-channel mean and std of its features at every layer match the style's (the
AdaIN statistics loss):

    L = || f_L(img) - AdaIN(f_L(c), f_L(s)) ||^2 + w * sum_l (|| mu_l(img) - mu_l(s) ||^2
                                                            + || sigma_l(img) - sigma_l(s) ||^2)

The encoder is VGG-like. By default its weights are random (He-initialized from a fixed seed):
random convolutional features carry the texture statistics that style transfer matches, and
nothing is downloaded. ``encoder_file`` loads a torchvision VGG-19 state dict (``features.*``
keys) for the usual quality. A feed-forward decoder is not trained here (too slow on CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from normlab import nn as nl
from normlab.results import write_atomic

__all__ = ["DEMO_PAIRS", "MAX_SIZE", "MIN_SIZE", "Encoder", "StyleError", "demo_image",
           "load_encoder", "load_image", "save_image", "strip", "stylize"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision VGG-19 `features` indices of the convolutions up to relu4_1, and the relu
# outputs used as style layers (relu1_1, relu2_1, relu3_1, relu4_1)
_VGG19_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256),
                (12, 256, 256), (14, 256, 256), (16, 256, 256), (19, 256, 512)]
_VGG19_POOL_AFTER = {2, 7, 16}
_VGG19_TAPS = {0, 5, 10, 19}


# the image's sides: the encoders pool 3 times and reflect-pad by 1, so the smallest feature
# map needs 2 pixels (16 / 2**3); above MAX_SIZE memory and time grow past a laptop's
MIN_SIZE = 16
MAX_SIZE = 1024


class StyleError(ValueError):
    """Bad input for style transfer (one clear line for the CLI)."""


class Encoder(nn.Module):
    """A VGG-like encoder returning the activations of its tap layers (shallow to deep)."""

    def __init__(self, convs, pool_after, taps, normalize=False):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.plan = []
        for idx, cin, cout in convs:
            self.layers[str(idx)] = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
            self.plan.append((str(idx), idx in pool_after, idx in taps))
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        if self.normalize:
            x = (x - self.mean) / self.std
        feats = []
        for name, pool, tap in self.plan:
            x = torch.relu(self.layers[name](x))
            if tap:
                feats.append(x)
            if pool:
                x = nn.functional.max_pool2d(x, 2)
        return feats


def random_encoder(seed: int = 0) -> Encoder:
    """A small VGG-like encoder with He-initialized random weights (no download)."""
    convs = [(0, 3, 16), (1, 16, 16), (2, 16, 32), (3, 32, 64), (4, 64, 128)]
    enc = Encoder(convs, pool_after={1, 2, 3}, taps={0, 2, 3, 4})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in enc.layers.values():
            fan_in = conv.in_channels * 9
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            conv.bias.zero_()
    return enc.eval()


def load_encoder(path) -> Encoder:
    """A VGG-19 encoder (up to relu4_1) from a torchvision ``vgg19`` state dict file."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StyleError(f"--encoder {path}: no such file") from None
    except Exception as exc:
        raise StyleError(f"--encoder {path}: not a readable PyTorch state dict "
                         f"({type(exc).__name__})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise StyleError(f"--encoder {path}: expected a state dict, got {type(sd).__name__}")
    enc = Encoder(_VGG19_CONVS, _VGG19_POOL_AFTER, _VGG19_TAPS, normalize=True)
    wanted = {}
    for idx, cin, cout in _VGG19_CONVS:
        for part, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"features.{idx}.{part}"
            t = sd.get(key)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = "missing" if t is None else f"shape {tuple(getattr(t, 'shape', ()))}"
                raise StyleError(f"--encoder {path}: keys do not match a torchvision VGG-19: "
                                 f"{key} expected shape {shape}, {got}")
            wanted[f"layers.{idx}.{part}"] = t.float()
    enc.load_state_dict({**wanted, "mean": enc.mean, "std": enc.std})
    return enc.eval()


# --------------------------------------------------------------------------------------------
# images


def _resize(img: np.ndarray, size: int) -> torch.Tensor:
    from PIL import Image

    im = Image.fromarray(img)
    w, h = im.size
    scale = size / max(w, h)
    im = im.resize((max(MIN_SIZE, round(w * scale)), max(MIN_SIZE, round(h * scale))),
                   Image.BICUBIC)
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def load_image(path, size: int) -> torch.Tensor:
    """An RGB image file as a (1, 3, H, W) tensor in [0, 1], its longer side ``size``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise StyleError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise StyleError(f"{path}: not an image (PIL cannot identify it)") from None
    except OSError as exc:
        raise StyleError(f"{path}: unreadable image ({exc})") from None
    return _resize(arr, size)


DEMO_PAIRS = {"astronaut": "immunohistochemistry", "chelsea": "rocket", "coffee": "astronaut"}


def demo_image(name: str, size: int) -> torch.Tensor:
    """One of scikit-image's bundled images (no download)."""
    try:
        import skimage.data
    except ImportError:
        raise StyleError("--demo needs scikit-image (pip install 'normlab[lab]')") from None
    if name not in ("astronaut", "coffee", "chelsea", "immunohistochemistry", "rocket"):
        raise StyleError(f"unknown demo image {name!r}")
    return _resize(np.asarray(getattr(skimage.data, name)())[..., :3], size)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_image(img: torch.Tensor, path) -> None:
    """Write ``img`` as a PNG file, whole or not at all (``results.write_atomic``)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_uint8(img)).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def strip(*images: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Images side by side on a white background, each scaled to the same height."""
    h = max(im.shape[2] for im in images)
    parts = []
    for im in images:
        if im.shape[2] != h:
            w = round(im.shape[3] * h / im.shape[2])
            im = nn.functional.interpolate(im, size=(h, w), mode="bilinear",
                                           align_corners=False)
        parts += [im, torch.ones(1, 3, h, gap)]
    return torch.cat(parts[:-1], dim=3)


# --------------------------------------------------------------------------------------------
# the transfer


def _mean_std(f: torch.Tensor, eps: float = 1e-5):
    var, mean = torch.var_mean(f, (2, 3), correction=0)
    return mean, torch.sqrt(var + eps)


def style_loss(feats, style_feats) -> torch.Tensor:
    """The AdaIN statistics loss: per-channel mean and std of every tap layer."""
    loss = 0.0
    for f, s in zip(feats, style_feats, strict=True):
        mf, sf = _mean_std(f)
        ms, ss = _mean_std(s)
        loss = loss + ((mf - ms) ** 2).mean() + ((sf - ss) ** 2).mean()
    return loss


def stylize(content: torch.Tensor, style: torch.Tensor, encoder: Encoder, *, steps=200,
            lr=0.03, style_weight=10.0, progress=None) -> torch.Tensor:
    """The optimized image (1, 3, H, W) in [0, 1]; ``progress(step, loss)`` per step."""
    with torch.no_grad():
        c_feats = encoder(content)
        s_feats = encoder(style)
        adain = nl.AdaptiveInstanceNorm(c_feats[-1].shape[1])
        target = adain(c_feats[-1], s_feats[-1])  # AdaIN(f(c), f(s))
    img = content.clone().requires_grad_()
    opt = torch.optim.Adam([img], lr=lr)
    for step in range(1, steps + 1):
        feats = encoder(img)
        loss = ((feats[-1] - target) ** 2).mean() + style_weight * style_loss(feats, s_feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            img.clamp_(0, 1)
        if progress is not None:
            progress(step, loss.item())
    return img.detach()
