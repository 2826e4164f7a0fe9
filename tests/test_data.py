"""Tests for bench/data.py: the time machine loader, vocabulary and minibatch iterators."""
from __future__ import annotations

import collections
import hashlib
import os
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:
    sys.path.insert(0, str(REPO / "bench"))
import data  # noqa: E402  (bench/data.py)


def _shared_file() -> Path | None:
    for cand in (os.environ.get(data.ENV_VAR), REPO.parent / "shared" / "data" / "timemachine.txt"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


SHARED = _shared_file()
needs_text = pytest.mark.skipif(
    SHARED is None,
    reason=f"timemachine.txt not found (set {data.ENV_VAR} or put it at ../shared/data/timemachine.txt)",
)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env var, an empty cache directory, and a download that fails loudly if attempted."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_network(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(data, "_fetch", no_network)
    return tmp_path


# ----------------------------------------------------------------------------- vocabulary
def test_vocab_order_and_ties():
    # 'b' and 'c' tie at 2 and keep first-appearance order; 'a' is most frequent.
    tokens = [list("bca"), list("acb"), list("ad")]
    v = data.Vocab(tokens)
    assert v.idx_to_token == ["<unk>", "a", "b", "c", "d"]
    assert v["a"] == 1 and v["zz"] == v.unk == 0
    assert v[["b", "d", "?"]] == [2, 4, 0]
    assert v.to_tokens([1, 2]) == ["a", "b"] and v.to_tokens(torch.tensor(3)) == "c"
    assert len(data.Vocab(tokens, min_freq=3)) == 2  # only '<unk>' and 'a'
    assert data.Vocab(tokens, reserved_tokens=["<pad>"]).idx_to_token[:2] == ["<unk>", "<pad>"]


def test_tokenize():
    assert data.tokenize(["ab c"], "char") == [["a", "b", " ", "c"]]
    assert data.tokenize(["ab  c"], "word") == [["ab", "c"]]
    with pytest.raises(ValueError, match="unknown token type"):
        data.tokenize(["x"], "byte")


@needs_text
def test_real_text_vocab():
    lines = data.read_time_machine(SHARED)
    assert all(set(line) <= set("abcdefghijklmnopqrstuvwxyz ") for line in lines)
    assert all(line == line.strip() and "  " not in line for line in lines)
    corpus, vocab = data.load_corpus_time_machine(path=SHARED)
    assert len(vocab) == 28  # '<unk>', space and 26 letters
    assert vocab.idx_to_token[0] == "<unk>"
    assert sorted(vocab.idx_to_token[1:]) == sorted(" abcdefghijklmnopqrstuvwxyz")
    # Ordered by frequency, most frequent first; space and 'e' lead as in d2l.
    counts = collections.Counter(corpus)
    freqs = [counts[i] for i in range(1, len(vocab))]
    assert freqs == sorted(freqs, reverse=True)
    assert vocab.idx_to_token[1:3] == [" ", "e"]
    assert counts[0] == 0  # nothing unknown
    assert "".join(vocab.to_tokens(corpus[:15])) == "the time machin"
    trunc, vocab2 = data.load_corpus_time_machine(max_tokens=1234, path=SHARED)
    assert trunc == corpus[:1234] and vocab2.idx_to_token == vocab.idx_to_token


# ----------------------------------------------------------------------------- iterators
CORPUS = list(range(5000))  # token value == position: shifts and continuity are easy to read


@pytest.mark.parametrize("batch_size,num_steps", [(2, 5), (3, 7), (32, 35), (1, 1)])
def test_sequential_shapes_shift_and_continuity(batch_size, num_steps):
    batches = list(data.seq_data_iter_sequential(CORPUS, batch_size, num_steps, seed=1))
    assert batches
    for x, y in batches:
        assert x.shape == y.shape == (batch_size, num_steps) and x.dtype == torch.long
        assert torch.equal(y, x + 1)  # Y is X shifted by one token
    for (x0, _), (x1, _) in zip(batches, batches[1:]):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # each row continues the previous batch
    offset = int(batches[0][0][0, 0])
    assert 0 <= offset <= num_steps
    # Rows are equal contiguous streams over what remains after the offset.
    stream = (len(CORPUS) - offset - 1) // batch_size
    assert torch.equal(batches[0][0][:, 0], offset + stream * torch.arange(batch_size))
    assert len(batches) == stream // num_steps


@pytest.mark.parametrize("batch_size,num_steps", [(2, 5), (4, 7), (32, 35)])
def test_random_iter_shapes_and_coverage(batch_size, num_steps):
    batches = list(data.seq_data_iter_random(CORPUS, batch_size, num_steps, seed=3))
    starts = []
    for x, y in batches:
        assert x.shape == y.shape == (batch_size, num_steps)
        assert torch.equal(y, x + 1)
        assert torch.equal(x, x[:, :1] + torch.arange(num_steps))  # each row is one contiguous span
        starts += x[:, 0].tolist()
    offset = min(starts) % num_steps  # the smallest start may be in a dropped remainder
    assert 0 <= offset < num_steps
    assert all((s - offset) % num_steps == 0 for s in starts)  # non-overlapping subsequences
    assert len(set(starts)) == len(starts)
    num_subseqs = (len(CORPUS) - offset - 1) // num_steps
    assert len(batches) == num_subseqs // batch_size


def test_iterators_reproducible_and_seeded():
    for fn in (data.seq_data_iter_random, data.seq_data_iter_sequential):
        a = [x for x, _ in fn(CORPUS, 4, 10, seed=7)]
        b = [x for x, _ in fn(CORPUS, 4, 10, generator=torch.Generator().manual_seed(7))]
        assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == len(b)
    # Different seeds should reach different offsets / orders for some seed in a handful.
    firsts = {int(next(data.seq_data_iter_random(CORPUS, 4, 10, seed=s))[0][0, 0]) for s in range(8)}
    assert len(firsts) > 1


def test_sequential_corpus_too_short():
    assert list(data.seq_data_iter_sequential(list(range(5)), 8, 3, seed=0)) == []


@needs_text
@pytest.mark.parametrize("use_random_iter", [False, True])
def test_loader_on_real_text(use_random_iter):
    it, vocab = data.load_data_time_machine(32, 35, use_random_iter, max_tokens=10000, path=SHARED, seed=0)
    assert len(vocab) == 28 and len(it.corpus) == 10000
    e1, e2 = list(it), list(it)  # each pass is a new epoch with a fresh random offset
    assert len(e1) >= 8 and all(x.shape == (32, 35) for x, _ in e1 + e2)
    assert all(int(x.max()) < len(vocab) for x, _ in e1)
    it2, _ = data.load_data_time_machine(32, 35, use_random_iter, path=SHARED, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(e1, list(it2)))  # same seed, same epoch
    with pytest.raises(ValueError):
        data.SeqDataLoader(0, 35, path=SHARED)


# ----------------------------------------------------------------------------- finding the file
def _write(tmp: Path, text: str = "The Time Machine\n  by H. G. Wells!\n\n") -> Path:
    p = tmp / "tm.txt"
    p.write_text(text, encoding="utf-8")
    return p


def test_nothing_found_gives_one_clear_error(isolated):
    with pytest.raises(data.TimeMachineNotFoundError) as e:
        data.load_data_time_machine(2, 3)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "path=" in msg and data.ENV_VAR in msg and "network disabled" in msg
    with pytest.raises(data.TimeMachineNotFoundError, match="downloading disabled"):
        data.find_time_machine(download=False)


def test_explicit_path_missing_is_an_error(isolated, monkeypatch):
    with pytest.raises(FileNotFoundError, match="path="):
        data.find_time_machine(isolated / "nope.txt")
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "nope.txt"))
    with pytest.raises(FileNotFoundError, match=data.ENV_VAR):
        data.find_time_machine()


def test_path_and_env_precedence_and_hash_warning(isolated, monkeypatch):
    p = _write(isolated)
    with pytest.warns(UserWarning, match="SHA-1"):  # not the d2l copy: accepted with a warning
        assert data.read_time_machine(p) == ["the time machine", "by h g wells", ""]
    other = isolated / "other.txt"
    other.write_text("zzz\n")
    monkeypatch.setenv(data.ENV_VAR, str(other))
    with pytest.warns(UserWarning):
        assert data.find_time_machine(p) == p  # explicit path beats the env var
        assert data.find_time_machine() == other


def test_cache_is_used(isolated):
    cached = data.cache_path()
    assert str(cached).startswith(str(isolated / "cache"))
    cached.parent.mkdir(parents=True)
    cached.write_text("abc\n")
    with pytest.warns(UserWarning):
        assert data.find_time_machine() == cached


def test_download_is_verified_and_cached(isolated, monkeypatch):
    good = (SHARED.read_bytes() if SHARED else b"placeholder")
    calls = []

    def fake_fetch(url, timeout):
        calls.append(url)
        return good

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    if hashlib.sha1(good).hexdigest() == data.DATA_SHA1:
        path = data.find_time_machine()
        assert path == data.cache_path() and path.read_bytes() == good and calls == [data.DATA_URL]
        assert data.find_time_machine() == path and len(calls) == 1  # second call hits the cache
        path.unlink()
    # A wrong hash is never cached and ends in the one clear error.
    monkeypatch.setattr(data, "_fetch", lambda url, timeout: b"not the book")
    with pytest.raises(data.TimeMachineNotFoundError, match="SHA-1"):
        data.find_time_machine()
    assert not data.cache_path().exists()
    assert not list(data.cache_path().parent.glob("*.part"))
