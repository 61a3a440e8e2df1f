"""SNLI 1.0 sentence pairs with GloVe word vectors, read from a folder the user provides.

Sources: https://nlp.stanford.edu/projects/snli/ (``snli_1.0.zip``) and
https://nlp.stanford.edu/projects/glove/ (``glove.840B.300d.zip``, the vectors InferSent used).
Layout under ``--data-dir`` / ``$CRITGRAD_DATA_DIR``::

    snli_1.0/snli_1.0_train.jsonl, snli_1.0_dev.jsonl, snli_1.0_test.jsonl   (or directly in DATA_DIR)
    glove.840B.300d.txt, or any glove*.txt, in DATA_DIR, DATA_DIR/glove or DATA_DIR/GloVe

SNLI jsonl: one JSON object per line; the fields used are ``gold_label`` (``entailment``,
``neutral``, ``contradiction``, or ``-`` when the annotators did not agree; those pairs are dropped,
as in every published SNLI result), ``sentence1`` (premise) and ``sentence2`` (hypothesis).
GloVe text: one word per line followed by its vector components, separated by single spaces; a few
840B entries contain spaces themselves, so the vector is taken from the end of the line.

Sentences are tokenised by :func:`tokenize` (Penn-Treebank-like: words, numbers, punctuation marks
and English clitics such as ``n't`` and ``'s`` as separate tokens, case kept because the 840B vectors
are cased). The vocabulary is every token of the three splits that has a GloVe vector, as in
InferSent; tokens without one are dropped, and a sentence left empty becomes the single ``<unk>``
token (a zero vector). Reading the 5.6 GB 840B file takes minutes, once per process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable
from critgrad.bench.datasets._integrity import corrupt, file_identity, once

LABELS = ("entailment", "neutral", "contradiction")
SPLIT_FILES = {
    "train": "snli_1.0_train.jsonl",
    "valid": "snli_1.0_dev.jsonl",
    "test": "snli_1.0_test.jsonl",
}
GLOVE_NAME = "glove.840B.300d.txt"
PAD, UNK = "<pad>", "<unk>"

_TOKEN = re.compile(r"\w+?(?=n't\b)|n't\b|'\w+|\w+(?:[-.]\w+)*|[^\w\s]")


def tokenize(sentence: str) -> list[str]:
    """Split a sentence into words, clitics ("do", "n't"; "it", "'s") and punctuation marks."""
    return _TOKEN.findall(sentence)


@dataclasses.dataclass(frozen=True)
class SnliSplit:
    """Token ids per premise and hypothesis (variable-length int64 tensors) and int64 labels."""

    premises: list[torch.Tensor]
    hypotheses: list[torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class SnliData:
    """The three splits, the vocabulary (``<pad>`` = 0, ``<unk>`` = 1) and its GloVe vectors."""

    train: SnliSplit
    valid: SnliSplit
    test: SnliSplit
    vocabulary: tuple[str, ...]
    vectors: torch.Tensor  # (len(vocabulary), dim), zero rows for <pad> and <unk>
    source: str


def locate(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(folder with the three jsonl files, GloVe file); DataUnavailable names what is missing."""
    snli_folders = search_folders(data_dir, ("snli_1.0", "", "snli"))
    snli = next(
        (f for f in snli_folders if all((f / name).is_file() for name in SPLIT_FILES.values())),
        None,
    )
    glove_folders = search_folders(data_dir, ("", "glove", "GloVe"))
    glove = _find_glove(glove_folders)
    if snli is None or glove is None:
        missing, folders = [], []
        if snli is None:
            missing.append("snli_1.0/ with " + ", ".join(SPLIT_FILES.values()))
            folders += snli_folders
        if glove is None:
            missing.append(f"{GLOVE_NAME} (or another glove*.txt)")
            folders += [f for f in glove_folders if f not in folders]
        raise unavailable(
            "SNLI",
            " and ".join(missing),
            folders,
            "unzip snli_1.0.zip (https://nlp.stanford.edu/projects/snli/) and glove.840B.300d.zip "
            "(https://nlp.stanford.edu/projects/glove/) under DATA_DIR (--data-dir or "
            "$CRITGRAD_DATA_DIR)",
        )
    return snli, glove


def _find_glove(folders: list[Path]) -> Path | None:
    for folder in folders:
        if (folder / GLOVE_NAME).is_file():
            return folder / GLOVE_NAME
        others = sorted(folder.glob("glove*.txt")) if folder.is_dir() else []
        if others:
            return others[0]
    return None


def read_pairs(path: Path, limit: int | None = None) -> list[tuple[list[str], list[str], int]]:
    """Tokenised (premise, hypothesis, label id) of one jsonl file, pairs without a gold label
    dropped (the first ``limit`` lines only, when given); CorruptData naming the file and line for
    a line that is not an SNLI record, for a file that is not UTF-8 or holds no labelled pair."""
    pairs, number = [], 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if limit is not None and number > limit:
                    break
                if not line.strip():
                    continue
                pair = _pair(line)
                if pair is None:
                    raise corrupt(
                        f"{path}:{number}",
                        "not an SNLI record (a JSON object with "
                        "string fields gold_label, sentence1, sentence2)",
                    )
                if pair[2] is not None:  # None: "-", no majority among the annotators
                    pairs.append(pair)
    except UnicodeDecodeError as error:
        raise corrupt(f"{path}:{number + 1}", f"not UTF-8 text ({error.reason})") from None
    if not pairs:
        raise corrupt(path, "holds no labelled sentence pair")
    return pairs


def _pair(line: str):
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    gold, premise, hypothesis = (record.get(k) for k in ("gold_label", "sentence1", "sentence2"))
    if not all(isinstance(v, str) for v in (gold, premise, hypothesis)):
        return None
    label = LABELS.index(gold) if gold in LABELS else None
    return tokenize(premise), tokenize(hypothesis), label


def glove_dimension(path: Path) -> int:
    """Components per vector: from the name (``glove.840B.300d.txt``), else the fewest fields on
    the first 100 lines minus one (a word with spaces only ever adds fields)."""
    named = re.search(r"(\d+)d\b", path.name)
    if named:
        return int(named.group(1))
    with open(path, encoding="utf-8", errors="replace") as handle:
        counts = [len(line.rstrip().split(" ")) - 1 for _, line in zip(range(100), handle)]
    if not counts or min(counts) < 1:
        raise corrupt(path, "not a GloVe text file (a word then numbers on each line)")
    return min(counts)


def check_glove(path: Path, lines: int = 100) -> None:
    """The first ``lines`` lines are a word and ``dim`` finite numbers; CorruptData otherwise."""
    dim = glove_dimension(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in zip(range(1, lines + 1), handle):
            _vector(line.rstrip().rsplit(" ", dim), dim, path, number)


def _vector(fields: list[str], dim: int, path: Path, number: int) -> torch.Tensor:
    if len(fields) != dim + 1:
        raise corrupt(f"{path}:{number}", f"expected a word and {dim} numbers")
    try:
        vector = torch.tensor([float(x) for x in fields[1:]], dtype=torch.float32)
    except ValueError:
        raise corrupt(f"{path}:{number}", f"expected a word and {dim} numbers") from None
    if not bool(torch.isfinite(vector).all()):
        raise corrupt(f"{path}:{number}", "a vector with a non-finite component")
    return vector


def read_glove(path: Path, words: set[str]) -> dict[str, torch.Tensor]:
    """Vectors of ``words`` only, streaming the file (the 840B file does not fit a small machine)."""
    dim = glove_dimension(path)
    vectors: dict[str, torch.Tensor] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            head = line.split(" ", 1)[0]
            if head not in words or head in vectors:
                continue
            fields = line.rstrip().rsplit(" ", dim)
            if fields[0] == head and len(fields) == dim + 1:  # not the start of a spaced word
                vectors[head] = _vector(fields, dim, path, number)
    return vectors


_CACHE: dict[tuple[str, str], SnliData] = {}


def load(data_dir: str | os.PathLike | None = None) -> SnliData:
    """SNLI train / dev (as "valid") / test with GloVe vectors for their vocabulary, cached."""
    folder, glove_path = locate(data_dir)
    key = (str(folder.resolve()), str(glove_path.resolve()))
    if key not in _CACHE:
        pairs = {split: read_pairs(folder / name) for split, name in SPLIT_FILES.items()}
        words = {w for split in pairs.values() for p, h, _ in split for w in p + h}
        glove = read_glove(glove_path, words)
        if not glove:
            raise ValueError(f"{glove_path}: no SNLI word has a vector; is it a GloVe text file?")
        vocabulary = (PAD, UNK) + tuple(sorted(glove))
        dim = len(next(iter(glove.values())))
        vectors = torch.zeros(len(vocabulary), dim)
        vectors[2:] = torch.stack([glove[w] for w in vocabulary[2:]])
        index = {w: i for i, w in enumerate(vocabulary)}

        def encode(tokens: list[str]) -> torch.Tensor:
            ids = [index[w] for w in tokens if w in glove]
            return torch.tensor(ids or [index[UNK]], dtype=torch.int64)

        splits = {
            split: SnliSplit(
                [encode(p) for p, _, _ in rows],
                [encode(h) for _, h, _ in rows],
                torch.tensor([y for _, _, y in rows], dtype=torch.int64),
            )
            for split, rows in pairs.items()
        }
        _CACHE[key] = SnliData(
            splits["train"],
            splits["valid"],
            splits["test"],
            vocabulary,
            vectors,
            f"{folder} + {glove_path}",
        )
    return _CACHE[key]


def verify(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The files of :func:`locate`, their first lines checked (the GloVe file is gigabytes: the
    whole of it is checked as it is read, by :func:`load`)."""
    folder, glove = locate(data_dir)
    paths = [folder / name for name in SPLIT_FILES.values()] + [glove]

    def check() -> bool:
        for name in SPLIT_FILES.values():
            read_pairs(folder / name, limit=100)
        check_glove(glove)
        return True

    once(("snli", *file_identity(*paths)), check)
    return folder, glove


register_locator(
    "snli",
    lambda data_dir=None: " + ".join(map(str, locate(data_dir))),
    lambda data_dir=None: verify(data_dir),
)
