"""Word-level language modelling: ``ptb-lstm`` (Penn Treebank) and ``wikitext2-lstm`` (WikiText-2).

Model (the paper's): embedding 64, one LSTM layer of 128 units, a separate (untied) linear decoder
to the vocabulary, no dropout. Training is truncated back-propagation through time over 35 steps
with the gradient norm clipped to 0.25; the hidden state is carried from one batch to the next and
detached, and reset at the start of each epoch. Metric: perplexity, exp of the mean cross-entropy
per token over the whole split (lower is better).

Sizes:

* ``full``: the standard splits, batch 20 (the paper's grid went from 20 to 420), 50 epochs,
  evaluation in 10 columns.
* ``cpu`` (default): PTB's first 100,000 training tokens and the first 20,000 of valid and test
  (WikiText-2: 20,000 and 5,000; its 33k-word decoder costs 3 times more per token), 2 epochs;
  the vocabulary is still the whole training vocabulary (10,000 words for PTB), so perplexities
  are comparable in kind, not in value, with published ones.

Batches come in stream order, because the carried hidden state needs it: the generator picks the
offset (0..34) at which the epoch's first slice starts, so truncation points differ between epochs
and seeds while the text stays in order; every epoch has the same number of full 35-step slices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from critgrad.bench.contract import ProblemSpec, Task, integer, number
from critgrad.bench.datasets import text as text_data
from critgrad.bench.datasets.text import Corpus, batchify, bptt_slices
from critgrad.bench.problems import register

FULL = {
    "train_tokens": None,
    "valid_tokens": None,
    "test_tokens": None,
    "batch_size": 20,
    "eval_batch_size": 10,
    "bptt": 35,
    "epochs": 50,
    "grad_clip": 0.25,
    "embedding_dim": 64,
    "hidden_size": 128,
}
CPU = {**FULL, "train_tokens": 100_000, "valid_tokens": 20_000, "test_tokens": 20_000, "epochs": 2}
SCHEMA = {
    "train_tokens": integer(1, none="the whole split"),
    "valid_tokens": integer(1, none="the whole split"),
    "test_tokens": integer(1, none="the whole split"),
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "bptt": integer(1),
    "epochs": integer(1),
    "grad_clip": number(0, open_minimum=True, none="no clipping"),
    "embedding_dim": integer(1),
    "hidden_size": integer(1),
}
# WikiText-2's vocabulary is 3.3 times PTB's, and the decoder's cost grows with it.
WIKITEXT2_CPU = {**CPU, "train_tokens": 20_000, "valid_tokens": 5_000, "test_tokens": 5_000}


class LSTMLanguageModel(nn.Module):
    """Embedding -> 1-layer LSTM -> linear decoder; inputs (steps, batch) -> logits (steps, batch, V)."""

    def __init__(self, vocabulary_size: int, embedding_dim: int = 64, hidden_size: int = 128):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size)
        self.decoder = nn.Linear(hidden_size, vocabulary_size)
        # PyTorch's word_language_model initialisation, which the paper's code used.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, inputs: torch.Tensor, hidden=None):
        output, hidden = self.lstm(self.embedding(inputs), hidden)
        return self.decoder(output), hidden


@dataclasses.dataclass(frozen=True)
class LanguageBatch:
    """One bptt slice: inputs and next-word targets (steps, batch); ``first`` starts an epoch."""

    inputs: torch.Tensor
    targets: torch.Tensor
    first: bool


def _prefix(tokens: torch.Tensor, count: int | None) -> torch.Tensor:
    return tokens if count is None else tokens[:count]


def language_model_task(corpus: Corpus, model: nn.Module, settings: dict[str, Any]) -> Task:
    """A truncated-BPTT :class:`Task` with the hidden state carried across batches."""
    bptt = settings["bptt"]
    train = batchify(_prefix(corpus.train, settings["train_tokens"]), settings["batch_size"])
    evaluation = {
        split: batchify(
            _prefix(corpus.split(split), settings[f"{split}_tokens"]), settings["eval_batch_size"]
        )
        for split in ("valid", "test")
    }
    carried: dict[str, Any] = {"hidden": None}  # the state one batch hands to the next

    # Every epoch has the same number of full-length slices, wherever it starts: the last
    # (offset + 1) rows of the columns that do not fill a slice are left out.
    steps_per_epoch = (len(train) - bptt) // bptt
    if steps_per_epoch < 1:
        raise ValueError(
            f"{train.numel()} training tokens in {settings['batch_size']} columns "
            f"are too few for one slice of {bptt} steps"
        )

    def train_batches(generator: torch.Generator):
        offset = int(torch.randint(bptt, (1,), generator=generator))
        for i in range(steps_per_epoch):
            start = offset + i * bptt
            yield LanguageBatch(
                train[start : start + bptt], train[start + 1 : start + 1 + bptt], first=i == 0
            )

    def loss(model: nn.Module, batch: LanguageBatch) -> torch.Tensor:
        hidden = None if batch.first else carried["hidden"]
        logits, hidden = model(batch.inputs, hidden)
        # Detached: gradients stop at the slice boundary (truncated BPTT), the values flow on.
        carried["hidden"] = tuple(h.detach() for h in hidden)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten())

    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        columns = evaluation[split]
        total, count, hidden = 0.0, 0, None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for inputs, targets in bptt_slices(columns, bptt):
                    logits, hidden = model(inputs, hidden)
                    total += F.cross_entropy(
                        logits.flatten(0, 1), targets.flatten(), reduction="sum"
                    ).item()
                    count += targets.numel()
        finally:
            model.train(was_training)
        mean = total / count
        return {"loss": mean, "metric": math.exp(mean) if mean < 700 else float("inf")}

    return Task(
        model=model,
        train_batches=train_batches,
        loss=loss,
        evaluate=evaluate,
        metric="perplexity",
        higher_is_better=False,
        epochs=settings["epochs"],
        grad_clip=settings["grad_clip"],
        info={
            "data_folder": corpus.source,
            "vocabulary_size": len(corpus.vocabulary),
            "train_tokens": train.numel(),
            "valid_tokens": evaluation["valid"].numel(),
            "test_tokens": evaluation["test"].numel(),
            "batch_size": settings["batch_size"],
            "bptt": bptt,
            "steps_per_epoch": steps_per_epoch,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )


def _lstm_task(corpus: Corpus, settings: dict[str, Any], seed: int) -> Task:
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    model = LSTMLanguageModel(
        len(corpus.vocabulary), settings["embedding_dim"], settings["hidden_size"]
    )
    return language_model_task(corpus, model, settings)


def ptb_lstm(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _lstm_task(text_data.load_ptb(data_dir), settings, seed)


def wikitext2_lstm(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    return _lstm_task(text_data.load_wikitext2(data_dir), settings, seed)


register(
    ProblemSpec(
        name="ptb-lstm",
        description="Penn Treebank, 1-layer LSTM 64/128 (word level)",
        dataset="ptb",
        metric="perplexity",
        higher_is_better=False,
        sizes={"cpu": dict(CPU), "full": dict(FULL)},
        builder=ptb_lstm,
        schema=SCHEMA,
    )
)
register(
    ProblemSpec(
        name="wikitext2-lstm",
        description="WikiText-2, 1-layer LSTM 64/128 (word level)",
        dataset="wikitext2",
        metric="perplexity",
        higher_is_better=False,
        sizes={"cpu": dict(WIKITEXT2_CPU), "full": dict(FULL)},
        builder=wikitext2_lstm,
        schema=SCHEMA,
    )
)
