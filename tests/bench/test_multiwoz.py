"""MultiWOZ 2.0: the loader on a fixture in the release's format, tokenisation and
delexicalisation, BLEU against hand-counted n-grams, Inform / Success on hand-made cases, the two
problems (Bi-LSTM, and RoBERTa from a tiny random model folder) and their place in the harness."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from fixtures_multiwoz import NAMES, RESTAURANTS, TRAINS, write_multiwoz

from critgrad.bench import cli, dialogue_metrics, problems, runner
from critgrad.bench.contract import DataUnavailable
from critgrad.bench.datasets import multiwoz as multiwoz_data
from critgrad.bench.problems import multiwoz
from critgrad.bench.record_format import RunSpec

TINY = {
    "embedding_dim": 16,
    "hidden_size": 16,
    "batch_size": 8,
    "eval_batch_size": 16,
    "max_response_tokens": 20,
    "epochs": 1,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: on a busy machine a second intra-op thread only adds waiting (x10 here).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiwoz-data")
    write_multiwoz(root / "MULTIWOZ2 2")  # the folder name of the release's archive
    return root


@pytest.fixture(scope="module")
def data(data_root):
    return multiwoz_data.load(str(data_root))


# ---- the loader ------------------------------------------------------------------------------


def test_split_follows_the_list_files(data):
    assert [d.name for d in data.valid] == NAMES["valid"]
    assert [d.name for d in data.test] == NAMES["test"]
    assert [d.name for d in data.train] == sorted(NAMES["train"])
    assert data.delexicalised and sorted(data.databases) == [
        "attraction",
        "hotel",
        "restaurant",
        "train",
    ]
    # MUL0003 ends on a user turn: it is dropped, the two exchanges before it are kept.
    odd = next(d for d in data.train if d.name == "MUL0003.json")
    assert len(odd.turns) == 2 and data.dropped_user_turns == 1
    assert odd.turns[0].belief["train"]["semi"]["leaveAt"] == "08:30"


def test_missing_files_are_named(tmp_path):
    write_multiwoz(tmp_path / "multiwoz")
    (tmp_path / "multiwoz" / "testListFile.json").unlink()
    with pytest.raises(DataUnavailable) as error:
        multiwoz_data.locate(str(tmp_path))
    message = str(error.value)
    for expected in (
        "MultiWOZ 2.0 not found",
        "data.json",
        "valListFile.json",
        "testListFile.json",
    ):
        assert expected in message
    assert str(tmp_path / "multiwoz") in message
    with pytest.raises(DataUnavailable, match="no folder given"):
        multiwoz_data.locate(None)


def test_list_file_ids_must_be_dialogues(tmp_path):
    write_multiwoz(tmp_path)
    with open(tmp_path / "valListFile.json", "a") as stream:
        stream.write("SNG9999.json\n")
    with pytest.raises(ValueError, match="SNG9999"):
        multiwoz_data.load(str(tmp_path))


def test_tokenize():
    assert multiwoz_data.tokenize("The phone is 01223323737, postcode CB21AB; at 11:15?") == [
        "the", "phone", "is", "01223323737", ",", "postcode", "cb21ab", ";", "at", "11:15", "?",
    ]  # fmt: skip
    assert multiwoz_data.tokenize("I don't know [restaurant_name]'s £4.40 fee") == [
        "i", "don't", "know", "[restaurant_name]", "'", "s", "£", "4.40", "fee",
    ]  # fmt: skip


def test_delexicalise():
    tokens = multiwoz_data.tokenize("Pizza Hut City Centre is in the centre, ref ABC12.")
    acts = {
        "Restaurant-Inform": [["Name", "pizza hut city centre"], ["Area", "centre"]],
        "Booking-Book": [["Ref", "abc12"], ["none", "none"]],
        "general-greet": [["none", "none"]],
    }
    # The longer value first: "centre" inside the name does not break it.
    assert multiwoz_data.delexicalise(tokens, acts, "restaurant") == [
        "[restaurant_name]", "is", "in", "the", "[value_area]", ",", "ref",
        "[restaurant_reference]", ".",
    ]  # fmt: skip
    # A Booking act without a known domain is left alone; "No Annotation" leaves the turn as is.
    assert "abc12" in multiwoz_data.delexicalise(tokens, acts, None)
    assert multiwoz_data.delexicalise(tokens, "No Annotation", "hotel") == tokens


def test_without_dialogue_acts_nothing_is_delexicalised(tmp_path):
    write_multiwoz(tmp_path, acts=False)
    plain = multiwoz_data.load(str(tmp_path))
    assert not plain.delexicalised
    turn = plain.valid[0].turns[0]
    assert list(turn.system_delex) == multiwoz_data.tokenize(turn.system)


def test_examples_carry_the_context(data):
    dialogue = next(d for d in data.train if d.name == "SNG0001.json")
    examples = multiwoz.dialogue_examples(dialogue, context_turns=3, max_context_tokens=100)
    assert len(examples) == len(dialogue.turns) == 3
    user = [multiwoz_data.tokenize(t.user) for t in dialogue.turns]
    expected = [
        "<usr>", *user[0], "<sys>", *dialogue.turns[0].system_delex, "<usr>", *user[1],
    ]  # fmt: skip
    assert list(examples[1].context) == expected
    assert examples[1].response == dialogue.turns[1].system_delex
    cut = multiwoz.dialogue_examples(dialogue, context_turns=3, max_context_tokens=5)
    assert list(cut[1].context) == expected[-5:]
    first = multiwoz.dialogue_examples(dialogue, context_turns=1, max_context_tokens=100)
    assert list(first[2].context) == ["<usr>", *user[2]]


# ---- BLEU ------------------------------------------------------------------------------------


def test_corpus_bleu_against_hand_counted_ngrams():
    # Pair 1: "the cat sat on the mat" / "the cat sat on a mat". Clipped matches / hypothesis
    # n-grams: 1-grams 5/6 ("the" twice, once in the reference), 2-grams 3/5, 3-grams 2/4,
    # 4-grams 1/3 ("the cat sat on").
    # Pair 2: "hello there" / "hello there friend": 1-grams 2/2, 2-grams 1/1, none longer.
    # Corpus: 7/8, 4/6, 2/4, 1/3; hypothesis length 8, reference length 9 -> brevity penalty
    # exp(1 - 9/8). BLEU = 100 * BP * (7/8 * 4/6 * 2/4 * 1/3) ** (1/4).
    hypotheses = [["the", "cat", "sat", "on", "the", "mat"], ["hello", "there"]]
    references = [["the", "cat", "sat", "on", "a", "mat"], ["hello", "there", "friend"]]
    expected = 100 * math.exp(1 - 9 / 8) * (7 / 8 * 4 / 6 * 2 / 4 * 1 / 3) ** 0.25
    assert dialogue_metrics.corpus_bleu(hypotheses, references) == pytest.approx(expected, rel=1e-9)
    # The first pair alone: equal lengths, no penalty: (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 1/12^(1/4).
    single = dialogue_metrics.corpus_bleu(hypotheses[:1], references[:1])
    assert single == pytest.approx(100 * (1 / 12) ** 0.25, rel=1e-9)
    # Placeholders are tokens as they are (no re-tokenisation splits their brackets).
    tokens = ["[restaurant_name]", "is", "a", "nice", "place"]
    assert dialogue_metrics.corpus_bleu([tokens], [tokens]) == pytest.approx(100.0)


# ---- Inform and Success ----------------------------------------------------------------------


def references_of(dialogues):
    return {d.name: [list(t.system_delex) for t in d.turns] for d in dialogues}


def test_reference_responses_inform_and_succeed(data):
    rates = dialogue_metrics.inform_success(data.valid, references_of(data.valid), data.databases)
    assert rates == {"inform": 1.0, "success": 1.0}
    all_sets = data.train + data.valid + data.test
    rates = dialogue_metrics.inform_success(all_sets, references_of(all_sets), data.databases)
    assert rates == {"inform": 1.0, "success": 1.0}


def test_inform_and_success_cases(data):
    restaurant = next(d for d in data.valid if d.name.startswith("SNG"))
    hotel = next(d for d in data.valid if d.name.startswith("MUL"))
    responses = references_of(data.valid)

    # No name offered: the restaurant (not named in the goal) is not matched.
    unnamed = copy.deepcopy(responses)
    unnamed[restaurant.name] = [
        [t for t in turn if t != "[restaurant_name]"] for turn in unnamed[restaurant.name]
    ]
    rates = dialogue_metrics.inform_success(data.valid, unnamed, data.databases)
    assert rates == {"inform": 0.5, "success": 0.5}

    # The phone never given: informed, not successful.
    no_phone = copy.deepcopy(responses)
    no_phone[restaurant.name] = [
        [t for t in turn if t != "[restaurant_phone]"] for turn in no_phone[restaurant.name]
    ]
    rates = dialogue_metrics.inform_success(data.valid, no_phone, data.databases)
    assert rates == {"inform": 1.0, "success": 0.5}

    # A hotel booking without its reference number: not successful.
    no_reference = copy.deepcopy(responses)
    no_reference[hotel.name] = [
        [t for t in turn if t != "[hotel_reference]"] for turn in no_reference[hotel.name]
    ]
    rates = dialogue_metrics.inform_success(data.valid, no_reference, data.databases)
    assert rates == {"inform": 1.0, "success": 0.5}

    # Without the databases the rates cannot be computed.
    assert dialogue_metrics.inform_success(data.valid, responses, {"hotel": []}) is None


def test_offered_entity_comes_from_the_belief_state():
    goal = {
        "restaurant": {"info": {"food": "italian", "area": "centre"}, "reqt": ["phone"]},
        "taxi": {"info": {"leaveAt": "10:00"}},  # nothing to offer: always matched
    }
    databases = {"restaurant": RESTAURANTS, "train": TRAINS}
    responses = [["[restaurant_name]", "is", "good"], ["call", "[restaurant_phone]"]]
    belief = {"restaurant": {"semi": {"food": "italian", "area": "centre", "name": ""}}}
    assert dialogue_metrics.dialogue_inform_success(goal, [belief] * 2, responses, databases) == (
        True,
        True,
    )
    # The system believed the user wanted british food: it offered the wrong restaurant.
    wrong = {"restaurant": {"semi": {"food": "british", "area": "dontcare"}}}
    assert dialogue_metrics.dialogue_inform_success(goal, [wrong] * 2, responses, databases) == (
        False,
        False,
    )
    # A goal that names its venue is matched without an offer.
    named = {"restaurant": {"info": {"name": "golden wok"}, "reqt": []}}
    assert dialogue_metrics.dialogue_inform_success(named, [{}], [["hello"]], databases) == (
        True,
        True,
    )


def test_train_offers_and_ids():
    goal = {"train": {"info": {"day": "monday", "leaveAt": "10:00"}, "reqt": ["trainID"]}}
    databases = {"train": TRAINS}
    believed = {"train": {"semi": {"day": "monday", "leaveAt": "10:00"}}}
    # TR5678 (11:00) is the first train leaving at or after 10:00: it fits the goal.
    result = dialogue_metrics.dialogue_inform_success(
        goal, [believed], [["[train_id]", "leaves", "soon"]], databases
    )
    assert result == (True, True)
    early = {"train": {"semi": {"day": "monday", "leaveAt": "08:00"}}}  # offers TR1234 (09:00)
    result = dialogue_metrics.dialogue_inform_success(goal, [early], [["[train_id]"]], databases)
    assert result == (False, False)
    # The id asked for and never given: no match (nothing offered).
    assert dialogue_metrics.dialogue_inform_success(goal, [believed], [["ok"]], databases) == (
        False,
        False,
    )


@pytest.mark.parametrize(
    "constraints, fits",
    [
        ({"day": "Monday"}, True),  # case-insensitive
        ({"day": "tuesday"}, False),
        ({"day": "dontcare", "destination": "not mentioned"}, True),  # no constraint
        ({"leaveAt": "9:00"}, True),  # 09:00 leaves at or after 9:00
        ({"leaveAt": "09:01"}, False),
        ({"arriveBy": "09:51"}, True),
        ({"arriveBy": "9:50"}, False),
        ({"parking": "yes"}, True),  # a field trains lack constrains nothing
    ],
)
def test_database_matching(constraints, fits):
    assert dialogue_metrics.matches(TRAINS[0], constraints) is fits


# ---- the problems ----------------------------------------------------------------------------


def test_registered_with_the_baseline_settings():
    for name in ("multiwoz-lstm", "multiwoz-roberta"):
        spec = problems.get_problem(name)
        assert (spec.metric, spec.higher_is_better) == ("bleu", True)
        assert set(spec.sizes) == {"cpu", "full"}
        full = spec.sizes["full"]
        assert (full["epochs"], full["batch_size"], full["grad_clip"]) == (15, 64, 5.0)
        assert (full["vocab_size"], full["embedding_dim"], full["hidden_size"]) == (400, 50, 150)
        assert full["train_dialogues"] is None and spec.sizes["cpu"]["train_dialogues"] == 500
    assert problems.get_problem("multiwoz-roberta").sizes["full"]["pretrained"] == "roberta-base"


def train_epochs(task, epochs, lr=0.02):
    optimizer = torch.optim.Adam(task.model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in task.train_batches(generator):
            optimizer.zero_grad()
            task.loss(task.model, batch).backward()
            optimizer.step()


def test_lstm_problem_trains_and_scores(data_root):
    task = problems.get_problem("multiwoz-lstm").build("cpu", 0, str(data_root), TINY)
    assert task.info["train_turns"] == 36 and task.info["valid_turns"] == 5
    assert task.info["steps_per_epoch"] == 5
    before = task.evaluate(task.model, "valid")
    assert set(before) == {"loss", "metric", "perplexity", "inform", "success"}
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]))
    train_epochs(task, 15)
    after = task.evaluate(task.model, "valid")
    assert after["loss"] < before["loss"] / 2
    assert after["metric"] > before["metric"]
    assert task.evaluate(task.model, "valid") == after  # greedy decoding is deterministic


def test_runner_records_the_dialogue_scores(data_root):
    spec = RunSpec(
        problem="multiwoz-lstm", optimizer="adam", hyperparameters={"lr": 0.01}, seed=0,
        overrides=TINY,
    )  # fmt: skip
    record = runner.run(spec, data_dir=str(data_root))
    assert record["metric"] == "bleu" and record["steps"] == 5
    last = record["history"][-1]
    for key in ("valid_perplexity", "valid_inform", "valid_success", "test_perplexity"):
        assert key in last
    assert last["valid_perplexity"] == pytest.approx(math.exp(last["valid_loss"]))


def test_critgrad_list_shows_both_rows(data_root, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("multiwoz-lstm", "multiwoz-roberta"):
        assert f"  {name}" in out
    assert "missing multiwoz" in out and "MultiWOZ 2.0 not found: expected data.json" in out
    assert cli.main(["list", "--data-dir", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "MULTIWOZ2 2" in out  # found; the RoBERTa folder is still missing
    assert "the pretrained model 'roberta-base' not found" in out


# ---- RoBERTa from a tiny random model folder ---------------------------------------------------


def write_tiny_roberta(folder, corpus):
    """A randomly initialised 1-layer RoBERTa and a byte-level BPE tokenizer trained on
    ``corpus``, saved as a transformers model folder."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=specials)
    tokenizer = transformers.RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=80,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    transformers.RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_roberta_problem_from_a_model_folder(data_root, data, tmp_path):
    corpus = [t.user.lower() for d in data.train for t in d.turns]
    folder = write_tiny_roberta(tmp_path / "tiny-roberta", corpus)
    overrides = {**TINY, "pretrained": str(folder), "max_context_tokens": 64}
    task = problems.get_problem("multiwoz-roberta").build("cpu", 0, str(data_root), overrides)
    assert task.info["pretrained"] == str(folder)
    assert all(p.requires_grad for p in task.model.parameters())
    before = task.evaluate(task.model, "valid")
    train_epochs(task, 4, lr=0.01)
    after = task.evaluate(task.model, "valid")
    assert after["loss"] < before["loss"]
    assert set(after) == {"loss", "metric", "perplexity", "inform", "success"}
    # Every parameter, RoBERTa's included, got a gradient from the loss.
    batch = next(iter(task.train_batches(torch.Generator().manual_seed(0))))
    task.model.zero_grad()
    task.loss(task.model, batch).backward()
    assert all(p.grad is not None for p in task.model.parameters())


def test_missing_model_folder_is_named(data_root, tmp_path):
    with pytest.raises(DataUnavailable, match=r"pretrained model .*config\.json.*tokenizer"):
        problems.get_problem("multiwoz-roberta").build(
            "cpu", 0, str(data_root), {"pretrained": str(tmp_path / "nowhere")}
        )
