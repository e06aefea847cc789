"""CLIP's BPE tokenizer, built offline from the vocabulary file OpenAI ships with CLIP.

No model hub can be reached, so the tokenizer files (vocab.json, merges.txt) that
openai/clip-vit-large-patch14 would provide are rebuilt from `bpe_simple_vocab_16e6.txt.gz`, the
file inside the `clip-anytorch` wheel (install it with `pip install --no-deps clip-anytorch==2.6.0`:
its declared dependencies pull torchvision, and the package itself is never imported). They are
cached and loaded into transformers' (slow) `CLIPTokenizer`, which is what the original
FrozenCLIPEmbedder used; with ftfy installed, as there, its text cleaning is the same.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np
from transformers import CLIPTokenizer
from transformers.models.clip.tokenization_clip import bytes_to_unicode

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_PATH_ENV = "UPGPT_CLIP_BPE"
# Packages whose folder holds BPE_FILE_NAME: clip-anytorch (or openai's clip) and open_clip_torch.
BPE_PACKAGES = ("clip", "open_clip")
NUM_MERGES = 49152 - 256 - 2  # OpenAI's recipe: the first 48,894 merges of the file.
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2  # 49,408: bytes, bytes + '</w>', merges, BOS, EOS.
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
MERGES_HEADER = "#version: 0.2"  # CLIPTokenizer skips the first line of merges.txt.


def find_bpe_file(bpe_path: str | os.PathLike | None = None) -> pathlib.Path:
    """The BPE vocabulary: `bpe_path`, else $UPGPT_CLIP_BPE, else the copy in an installed package."""
    explicit = bpe_path if bpe_path is not None else os.environ.get(BPE_PATH_ENV)
    if explicit:
        path = pathlib.Path(explicit)
        if not path.is_file():
            source = "bpe_path argument" if bpe_path is not None else f"${BPE_PATH_ENV}"
            raise FileNotFoundError(f"CLIP BPE vocabulary {path} (from the {source}) does not exist")
        return path
    for package in BPE_PACKAGES:
        spec = importlib.util.find_spec(package)  # locates, does not import (clip imports torch)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = pathlib.Path(folder) / BPE_FILE_NAME
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"CLIP's BPE vocabulary {BPE_FILE_NAME} was not found. Install the package that ships it with "
        f"`pip install --no-deps clip-anytorch==2.6.0`, or set ${BPE_PATH_ENV} (or pass bpe_path) to "
        f"a copy of {BPE_FILE_NAME}."
    )


def read_bpe_merges(bpe_file: pathlib.Path) -> list[tuple[str, str]]:
    """The NUM_MERGES merge pairs CLIP uses, in rank order (the file's first line is a header)."""
    try:
        lines = gzip.decompress(bpe_file.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{bpe_file} is not a gzipped UTF-8 CLIP BPE vocabulary: {error}") from error
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"{bpe_file} does not hold {NUM_MERGES} merge pairs after its header line")
    return merges


def build_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's vocabulary: byte symbols, byte symbols ending a word, merged symbols, BOS, EOS."""
    byte_symbols = list(bytes_to_unicode().values())
    symbols = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    symbols += ["".join(merge) for merge in merges] + [BOS_TOKEN, EOS_TOKEN]
    return {symbol: index for index, symbol in enumerate(symbols)}


def write_tokenizer_files(bpe_file: pathlib.Path) -> pathlib.Path:
    """vocab.json and merges.txt for `bpe_file`, in a cache folder keyed by the file's hash."""
    digest = hashlib.sha256(bpe_file.read_bytes()).hexdigest()[:16]
    cache_root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    for root in (cache_root / "upgpt_jax", pathlib.Path(tempfile.gettempdir()) / "upgpt_jax"):
        folder = root / "clip_tokenizer" / digest
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return folder
        merges = read_bpe_merges(bpe_file)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # vocab.json last: its presence marks a complete folder.
            _write_atomically(folder / "merges.txt", "\n".join([MERGES_HEADER] + [" ".join(m) for m in merges]) + "\n")
            _write_atomically(folder / "vocab.json", json.dumps(build_vocab(merges), ensure_ascii=False))
        except OSError:
            continue  # e.g. a read-only home: fall back to the temp dir
        return folder
    raise OSError(f"no writable folder for the CLIP tokenizer files (tried {cache_root} and the temp dir)")


def load_clip_tokenizer(bpe_path: str | os.PathLike | None = None) -> CLIPTokenizer:
    """transformers' CLIPTokenizer with CLIP's vocabulary, built without any download."""
    if importlib.util.find_spec("ftfy") is None:
        raise ImportError(
            "ftfy is required: CLIPTokenizer cleans text with it (as the original model's tokenizer "
            "did) and silently tokenizes differently without it; `pip install ftfy`"
        )
    folder = write_tokenizer_files(find_bpe_file(bpe_path))
    tokenizer = CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"), model_max_length=77
    )
    if len(tokenizer) != VOCAB_SIZE:
        raise ValueError(f"CLIP tokenizer built in {folder} has {len(tokenizer)} tokens, expected {VOCAB_SIZE}")
    return tokenizer


def tokenize(tokenizer: CLIPTokenizer, texts: str | Sequence[str], max_length: int = 77) -> np.ndarray:
    """Token ids (N, max_length) int32: BOS, text, EOS, padded with EOS, truncated keeping EOS last.

    Exactly FrozenCLIPEmbedder's call (truncation=True, padding="max_length").
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        return np.zeros((0, max_length), np.int32)
    encoding = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    return encoding["input_ids"].astype(np.int32)


def _write_atomically(path: pathlib.Path, text: str) -> None:
    """Write via a temp file and rename, so concurrent processes never read a partial file."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as file:
        file.write(text)
    os.chmod(file.name, 0o644)
    os.replace(file.name, path)
