"""A tiny MultiWOZ 2.0 release written in its real on-disk format (plain Python and json only).

Dialogues follow three templates (a restaurant with phone and postcode asked, a hotel booking, a
train booking), filled from small databases, so that a model can learn the delexicalised
responses. ``write_multiwoz(folder)`` writes data.json, valListFile.json, testListFile.json,
dialogue_acts.json and the four *_db.json files; ``acts=False`` / ``databases=False`` leave those
out.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

RESTAURANTS = [
    {"name": "pizza hut city centre", "food": "italian", "pricerange": "cheap", "area": "centre",
     "phone": "01223323737", "postcode": "cb21ab", "address": "regent street"},
    {"name": "golden wok", "food": "chinese", "pricerange": "moderate", "area": "north",
     "phone": "01223350688", "postcode": "cb43hl", "address": "191 histon road"},
    {"name": "the nirala", "food": "indian", "pricerange": "moderate", "area": "north",
     "phone": "01223360966", "postcode": "cb41uy", "address": "7 milton road"},
    {"name": "saint johns chop house", "food": "british", "pricerange": "moderate",
     "area": "west", "phone": "01223353110", "postcode": "cb39ht", "address": "21 northampton street"},
]  # fmt: skip
HOTELS = [
    {"name": "acorn guest house", "area": "north", "parking": "yes", "pricerange": "moderate",
     "type": "guesthouse", "phone": "01223353888", "postcode": "cb41da"},
    {"name": "el shaddai", "area": "centre", "parking": "yes", "pricerange": "cheap",
     "type": "guesthouse", "phone": "01223327978", "postcode": "cb11eg"},
]  # fmt: skip
TRAINS = [
    {"trainID": "TR1234", "departure": "cambridge", "destination": "london kings cross",
     "day": "monday", "leaveAt": "09:00", "arriveBy": "09:51", "price": "23.60 pounds"},
    {"trainID": "TR5678", "departure": "cambridge", "destination": "london kings cross",
     "day": "monday", "leaveAt": "11:00", "arriveBy": "11:51", "price": "23.60 pounds"},
]  # fmt: skip
ATTRACTIONS = [{"name": "kings college", "area": "centre", "type": "college"}]

NAMES = {
    "train": [f"SNG{i:04d}.json" for i in range(1, 11)]
    + ["MUL0001.json", "MUL0002.json", "MUL0003.json"],
    "valid": ["SNG0101.json", "MUL0101.json"],
    "test": ["SNG0201.json", "MUL0201.json"],
}


def empty_belief() -> dict:
    """A system turn's metadata with every domain and slot of the release, nothing mentioned."""
    return {
        "taxi": {"book": {"booked": []}, "semi": dict.fromkeys(
            ["leaveAt", "destination", "departure", "arriveBy"], "")},
        "police": {"book": {"booked": []}, "semi": {}},
        "restaurant": {"book": {"booked": [], "people": "", "day": "", "time": ""},
                       "semi": {"food": "", "pricerange": "", "name": "not mentioned", "area": ""}},
        "hospital": {"book": {"booked": []}, "semi": {"department": ""}},
        "hotel": {"book": {"booked": [], "people": "", "day": "", "stay": ""},
                  "semi": {"name": "not mentioned", "area": "", "parking": "", "pricerange": "",
                           "stars": "", "internet": "", "type": ""}},
        "attraction": {"book": {"booked": []}, "semi": {"type": "", "name": "", "area": ""}},
        "train": {"book": {"booked": [], "people": ""}, "semi": {
            "leaveAt": "", "destination": "", "day": "", "arriveBy": "", "departure": ""}},
    }  # fmt: skip


def empty_goal() -> dict:
    goal = {d: {} for d in ("taxi", "police", "hospital", "hotel", "attraction", "train")}
    goal.update(restaurant={}, message=["a task"], topic={})
    return goal


def restaurant_dialogue(entity: dict) -> tuple[dict, dict]:
    """(dialogue, its acts): the user asks for a restaurant, then its phone and postcode."""
    belief = empty_belief()
    belief["restaurant"]["semi"].update(
        food=entity["food"], pricerange=entity["pricerange"], area=entity["area"]
    )
    goal = empty_goal()
    goal["restaurant"] = {
        "info": {k: entity[k] for k in ("food", "pricerange", "area")},
        "reqt": ["phone", "postcode"],
        "fail_info": {},
    }
    log = [
        {"text": f"I want a {entity['pricerange']} restaurant serving {entity['food']} food "
                 f"in the {entity['area']}.", "metadata": {}},
        {"text": f"{entity['name'].title()} serves {entity['food']} food in the "
                 f"{entity['area']}. Would you like their phone number?", "metadata": belief},
        {"text": "Yes, please give me the phone number and the postcode.", "metadata": {}},
        {"text": f"The phone number is {entity['phone']} and the postcode is "
                 f"{entity['postcode'].upper()}.", "metadata": belief},
        {"text": "Thank you, goodbye.", "metadata": {}},
        {"text": "You are welcome. Goodbye.", "metadata": belief},
    ]  # fmt: skip
    acts = {
        "1": {"Restaurant-Inform": [["Name", entity["name"]], ["Food", entity["food"]],
                                    ["Area", entity["area"]]]},
        "2": {"Restaurant-Inform": [["Phone", entity["phone"]], ["Post", entity["postcode"]]]},
        "3": {"general-bye": [["none", "none"]]},
    }  # fmt: skip
    return {"goal": goal, "log": log}, acts


def hotel_dialogue(entity: dict, people: int, stay: int, reference: str) -> tuple[dict, dict]:
    """The user asks for a hotel with parking and books it (a Booking act names the reference)."""
    searching = empty_belief()
    searching["hotel"]["semi"].update(area=entity["area"], parking="yes")
    booked = json.loads(json.dumps(searching))
    booked["hotel"]["book"].update(people=str(people), day="friday", stay=str(stay))
    booked["hotel"]["book"]["booked"] = [{"name": entity["name"], "reference": reference}]
    goal = empty_goal()
    goal["hotel"] = {
        "info": {"area": entity["area"], "parking": "yes"},
        "book": {"people": str(people), "day": "friday", "stay": str(stay)},
        "fail_info": {},
        "fail_book": {},
    }
    log = [
        {"text": f"I need a place to stay in the {entity['area']} with free parking.",
         "metadata": {}},
        {"text": f"{entity['name'].title()} is in the {entity['area']}. Shall I book it?",
         "metadata": searching},
        {"text": f"Yes, book it for {people} people for {stay} nights starting friday.",
         "metadata": {}},
        {"text": f"Booking was successful. Reference number is : {reference}.",
         "metadata": booked},
    ]  # fmt: skip
    acts = {
        "1": {"Hotel-Inform": [["Name", entity["name"]], ["Area", entity["area"]]]},
        "2": {"Booking-Book": [["Ref", reference], ["People", str(people)],
                               ["Stay", str(stay)], ["Day", "friday"]]},
    }  # fmt: skip
    return {"goal": goal, "log": log}, acts


def train_dialogue(entity: dict, reference: str, odd: bool = False) -> tuple[dict, dict]:
    """The user books a train leaving after a time; ``odd`` ends the log on a user turn."""
    belief = empty_belief()
    belief["train"]["semi"].update(
        departure="cambridge", destination=entity["destination"], day="monday", leaveAt="08:30"
    )
    goal = empty_goal()
    goal["train"] = {
        "info": {"departure": "cambridge", "destination": entity["destination"],
                 "day": "monday", "leaveAt": "08:30"},
        "book": {"people": "2"},
        "reqt": ["trainID"],
        "fail_info": {},
    }  # fmt: skip
    log = [
        {"text": f"I need a train to {entity['destination']} on monday after 08:30.",
         "metadata": {}},
        {"text": f"{entity['trainID']} leaves at {entity['leaveAt']}. Shall I book it?",
         "metadata": belief},
        {"text": "Yes, for 2 people please.", "metadata": {}},
        {"text": f"Booked! Your reference number is {reference}.", "metadata": belief},
    ]  # fmt: skip
    if odd:
        log.append({"text": "Thanks, bye.", "metadata": {}})
    acts = {
        "1": {"Train-Inform": [["Id", entity["trainID"]], ["Leave", entity["leaveAt"]]]},
        "2": {"Train-OfferBooked": [["Ref", reference], ["People", "2"]]},
    }
    return {"goal": goal, "log": log}, acts


def dialogues() -> tuple[dict, dict]:
    """(data.json content, dialogue_acts.json content) for every name of ``NAMES``."""
    rng = random.Random(7)
    data, acts = {}, {}
    for split, names in NAMES.items():
        for index, name in enumerate(names):
            reference = f"{split[:2].upper()}{index:02d}{rng.randint(100, 999)}"
            if name.startswith("SNG"):
                dialogue, dialogue_acts = restaurant_dialogue(rng.choice(RESTAURANTS))
            elif name == "MUL0003.json":
                dialogue, dialogue_acts = train_dialogue(TRAINS[0], reference, odd=True)
            else:
                dialogue, dialogue_acts = hotel_dialogue(
                    rng.choice(HOTELS), rng.randint(2, 5), rng.randint(1, 4), reference
                )
            data[name] = dialogue
            acts[name.removesuffix(".json")] = dialogue_acts
    acts["SNG0001"]["3"] = "No Annotation"  # as in the release, for some turns
    return data, acts


def write_multiwoz(folder: Path, acts: bool = True, databases: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data, dialogue_acts = dialogues()
    (folder / "data.json").write_text(json.dumps(data))
    (folder / "valListFile.json").write_text("".join(f"{n}\n" for n in NAMES["valid"]))
    (folder / "testListFile.json").write_text("".join(f"{n}\n" for n in NAMES["test"]))
    if acts:
        (folder / "dialogue_acts.json").write_text(json.dumps(dialogue_acts))
    if databases:
        for domain, entities in (
            ("restaurant", RESTAURANTS),
            ("hotel", HOTELS),
            ("train", TRAINS),
            ("attraction", ATTRACTIONS),
        ):
            (folder / f"{domain}_db.json").write_text(json.dumps(entities))
    return folder
