"""IFEval's instruction rules (VoiceBench's ifeval subset) on hand-worked responses."""

from __future__ import annotations

import pytest

from omni_train.evals import ifeval

# (instruction id, kwargs, response, followed?) -- each worked out by hand from the rule's definition
CASES = [
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "Yes, one comma.", False),
    ("keywords:existence", {"keywords": ["river", "Moon"]}, "The moon shone on the River.", True),
    ("keywords:existence", {"keywords": ["river", "moon"]}, "The moon shone.", False),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat Cat CAT", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "less than"}, "cat Cat CAT", False),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "a badge is fine", True),  # whole words only
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "that is Bad.", False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zig zag", True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "Zig zag", False),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "one two three", True),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "one two three four", False),
    # "Dr." and the initial "J." do not end sentences: three sentences
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Dr. Smith met J. Doe. They talked! Was it fun?", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith met J. Doe. They talked! Was it fun?", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\n\n***\nSecond.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "It began.\n\n\"Then, it ended.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "It began.\n\nAfter that it ended.", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\n\nP. S. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body. PS see you", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n** bold\n- two\n- three", False),
    ("detectable_format:constrained_response", {}, "Well. My answer is maybe.", True),
    ("detectable_format:constrained_response", {}, "My answer is perhaps.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and ** **", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nbody", True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1 only", False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, "{a: 1}", False),
    ("detectable_format:title", {}, "<<A Poem>>\nlines", True),
    ("detectable_format:title", {}, "<<  >> no title", False),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Hi! Say hi.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. Any other questions?"', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("startend:quotation", {}, '  "All quoted."  ', True),
    ("startend:quotation", {}, '"Half quoted.', False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is VERY well-KNOWN", True),  # "well-KNOWN" is one word and not all capitals
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "THIS is VERY well-KNOWN", False),
    ("change_case:english_capital", {}, "THE WEATHER IS SUNNY AND WARM TODAY IN THE CITY.", True),
    ("change_case:english_capital", {}, "The weather is sunny and warm today in the city.", False),
    ("change_case:english_lowercase", {}, "the weather is sunny and warm today in the city.", True),
    ("change_case:english_lowercase", {}, "il fait beau et chaud aujourd'hui dans la ville de paris.", False),
    ("language:response_language", {"language": "fr"}, "Il fait beau et chaud aujourd'hui à Paris.", True),
    ("language:response_language", {"language": "fr"}, "The weather is sunny and warm today in London.", False),
]  # fmt: skip


@pytest.mark.parametrize(("iid", "kwargs", "response", "followed"), CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_instruction_rules(iid, kwargs, response, followed):
    assert ifeval.follows(response, [iid], [kwargs]) == [followed]


def test_every_registered_instruction_has_cases():
    assert {c[0] for c in CASES} == set(ifeval.CHECKS)
    assert len(ifeval.CHECKS) == 25


def test_counters():
    assert ifeval.count_words("It's a well-known fact, 3.5 times.") == 9  # \w+: It s a well known fact 3 5 times
    assert ifeval.count_sentences("No end mark") == 1
    assert ifeval.count_sentences("Mr. and Mrs. Smith arrived. e.g. this is one. Done") == 3
    assert ifeval.count_sentences("") == 0


def test_loose_reading_and_padding_kwargs():
    # strict fails on the chatty first line; loose drops the first line and passes
    response = "Sure, here it is:\nno commas in this line"
    assert ifeval.follows(response, ["punctuation:no_comma"], [{}]) == [False]
    assert ifeval.follows(response, ["punctuation:no_comma"], [{}], loose=True) == [True]
    # the dataset pads every kwargs dict with all keys, None where unused
    padded = {"keywords": None, "num_words": 3, "relation": "at least", "letter": None}
    assert ifeval.follows("one two three", ["length_constraints:number_words"], [padded]) == [True]
    assert ifeval.follows("   ", ["punctuation:no_comma"], [{}]) == [False]  # an empty answer follows nothing


def test_score_by_hand():
    rows = [
        {"response": '"no commas here"', "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
         "kwargs": [{}, {}], "prompt": "p1"},
        {"response": 'Here you go\n"a, b"', "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
         "kwargs": [{}, {}], "prompt": "p2"},
        {"response": "a, b", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}], "prompt": "p3"},
    ]  # fmt: skip
    result = ifeval.score(rows)
    # strict: row 1 follows both; row 2 neither (a comma; it starts with "Here"); row 3 has a comma
    assert result["strict-prompt"] == pytest.approx(100 / 3, abs=0.01) and result["strict-instruction"] == 40.0
    # loose: each instruction may pass on another variant: row 2 without its last line has no comma, without
    # its first line it is quoted, so it follows both; row 3 has no line to drop
    assert result["loose-prompt"] == pytest.approx(200 / 3, abs=0.01) and result["loose-instruction"] == 80.0
    assert result["final"] == pytest.approx((100 / 3 + 40 + 200 / 3 + 80) / 4, abs=0.01)
    assert rows[1]["follow_strict"] == [False, False] and rows[1]["follow_loose"] == [True, True]


def test_unknown_instruction_and_missing_kwarg_are_named():
    with pytest.raises(ValueError, match="unknown IFEval instruction 'detectable_format:haiku'"):
        ifeval.follows("x", ["detectable_format:haiku"], [{}])
    with pytest.raises(ValueError, match="needs kwarg 'num_words'"):
        ifeval.follows("x", ["length_constraints:number_words"], [{"relation": "at least"}])
