"""AdaIN style transfer offline: ``normlab style`` (see ``normlab.style.core``)."""

from normlab.style.core import (
    DEMO_PAIRS,
    Encoder,
    StyleError,
    demo_image,
    load_encoder,
    load_image,
    random_encoder,
    save_image,
    strip,
    style_loss,
    stylize,
)

__all__ = ["DEMO_PAIRS", "Encoder", "StyleError", "demo_image", "load_encoder", "load_image",
           "random_encoder", "save_image", "strip", "style_loss", "stylize"]
