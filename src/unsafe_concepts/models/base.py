"""The one interface every model backend implements: a batch of queries in, one generation per query out.

Backends that can read their next-token distribution also score a fixed set of answer options in one
forward pass (``option_probs``): the verdict of a yes/no or A-D question without generating an answer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from unsafe_concepts.errors import UserError


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


@dataclass
class OptionProbs:
    """The next-token verdict of one query over a fixed set of options (e.g. ("Yes", "No")).

    ``mass[o]`` is the raw next-token probability of option ``o``: the summed probability of every
    token that spells it, whatever its casing and leading space ("Yes", " yes", "YES", ...).
    ``probs[o]`` is that mass normalised over the options (sums to 1). ``total_mass`` (the sum of the
    raw masses) says how much the model actually wanted to start its answer with one of the options:
    a low value means it would have begun otherwise ("The image shows ..."). On error, ``probs`` and
    ``mass`` are None and ``error`` says why (never both set)."""

    probs: dict[str, float] | None
    mass: dict[str, float] | None = None
    error: str | None = None
    latency_s: float = 0.0
    #: How the masses were read: "full" (the whole vocabulary) or "top-<k>" (a server's top-k logprobs).
    source: str = "full"
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> str | None:
        """The most probable option (the first one listed on a tie), or None on error."""
        if not self.probs:
            return None
        return max(self.probs, key=lambda o: self.probs[o])  # max keeps the first of equal values

    @property
    def total_mass(self) -> float | None:
        return None if self.mass is None else sum(self.mass.values())

    def to_dict(self) -> dict:
        return {"probs": self.probs, "mass": self.mass, "error": self.error, "source": self.source}


class LogprobUnsupported(UserError):
    """This backend (or the server behind it) cannot give next-token log-probabilities at all.

    A UserError: the CLI shows it as one line."""


class ModelBackend(ABC):
    """A model that answers queries. Errors of one query are returned in its Generation, not raised."""

    #: False for text-only models: image queries then fail with a clear error.
    supports_images: bool = True

    #: Set by the runner: called with a count of queries as they finish inside a ``generate`` call (an
    #: answer that reached its end in a batch, a server reply), so that progress moves per query.
    progress: Callable[[int], None] | None = None

    def _report_progress(self, n: int = 1) -> None:
        if self.progress is not None and n:
            self.progress(n)

    @abstractmethod
    def generate(self, queries: list[Query], config: GenerationConfig) -> list[Generation]:
        """Answer ``queries`` in order; the returned list has the same length."""

    @abstractmethod
    def describe(self) -> dict:
        """What this model is (spec, revision, dtype, ...), free of secrets, for run.json."""

    #: True when ``option_probs`` can work (a server may still refuse at the first request).
    supports_logprobs: bool = False

    def option_probs(self, queries: list[Query], options: Sequence[str]) -> list[OptionProbs]:
        """Score ``options`` (e.g. ("Yes", "No") or ("A", "B", "C", "D")) as the next token after each query.

        One forward pass per query (batched), no generation. Returns one OptionProbs per query, in
        order; a problem of one query (bad image, prompt too long) is returned in its OptionProbs.
        Raises :class:`LogprobUnsupported` (a UserError) when the backend cannot score
        log-probabilities at all."""
        raise unsupported_logprobs(type(self).__name__)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""


def unsupported_logprobs(what: str, why: str = "") -> LogprobUnsupported:
    """The error for a backend or server that cannot score log-probabilities."""
    return LogprobUnsupported(f"{what} cannot score log-probabilities{': ' + why if why else ''}; "
                              "use --scoring generate (generate the answer, then judge it)")


def check_options(options: Sequence[str]) -> tuple[str, ...]:
    """At least two distinct, non-empty options whose spellings do not collide when case is ignored."""
    opts = tuple(options)
    keys = [normalise_option(o) for o in opts]
    if len(opts) < 2 or any(not k for k in keys) or len(set(keys)) != len(keys):
        raise UserError(f"options must be at least two distinct non-empty words, got {list(opts)!r}")
    return opts


def normalise_option(text: str) -> str:
    """How a token is matched to an option: surrounding whitespace dropped, case folded."""
    return text.strip().casefold()

