"""Images embedded in the report: figures and image files as compact PNG ``data:`` URIs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_QUANTIZE_ABOVE = 600_000  # pixels: larger figures are reduced to 256 colours (small ones keep smooth colour bars)
_MAX_WIDTH = 1120  # pixels: the page's content width; wider images are scaled down before embedding


@dataclass(frozen=True)
class Figure:
    """An embedded image for the templates: its ``data:`` URI, alt text and caption (plain text)."""

    uri: str
    alt: str
    caption: str = ""


@dataclass(frozen=True)
class Unavailable:
    """A figure that could not be read: the path and why."""

    path: str
    problem: str


def figure_png(fig: MplFigure, dpi: int = 90) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards when pyplot holds it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def as_png(data: bytes) -> bytes:
    """PNG bytes of an image file's bytes (PNGs pass through, other formats are re-encoded)."""
    if data.startswith(_PNG_MAGIC):
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.save(out, format="PNG")
        return out.getvalue()


def compact_png(png: bytes, max_width: int = _MAX_WIDTH) -> bytes:
    """A smaller PNG for embedding: flattened on white, at most ``max_width`` pixels wide, 256 colours when that
    is smaller (saliency figures survive it well); the original when nothing helps."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, "white")
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            elif im.mode not in ("RGB", "L", "P"):
                im = im.convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.LANCZOS)
            if im.mode == "RGB" and im.width * im.height > _QUANTIZE_ABOVE:
                im = im.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
            out = io.BytesIO()
            im.save(out, format="PNG")
    except (OSError, ValueError):  # not decodable: embed as is and let the browser decide
        return png
    small = out.getvalue()
    return small if len(small) < len(png) else png


def embed_png(png: bytes, alt: str, caption: str = "") -> Figure:
    """A :class:`Figure` of PNG bytes (compacted)."""
    uri = "data:image/png;base64," + base64.b64encode(compact_png(png)).decode("ascii")
    return Figure(uri, alt, caption)


def embed_figure(fig: MplFigure, alt: str, caption: str = "", dpi: int = 90) -> Figure:
    """A :class:`Figure` of a matplotlib figure."""
    return embed_png(figure_png(fig, dpi=dpi), alt, caption)


def embed_file(path: Path, alt: str, caption: str = "") -> Figure | Unavailable:
    """A :class:`Figure` of an image file, or :class:`Unavailable` when it is missing or unreadable."""
    try:
        png = as_png(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Unavailable(str(path), type(exc).__name__)
    return embed_png(png, alt, caption)
