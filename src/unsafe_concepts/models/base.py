"""The one interface every model backend implements: a batch of queries in, one generation per query out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Query:
    """One question to a model. ``image`` is a PIL image, a path, or None (text only)."""

    id: str
    prompt: str
    image: Any = None


@dataclass
class GenerationConfig:
    """Decoding settings; defaults follow the protocol (sampling, T=1.0, top_p=0.9, 512 new tokens)."""

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 0.9
    do_sample: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    """The answer to one query, or the error that query met (never both None)."""

    text: str | None
    error: str | None = None
    latency_s: float = 0.0
    n_tokens: int | None = None


class ModelBackend(ABC):
    """A model that answers queries. Errors of one query are returned in its Generation, not raised."""

    #: False for text-only models: image queries then fail with a clear error.
    supports_images: bool = True

    @abstractmethod
    def generate(self, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        """Answer ``queries`` in order; the returned list has the same length."""

    @abstractmethod
    def describe(self) -> dict:
        """What this model is (spec, revision, dtype, ...), free of secrets, for run.json."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""
