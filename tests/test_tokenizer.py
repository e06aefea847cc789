"""The offline CLIP tokenizer against OpenAI's own tokenizer code, run from the installed clip package."""

import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest

from upgpt_jax import tokenizer as tokenizer_lib

BOS, EOS = 49406, 49407


def _openai_simple_tokenizer():
    """OpenAI's SimpleTokenizer, loaded by file path: `import clip` would import torch and torchvision."""
    package = importlib.util.find_spec("clip")
    path = pathlib.Path(package.submodule_search_locations[0]) / "simple_tokenizer.py"
    spec = importlib.util.spec_from_file_location("openai_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("cache")
        patch.setenv("XDG_CACHE_HOME", str(home))
        patch.delenv(tokenizer_lib.BPE_PATH_ENV, raising=False)
        yield home


@pytest.fixture(scope="module")
def tokenizer(cache_home):
    return tokenizer_lib.load_clip_tokenizer()


@pytest.fixture(scope="module")
def openai_tokenizer():
    return _openai_simple_tokenizer()


def _openai_ids(openai_tokenizer, text, max_length=77):
    """FrozenCLIPEmbedder's ids from OpenAI's BPE: BOS, at most 75 tokens, EOS, EOS padding."""
    ids = [BOS] + openai_tokenizer.encode(text)[: max_length - 2] + [EOS]
    return np.array(ids + [EOS] * (max_length - len(ids)), np.int32)


def test_known_sentence(tokenizer):
    ids = tokenizer_lib.tokenize(tokenizer, ["a photo of a person"])
    assert ids.dtype == np.int32 and ids.shape == (1, 77)
    np.testing.assert_array_equal(ids[0, :7], [BOS, 320, 1125, 539, 320, 2533, EOS])
    np.testing.assert_array_equal(ids[0, 7:], EOS)


def test_vocabulary_and_merges_match_openai(tokenizer, openai_tokenizer):
    assert len(tokenizer.encoder) == tokenizer_lib.VOCAB_SIZE
    assert tokenizer.encoder == openai_tokenizer.encoder
    assert tokenizer.bpe_ranks == openai_tokenizer.bpe_ranks


@pytest.mark.parametrize(
    "text",
    [
        "A Woman wearing a RED T-shirt, and blue jeans!!",
        "The 3 people in 1990s-style coats: 42% off? (maybe) #sale",
        "café crème brûlée — naïve façade",
        "emoji 🙂 and 漢字 mixed with ÅNGSTRÖM",
        "  multiple   spaces\tand\nnewlines  ",
        "she's wearing what they'll've bought, isn't it",
        "",
    ],
)
def test_matches_openai_tokenizer(tokenizer, openai_tokenizer, text):
    np.testing.assert_array_equal(tokenizer_lib.tokenize(tokenizer, [text])[0], _openai_ids(openai_tokenizer, text))


def test_long_text_is_truncated_with_eos_last(tokenizer, openai_tokenizer):
    text = " ".join(f"garment{i} with {i} buttons," for i in range(60))
    assert len(openai_tokenizer.encode(text)) > 75
    ids = tokenizer_lib.tokenize(tokenizer, [text, "short"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS
    np.testing.assert_array_equal(ids[0], _openai_ids(openai_tokenizer, text))
    np.testing.assert_array_equal(ids[1], _openai_ids(openai_tokenizer, "short"))


def test_single_string_and_empty_batch(tokenizer):
    np.testing.assert_array_equal(
        tokenizer_lib.tokenize(tokenizer, "a photo of a person"),
        tokenizer_lib.tokenize(tokenizer, ["a photo of a person"]),
    )
    assert tokenizer_lib.tokenize(tokenizer, []).shape == (0, 77)


def test_cached_files(tokenizer, cache_home):
    (folder,) = (cache_home / "upgpt_jax" / "clip_tokenizer").iterdir()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    assert merges[0] == tokenizer_lib.MERGES_HEADER and len(merges) == 1 + 48894


def test_explicit_path_and_env_override(tmp_path, monkeypatch, openai_tokenizer):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copy = tmp_path / "vocab" / tokenizer_lib.BPE_FILE_NAME
    copy.parent.mkdir()
    shutil.copy(tokenizer_lib.find_bpe_file(), copy)
    monkeypatch.setattr(tokenizer_lib, "BPE_PACKAGES", ())  # only the override can be used
    monkeypatch.setenv(tokenizer_lib.BPE_PATH_ENV, str(copy))
    assert tokenizer_lib.find_bpe_file() == copy
    monkeypatch.delenv(tokenizer_lib.BPE_PATH_ENV)
    tokenizer = tokenizer_lib.load_clip_tokenizer(copy)
    text = "a man in a denim jacket"
    np.testing.assert_array_equal(tokenizer_lib.tokenize(tokenizer, [text])[0], _openai_ids(openai_tokenizer, text))


def test_missing_vocabulary_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(tokenizer_lib.BPE_PATH_ENV, str(tmp_path / "absent.txt.gz"))
    with pytest.raises(FileNotFoundError, match="absent.txt.gz.*UPGPT_CLIP_BPE"):
        tokenizer_lib.load_clip_tokenizer()
    with pytest.raises(FileNotFoundError, match="other.txt.gz.*bpe_path"):
        tokenizer_lib.load_clip_tokenizer(tmp_path / "other.txt.gz")
    monkeypatch.delenv(tokenizer_lib.BPE_PATH_ENV)
    monkeypatch.setattr(tokenizer_lib, "BPE_PACKAGES", ())
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps clip-anytorch==2\.6\.0.*UPGPT_CLIP_BPE"):
        tokenizer_lib.load_clip_tokenizer()


def test_corrupt_vocabulary_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bad = tmp_path / tokenizer_lib.BPE_FILE_NAME
    bad.write_bytes(b"not a gzip file")
    with pytest.raises(ValueError, match="not a gzipped UTF-8 CLIP BPE vocabulary"):
        tokenizer_lib.load_clip_tokenizer(bad)
