"""Dialogue response generation on MultiWOZ 2.0: the paper's Bi-LSTM and RoBERTa rows.

Each system turn of a dialogue is one example: from the dialogue so far (the last
``context_turns`` utterances, each after a speaker token ``<usr>`` or ``<sys>``, cut from the left
to ``max_context_tokens``), generate the system's delexicalised response (see
:mod:`critgrad.bench.datasets.multiwoz`), cut to ``max_response_tokens``.

* ``multiwoz-lstm``: a bidirectional LSTM encoder over word embeddings and an LSTM decoder with
  attention (Luong's "general" score over the encoder states, the attentional state
  tanh(W [h; context]) feeding the output layer); the encoder's final states, through a tanh
  layer, start the decoder.
* ``multiwoz-roberta``: RoBERTa (``roberta-base`` in the paper) encodes the context, tokenised by
  its own tokenizer, and the same attention decoder generates the response from its final hidden
  states (the first one, through a tanh layer, starts the decoder). The weights and tokenizer come
  from a ``transformers`` model folder the user provides (setting ``pretrained``: a path, or a
  folder name under DATA_DIR; default ``roberta-base``); nothing is downloaded. Needs the
  ``dialogue`` extra (``pip install 'critgrad[dialogue]'``). All of RoBERTa is trained.

Training: teacher forcing, mean cross-entropy per response token (the end token included).
Evaluation on a split: ``loss`` the same cross-entropy per token, teacher forced, over all its
responses (``perplexity`` = exp(loss)); responses generated greedily (at most
``max_response_tokens`` tokens, up to the end token) and scored with corpus ``bleu`` (the metric,
higher is better), ``inform`` and ``success`` (see :mod:`critgrad.bench.dialogue_metrics`; only
when the release's dialogue acts and databases are there).

Sizes: ``full`` is the setting of the MultiWOZ baseline (Budzianowski et al. 2018) that the paper's
schedule (15 epochs, batch 64) matches: every dialogue of the release's split (8,438 / 1,000 /
1,000 dialogues, about 56,800 / 7,400 / 7,400 system turns; the paper's split table counts 115K /
20K / 20K), the user's last utterance as context, vocabularies of the 400 most frequent tokens,
embeddings 50, hidden states 150 (per direction in the encoder), gradient-norm clip 5. The
baseline also fed the belief state and database counts to its decoder; these models read text
only. ``cpu`` trains on 500 training dialogues (100 valid and test, a fixed random subset) for 2
epochs.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from critgrad.bench import dialogue_metrics
from critgrad.bench.contract import ProblemSpec, Setting, Task, integer, number
from critgrad.bench.datasets import multiwoz as multiwoz_data
from critgrad.bench.problems import register

SPLIT_SEED = 20220425  # fixed: the subsets must not change with the run's seed
PAD, UNK, BOS, EOS, USR, SYS = "<pad>", "<unk>", "<bos>", "<eos>", "<usr>", "<sys>"

FULL = {
    "train_dialogues": None,  # None: all of the split
    "valid_dialogues": None,
    "test_dialogues": None,
    "context_turns": 1,  # the user's last utterance, as the MultiWOZ baseline
    "max_context_tokens": 50,
    "max_response_tokens": 50,
    "vocab_size": 400,  # per side (context, response), special tokens included
    "embedding_dim": 50,
    "hidden_size": 150,
    "dropout": 0.0,
    "batch_size": 64,
    "eval_batch_size": 256,
    "epochs": 15,
    "grad_clip": 5.0,
}
CPU = {**FULL, "train_dialogues": 500, "valid_dialogues": 100, "test_dialogues": 100, "epochs": 2}
ROBERTA = {"pretrained": multiwoz_data.PRETRAINED, "max_context_tokens": 128}
# What each setting accepts (checked before anything is loaded).
SCHEMA = {
    "train_dialogues": integer(1, none="the whole split"),
    "valid_dialogues": integer(1, none="the whole split"),
    "test_dialogues": integer(1, none="the whole split"),
    "context_turns": integer(1),
    "max_context_tokens": integer(1),
    "max_response_tokens": integer(1),
    "vocab_size": integer(7),  # the special tokens and at least one word
    "embedding_dim": integer(1),
    "hidden_size": integer(1),
    "dropout": number(0, maximum=1, open_maximum=True),
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "epochs": integer(1),
    "grad_clip": number(0, open_minimum=True, none="no clipping"),
    "pretrained": Setting("string", rule=(lambda v: bool(v.strip()), "a model folder's name")),
}


# ---------------------------------------------------------------------------------------------
# Examples and vocabularies


@dataclasses.dataclass(frozen=True)
class Example:
    dialogue: str  # the dialogue's name
    context: tuple[str, ...]  # tokens, speaker tokens included
    response: tuple[str, ...]  # delexicalised tokens (the whole response: the BLEU reference)


def dialogue_examples(
    dialogue: multiwoz_data.Dialogue, context_turns: int, max_context_tokens: int
) -> list[Example]:
    """One example per system turn (see the module docstring)."""
    history: list[list[str]] = []
    examples = []
    for turn in dialogue.turns:
        history.append([USR, *multiwoz_data.tokenize(turn.user)])
        context = [token for utterance in history[-context_turns:] for token in utterance]
        examples.append(
            Example(dialogue.name, tuple(context[-max_context_tokens:]), turn.system_delex)
        )
        history.append([SYS, *turn.system_delex])
    return examples


class Vocabulary:
    """Tokens <-> ids: the special tokens first, then the most frequent (ties: alphabetical)."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = tuple(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, sequences, size: int, specials: Sequence[str]) -> Vocabulary:
        counts = Counter(token for sequence in sequences for token in sequence)
        for special in specials:
            counts.pop(special, None)
        ranked = sorted(counts, key=lambda token: (-counts[token], token))
        return cls([*specials, *ranked[: max(0, size - len(specials))]])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(token, unk) for token in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Tokens up to the end token (excluded)."""
        out = []
        for i in ids:
            token = self.tokens[i]
            if token == EOS:
                break
            out.append(token)
        return out


# ---------------------------------------------------------------------------------------------
# Models


class AttentionDecoder(nn.Module):
    """LSTM decoder with Luong "general" attention over a memory (B, T, M)."""

    def __init__(
        self, vocab: int, embedding_dim: int, hidden: int, memory_dim: int, dropout: float
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.key = nn.Linear(memory_dim, hidden, bias=False)
        self.combine = nn.Linear(hidden + memory_dim, hidden)
        self.out = nn.Linear(hidden, vocab)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, inputs: Tensor, state, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Logits (B, L, V) for the input tokens (B, L), and the state after them."""
        hidden, state = self.lstm(self.dropout(self.embedding(inputs)), state)
        scores = hidden @ self.key(memory).transpose(1, 2)  # (B, L, T)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        context = torch.softmax(scores, dim=-1) @ memory  # (B, L, M)
        attended = torch.tanh(self.combine(torch.cat([hidden, context], dim=-1)))
        return self.out(self.dropout(attended)), state


class Seq2Seq(nn.Module):
    """An encoder (subclasses) and the attention decoder; batches are dicts of tensors."""

    decoder: AttentionDecoder

    def encode(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """(memory (B, T, M), mask (B, T), initial decoder state)."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Teacher-forced logits (B, L, V) for ``batch["target_in"]``."""
        memory, mask, state = self.encode(batch)
        logits, _ = self.decoder(batch["target_in"], state, memory, mask)
        return logits

    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], max_tokens: int, bos: int) -> Tensor:
        """Greedy decoding: (B, max_tokens) token ids (the caller cuts at the end token)."""
        memory, mask, state = self.encode(batch)
        token = torch.full((memory.shape[0], 1), bos, dtype=torch.long, device=memory.device)
        out = []
        for _ in range(max_tokens):
            logits, state = self.decoder(token, state, memory, mask)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            out.append(token)
        return torch.cat(out, dim=1)


class BiLSTMSeq2Seq(Seq2Seq):
    """Bidirectional LSTM encoder over word embeddings, attention decoder."""

    def __init__(
        self, input_vocab: int, output_vocab: int, embedding_dim: int, hidden: int, dropout: float
    ):
        super().__init__()
        self.embedding = nn.Embedding(input_vocab, embedding_dim, padding_idx=0)
        self.encoder = nn.LSTM(embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.bridge_h = nn.Linear(2 * hidden, hidden)
        self.bridge_c = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.decoder = AttentionDecoder(output_vocab, embedding_dim, hidden, 2 * hidden, dropout)

    def encode(self, batch):
        ids, mask = batch["context"], batch["context_mask"]
        lengths = mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(
            self.dropout(self.embedding(ids)), lengths, batch_first=True, enforce_sorted=False
        )
        output, (h, c) = self.encoder(packed)
        memory, _ = pad_packed_sequence(output, batch_first=True, total_length=ids.shape[1])
        h = torch.cat([h[0], h[1]], dim=-1)  # last forward and first backward states
        c = torch.cat([c[0], c[1]], dim=-1)
        state = (torch.tanh(self.bridge_h(h))[None], torch.tanh(self.bridge_c(c))[None])
        return memory, mask, state


class PretrainedEncoderSeq2Seq(Seq2Seq):
    """A ``transformers`` encoder (RoBERTa) and the attention decoder."""

    def __init__(
        self, encoder: nn.Module, output_vocab: int, embedding_dim: int, hidden: int, dropout: float
    ):
        super().__init__()
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.bridge = nn.Linear(width, hidden)
        self.decoder = AttentionDecoder(output_vocab, embedding_dim, hidden, width, dropout)

    def encode(self, batch):
        mask = batch["context_mask"]
        memory = self.encoder(
            input_ids=batch["context"], attention_mask=mask.long()
        ).last_hidden_state
        h = torch.tanh(self.bridge(memory[:, 0]))[None]  # the <s> token's state
        return memory, mask, (h, torch.zeros_like(h))


# ---------------------------------------------------------------------------------------------
# The task


def _batch(contexts: list[Tensor], targets: list[Tensor], pad: int, bos: int, eos: int):
    context = pad_sequence(contexts, batch_first=True, padding_value=pad)
    lengths = torch.tensor([len(c) for c in contexts])
    context_mask = torch.arange(context.shape[1])[None, :] < lengths[:, None]
    target_in = pad_sequence(
        [torch.cat([torch.tensor([bos]), t]) for t in targets], batch_first=True, padding_value=0
    )
    target_out = pad_sequence(
        [torch.cat([t, torch.tensor([eos])]) for t in targets], batch_first=True, padding_value=0
    )
    return {
        "context": context,
        "context_mask": context_mask,
        "target_in": target_in,
        "target_out": target_out,
    }


def _subset(dialogues: Sequence[Any], count: int | None) -> list[Any]:
    if count is None or count >= len(dialogues):
        return list(dialogues)
    keep = sorted(random.Random(SPLIT_SEED).sample(range(len(dialogues)), count))
    return [dialogues[i] for i in keep]


@dataclasses.dataclass
class _Split:
    dialogues: list[Any]
    examples: list[Example]
    contexts: list[Tensor]  # encoded contexts (word ids, or the pretrained tokenizer's ids)
    targets: list[Tensor]  # response ids, cut to max_response_tokens


def dialogue_task(
    data: multiwoz_data.MultiWoz,
    model: Seq2Seq,
    splits: dict[str, _Split],
    output_vocab: Vocabulary,
    context_pad: int,
    settings: dict[str, Any],
    info: dict[str, Any],
) -> Task:
    """Training batches, teacher-forced loss and the evaluation of the module docstring."""
    pad, bos, eos = 0, output_vocab.index[BOS], output_vocab.index[EOS]
    batch_size, eval_batch_size = settings["batch_size"], settings["eval_batch_size"]
    max_tokens = settings["max_response_tokens"]
    train = splits["train"]

    def batch_of(split: _Split, rows) -> dict[str, Tensor]:
        return _batch(
            [split.contexts[i] for i in rows],
            [split.targets[i] for i in rows],
            context_pad,
            bos,
            eos,
        )

    def train_batches(generator: torch.Generator):
        order = torch.randperm(len(train.examples), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield batch_of(train, order[start : start + batch_size])

    def loss(model: nn.Module, batch) -> Tensor:
        logits = model(batch)
        return F.cross_entropy(
            logits.flatten(0, 1), batch["target_out"].flatten(), ignore_index=pad
        )

    def evaluate(model: nn.Module, split_name: str) -> dict[str, float]:
        split = splits[split_name]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        total, count, generated = 0.0, 0, []
        try:
            with torch.no_grad():
                for start in range(0, len(split.examples), eval_batch_size):
                    rows = range(start, min(start + eval_batch_size, len(split.examples)))
                    batch = {k: v.to(device) for k, v in batch_of(split, rows).items()}
                    logits = model(batch)
                    total += F.cross_entropy(
                        logits.flatten(0, 1),
                        batch["target_out"].flatten(),
                        ignore_index=pad,
                        reduction="sum",
                    ).item()
                    count += int((batch["target_out"] != pad).sum())
                    ids = model.generate(batch, max_tokens, bos).cpu().tolist()
                    generated += [output_vocab.decode(row) for row in ids]
        finally:
            model.train(was_training)
        nll = total / max(count, 1)
        references = [list(e.response) for e in split.examples]
        scores = {
            "loss": nll,
            "metric": dialogue_metrics.corpus_bleu(generated, references),
            "perplexity": math.exp(nll) if nll < 700 else math.inf,
        }
        if data.delexicalised:
            by_dialogue: dict[str, list[list[str]]] = {}
            for example, response in zip(split.examples, generated):
                by_dialogue.setdefault(example.dialogue, []).append(response)
            rates = dialogue_metrics.inform_success(split.dialogues, by_dialogue, data.databases)
            if rates is not None:
                scores.update(rates)
        return scores

    return Task(
        model=model,
        train_batches=train_batches,
        loss=loss,
        evaluate=evaluate,
        metric="bleu",
        higher_is_better=True,
        epochs=settings["epochs"],
        grad_clip=settings["grad_clip"],
        info={
            **info,
            **{f"{name}_dialogues": len(s.dialogues) for name, s in splits.items()},
            **{f"{name}_turns": len(s.examples) for name, s in splits.items()},
            "output_vocabulary": len(output_vocab),
            "delexicalised": data.delexicalised,
            "databases": sorted(data.databases),
            "batch_size": batch_size,
            "steps_per_epoch": -(-len(train.examples) // batch_size),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )


def _examples(data, settings) -> dict[str, tuple[list[Any], list[Example]]]:
    out = {}
    for name in ("train", "valid", "test"):
        dialogues = _subset(data.split(name), settings[f"{name}_dialogues"])
        examples = [
            e
            for d in dialogues
            for e in dialogue_examples(d, settings["context_turns"], settings["max_context_tokens"])
        ]
        out[name] = (dialogues, examples)
    return out


def _targets(examples: list[Example], vocab: Vocabulary, max_tokens: int) -> list[Tensor]:
    return [torch.tensor(vocab.encode(e.response[:max_tokens]), dtype=torch.long) for e in examples]


def multiwoz_lstm(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    data = multiwoz_data.load(data_dir)
    examples = _examples(data, settings)
    train_examples = examples["train"][1]
    size = settings["vocab_size"]
    input_vocab = Vocabulary.build((e.context for e in train_examples), size, (PAD, UNK, USR, SYS))
    output_vocab = Vocabulary.build(
        (e.response for e in train_examples), size, (PAD, UNK, BOS, EOS)
    )
    splits = {
        name: _Split(
            dialogues,
            split_examples,
            [torch.tensor(input_vocab.encode(e.context), dtype=torch.long) for e in split_examples],
            _targets(split_examples, output_vocab, settings["max_response_tokens"]),
        )
        for name, (dialogues, split_examples) in examples.items()
    }
    torch.manual_seed(seed)  # the initial weights are a function of the seed alone
    model = BiLSTMSeq2Seq(
        len(input_vocab),
        len(output_vocab),
        settings["embedding_dim"],
        settings["hidden_size"],
        settings["dropout"],
    )
    info = {"data_folder": data.source, "input_vocabulary": len(input_vocab)}
    return dialogue_task(data, model, splits, output_vocab, 0, settings, info)


# ---------------------------------------------------------------------------------------------
# RoBERTa


def _transformers():
    try:
        import transformers
    except ImportError:
        raise RuntimeError(
            "multiwoz-roberta needs the transformers package: pip install 'critgrad[dialogue]'"
        ) from None
    return transformers


def multiwoz_roberta(settings: dict[str, Any], seed: int, data_dir: str | None) -> Task:
    data = multiwoz_data.load(data_dir)
    folder = multiwoz_data.locate_pretrained(settings["pretrained"], data_dir)
    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.truncation_side = "left"  # a long context keeps its latest words
    examples = _examples(data, settings)
    output_vocab = Vocabulary.build(
        (e.response for e in examples["train"][1]), settings["vocab_size"], (PAD, UNK, BOS, EOS)
    )
    splits = {}
    for name, (dialogues, split_examples) in examples.items():
        encoded = tokenizer(
            [" ".join(e.context) for e in split_examples],
            truncation=True,
            max_length=settings["max_context_tokens"],
        )["input_ids"]
        splits[name] = _Split(
            dialogues,
            split_examples,
            [torch.tensor(ids, dtype=torch.long) for ids in encoded],
            _targets(split_examples, output_vocab, settings["max_response_tokens"]),
        )
    torch.manual_seed(seed)  # the decoder's initial weights are a function of the seed alone
    encoder = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # unused: its parameters would never get a gradient
    model = PretrainedEncoderSeq2Seq(
        encoder,
        len(output_vocab),
        settings["embedding_dim"],
        settings["hidden_size"],
        settings["dropout"],
    )
    info = {"data_folder": data.source, "pretrained": str(folder)}
    return dialogue_task(data, model, splits, output_vocab, tokenizer.pad_token_id, settings, info)


register(
    ProblemSpec(
        name="multiwoz-lstm",
        description="MultiWOZ 2.0 response generation, Bi-LSTM encoder-decoder with attention",
        dataset="multiwoz",
        metric="bleu",
        higher_is_better=True,
        sizes={"cpu": dict(CPU), "full": dict(FULL)},
        builder=multiwoz_lstm,
        schema=SCHEMA,
    )
)
register(
    ProblemSpec(
        name="multiwoz-roberta",
        description="MultiWOZ 2.0 response generation, RoBERTa encoder + attention decoder",
        dataset="multiwoz+roberta-base",
        metric="bleu",
        higher_is_better=True,
        sizes={"cpu": {**CPU, **ROBERTA}, "full": {**FULL, **ROBERTA}},
        builder=multiwoz_roberta,
        schema=SCHEMA,
    )
)
