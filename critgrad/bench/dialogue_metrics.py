"""Metrics of dialogue response generation on MultiWOZ: corpus BLEU, Inform and Success.

BLEU
    Corpus BLEU (4-gram, uniform weights, brevity penalty over the whole corpus) by ``sacrebleu``,
    the field's reference implementation, on the delexicalised responses: hypotheses and
    references are token lists joined by single spaces and scored with ``tokenize="none"`` (they
    are tokenised already; sacrebleu's own tokeniser would split the placeholders), one reference
    per response, on sacrebleu's 0-100 scale, with its default ``exp`` smoothing of zero counts.

Inform and Success (Budzianowski et al. 2018; the reference evaluator prints Inform as "Matches")
    Computed per dialogue from the generated responses, the dialogue's goal, the annotated belief
    states and the databases, then averaged over dialogues:

    * the goal's domains are those with a non-empty entry in ``goal``; each asks for
      *requestables*: ``phone``, ``address``, ``postcode`` of its ``reqt``, ``reference`` when the
      goal books, and for trains ``id`` when ``trainID`` is requested (and ``reference`` when the
      goal books);
    * an entity is *offered* for restaurant, hotel, attraction and train when a response holds
      ``[domain_name]`` (or ``[train_id]``): the first database entity that fits the annotated
      belief state of that turn, kept while it still fits later offers;
    * a domain is *matched* when its offered entity fits the goal's constraints (``info``), or
      when the goal names the venue itself, or for taxi, police and hospital (nothing to offer),
      or for a train whose id is not requested and none was offered;
    * **Inform** is 1 for a dialogue when every goal domain is matched; **Success** when it is
      matched and each domain's requestables all appear among the responses as ``[domain_slot]``.

    Differences from the reference evaluator, deliberate: the offered entity is the first fitting
    one, not a random one (the metric must be a function of the responses); a reference number
    counts when its placeholder appears, without the reference's check of the booking pointer it
    derived from its own preprocessing (not in the release files); constraints are matched as
    described in :func:`matches` rather than through the reference's SQL tables. The numbers are
    therefore close to, not identical with, published MultiWOZ results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ENTITY_DOMAINS = ("restaurant", "hotel", "attraction", "train")
GOAL_DOMAINS = ("restaurant", "hotel", "attraction", "train", "taxi", "police", "hospital")
_IGNORED = ("", "not mentioned", "dontcare", "dont care", "don't care", "do n't care", "any")


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu's corpus BLEU (0-100) of token lists against one reference each."""
    try:
        import sacrebleu
    except ImportError:
        raise RuntimeError(
            "BLEU needs the sacrebleu package: pip install 'critgrad[bench]'"
        ) from None

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        return 0.0
    result = sacrebleu.corpus_bleu(
        [" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]], tokenize="none"
    )
    return float(result.score)


def _time(value: str) -> str | None:
    """ "9:05" -> "09:05"; None for anything that is not a time of day."""
    hours, sep, minutes = value.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit():
        return None
    return f"{int(hours):02d}:{int(minutes):02d}"


def matches(entity: Mapping[str, Any], constraints: Mapping[str, Any]) -> bool:
    """Whether a database entity fits every constraint that has a value.

    Values such as "" , "not mentioned" and "dontcare" constrain nothing; constraints on fields the
    entity lacks are ignored; ``leaveAt`` asks for a departure at or after, ``arriveBy`` an arrival
    at or before the given time; every other field compares case-insensitively.
    """
    for slot, wanted in constraints.items():
        if not isinstance(wanted, str) or wanted.strip().lower() in _IGNORED:
            continue
        if slot not in entity:
            continue
        have = str(entity[slot]).strip().lower()
        if slot in ("leaveAt", "arriveBy"):
            have_time, wanted_time = _time(have), _time(wanted)
            if have_time is None or wanted_time is None:
                continue
            if (slot == "leaveAt" and have_time < wanted_time) or (
                slot == "arriveBy" and have_time > wanted_time
            ):
                return False
        elif have != wanted.strip().lower():
            return False
    return True


def identity(domain: str, entity: Mapping[str, Any]) -> str:
    return str(entity.get("trainID" if domain == "train" else "name", "")).strip().lower()


def query(
    entities: Sequence[Mapping[str, Any]], domain: str, constraints: Mapping[str, Any]
) -> list[str]:
    """Identities (name, or train id) of the entities that fit ``constraints``, in file order."""
    return [identity(domain, e) for e in entities if matches(e, constraints)]


def requestables(domain: str, goal: Mapping[str, Any]) -> list[str]:
    """What the goal of ``domain`` asks the system to provide (see the module docstring)."""
    asked = goal.get("reqt", [])
    wanted = []
    if domain == "train":
        if "trainID" in asked:
            wanted.append("id")
    else:
        wanted += [s for s in asked if s in ("phone", "address", "postcode")]
    if goal.get("book"):
        wanted.append("reference")
    return wanted


def dialogue_inform_success(
    goal: Mapping[str, Any],
    beliefs: Sequence[Mapping[str, Any]],
    responses: Sequence[Sequence[str]],
    databases: Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[bool, bool]:
    """(inform, success) of one dialogue's generated ``responses`` (token lists, one per system
    turn, ``beliefs`` the annotated belief states of the same turns)."""
    domains = [d for d in GOAL_DOMAINS if goal.get(d)]
    offered: dict[str, str | None] = dict.fromkeys(domains)
    provided: dict[str, set[str]] = {d: set() for d in domains}
    for response, belief in zip(responses, beliefs, strict=True):
        tokens = set(response)
        for domain in domains:
            names = {f"[{domain}_name]"} | ({"[train_id]"} if domain == "train" else set())
            if domain in ENTITY_DOMAINS and tokens & names:
                semi = belief.get(domain, {}).get("semi", {})
                venues = query(databases[domain], domain, semi)
                if venues and offered[domain] not in venues:
                    offered[domain] = venues[0]
            for slot in ("phone", "address", "postcode", "reference", "id"):
                if f"[{domain}_{slot}]" in tokens:
                    provided[domain].add(slot)
    inform = True
    for domain in domains:
        info = goal[domain].get("info", {})
        wanted = requestables(domain, goal[domain])
        if (
            domain not in ENTITY_DOMAINS
            or "name" in info
            or (domain == "train" and offered[domain] is None and "id" not in wanted)
        ):
            matched = True
        else:
            matched = offered[domain] is not None and offered[domain] in query(
                databases[domain], domain, info
            )
        inform = inform and matched
    success = inform and all(
        set(requestables(domain, goal[domain])) <= provided[domain] for domain in domains
    )
    return inform, success


def inform_success(
    dialogues: Sequence[Any],
    responses: Mapping[str, Sequence[Sequence[str]]],
    databases: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, float] | None:
    """Inform and Success rates over ``dialogues`` (each with ``name``, ``goal`` and ``turns``
    whose ``belief`` is the annotated state); ``responses`` maps a name to its generated turns.
    None when a goal domain needs a database that is missing."""
    needed = {d for dialogue in dialogues for d in ENTITY_DOMAINS if dialogue.goal.get(d)}
    if not dialogues or not needed <= set(databases):
        return None
    informs = successes = 0
    for dialogue in dialogues:
        inform, success = dialogue_inform_success(
            dialogue.goal, [t.belief for t in dialogue.turns], responses[dialogue.name], databases
        )
        informs += inform
        successes += success
    return {"inform": informs / len(dialogues), "success": successes / len(dialogues)}
