"""Make the demo's two-turn conversations (``omni_train/demo_data/conversations``) with espeak-ng.

    python data_prep/make_demo_conversations.py [--out omni_train/demo_data/conversations] [--seed 0]

Each conversation asks a question the demo's text QA knows the kind of, then a second one that
cannot be answered without the first::

    user:      what is two plus three               (text)
    assistant: two plus three is five
    user:      and what is that plus one             (text, and spoken: audio/....flac)
    assistant: five plus one is six

    user:      what does a cow say
    assistant: a cow says moo
    user:      how many legs does it have
    assistant: a cow has four legs

The first answer's number or animal is what the second answer needs, so a model that reads the
history (DESIGN.md, "Conversations") can be right where a single-turn model can only guess. The
second question is spoken by the demo's espeak voices (those of ``make_demo_data.py``, whose helpers
this script reuses), so the conversations feed A1T2 as well as T1T2; the first stays text, which
keeps the set small. Held-out conversations are (first question, follow-up) pairs that no training
conversation has. Answers are text only (no SNAC codes). Writes ``train.jsonl``, ``heldout.jsonl``,
``audio/`` and ``README.md``; deterministic for a given seed and espeak-ng version.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_demo_data import ASR_RATE, NUMBERS, SPEAKERS, flac_bytes, jitter, resample, speak_all  # noqa: E402

# the animals whose sound and legs the demo's words can say (make_demo_data's facts, plus the pig's legs)
SOUNDS = {"cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "pig": "oink", "bird": "tweet"}
LEGS = {"cat": 4, "dog": 4, "cow": 4, "duck": 2, "pig": 4, "bird": 2}
FOLLOW_UPS = [("plus", 1), ("plus", 2), ("minus", 1), ("minus", 2), ("plus", 3), ("minus", 3)]


def arithmetic() -> list[tuple[str, str, str, str]]:
    """(question 1, answer 1, question 2, answer 2): a sum or difference up to ten, then "that" plus or minus k."""
    firsts = [(a, "plus", b, a + b) for a in range(1, 10) for b in range(1, 11 - a)]
    firsts += [(a, "minus", b, a - b) for a in range(2, 11) for b in range(1, a)]
    out = []
    for a, op, b, r in firsts:
        for op2, k in FOLLOW_UPS:
            s = r + k if op2 == "plus" else r - k
            if 0 <= s <= 10:
                out.append((
                    f"what is {NUMBERS[a]} {op} {NUMBERS[b]}", f"{NUMBERS[a]} {op} {NUMBERS[b]} is {NUMBERS[r]}",
                    f"and what is that {op2} {NUMBERS[k]}", f"{NUMBERS[r]} {op2} {NUMBERS[k]} is {NUMBERS[s]}",
                ))  # fmt: skip
    return out


def animals() -> list[tuple[str, str, str, str]]:
    """A sound then the legs of "it", or the legs then what "it" says."""
    out = []
    for a in SOUNDS:
        legs = f"a {a} has {NUMBERS[LEGS[a]]} legs"
        out.append((f"what does a {a} say", f"a {a} says {SOUNDS[a]}", "how many legs does it have", legs))
        out.append((f"how many legs does a {a} have", legs, "and what does it say", f"a {a} says {SOUNDS[a]}"))
    return out


def conversation(i: int, turns: tuple[str, str, str, str], audio: str) -> dict:
    q1, a1, q2, a2 = turns
    return {"id": f"conv.{i}", "messages": [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2, "audio": audio},
        {"role": "assistant", "content": a2},
    ]}  # fmt: skip


README = """\
# Demo conversations

Two-turn conversations for the multi-turn demo (`omni-train experiment=demo_dialogue`), made by
`data_prep/make_demo_conversations.py` (seed {seed}) in the chat convention that
`omni_train.data.sources.conversations` reads. The second question refers to the first ("and what
is that plus one", "how many legs does it have"), so its answer needs the first turn.

| path | what | count |
|---|---|---|
| `train.jsonl` | one conversation a line: `{{"id", "messages": [user, assistant, user, assistant]}}` | {n_train} conversations ({n_train_animal} about animals) |
| `heldout.jsonl` | the same; (first question, follow-up) pairs no training conversation has | {n_heldout} conversations ({n_heldout_animal} about animals) |
| `audio/` | the second questions spoken by the demo's espeak-ng voices: 16 kHz FLAC, {bits} significant bits | {n_audio} clips, {audio_mb:.1f} MB |

The first question is text only; the second has its text and `audio` (a path relative to the file);
answers are text only. {size_mb:.1f} MB in all.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "omni_train/demo_data/conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=300, help="training conversations")
    parser.add_argument("--heldout", type=int, default=40, help="held-out conversations")
    parser.add_argument("--heldout-animals", type=int, default=4, help="of the held-out ones, about animals")
    parser.add_argument("--bits", type=int, default=9, help="significant bits kept per sample, as the demo's ASR set")
    parser.add_argument("--workers", type=int, default=4, help="espeak-ng processes at a time")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    rng = random.Random(args.seed)

    sums, pets = arithmetic(), animals()
    rng.shuffle(sums)
    rng.shuffle(pets)
    n_sums = args.heldout - args.heldout_animals
    heldout = sums[:n_sums] + pets[: args.heldout_animals]
    train_pool = sums[n_sums:] + pets[args.heldout_animals :]
    # every animal conversation left trains (there are few), arithmetic fills up the rest
    train = pets[args.heldout_animals :] + rng.sample(sums[n_sums:], args.train - len(pets) + args.heldout_animals)
    rng.shuffle(train)
    rng.shuffle(heldout)
    assert not {t[0] + t[2] for t in heldout} & {t[0] + t[2] for t in train_pool}

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "audio").mkdir(parents=True)
    sets = [("train", train), ("heldout", heldout)]
    jobs = [(t[2], jitter(rng, rng.choice(SPEAKERS))) for _, rows in sets for t in rows]
    print(f"speaking {len(jobs)} questions with espeak-ng ...", flush=True)
    spoken = iter(speak_all(jobs, args.workers))
    for split, rows in sets:
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, turns in enumerate(rows):
                audio, rate = next(spoken)
                name = f"audio/{split}-{i:04d}.flac"
                (out / name).write_bytes(flac_bytes(resample(audio, rate, ASR_RATE), args.bits))
                f.write(json.dumps(conversation(i, turns, name)) + "\n")

    audio_mb = sum(p.stat().st_size for p in (out / "audio").iterdir()) / 1e6
    is_animal = lambda t: "legs" in t[0] + t[2]  # noqa: E731
    (out / "README.md").write_text(README.format(
        seed=args.seed, n_train=len(train), n_heldout=len(heldout), bits=args.bits, n_audio=len(jobs),
        n_train_animal=sum(map(is_animal, train)), n_heldout_animal=sum(map(is_animal, heldout)),
        audio_mb=audio_mb, size_mb=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6,
    ))  # fmt: skip
    print(f"wrote {out}: {len(train)} training and {len(heldout)} held-out conversations, audio {audio_mb:.1f} MB")


if __name__ == "__main__":
    main()
