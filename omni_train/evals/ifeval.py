"""IFEval's instruction checks, as VoiceBench's ``ifeval`` subset scores them.

Each VoiceBench ifeval row carries ``instruction_id_list`` (e.g. ``punctuation:no_comma``) and one
``kwargs`` dict an instruction. Every one of the 25 instruction types VoiceBench's registry holds is
checked here (`CHECKS`); an id outside it is an error, never a silent pass. The rules follow the
IFEval paper (arXiv 2311.07911) and VoiceBench's evaluator, written anew. Where the original leans on
NLTK they differ slightly, and a score can move by a fraction of a point:

- ``length_constraints:number_sentences`` counts sentences with a rule-based splitter (punctuation
  followed by a space or the end, common abbreviations and initials kept whole), not NLTK's punkt;
- ``change_case:capital_word_frequency`` counts all-capital words among ``\\w+`` tokens (hyphenated
  words one token), not NLTK's word_tokenize.

Language checks (``language:response_language``, ``change_case:english_*``) use langdetect with a
fixed seed, as IFEval does; text langdetect cannot classify counts as following, as in IFEval.

Scores (`score`): prompt-level (all of a row's instructions followed) and instruction-level
accuracy, each strict (the response as it is) and loose (the best of eight variants: without its
first line, last line, both, and with ``*`` removed), and ``final``, their mean: VoiceBench's number.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

_RELATIONS = {"less than": lambda n, k: n < k, "at least": lambda n, k: n >= k}


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation not in _RELATIONS:
        raise ValueError(f"relation must be one of {sorted(_RELATIONS)}, got {relation!r}")
    return _RELATIONS[relation](count, int(threshold))


def _language(text: str) -> str | None:
    """ISO 639-1 code langdetect gives `text`, or None where it cannot tell (no letters, say)."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes the answer repeatable
    try:
        return detect(text)
    except LangDetectException:
        return None


# ---- counting ------------------------------------------------------------------------------------
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "co", "no", "fig"}
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def count_sentences(text: str) -> int:
    """Sentences in `text`: runs ending in ``.``, ``!`` or ``?`` before a space or the end (and a last
    run with no end mark); ``Dr.``, ``e.g.``, ``J.`` and the like do not end one."""
    count, start = 0, 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start : m.start()].split()
        last = before[-1].lower().rstrip(".") if before else ""
        if m.group().startswith(".") and (last in _ABBREVIATIONS or re.fullmatch(r"[a-z](\.[a-z])*", last)):
            continue  # an abbreviation or an initial: the sentence goes on
        if re.search(r"\w", text[start : m.start()]):
            count += 1
        start = m.end()
    return count + bool(re.search(r"\w", text[start:]))


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _paragraphs(text: str, separator: str) -> list[str] | None:
    """Paragraphs split at `separator` (a regex); None if an empty one lies between two others."""
    parts = re.split(separator, text)
    inner = [i for i, p in enumerate(parts) if not p.strip() and 0 < i < len(parts) - 1]
    return None if inner else [p for p in parts if p.strip()]


# ---- the checks: (response, kwargs, prompt) -> followed? ---------------------------------------------
def _keywords_exist(r, kw, _):
    return all(re.search(re.escape(k), r, re.IGNORECASE) for k in kw["keywords"])


def _keyword_frequency(r, kw, _):
    found = len(re.findall(re.escape(kw["keyword"]), r, re.IGNORECASE))
    return _compare(found, kw["relation"], kw["frequency"])


def _forbidden_words(r, kw, _):
    return not any(re.search(rf"\b{re.escape(w)}\b", r, re.IGNORECASE) for w in kw["forbidden_words"])


def _letter_frequency(r, kw, _):
    return _compare(Counter(r.lower())[kw["letter"].lower()], kw["let_relation"], kw["let_frequency"])


def _response_language(r, kw, _):
    found = _language(r)
    return found is None or found == kw["language"]


def _number_sentences(r, kw, _):
    return _compare(count_sentences(r), kw["relation"], kw["num_sentences"])


def _number_paragraphs(r, kw, _):
    paragraphs = _paragraphs(r, r"\s?\*\*\*\s?")  # separated by the markdown divider ***
    return paragraphs is not None and len(paragraphs) == int(kw["num_paragraphs"])


def _number_words(r, kw, _):
    return _compare(count_words(r), kw["relation"], kw["num_words"])


def _nth_paragraph_first_word(r, kw, _):
    paragraphs = [p.strip() for p in r.split("\n\n") if p.strip()]
    n = int(kw["nth_paragraph"])
    if len(paragraphs) != int(kw["num_paragraphs"]) or not 0 < n <= len(paragraphs):
        return False
    word = paragraphs[n - 1].split()[0].lstrip("'\"")
    word = re.split(r"[.,?!'\"]", word)[0]  # the word up to its first punctuation mark
    return word.lower() == kw["first_word"].lower()


def _placeholders(r, kw, _):
    return len(re.findall(r"\[.*?\]", r)) >= int(kw["num_placeholders"])


def _postscript(r, kw, _):
    # a line starting with the marker; "P.S." also matches "p. s." (a space may follow each period)
    marker = kw["postscript_marker"].strip().lower()
    pattern = r"\.\s?".join(re.escape(part) for part in marker.split("."))
    return re.search(rf"^\s*{pattern}", r.lower(), re.MULTILINE) is not None


def _bullet_lists(r, kw, _):
    bullets = re.findall(r"^\s*\*[^*].*$", r, re.MULTILINE) + re.findall(r"^\s*-.*$", r, re.MULTILINE)
    return len(bullets) == int(kw["num_bullets"])


def _constrained_response(r, _kw, _):
    return any(option in r.strip() for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _highlighted_sections(r, kw, _):
    single = [h for h in re.findall(r"\*[^\n*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= int(kw["num_highlights"])


def _multiple_sections(r, kw, _):
    splitter = kw["section_spliter"].strip()  # sic: the dataset's key
    sections = re.split(rf"\s?{re.escape(splitter)}\s?\d+\s?", r)
    return len(sections) - 1 >= int(kw["num_sections"])


def _json_format(r, _kw, _):
    text = r.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    try:
        json.loads(text.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _title(r, _kw, _):
    return any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _two_responses(r, _kw, _):
    parts = r.split("******")
    if any(not p.strip() and 0 < i < len(parts) - 1 for i, p in enumerate(parts)):
        return False
    answers = [p.strip() for p in parts if p.strip()]
    return len(answers) == 2 and answers[0] != answers[1]


def _repeat_prompt(r, kw, _):
    return r.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def _end_phrase(r, kw, _):
    return r.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _quotation(r, _kw, _):
    r = r.strip()
    return len(r) > 1 and r[0] == r[-1] == '"'


def _capital_words(r, kw, _):
    words = re.findall(r"\w+(?:[-']\w+)*", r)
    return _compare(sum(w.isupper() for w in words), kw["capital_relation"], kw["capital_frequency"])


def _english_capital(r, _kw, _):
    return r.isupper() and _language(r) in ("en", None)


def _english_lowercase(r, _kw, _):
    return r.islower() and _language(r) in ("en", None)


def _no_comma(r, _kw, _):
    return "," not in r


CHECKS: dict[str, Callable[[str, dict, str], bool]] = {
    "keywords:existence": _keywords_exist,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "keywords:letter_frequency": _letter_frequency,
    "language:response_language": _response_language,
    "length_constraints:number_sentences": _number_sentences,
    "length_constraints:number_paragraphs": _number_paragraphs,
    "length_constraints:number_words": _number_words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullet_lists,
    "detectable_format:constrained_response": _constrained_response,
    "detectable_format:number_highlighted_sections": _highlighted_sections,
    "detectable_format:multiple_sections": _multiple_sections,
    "detectable_format:json_format": _json_format,
    "detectable_format:title": _title,
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt": _repeat_prompt,
    "startend:end_checker": _end_phrase,
    "startend:quotation": _quotation,
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": _english_capital,
    "change_case:english_lowercase": _english_lowercase,
    "punctuation:no_comma": _no_comma,
}


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def follows(response: str, instruction_ids: list[str], kwargs: list[dict | None], prompt: str = "",
            loose: bool = False) -> list[bool]:  # fmt: skip
    """Whether `response` follows each instruction; an empty response follows none.

    Args:
        kwargs: one dict an instruction (None values, the dataset's padding, are dropped).
        loose: IFEval's loose reading: any of eight variants of the response may follow.
    """
    if len(kwargs) != len(instruction_ids):
        raise ValueError(f"{len(instruction_ids)} instructions but {len(kwargs)} kwargs")
    variants = _loose_variants(response) if loose else [response]
    out = []
    for iid, kw in zip(instruction_ids, kwargs):
        if iid not in CHECKS:
            raise ValueError(f"unknown IFEval instruction {iid!r} (checked: {', '.join(CHECKS)})")
        kw = {k: v for k, v in (kw or {}).items() if v is not None}
        try:
            out.append(any(v.strip() and CHECKS[iid](v, kw, prompt) for v in variants))
        except KeyError as e:
            raise ValueError(f"instruction {iid} needs kwarg {e.args[0]!r}; got {sorted(kw)}") from None
    return out


def score(rows: list[dict]) -> dict:
    """VoiceBench's ifeval numbers (in %) for rows with ``response``, ``prompt``,
    ``instruction_id_list`` and ``kwargs``; each row also gets ``follow_strict`` / ``follow_loose``."""
    if not rows:
        raise ValueError("no rows to score")
    result = {}
    for mode in ("strict", "loose"):
        prompt_ok = instruction_ok = instructions = 0
        for row in rows:
            ok = follows(row["response"], list(row["instruction_id_list"]), list(row["kwargs"]), row.get("prompt", ""),
                         loose=mode == "loose")  # fmt: skip
            row[f"follow_{mode}"] = ok
            prompt_ok += all(ok)
            instruction_ok += sum(ok)
            instructions += len(ok)
        result[f"{mode}-prompt"] = 100.0 * prompt_ok / len(rows)
        result[f"{mode}-instruction"] = 100.0 * instruction_ok / max(instructions, 1)
    result["final"] = sum(result.values()) / 4
    return {k: round(v, 2) for k, v in result.items()}
