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
    """The image at ``path`` as RGB PIL. Every way an image file can be bad (missing, a name too long
    for the file system, undecodable, truncated, a decompression bomb) is a UserError naming it, so
    that a caller fails that one row, never the run."""
    import errno

    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise UserError(f"{name or 'record'}: no image (text-only record)")
    shown = short_path(path)
    label = name if name and len(name) <= 200 else shown
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{label}: image file not found: {shown}") from None
    except Image.DecompressionBombError as e:
        # PIL's guard against images that decode to gigabytes (default limit ~179 megapixels, x2)
        raise UserError(f"{label}: image refused as a possible decompression bomb: {e}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise UserError(f"{label}: image path too long for the file system "
                            f"({len(str(path))} characters): {shown}") from None
        raise UserError(f"{label}: unreadable or truncated image {shown}: {e.strerror or e}") from None
    except (UnidentifiedImageError, SyntaxError, ValueError, MemoryError) as e:
        raise UserError(f"{label}: unreadable or truncated image {shown}: {e}") from None


def short_path(path: str | Path, limit: int = 120) -> str:
    """A path for messages: long ones shortened in the middle (a 5,000-character name must not flood a log)."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"
