"""The typed record every dataset loader yields."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from unsafe_concepts.errors import UserError

SAFE, UNSAFE = "safe", "unsafe"
SAFE_CATEGORY = "Safe"  # category given to safe counterpart images (ImageNet classes)


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    ``id`` is the image path relative to the dataset root as the benchmark names it
    ("images/0.png"); ``image`` is the absolute path on disk (None for a text-only item).
    ``concept`` is the unsafe concept, or the ImageNet class name of a safe image.
    """

    id: str
    image: str | None
    category: str
    concept: str
    label: str  # SAFE or UNSAFE
    split: str | None = None  # "train", "test" or None (not split)
    synthetic: bool = False  # True for the offline sample's placeholders

    def to_dict(self) -> dict:
        return asdict(self)

    def load_image(self):
        """The image as RGB PIL; a UserError naming the file when it is missing or unreadable."""
        return load_rgb(self.image, self.id)


def load_rgb(path: str | Path | None, name: str = ""):
    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise UserError(f"{name or 'record'}: no image (text-only record)")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{name or path}: image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name or path}: unreadable or truncated image {path}: {e}") from None
