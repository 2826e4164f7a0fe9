"""H. G. Wells' *The Time Machine* as a character-level language-modelling corpus.

Behaves like d2l 0.17's ``load_data_time_machine`` (letters only, lower case,
character tokens, a 28-token vocabulary ordered by frequency, sequential and
random-offset minibatch iterators, ``max_tokens``), written afresh with one
difference: randomness comes from an explicit ``torch.Generator`` (or seed)
instead of Python's global ``random`` module, so a run is reproducible.

Where the text comes from, first match wins:

1. the ``path`` argument;
2. the ``FASTRNN_DATA`` environment variable;
3. the user cache, ``$XDG_CACHE_HOME/fastrnn/timemachine.txt``
   (``~/.cache/fastrnn/timemachine.txt`` when ``XDG_CACHE_HOME`` is unset);
4. a download from d2l's URL, checked against a SHA-1 and saved to the cache.

A path given explicitly (1 or 2) that does not exist is an error rather than a
reason to look further: silently reading some other copy would hide a typo.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

__all__ = [
    "DATA_URL",
    "DATA_SHA1",
    "ENV_VAR",
    "TimeMachineNotFoundError",
    "Vocab",
    "cache_path",
    "find_time_machine",
    "read_time_machine",
    "tokenize",
    "load_corpus_time_machine",
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "SeqDataLoader",
    "load_data_time_machine",
]

DATA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
DATA_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
ENV_VAR = "FASTRNN_DATA"
_DOWNLOAD_TIMEOUT_S = 30


class TimeMachineNotFoundError(FileNotFoundError):
    """No copy of the text could be found or downloaded."""


# --------------------------------------------------------------------------- #
# Locating the file
# --------------------------------------------------------------------------- #
def cache_path() -> Path:
    """Where a downloaded copy is kept (and looked for)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastrnn" / "timemachine.txt"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _check_hash(path: Path, origin: str) -> None:
    # A different hash is accepted with a warning: the user may knowingly use
    # another edition, and results then differ from d2l's only in the numbers.
    digest = _sha1(path.read_bytes())
    if digest != DATA_SHA1:
        warnings.warn(
            f"{origin} {str(path)!r} has SHA-1 {digest}, not the d2l copy's {DATA_SHA1}; "
            "using it anyway (results will not match d2l's exactly)",
            stacklevel=3,
        )


def _fetch(url: str, timeout: float) -> bytes:
    """Download ``url``; kept apart so tests can replace it without a network."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed http URL)
        return response.read()


def _download(dest: Path) -> Path:
    data = _fetch(DATA_URL, _DOWNLOAD_TIMEOUT_S)
    digest = _sha1(data)
    if digest != DATA_SHA1:
        raise ValueError(f"downloaded file has SHA-1 {digest}, expected {DATA_SHA1}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves a truncated cache file.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".timemachine.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def find_time_machine(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return the path of a usable copy of the text (see the module docstring for the order).

    Raises :class:`TimeMachineNotFoundError` (a ``FileNotFoundError``) when no
    copy can be found or downloaded.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise TimeMachineNotFoundError(f"The Time Machine text not found at path={str(path)!r}")
        _check_hash(p, "path")
        return p

    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise TimeMachineNotFoundError(
                f"{ENV_VAR}={env!r} does not name a file; point it at timemachine.txt or unset it"
            )
        _check_hash(p, f"{ENV_VAR} file")
        return p

    cached = cache_path()
    if cached.is_file():
        _check_hash(cached, "cached file")
        return cached

    why = "downloading disabled"
    if download:
        try:
            return _download(cached)
        except (OSError, ValueError, urllib.error.URLError) as e:  # URLError is an OSError; explicit for clarity
            why = f"download from {DATA_URL} failed: {e}"
    raise TimeMachineNotFoundError(
        "The Time Machine text (timemachine.txt) is not available: no path= argument, "
        f"{ENV_VAR} is not set, no cached copy at {str(cached)!r}, and {why}. "
        f"Pass path='/path/to/timemachine.txt' or set {ENV_VAR}=/path/to/timemachine.txt "
        f"(the file is {DATA_URL}, SHA-1 {DATA_SHA1})."
    )


# --------------------------------------------------------------------------- #
# Text, tokens, vocabulary
# --------------------------------------------------------------------------- #
_NON_LETTERS = re.compile("[^A-Za-z]+")


def read_time_machine(path: str | os.PathLike | None = None) -> list[str]:
    """The text as a list of lines: runs of non-letters become one space, lower case."""
    with open(find_time_machine(path), encoding="utf-8") as f:
        lines = f.readlines()
    return [_NON_LETTERS.sub(" ", line).strip().lower() for line in lines]


def tokenize(lines: Sequence[str], token: str = "char") -> list[list[str]]:
    """Split each line into words (``token="word"``) or characters (``"char"``)."""
    if token == "word":
        return [line.split() for line in lines]
    if token == "char":
        return [list(line) for line in lines]
    raise ValueError(f"unknown token type {token!r}; expected 'word' or 'char'")


def _flatten(tokens) -> list:
    if tokens and isinstance(tokens[0], list):
        return [t for line in tokens for t in line]
    return list(tokens)


class Vocab:
    """Token <-> index map: ``'<unk>'`` at 0, then reserved tokens, then the rest by frequency.

    Ties in frequency keep first-appearance order (``sorted`` is stable over a
    ``Counter``, which iterates in insertion order), matching d2l's ``Vocab``.
    Tokens rarer than ``min_freq`` are left out and map to ``'<unk>'``.
    """

    def __init__(self, tokens=None, min_freq: int = 0, reserved_tokens: Sequence[str] | None = None):
        counter = collections.Counter(_flatten(tokens or []))
        self.token_freqs: list[tuple[str, int]] = sorted(counter.items(), key=lambda kv: kv[1], reverse=True)
        self.idx_to_token: list[str] = ["<unk>"]
        for t in reserved_tokens or []:
            if t not in self.idx_to_token:
                self.idx_to_token.append(t)
        self.token_to_idx: dict[str, int] = {t: i for i, t in enumerate(self.idx_to_token)}
        for tok, freq in self.token_freqs:
            if freq < min_freq:
                break  # sorted by frequency, so every later token is rarer still
            if tok not in self.token_to_idx:
                self.token_to_idx[tok] = len(self.idx_to_token)
                self.idx_to_token.append(tok)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if isinstance(tokens, (list, tuple)):
            return [self[t] for t in tokens]
        return self.token_to_idx.get(tokens, self.unk)

    def to_tokens(self, indices):
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        if isinstance(indices, (list, tuple)):
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[int(indices)]

    @property
    def unk(self) -> int:
        return 0

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        return f"Vocab(size={len(self)}, tokens=[{head}{', ...' if len(self) > 8 else ''}])"


def load_corpus_time_machine(
    max_tokens: int = -1, path: str | os.PathLike | None = None
) -> tuple[list[int], Vocab]:
    """(corpus, vocab): the character indices of the whole text and its vocabulary.

    The vocabulary is built from the whole text; ``max_tokens > 0`` then keeps
    only the first ``max_tokens`` indices of the corpus (as d2l does).
    """
    tokens = tokenize(read_time_machine(path), "char")
    vocab = Vocab(tokens)
    corpus = [vocab[t] for line in tokens for t in line]
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


# --------------------------------------------------------------------------- #
# Minibatch iterators
# --------------------------------------------------------------------------- #
def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()  # nondeterministic, like d2l's unseeded global RNG
    else:
        g.manual_seed(seed)
    return g


def _randint(low: int, high_inclusive: int, g: torch.Generator) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=g))


def seq_data_iter_random(
    corpus: Sequence[int],
    batch_size: int,
    num_steps: int,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of independent subsequences in random order.

    Drops a random prefix of 0..num_steps-1 tokens, cuts the rest into
    non-overlapping subsequences of ``num_steps`` and yields them shuffled,
    ``batch_size`` at a time, as int64 ``(X, Y)`` of shape (batch_size,
    num_steps) with ``Y`` the next token of each position of ``X``.
    Adjacent batches are not contiguous in the text.
    """
    g = _generator(generator, seed)
    corpus = list(corpus[_randint(0, num_steps - 1, g):])
    num_subseqs = (len(corpus) - 1) // num_steps  # -1: Y needs one token past X
    starts = list(range(0, num_subseqs * num_steps, num_steps))
    order = torch.randperm(len(starts), generator=g).tolist()
    starts = [starts[i] for i in order]
    data = torch.tensor(corpus, dtype=torch.long)
    num_batches = num_subseqs // batch_size
    for b in range(num_batches):
        idx = torch.tensor(starts[b * batch_size:(b + 1) * batch_size], dtype=torch.long)
        cols = idx[:, None] + torch.arange(num_steps)
        yield data[cols], data[cols + 1]


def seq_data_iter_sequential(
    corpus: Sequence[int],
    batch_size: int,
    num_steps: int,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches whose rows continue from one batch to the next.

    Drops a random prefix of 0..num_steps tokens (inclusive, as d2l), splits
    the rest into ``batch_size`` equal contiguous streams and walks them
    ``num_steps`` at a time: row ``i`` of batch ``k+1`` continues row ``i`` of
    batch ``k``, so a recurrent state can be carried across batches.
    Yields int64 ``(X, Y)`` of shape (batch_size, num_steps), ``Y`` shifted by one.
    """
    g = _generator(generator, seed)
    offset = _randint(0, num_steps, g)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    if num_tokens <= 0:
        return
    xs = torch.tensor(corpus[offset:offset + num_tokens], dtype=torch.long).reshape(batch_size, -1)
    ys = torch.tensor(corpus[offset + 1:offset + 1 + num_tokens], dtype=torch.long).reshape(batch_size, -1)
    num_batches = xs.shape[1] // num_steps
    for k in range(num_batches):
        sl = slice(k * num_steps, (k + 1) * num_steps)
        yield xs[:, sl], ys[:, sl]


class SeqDataLoader:
    """Iterable over minibatches of the time machine; each ``iter()`` is a new epoch.

    Each epoch draws a fresh random offset (and order, for the random iterator)
    from one generator seeded at construction, so the whole sequence of epochs
    is reproducible for a given ``seed``.
    """

    def __init__(
        self,
        batch_size: int,
        num_steps: int,
        use_random_iter: bool = False,
        max_tokens: int = 10000,
        path: str | os.PathLike | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if batch_size < 1 or num_steps < 1:
            raise ValueError(f"batch_size and num_steps must be positive, got {batch_size}, {num_steps}")
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.use_random_iter = use_random_iter
        self.corpus, self.vocab = load_corpus_time_machine(max_tokens, path)
        self.generator = _generator(generator, seed)
        self._fn = seq_data_iter_random if use_random_iter else seq_data_iter_sequential

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._fn(self.corpus, self.batch_size, self.num_steps, generator=self.generator)


def load_data_time_machine(
    batch_size: int,
    num_steps: int,
    use_random_iter: bool = False,
    max_tokens: int = 10000,
    path: str | os.PathLike | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[SeqDataLoader, Vocab]:
    """(data_iter, vocab) as d2l's ``load_data_time_machine``; ``seed`` makes it reproducible."""
    it = SeqDataLoader(batch_size, num_steps, use_random_iter, max_tokens, path, seed=seed, generator=generator)
    return it, it.vocab
