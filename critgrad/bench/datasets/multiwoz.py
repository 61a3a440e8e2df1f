"""MultiWOZ 2.0 dialogues, read from the release files in a folder the user provides.

Source: https://github.com/budzianowski/multiwoz (``data/MultiWOZ_2.0.zip``; the archive unpacks to
a folder named ``MULTIWOZ2 2``). Layout under ``--data-dir`` / ``$CRITGRAD_DATA_DIR``, in the folder
itself or in a subfolder ``MULTIWOZ2 2``, ``MultiWOZ_2.0``, ``multiwoz2.0`` or ``multiwoz``::

    data.json            required: {dialogue id: {"goal": {...}, "log": [turn, ...]}}
    valListFile.json     required: validation dialogue ids, one per line (plain text)
    testListFile.json    required: test dialogue ids, one per line (plain text)
    dialogue_acts.json   optional: the system turns' dialogue acts (delexicalisation)
    restaurant_db.json, hotel_db.json, attraction_db.json, train_db.json
                         optional: the databases (Inform and Success)

``log`` alternates user and system turns, ``{"text": ..., "metadata": ...}``; a system turn's
``metadata`` is the belief state, ``{domain: {"semi": {slot: value}, "book": {...}}}``. A dialogue
whose log ends on a user turn loses that turn (it has no response). ``dialogue_acts.json`` maps a
dialogue id without ``.json`` to ``{"k": acts}`` for its k-th system turn (k from 1), acts being
``{"Domain-Intent": [[slot, value], ...]}`` or the string ``"No Annotation"``.

The split is the release's own (the one the paper used): the dialogues of the two list files are
valid and test (1,000 each), every other one is train (8,438).

Text handling (:func:`tokenize`): lower case, then words, numbers and times (``11:15``,
``cb21ab``, ``don't`` stay whole), every other non-space character a token of its own; placeholders
such as ``[restaurant_name]`` are one token. System turns are *delexicalised* from their dialogue
acts (:func:`delexicalise`): each value an act names is replaced, where its tokens occur in the
turn, by a placeholder: ``[domain_name]``, ``[domain_address]``, ``[domain_phone]``,
``[domain_postcode]``, ``[domain_reference]``, ``[train_id]``, ``[taxi_type]``, or ``[value_<kind>]``
for the other slots (area, food, pricerange, day, time, place, count, price). ``Booking-*`` acts
take the domain of the turn's other acts, else of the latest earlier act. Without
``dialogue_acts.json`` system turns stay as they are and Inform / Success cannot be computed.

``multiwoz-roberta`` also needs a ``transformers`` model folder (:func:`locate_pretrained`):
``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``) and the tokenizer's
files, at a path the user gives or under DATA_DIR (default name ``roberta-base``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critgrad.bench.datasets import register_locator
from critgrad.bench.datasets._folders import search_folders, unavailable
from critgrad.bench.datasets._integrity import corrupt, read_text

REQUIRED = ("data.json", "valListFile.json", "testListFile.json")
ACTS_FILE = "dialogue_acts.json"
DB_DOMAINS = ("restaurant", "hotel", "attraction", "train")
SUBFOLDERS = ("", "MULTIWOZ2 2", "MultiWOZ_2.0", "multiwoz2.0", "multiwoz")

_TOKEN = re.compile(r"\[[a-z_]+\]|<[a-z]+>|[a-z0-9]+(?:[:'.\-][a-z0-9]+)*|[^\sa-z0-9]")

# Act slot -> placeholder kind. Entity attributes become [domain_kind]; the rest [value_kind].
ENTITY_SLOTS = {
    "name": "name",
    "addr": "address",
    "phone": "phone",
    "post": "postcode",
    "ref": "reference",
    "id": "id",
    "car": "type",
}
VALUE_SLOTS = {
    "area": "area",
    "food": "food",
    "price": "pricerange",
    "day": "day",
    "leave": "time",
    "arrive": "time",
    "time": "time",
    "depart": "place",
    "dest": "place",
    "choice": "count",
    "people": "count",
    "stay": "count",
    "stars": "count",
    "ticket": "price",
    "fee": "price",
}
_NO_VALUE = ("", "none", "?", "dontcare", "dont care", "don't care", "do n't care")


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens (see the module docstring)."""
    return _TOKEN.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Turn:
    """One exchange: the user's utterance, the system's response (as written and delexicalised)
    and the belief state after the user's utterance (the system turn's metadata)."""

    user: str
    system: str
    system_delex: tuple[str, ...]  # tokens
    belief: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Dialogue:
    name: str  # the release's id, e.g. "SNG0073.json"
    goal: Mapping[str, Any]
    turns: tuple[Turn, ...]


@dataclasses.dataclass(frozen=True)
class MultiWoz:
    """The three splits, the databases found (domain -> entities) and where they came from."""

    train: tuple[Dialogue, ...]
    valid: tuple[Dialogue, ...]
    test: tuple[Dialogue, ...]
    databases: Mapping[str, tuple[Mapping[str, Any], ...]]
    delexicalised: bool  # dialogue_acts.json was there
    dropped_user_turns: int  # final user turns without a response
    source: str

    def split(self, name: str) -> tuple[Dialogue, ...]:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {name!r}")
        return getattr(self, name)


def locate(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the required release files; DataUnavailable names them otherwise."""
    folders = search_folders(data_dir, SUBFOLDERS)
    for folder in folders:
        if all((folder / name).is_file() for name in REQUIRED):
            return folder
    raise unavailable(
        "MultiWOZ 2.0",
        f"{', '.join(REQUIRED)} (and optionally {ACTS_FILE} and the *_db.json files)",
        folders,
        "unzip MultiWOZ_2.0.zip (https://github.com/budzianowski/multiwoz, data/) and put its "
        "folder 'MULTIWOZ2 2' (or its files) under DATA_DIR (--data-dir or $CRITGRAD_DATA_DIR)",
    )


def read_list_file(path: Path) -> list[str]:
    """Dialogue ids, one per line (the release's list files are plain text despite their name)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def _read_json(path: Path) -> Any:
    """A JSON file of the release; CorruptData naming it when it is empty, not UTF-8 or not
    JSON."""
    try:
        return json.loads(read_text(path))
    except (json.JSONDecodeError, RecursionError) as error:
        raise corrupt(path, f"not JSON ({error})") from None


def _turn_domain(acts: Mapping[str, Any], previous: str | None) -> str | None:
    for key in acts:
        domain = key.split("-", 1)[0].lower()
        if domain not in ("booking", "general"):
            return domain
    return previous


def delexicalise(tokens: Sequence[str], acts: Any, domain: str | None) -> list[str]:
    """Replace the values named by ``acts`` (one system turn's) in ``tokens`` by placeholders.

    ``domain`` stands in for ``Booking`` acts. Longer values are replaced first, so that a value
    inside a longer one does not break it.
    """
    if not isinstance(acts, Mapping):
        return list(tokens)
    replacements: dict[tuple[str, ...], str] = {}
    for key, pairs in acts.items():
        act_domain = key.split("-", 1)[0].lower()
        if act_domain == "general" or not isinstance(pairs, list):
            continue
        if act_domain == "booking":
            if domain is None:
                continue
            act_domain = domain
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2:
                continue
            slot, value = str(pair[0]).lower(), str(pair[1]).lower().strip()
            if value in _NO_VALUE:
                continue
            if slot in ENTITY_SLOTS:
                placeholder = f"[{act_domain}_{ENTITY_SLOTS[slot]}]"
            elif slot in VALUE_SLOTS:
                placeholder = f"[value_{VALUE_SLOTS[slot]}]"
            else:
                continue
            value_tokens = tuple(tokenize(value))
            if value_tokens:
                replacements.setdefault(value_tokens, placeholder)
    out = list(tokens)
    for value_tokens in sorted(replacements, key=len, reverse=True):
        width, i, replaced = len(value_tokens), 0, []
        while i < len(out):
            if tuple(out[i : i + width]) == value_tokens:
                replaced.append(replacements[value_tokens])
                i += width
            else:
                replaced.append(out[i])
                i += 1
        out = replaced
    return out


def _dialogue(name: str, raw: Mapping[str, Any], acts: Mapping[str, Any] | None) -> Dialogue:
    log = raw.get("log")
    if not isinstance(log, list) or not isinstance(raw.get("goal"), Mapping):
        raise ValueError(f"dialogue {name}: expected 'goal' (a dict) and 'log' (a list)")
    turns = []
    domain = None
    for k in range(len(log) // 2):
        user, system = log[2 * k], log[2 * k + 1]
        turn_acts = None
        if acts is not None:
            turn_acts = acts.get(name.removesuffix(".json"), {}).get(str(k + 1))
            if isinstance(turn_acts, Mapping):
                domain = _turn_domain(turn_acts, domain)
        delex = delexicalise(tokenize(system["text"]), turn_acts, domain)
        turns.append(Turn(user["text"], system["text"], tuple(delex), system.get("metadata") or {}))
    return Dialogue(name, raw["goal"], tuple(turns))


_CACHE: dict[str, MultiWoz] = {}


def load(data_dir: str | os.PathLike | None = None) -> MultiWoz:
    """The release's three splits (cached per process and folder)."""
    folder = locate(data_dir)
    key = str(folder.resolve())
    if key in _CACHE:
        return _CACHE[key]
    data = _read_json(folder / "data.json")
    if not isinstance(data, Mapping):
        raise corrupt(folder / "data.json", "expected a dict of dialogues")
    acts = None
    if (folder / ACTS_FILE).is_file():
        acts = _read_json(folder / ACTS_FILE)
        if not isinstance(acts, Mapping):
            raise corrupt(folder / ACTS_FILE, "expected a dict of dialogue acts")
    valid_ids = read_list_file(folder / "valListFile.json")
    test_ids = read_list_file(folder / "testListFile.json")
    unknown = sorted(set(valid_ids + test_ids) - set(data))
    if unknown:
        raise ValueError(
            f"{folder}: {len(unknown)} ids of the list files are not in data.json, e.g. {unknown[:3]}"
        )
    held_out = set(valid_ids) | set(test_ids)
    dialogues = {}
    for name in data:
        try:
            dialogues[name] = _dialogue(name, data[name], acts)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise corrupt(
                folder / "data.json", f"dialogue {name} is not a MultiWOZ dialogue ({error!r})"
            ) from None
    databases = {}
    for domain in DB_DOMAINS:
        path = folder / f"{domain}_db.json"
        if path.is_file():
            rows = _read_json(path)
            if not isinstance(rows, list):
                raise corrupt(path, "expected a list of entries")
            databases[domain] = tuple(rows)
    dropped = sum(len(raw["log"]) % 2 for raw in data.values())
    result = MultiWoz(
        train=tuple(dialogues[name] for name in sorted(data) if name not in held_out),
        valid=tuple(dialogues[name] for name in valid_ids),
        test=tuple(dialogues[name] for name in test_ids),
        databases=databases,
        delexicalised=acts is not None,
        dropped_user_turns=dropped,
        source=str(folder),
    )
    _CACHE[key] = result
    return result


# ---- the pretrained encoder of multiwoz-roberta: a transformers model folder

PRETRAINED = "roberta-base"
MODEL_FILES = ("config.json",)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def locate_pretrained(name: str, data_dir: str | None = None) -> Path:
    """The ``transformers`` model folder ``name``: a path, or a folder of that name under
    DATA_DIR or DATA_DIR/models; DataUnavailable says what it must hold otherwise."""
    candidates = []
    given = Path(name).expanduser()
    if given.is_absolute() or given.exists():
        candidates.append(given)
    candidates += search_folders(data_dir, (name, f"models/{name}"))
    for folder in candidates:
        if (
            all((folder / f).is_file() for f in MODEL_FILES)
            and any((folder / f).is_file() for f in WEIGHT_FILES)
            and any((folder / f).is_file() for f in TOKENIZER_FILES)
        ):
            return folder
    raise unavailable(
        f"the pretrained model {name!r}",
        "a transformers model folder (config.json, model.safetensors or pytorch_model.bin, and "
        "the tokenizer's files: tokenizer.json or vocab.json + merges.txt)",
        candidates,
        f"on a machine with internet, run AutoModel.from_pretrained({name!r}).save_pretrained"
        f"(FOLDER) and the same with AutoTokenizer, then copy FOLDER to DATA_DIR/{name} or pass "
        "--override pretrained=/path/to/FOLDER",
    )


def _locate_with_model(data_dir: str | os.PathLike | None = None) -> str:
    return f"{locate(data_dir)} + {locate_pretrained(PRETRAINED, data_dir)}"


def verify(data_dir: str | os.PathLike | None = None) -> Path:
    """The release's folder, its files read and checked (remembered per process)."""
    load(data_dir)
    return locate(data_dir)


register_locator("multiwoz", lambda data_dir=None: str(locate(data_dir)), verify)
register_locator("multiwoz+roberta-base", _locate_with_model, verify)
