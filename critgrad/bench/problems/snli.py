"""Natural language inference on SNLI with frozen GloVe inputs: the paper's three sentence encoders.

Every model encodes premise u and hypothesis v with the same encoder and classifies the features
[u, v, |u - v|, u * v] (InferSent's recipe) with one tanh hidden layer into entailment / neutral /
contradiction. Encoders:

* ``snli-infersent``: bidirectional LSTM, max-pooled over time (InferSent's BiLSTM-max);
* ``snli-bilstm``: bidirectional LSTM, the last forward and first backward hidden states;
* ``snli-convnet``: InferSent's hierarchical convnet, 4 layers of width-3 convolutions, each layer
  max-pooled over time, the four concatenated.

The GloVe vectors are a buffer, not a parameter: they are not trained (as in InferSent) and never
reach an optimizer. Padding never wins a max pool and never enters an LSTM (packed sequences).

Sizes: ``full`` is the authors' setting (all 550k / 10k / 10k pairs, encoder 200 units per direction,
classifier 200, batch 128, 20 epochs, gradient-norm clip 5). ``cpu`` trains on a 10,000-pair random
subset (2,000 for valid and test, fixed for every seed) with 64 units, sentences cut at 25 tokens,
2 epochs. With the real files, reading the 5.6 GB GloVe file adds a few minutes
to the first build in a process (then cached in memory).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from critgrad.bench.contract import ProblemSpec, Task, integer, number
from critgrad.bench.datasets import snli as snli_data
from critgrad.bench.datasets.snli import SnliSplit
from critgrad.bench.problems import register
from critgrad.bench.problems.classification import loss_and_accuracy

SPLIT_SEED = 20220425  # fixed: the subsets must not change with the run's seed
FULL = {
    "train_size": None,
    "valid_size": None,
    "test_size": None,
    "max_length": None,
    "hidden_size": 200,
    "classifier_size": 200,
    "batch_size": 128,
    "eval_batch_size": 512,
    "epochs": 20,
    "grad_clip": 5.0,
}
SCHEMA = {
    "train_size": integer(1, none="the whole split"),
    "valid_size": integer(1, none="the whole split"),
    "test_size": integer(1, none="the whole split"),
    "max_length": integer(1, none="sentences not cut"),
    "hidden_size": integer(1),
    "classifier_size": integer(1),
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "epochs": integer(1),
    "grad_clip": number(0, open_minimum=True, none="no clipping"),
}
CPU = {
    **FULL,
    "train_size": 10_000,
    "valid_size": 2_000,
    "test_size": 2_000,
    "max_length": 25,
    "hidden_size": 64,
    "classifier_size": 64,
    "batch_size": 64,
    "epochs": 2,
}


class BiLSTMEncoder(nn.Module):
    """Bidirectional LSTM over the real tokens; ``pool`` "max" (over time) or "last" states."""

    def __init__(self, input_size: int, hidden_size: int, pool: str):
        super().__init__()
        if pool not in ("max", "last"):
            raise ValueError(f"pool must be 'max' or 'last', got {pool!r}")
        self.pool = pool
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_size = 2 * hidden_size

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        output, (hidden, _) = self.lstm(packed)
        if self.pool == "last":
            return torch.cat([hidden[0], hidden[1]], dim=1)
        output, _ = pad_packed_sequence(output, batch_first=True, padding_value=float("-inf"))
        return output.max(dim=1).values


class ConvNetEncoder(nn.Module):
    """Four width-3 convolution layers; each layer's output max-pooled over the real tokens."""

    def __init__(self, input_size: int, hidden_size: int, layers: int = 4):
        super().__init__()
        sizes = [input_size] + [hidden_size] * layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 3, padding=1) for a, b in zip(sizes, sizes[1:]))
        self.output_size = layers * hidden_size

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(embedded.shape[1])[None, :] < lengths[:, None]  # (batch, time)
        x = embedded.transpose(1, 2) * mask[:, None, :]
        pooled = []
        for conv in self.convs:
            x = F.relu(conv(x)) * mask[:, None, :]  # zero padding feeds the next layer
            pooled.append(x.masked_fill(~mask[:, None, :], float("-inf")).max(dim=2).values)
        return torch.cat(pooled, dim=1)


class NLIModel(nn.Module):
    """Shared encoder for both sentences, features [u, v, |u-v|, u*v], tanh MLP to 3 classes."""

    def __init__(
        self,
        vectors: torch.Tensor,
        encoder: str,
        hidden_size: int,
        classifier_size: int,
        classes: int = 3,
    ):
        super().__init__()
        self.register_buffer("vectors", vectors.clone())
        dim = vectors.shape[1]
        if encoder == "bilstm-max":
            self.encoder: nn.Module = BiLSTMEncoder(dim, hidden_size, "max")
        elif encoder == "bilstm-last":
            self.encoder = BiLSTMEncoder(dim, hidden_size, "last")
        elif encoder == "convnet":
            self.encoder = ConvNetEncoder(dim, hidden_size)
        else:
            raise ValueError(f"encoder must be bilstm-max, bilstm-last or convnet, got {encoder!r}")
        self.classifier = nn.Sequential(
            nn.Linear(4 * self.encoder.output_size, classifier_size),
            nn.Tanh(),
            nn.Linear(classifier_size, classes),
        )

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(F.embedding(tokens, self.vectors), lengths)

    def forward(self, premise, premise_lengths, hypothesis, hypothesis_lengths) -> torch.Tensor:
        u = self.encode(premise, premise_lengths)
        v = self.encode(hypothesis, hypothesis_lengths)
        return self.classifier(torch.cat([u, v, (u - v).abs(), u * v], dim=1))


def _subset(split: SnliSplit, size: int | None, max_length: int | None, seed: int) -> SnliSplit:
    rows = list(range(len(split)))
    if size is not None and size < len(split):
        rows = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:size]
        rows = sorted(rows.tolist())
    cut = slice(None, max_length)
    return SnliSplit(
        [split.premises[i][cut] for i in rows],
        [split.hypotheses[i][cut] for i in rows],
        split.labels[rows],
    )


def _collate(split: SnliSplit, rows: list[int]):
    premises = [split.premises[i] for i in rows]
    hypotheses = [split.hypotheses[i] for i in rows]
    return (
        pad_sequence(premises, batch_first=True),
        torch.tensor([len(p) for p in premises]),
        pad_sequence(hypotheses, batch_first=True),
        torch.tensor([len(h) for h in hypotheses]),
        split.labels[rows],
    )


def nli_task(data: snli_data.SnliData, encoder: str, settings: dict[str, Any]) -> Task:
    """A :class:`Task` for one encoder on (a subset of) SNLI; the model is built here."""
    splits = {
        name: _subset(
            getattr(data, name), settings[f"{name}_size"], settings["max_length"], SPLIT_SEED + i
        )
        for i, name in enumerate(("train", "valid", "test"))
    }
    model = NLIModel(data.vectors, encoder, settings["hidden_size"], settings["classifier_size"])
    train, batch_size = splits["train"], settings["batch_size"]

    def train_batches(generator: torch.Generator):
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield _collate(train, order[start : start + batch_size])

    def loss(model: nn.Module, batch) -> torch.Tensor:
        *inputs, labels = batch
        return F.cross_entropy(model(*inputs), labels)

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        data_split, size = splits[split], settings["eval_batch_size"]

        def batches():
            for start in range(0, len(data_split), size):
                *inputs, labels = _collate(
                    data_split, list(range(start, min(start + size, len(data_split))))
                )
                yield tuple(inputs), labels

        return loss_and_accuracy(model, batches(), len(data_split))

    return Task(
        model=model,
        train_batches=train_batches,
        loss=loss,
        evaluate=evaluate,
        metric="accuracy",
        higher_is_better=True,
        epochs=settings["epochs"],
        grad_clip=settings["grad_clip"],
        info={
            "data_folder": data.source,
            "vocabulary_size": len(data.vocabulary),
            "train_size": len(train),
            "valid_size": len(splits["valid"]),
            "test_size": len(splits["test"]),
            "batch_size": batch_size,
            "steps_per_epoch": -(-len(train) // batch_size),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )


def _snli_task(encoder: str, settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    data = snli_data.load(data_dir)
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    return nli_task(data, encoder, settings)


def _snli_problem(name: str, description: str, builder) -> ProblemSpec:
    return ProblemSpec(
        name=name,
        description=description,
        dataset="snli",
        metric="accuracy",
        higher_is_better=True,
        sizes={"cpu": dict(CPU), "full": dict(FULL)},
        builder=builder,
        schema=SCHEMA,
    )


def snli_infersent(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _snli_task("bilstm-max", settings, seed, data_dir)


def snli_bilstm(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _snli_task("bilstm-last", settings, seed, data_dir)


def snli_convnet(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _snli_task("convnet", settings, seed, data_dir)


register(
    _snli_problem("snli-infersent", "SNLI, BiLSTM-max encoder (InferSent) on GloVe", snli_infersent)
)
register(_snli_problem("snli-bilstm", "SNLI, BiLSTM (last states) encoder on GloVe", snli_bilstm))
register(_snli_problem("snli-convnet", "SNLI, hierarchical convnet encoder on GloVe", snli_convnet))
