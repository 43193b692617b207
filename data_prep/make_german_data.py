"""Make the bundled German demo set (``omni_train/demo_data/de``): the second-language worked example.

    python data_prep/make_german_data.py [--out omni_train/demo_data/de] [--seed 0]

Needs ``apt-get install espeak-ng`` (its German voice and MBROLA-free variants); the tests and the
run do not, because the repository ships the result. Speech is made as ``make_demo_data.py`` makes
the English demo (its espeak-ng, resampling and FLAC helpers are reused): a "speaker" is an
espeak-ng German voice variant, with speed and pitch jittered per utterance. It writes:

- ``asr/train``, ``asr/heldout``: LibriSpeech's layout, German transcripts in lower case (umlauts
  and ß kept: the basic normaliser of ``omni-eval asr --language de`` keeps them too);
- ``textqa.jsonl``: German questions and answers in Open-Orca's columns;
- ``voice_assistant/``: VoiceAssistant-400K rows made by ``omni-prep voice`` from a manifest of the
  spoken questions, the answers and the answers spoken by one fixed German voice, SNAC-encoded with
  the demo's codec (``omni_train/demo_data/snac``).

The base LLM, its tokenizer and the Whisper stand-in stay the English demo's: the run shows an
English model learning German, as a real run teaches e.g. Qwen2.5 German with a multilingual Whisper.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
from make_demo_data import ASR_RATE, Voice, flac_bytes, jitter, resample, speak_all, write_librispeech

from omni_train.config import DEMO_DATA
from omni_train.prep import voice_rows

NUMBERS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn"]
COLORS = ["rot", "blau", "grün", "gelb", "schwarz", "weiß", "braun"]
ANIMALS = ["katzen", "hunde", "vögel", "fische", "kühe", "pferde", "enten", "schweine"]  # plural: no gender
PLACES = ["garten", "park", "wald", "feld", "haus"]  # all take "im"
VERBS = [("schläft", "schlafen"), ("läuft", "laufen"), ("singt", "singen"), ("spielt", "spielen"),
         ("isst", "essen"), ("schwimmt", "schwimmen")]  # fmt: skip
NAMES = ["anna", "tom", "lena", "paul"]

TEMPLATES = [
    lambda r: f"{r.choice(NAMES)} sieht {r.choice(NUMBERS[2:])} {r.choice(ANIMALS)}",
    lambda r: f"die {r.choice(ANIMALS)} sind {r.choice(COLORS)}",
    lambda r: f"{r.choice(NUMBERS[2:])} {r.choice(ANIMALS)} {r.choice(VERBS)[1]} im {r.choice(PLACES)}",
    lambda r: f"{r.choice(NAMES)} {r.choice(VERBS)[0]} im {r.choice(PLACES)}",
    lambda r: f"{r.choice(NAMES)} hat {r.choice(NUMBERS[2:])} {r.choice(COLORS)}e {r.choice(ANIMALS)}",
    lambda r: f"was ist {r.choice(NUMBERS[1:])} plus {r.choice(NUMBERS[1:])}",
]
FACTS = [("welche farbe hat der himmel", "der himmel ist blau"), ("welche farbe hat das gras", "das gras ist grün"),
         ("welche farbe hat der schnee", "der schnee ist weiß"), ("was sagt die katze", "die katze sagt miau"),
         ("was sagt der hund", "der hund sagt wau"), ("was sagt die kuh", "die kuh sagt muh")]  # fmt: skip

SPEAKERS = [Voice(201, "de+m1", 160, 45), Voice(202, "de+f2", 170, 60), Voice(203, "de+m3", 165, 40),
            Voice(204, "de+f4", 155, 55), Voice(205, "de+m7", 175, 35), Voice(206, "de+f3", 160, 65)]  # fmt: skip
ASSISTANT = Voice(0, "de+f1", 165, 50)  # the answers: one fixed voice, no jitter


def sentences(rng: random.Random, n_train: int, n_heldout: int) -> tuple[list[str], list[str]]:
    """Distinct sentences, templates in turn; held-out ones are unseen and use only training words."""
    seen: set[str] = set()

    def draw(n: int, ok) -> list[str]:
        out, turn = [], 0
        while len(out) < n:
            turn += 1
            if turn > 200 * n:
                raise RuntimeError(f"only {len(out)} of {n} distinct sentences found; ask for fewer")
            s = TEMPLATES[turn % len(TEMPLATES)](rng)
            if s not in seen and ok(s):
                seen.add(s)
                out.append(s)
        return out

    train = draw(n_train, lambda s: True)
    words = {w for s in train for w in s.split()}
    return train, draw(n_heldout, lambda s: set(s.split()) <= words)


def qa(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """The facts, then sums up to ten to make up `n`."""
    sums = [(f"was ist {NUMBERS[a]} plus {NUMBERS[b]}", f"{NUMBERS[a]} plus {NUMBERS[b]} ist {NUMBERS[a + b]}")
            for a in range(1, 10) for b in range(1, 11 - a)]  # fmt: skip
    picked = FACTS[:n] + rng.sample(sums, max(n - len(FACTS), 0))
    rng.shuffle(picked)
    return picked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_DATA / "de")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=360, help="ASR training utterances")
    parser.add_argument("--heldout", type=int, default=30, help="ASR held-out utterances")
    parser.add_argument("--qa", type=int, default=30, help="text QA pairs")
    parser.add_argument("--va", type=int, default=24, help="VoiceAssistant rows")
    parser.add_argument("--bits", type=int, default=9, help="significant bits kept per sample (<= 16)")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    start, rng, out = time.time(), random.Random(args.seed), args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    train, heldout = sentences(rng, args.train, args.heldout)
    textqa, va = qa(rng, args.qa), qa(rng, args.va)
    ids = [(f"{v.speaker}-{v.speaker * 10 + (1 if i < len(train) else 9)}-{i:04d}", v)
           for i, v in enumerate(SPEAKERS[i % len(SPEAKERS)] for i in range(len(train) + len(heldout)))]  # fmt: skip
    jobs = [(s, jitter(rng, v)) for s, (_, v) in zip(train + heldout, ids)]
    jobs += [(q, jitter(rng, rng.choice(SPEAKERS))) for q, _ in va] + [(a, ASSISTANT) for _, a in va]
    print(f"speaking {len(jobs)} utterances with espeak-ng ...", flush=True)
    spoken = speak_all(jobs, args.workers)
    flacs = [flac_bytes(resample(a, r, ASR_RATE), args.bits) for a, r in spoken[: len(train) + len(heldout)]]
    utts = [(u, s, f) for (u, _), s, f in zip(ids, train + heldout, flacs)]
    write_librispeech(out / "asr" / "train", utts[: len(train)])
    write_librispeech(out / "asr" / "heldout", utts[len(train) :])
    texts = {u: s for u, s, _ in utts}
    for trans in out.glob(
        "asr/*/*/*/*.trans.txt"
    ):  # as written, not upper-cased as LibriSpeech is: "ß".upper() is "SS"
        ids = [line.split(" ", 1)[0] for line in trans.read_text(encoding="utf-8").splitlines()]
        trans.write_text("".join(f"{u} {texts[u]}\n" for u in ids), encoding="utf-8")
    with open(out / "textqa.jsonl", "w", encoding="utf-8") as f:
        for i, (q, a) in enumerate(textqa):
            row = {"id": f"de.{i}", "system_prompt": "", "question": q, "response": a}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    # the voice path, as a user runs it: a manifest of questions, answers and the answers' audio
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for i, ((q, a), (q_audio, q_rate), (a_audio, a_rate)) in enumerate(
            zip(va, spoken[len(utts) : len(utts) + len(va)], spoken[len(utts) + len(va) :])
        ):
            (tmp / f"q{i}.flac").write_bytes(flac_bytes(resample(q_audio, q_rate, ASR_RATE), args.bits))
            sf.write(tmp / f"a{i}.wav", a_audio, a_rate)
            rows.append({"question": q, "answer": a, "answer_audio": f"a{i}.wav", "question_audio": f"q{i}.flac"})
        (tmp / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        report = voice_rows(tmp / "manifest.jsonl", out / "voice_assistant", DEMO_DATA / "snac", split_name="de",
                            batch_size=1, device="cpu", progress=False)  # fmt: skip
    (out / "voice_assistant" / ".omni_prep.json").unlink()  # names the temporary manifest: not shipped
    print(report)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    words = {w for s in train for w in s.split()}
    print(f"wrote {out}: {len(train)} + {len(heldout)} utterances ({len(words)} words), {len(textqa)} QA pairs, "
          f"{report.rows} VoiceAssistant rows; {size / 1e6:.2f} MB; {time.time() - start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
