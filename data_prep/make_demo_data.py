"""Make the bundled demo data set (``omni_train/demo_data``) by speaking template sentences with espeak-ng.

    python data_prep/make_demo_data.py --out omni_train/demo_data [--seed 0] [--snac DIR]

Needs the Debian package ``espeak-ng`` (``apt-get install espeak-ng``); the demo itself does not,
because the repository ships the result. The output is deterministic given ``--seed`` (same
espeak-ng, libsndfile and torch versions). It writes:

- ``asr/train`` and ``asr/heldout``: LibriSpeech's layout (``<speaker>/<chapter>/``, one ``.flac``
  per utterance, ``<speaker>-<chapter>.trans.txt`` with ``UTTID TEXT`` lines in uppercase). A
  "speaker" is one espeak voice variant; every utterance also gets its own speed and pitch jitter.
  The sentences come from ~110 words and a dozen templates, so a tiny model can learn them in
  minutes; held-out sentences are new combinations of words that all occur in training.
- ``asr/train_tts.parquet``: ``id, answer_snac``, every training sentence read by the assistant's
  voice, in SNAC codes: the TTS targets (T1A2) that ``sources.librispeech(..., tts_snac=...)`` reads.
- ``textqa.jsonl``: Open-Orca's columns (id, system_prompt, question, response).
- ``voice_assistant.parquet``: VoiceAssistant-400K's columns (split_name, index, round, question,
  question_audio, answer, answer_snac), the question spoken, the spoken answer as SNAC codes.
- ``snac/``: the codec of all those codes, copied from ``--snac``: the tiny SNAC trained on the
  demo's training speech by ``data_prep/train_demo_snac.py`` (by default the one already in ``OUT/snac``).
- ``README.md``.

The tokenizer, the Whisper encoder and its CTC head, and the base LLM are made from this output by
the other ``data_prep/train_demo_*.py`` scripts (see the README written here).

Audio is 16 kHz mono FLAC whose samples are rounded to ``--bits`` significant bits (FLAC stores the
unused low bits for free), which keeps the whole set within a few MB.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch
import torchaudio.functional as AF

from omni_train.audio import WHISPER_SAMPLE_RATE, SnacCodec
from omni_train.data.snac_format import format_answer_snac, parse_answer_snac

ASR_RATE = WHISPER_SAMPLE_RATE  # the stored questions are what Whisper hears
SNAC_RATE = 24000

# ---------------------------------------------------------------------------------------------
# The vocabulary

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]
SIZES = ["big", "small", "old", "young", "happy", "sad", "fast", "slow"]
ANIMALS = [("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("fish", "fish"), ("cow", "cows"),
           ("horse", "horses"), ("duck", "ducks"), ("pig", "pigs"), ("frog", "frogs"), ("bear", "bears")]
THINGS = [("ball", "balls"), ("box", "boxes"), ("hat", "hats"), ("tree", "trees"), ("house", "houses"),
          ("car", "cars"), ("book", "books"), ("cup", "cups")]
PLACES = ["park", "garden", "river", "field", "road", "farm"]
TVERBS = [("sees", "see"), ("likes", "like"), ("finds", "find"), ("chases", "chase"), ("follows", "follow"),
          ("watches", "watch")]
IVERBS = [("runs", "run"), ("jumps", "jump"), ("sleeps", "sleep"), ("sings", "sing"), ("swims", "swim"),
          ("eats", "eat")]
PREPS = ["on", "in", "near", "under", "behind"]
NAMES = ["tom", "anna", "sam", "lily"]

# Small facts for the QA sets, in the same words (plus a few of their own: sky, legs, moo, ...).
THING_COLORS = [("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"), ("frog", "green"),
                ("pig", "pink"), ("bear", "brown")]
ANIMAL_SOUNDS = [("cat", "meow"), ("dog", "woof"), ("cow", "moo"), ("duck", "quack"), ("pig", "oink"),
                 ("bird", "tweet")]
ANIMAL_LEGS = [("dog", 4), ("cat", 4), ("cow", 4), ("horse", 4), ("frog", 4), ("bird", 2), ("duck", 2), ("fish", 0)]
IDENTITY = [("what is your name", "my name is omni"), ("who are you", "i am omni a small voice assistant"),
            ("what can you do", "i can hear and talk"), ("can you hear me", "yes i can hear you")]
SYSTEM_PROMPT = "you answer in one short sentence"


def _adj(rng: random.Random) -> str:
    return rng.choice(COLORS + SIZES)


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _count(rng: random.Random) -> str:
    return rng.choice(NUMBERS[2:])  # plural nouns follow


# One sentence template each, 4-7 words; the last three are the QA questions, so that the ASR
# data also teaches the words the spoken questions use.
TEMPLATES = [
    lambda r: f"the {_adj(r)} {r.choice(ANIMALS)[0]} {r.choice(TVERBS)[0]} {_a(_adj(r))} {r.choice(ANIMALS)[0]}",
    lambda r: f"the {r.choice(ANIMALS)[0]} {r.choice(IVERBS)[0]} in the {r.choice(PLACES)}",
    lambda r: f"{_count(r)} {r.choice(COLORS)} {r.choice(ANIMALS)[1]} {r.choice(IVERBS)[1]}",
    lambda r: f"{r.choice(NAMES)} has {_count(r)} {r.choice(COLORS)} {r.choice(THINGS)[1]}",
    lambda r: f"the {r.choice(THINGS)[0]} is {r.choice(COLORS)}",
    lambda r: f"{_a(r.choice(SIZES))} {r.choice(ANIMALS)[0]} is {r.choice(PREPS)} the {r.choice(THINGS)[0]}",
    lambda r: f"i see {_count(r)} {r.choice(ANIMALS)[1]}",
    lambda r: f"the {r.choice(ANIMALS)[1]} are {r.choice(SIZES)}",
    lambda r: f"{r.choice(NAMES)} {r.choice(TVERBS)[0]} the {r.choice(COLORS)} {r.choice(THINGS)[0]}",
    lambda r: f"we {r.choice(TVERBS)[1]} the {r.choice(SIZES)} {r.choice(ANIMALS)[0]}",
    lambda r: f"what color is the {r.choice(THINGS + ANIMALS)[0]}",
    lambda r: f"what is {r.choice(NUMBERS[1:])} {r.choice(['plus', 'minus'])} {r.choice(NUMBERS[1:])}",
    lambda r: f"how many {r.choice(ANIMALS)[1]} are {r.choice(PREPS)} the {r.choice(THINGS)[0]}",
]


def make_sentences(rng: random.Random, n_train: int, n_heldout: int) -> tuple[list[str], list[str]]:
    """Distinct sentences, templates taken in turn; held-out ones are unseen and use only training words.

    A template that yields nothing new in 100 draws (some have only a few dozen sentences) is
    passed over for that turn.
    """
    seen: set[str] = set()

    def draw(n: int, ok) -> list[str]:
        out: list[str] = []
        turn = 0
        while len(out) < n:
            template = TEMPLATES[turn % len(TEMPLATES)]
            turn += 1
            if turn > 100 * (n + len(TEMPLATES)):
                raise RuntimeError(f"only {len(out)} of {n} distinct sentences found; ask for fewer")
            for _ in range(100):
                s = template(rng)
                if s not in seen and ok(s):
                    seen.add(s)
                    out.append(s)
                    break
        return out

    train = draw(n_train, lambda s: True)
    words = {w for s in train for w in s.split()}
    heldout = draw(n_heldout, lambda s: set(s.split()) <= words)
    return train, heldout


def qa_pool() -> list[tuple[str, str]]:
    """Every (question, answer) fact: colors, animal sounds and legs, sums and differences up to ten."""
    pool = [(f"what color is the {t}", f"the {t} is {c}") for t, c in THING_COLORS]
    pool += [(f"what does a {a} say", f"a {a} says {s}") for a, s in ANIMAL_SOUNDS]
    pool += [
        (f"how many legs does a {a} have", f"a {a} has {NUMBERS[n]} legs" if n else f"a {a} has no legs")
        for a, n in ANIMAL_LEGS
    ]
    for a in range(1, 10):
        for b in range(1, 11 - a):
            x, y = NUMBERS[a], NUMBERS[b]
            pool.append((f"what is {x} plus {y}", f"{x} plus {y} is {NUMBERS[a + b]}"))
    for a in range(2, 11):
        for b in range(1, a):
            x, y = NUMBERS[a], NUMBERS[b]
            pool.append((f"what is {x} minus {y}", f"{x} minus {y} is {NUMBERS[a - b]}"))
    return pool


def pick_qa(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """All the facts (colors, sounds, legs), then sums and differences to make up ``n``."""
    pool = qa_pool()
    facts = [p for p in pool if " plus " not in p[0] and " minus " not in p[0]]
    sums = [p for p in pool if " plus " in p[0]]
    diffs = [p for p in pool if " minus " in p[0]]
    rest = max(n - len(facts), 0)
    n_sums = math.ceil(rest * 2 / 3)
    picked = facts[:n] + rng.sample(sums, n_sums) + rng.sample(diffs, rest - n_sums)
    rng.shuffle(picked)
    return picked


# ---------------------------------------------------------------------------------------------
# Speech


@dataclass(frozen=True)
class Voice:
    speaker: int  # the LibriSpeech speaker id
    name: str  # espeak-ng voice+variant
    speed: int  # words per minute
    pitch: int  # 0-99


SPEAKERS = [
    Voice(101, "en-us+m1", 165, 45),
    Voice(102, "en-us+f2", 175, 60),
    Voice(103, "en-gb+m3", 170, 40),
    Voice(104, "en-us+f4", 160, 55),
    Voice(105, "en-us+m7", 180, 35),
    Voice(106, "en-gb+f3", 165, 65),
    Voice(107, "en-us+m4", 175, 50),
    Voice(108, "en-gb-x-rp+m5", 170, 45),
]
# VoiceAssistant answers: one fixed voice, no jitter. It is speaker 107's voice, so that the demo's
# recogniser (trained on asr/train) can judge the model's spoken answers: on held-out sentences its
# CER is 3.3% in this voice and 19.2% in the unheard en-us+f1 (which spoke the answers before).
ASSISTANT = Voice(0, "en-us+m4", 175, 50)


def jitter(rng: random.Random, voice: Voice) -> Voice:
    return Voice(voice.speaker, voice.name, voice.speed + rng.randint(-12, 12), voice.pitch + rng.randint(-10, 10))


def speak(text: str, voice: Voice, workdir: Path, key: str) -> tuple[np.ndarray, int]:
    """espeak-ng -> float32 mono at its own rate (22050 Hz), trimmed to 0.1 s of silence each side, peak 0.9."""
    wav = workdir / f"{key}.wav"
    cmd = ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "-w", str(wav), text]
    subprocess.run(cmd, check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    wav.unlink()
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {text!r} ({voice.name})")
    margin = int(0.1 * rate)
    audio = audio[max(loud[0] - margin, 0) : loud[-1] + margin]
    return (0.9 * audio / np.abs(audio).max()).astype(np.float32), rate


def speak_all(jobs: list[tuple[str, Voice]], workers: int) -> list[tuple[np.ndarray, int]]:
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(speak, text, voice, Path(tmp), str(i)) for i, (text, voice) in enumerate(jobs)]
        return [f.result() for f in futures]


def resample(audio: np.ndarray, rate: int, new_rate: int) -> torch.Tensor:
    return AF.resample(torch.from_numpy(audio), rate, new_rate).clamp(-1.0, 1.0)


def flac_bytes(audio_16k: torch.Tensor, bits: int) -> bytes:
    """16-bit FLAC whose samples keep only ``bits`` significant bits (FLAC's "wasted bits" cost nothing)."""
    step = 2 ** (16 - bits)
    pcm = (torch.round(audio_16k * 32767 / step) * step).clamp(-32768, 32767).to(torch.int16).numpy()
    buf = io.BytesIO()
    sf.write(buf, pcm, ASR_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Writers


def write_librispeech(root: Path, utts: list[tuple[str, str, bytes]]) -> None:
    """utts: (utterance id ``spk-chapter-nnnn``, text, flac bytes) -> LibriSpeech's folders and trans.txt."""
    chapters: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for utt, text, data in utts:
        spk, chapter, _ = utt.split("-")
        folder = root / spk / chapter
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{utt}.flac").write_bytes(data)
        chapters.setdefault((spk, chapter), []).append((utt, text))
    for (spk, chapter), lines in chapters.items():
        trans = "".join(f"{utt} {text.upper()}\n" for utt, text in sorted(lines))
        (root / spk / chapter / f"{spk}-{chapter}.trans.txt").write_text(trans)


def voice_assistant_schema() -> pa.Schema:
    """The parquet schema, with the HF features metadata that makes `datasets` see an Audio column."""
    features = {
        "split_name": {"dtype": "string", "_type": "Value"},
        "index": {"dtype": "string", "_type": "Value"},
        "round": {"dtype": "string", "_type": "Value"},
        "question": {"dtype": "string", "_type": "Value"},
        "question_audio": {"_type": "Audio"},
        "answer": {"dtype": "string", "_type": "Value"},
        "answer_snac": {"dtype": "string", "_type": "Value"},
    }
    audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field(name, audio if name == "question_audio" else pa.string()) for name in features]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


README = """\
# Demo data

A tiny, synthetic data set for the CPU demo, made by `data_prep/make_demo_data.py` with the
espeak-ng speech synthesizer (seed {seed}). Everything uses one small vocabulary of {vocab} words
(colors, animals, numbers, a few verbs and objects), combined by templates such as "the red cat
sees a big dog", so that a tiny model can learn it in minutes.

| path | what | count |
|---|---|---|
| `asr/train/` | LibriSpeech layout: `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` and `<speaker>-<chapter>.trans.txt` | {n_train} utterances |
| `asr/train_tts.parquet` | `id`, `answer_snac`: every training sentence read by the assistant's voice, in `snac/` codes; the TTS targets (T1A2) of `sources.librispeech(..., tts_snac=...)` | {n_train} rows |
| `asr/heldout/` | the same; new combinations of the training words (same speakers, other chapters) | {n_heldout} utterances |
| `textqa.jsonl` | Open-Orca's columns: `id`, `system_prompt`, `question`, `response` | {n_qa} pairs |
| `voice_assistant.parquet` | VoiceAssistant-400K's columns: `split_name`, `index`, `round`, `question`, `question_audio` (HF Audio: FLAC bytes + path), `answer`, `answer_snac` | {n_va} rows |
| `snac/` | a tiny SNAC 24 kHz codec trained on the demo's training speech (`data_prep/train_demo_snac.py`; SNAC's `config.json` + `pytorch_model.bin`) | {snac_params} parameters |
| `tokenizer/` | a byte-level BPE over the demo texts, one token a word (`data_prep/train_demo_tokenizer.py`) | 905 tokens |
| `whisper.pt` | a tiny Whisper encoder (openai-whisper's checkpoint layout) pretrained with CTC on `asr/train` only (`data_prep/train_demo_whisper.py`), the stand-in for whisper-small | |
| `whisper_ctc.pt` | its CTC head (characters): with `whisper.pt`, the demo's speech recogniser (`omni_train.demo_asr`), 3.7% CER on `asr/heldout` | |
| `llm/` | the `tiny-qwen2` base LLM (litgpt layout, fp16), pretrained as a plain language model on the training text only: `asr/train` transcripts, text QA, VoiceAssistant questions and answers (`data_prep/train_demo_llm.py`; held-out transcript perplexity 3.8) | 1.1 M parameters |

- Audio: 16 kHz mono FLAC, {min_s:.1f}-{max_s:.1f} s, samples rounded to {bits} significant bits to
  keep the set small. A "speaker" is an espeak-ng voice variant ({n_speakers} of them); every
  utterance also varies speed and pitch a little. Transcripts are uppercase, like LibriSpeech.
- Answers (text QA and voice assistant) are one short sentence, e.g. "what is two plus three" ->
  "two plus three is five". VoiceAssistant answers and the TTS targets are spoken by one fixed
  voice, {assistant} (speaker 107's voice without its jitter, so that the recogniser knows it),
  resampled to 24 kHz and encoded with the codec in `snac/` into frames of 7 codes
  ("# c0 c1 c2 c3 c4 c5 c6 # ...").
- The codec is `snac.SNAC` in the 24 kHz model's frame layout (3 codebooks of 4096, strides 4, 2, 1;
  hop 512, so about 11.7 frames of 7 codes a second) with far fewer channels (full convolutions, no
  noise blocks), trained from scratch (no pretrained weights can be downloaded here) on the
  training sentences and the assistant's answers, all spoken by the assistant's voice, with SNAC's
  losses: multi-scale mel, waveform, codebook and commitment, and from a fifth of the steps on a
  narrow multi-period discriminator with feature matching. 2600 steps of 8 windows of 0.34 s,
  seed 0, then 1800, 4500 and 4500 more, each from the codec before (`--init`, a fresh schedule
  peaking at 5e-4): 31.4 + 21.9 + 55.8 + 61.0 CPU minutes on one thread of a 2-core CPU. Only the first 512 codes
  of each codebook are used, so that a tiny model can learn them. It keeps the timing, loudness and voicing of speech,
  but voiced sounds still buzz at harmonics of the codec's frame rate (46.9 Hz) instead of the
  voice's pitch, and the demo's recogniser reads it in part (CER on the 40 held-out sentences,
  `data_prep/eval_demo_snac.py`; before: the codec of the first three runs alone):

  | speech | original | codec round trip | before |
  |---|---|---|---|
  | `asr/heldout` (8 voices) | 3.7% | 22.5% | 24.7% |
  | the same sentences in the assistant's voice | 3.3% | 9.4% | 13.3% |

  Replace it with `hubertsiuzdak/snac_24khz` for real work.
- Mini-Omni hears through a *pretrained* Whisper. `whisper.pt` stands in for it at toy scale:
  trained to transcribe the training split (CTC, characters), never shown `asr/heldout`, so the
  held-out WER the demo reports measures what the LLM learned to read from its features.

Regenerate (needs `apt-get install espeak-ng`; deterministic for a given seed and the same
espeak-ng, libsndfile and torch versions): the codec first (it is read from `snac/` before the
folder is rewritten; skip this to keep the shipped one), then the data, the tokenizer, the encoder
(its head alone: `--head-only`), the base LLM and the codec's CER:

    python data_prep/train_demo_snac.py --out /tmp/snac2600 --seed {seed}
    python data_prep/train_demo_snac.py --init /tmp/snac2600 --out /tmp/snac4400 --steps 1800 --lr 5e-4 --adversarial 0 --seed {seed}
    python data_prep/train_demo_snac.py --init /tmp/snac4400 --out /tmp/snac8900 --steps 4500 --lr 5e-4 --adversarial 0 --seed {seed}
    python data_prep/train_demo_snac.py --init /tmp/snac8900 --out omni_train/demo_data/snac --steps 4500 --lr 5e-4 --adversarial 0 --seed {seed}
    python data_prep/make_demo_data.py --out omni_train/demo_data --seed {seed} --train {n_train}
    python data_prep/train_demo_tokenizer.py
    python data_prep/train_demo_whisper.py
    python data_prep/train_demo_llm.py
    python data_prep/eval_demo_snac.py
    python data_prep/make_german_data.py   # de/: make_demo_data.py rewrites the whole folder
"""


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("omni_train/demo_data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1200, help="ASR training utterances")
    parser.add_argument("--heldout", type=int, default=40, help="ASR held-out utterances")
    parser.add_argument("--qa", type=int, default=48, help="text QA pairs")
    parser.add_argument("--va", type=int, default=40, help="VoiceAssistant rows (4 of them identity)")
    parser.add_argument("--bits", type=int, default=9, help="significant bits kept per sample (<= 16)")
    parser.add_argument("--workers", type=int, default=4, help="espeak-ng processes at a time")
    parser.add_argument("--snac", type=Path, default=None,
                        help="the trained codec that encodes the spoken answers (default: OUT/snac, as it was "
                             "before OUT is rewritten; data_prep/train_demo_snac.py makes it)")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install espeak-ng")
    if not 4 <= args.bits <= 16:
        sys.exit("--bits must be in [4, 16]")
    start = time.time()
    rng = random.Random(args.seed)
    out: Path = args.out
    snac_dir = args.snac or out / "snac"
    if not (snac_dir / "config.json").is_file():
        sys.exit(f"{snac_dir}: no SNAC codec there; train one first: "
                 f"python data_prep/train_demo_snac.py --out {snac_dir}")
    codec = SnacCodec.from_pretrained(snac_dir)  # read before OUT (which may hold it) is cleared
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # 1. sentences and QA
    train, heldout = make_sentences(rng, args.train, args.heldout)
    textqa = pick_qa(rng, args.qa)
    n_identity = min(len(IDENTITY), args.va)
    va = [("identity", q, a) for q, a in IDENTITY[:n_identity]]
    va += [("demo", q, a) for q, a in pick_qa(rng, args.va - n_identity)]

    # 2. speech: ASR utterances (speakers in turn), spoken VA questions, the assistant's answers
    def utt_ids(n: int, chapter_offset: int) -> list[tuple[str, Voice]]:
        ids = []
        for i in range(n):
            v = SPEAKERS[i % len(SPEAKERS)]
            ids.append((f"{v.speaker}-{v.speaker * 10 + chapter_offset}-{i // len(SPEAKERS):04d}", v))
        return ids

    train_ids, heldout_ids = utt_ids(len(train), 1), utt_ids(len(heldout), 9)
    jobs = [(s, jitter(rng, v)) for s, (_, v) in zip(train + heldout, train_ids + heldout_ids)]
    jobs += [(q, jitter(rng, rng.choice(SPEAKERS))) for _, q, _ in va]
    jobs += [(a, ASSISTANT) for _, _, a in va]
    jobs += [(s, ASSISTANT) for s in train]  # the TTS targets: the assistant reads every training sentence
    print(f"speaking {len(jobs)} utterances with espeak-ng ...", flush=True)
    spoken = speak_all(jobs, args.workers)
    n_asr = len(train) + len(heldout)
    asr_16k = [resample(a, r, ASR_RATE) for a, r in spoken[: n_asr + len(va)]]
    answers_24k = [resample(a, r, SNAC_RATE) for a, r in spoken[n_asr + len(va) : n_asr + 2 * len(va)]]
    tts_24k = [resample(a, r, SNAC_RATE) for a, r in spoken[n_asr + 2 * len(va) :]]
    seconds = [a.numel() / ASR_RATE for a in asr_16k]  # the stored audio: ASR and VA questions

    # 3. ASR folders
    flacs = [flac_bytes(a, args.bits) for a in asr_16k]
    write_librispeech(out / "asr" / "train", [(u, s, f) for (u, _), s, f in zip(train_ids, train, flacs)])
    heldout_flacs = flacs[len(train) : n_asr]
    write_librispeech(out / "asr" / "heldout", [(u, s, f) for (u, _), s, f in zip(heldout_ids, heldout, heldout_flacs)])

    # 4. text QA
    with open(out / "textqa.jsonl", "w") as f:
        for i, (q, a) in enumerate(textqa):
            system = SYSTEM_PROMPT if i % 3 == 0 else ""  # Open-Orca's system prompt is often empty
            row = {"id": f"demo.{i}", "system_prompt": system, "question": q, "response": a}
            f.write(json.dumps(row) + "\n")

    # 5. the codec, then the spoken answers and the TTS targets in its codes (one clip at a time: exact codes)
    codec.save_pretrained(out / "snac")
    print("encoding the assistant's speech with the codec ...", flush=True)
    codes = [format_answer_snac(codec.encode(a)) for a in tts_24k]
    tts = pa.table({"id": [u for u, _ in train_ids], "answer_snac": codes})
    pq.write_table(tts, out / "asr" / "train_tts.parquet", compression="zstd")

    # 6. VoiceAssistant parquet
    rows = {name: [] for name in voice_assistant_schema().names}
    for i, ((split, q, a), q_flac, a_24k) in enumerate(zip(va, flacs[n_asr:], answers_24k)):
        rows["split_name"].append(split)
        rows["index"].append(str(i))
        rows["round"].append("0")
        rows["question"].append(q)
        rows["question_audio"].append({"bytes": q_flac, "path": f"{split}_{i}_0.flac"})
        rows["answer"].append(a)
        rows["answer_snac"].append(format_answer_snac(codec.encode(a_24k)))
    pq.write_table(pa.table(rows, schema=voice_assistant_schema()), out / "voice_assistant.parquet")

    # 7. README
    words = {w for s in train + heldout for w in s.split()}
    words |= {w for q, a in textqa for w in f"{q} {a}".split()}
    words |= {w for _, q, a in va for w in f"{q} {a}".split()}
    (out / "README.md").write_text(README.format(
        seed=args.seed, vocab=len(words), n_train=len(train), n_heldout=len(heldout), n_qa=len(textqa),
        n_va=len(va), min_s=min(seconds), max_s=max(seconds), bits=args.bits, n_speakers=len(SPEAKERS),
        assistant=ASSISTANT.name, snac_params=f"{sum(p.numel() for p in codec.model.parameters()) / 1e6:.2f} M",
    ))

    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {len(train)} train + {len(heldout)} held-out utterances, {len(textqa)} QA pairs, "
          f"{len(va)} VoiceAssistant rows; {len(words)} words ({len({w for s in train for w in s.split()})} in ASR "
          f"train); audio {min(seconds):.2f}-{max(seconds):.2f} s; {size / 1e6:.2f} MB; {time.time() - start:.0f} s")
    check(out, len(train), len(heldout), len(textqa), len(va))


def check(out: Path, n_train: int, n_heldout: int, n_qa: int, n_va: int) -> None:
    """Read everything back: transcripts match the files, audio decodes at 16 kHz, SNAC strings parse,
    every training utterance has TTS codes."""
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        root = out / "asr" / split
        flacs = sorted(root.rglob("*.flac"))
        listed = []
        for trans in sorted(root.rglob("*.trans.txt")):
            for line in trans.read_text().splitlines():
                utt, text = line.split(" ", 1)
                assert text == text.upper() and text.strip(), line
                path = trans.parent / f"{utt}.flac"
                assert path.exists(), path
                info = sf.info(path)
                assert info.samplerate == ASR_RATE and info.channels == 1, (path, info)
                listed.append(path)
        assert sorted(listed) == flacs and len(flacs) == n, (split, len(listed), len(flacs), n)
    tts = pq.read_table(out / "asr" / "train_tts.parquet").to_pylist()
    assert sorted(r["id"] for r in tts) == sorted(p.stem for p in (out / "asr" / "train").rglob("*.flac"))
    assert all(parse_answer_snac(r["answer_snac"]).size(0) >= 1 for r in tts)
    assert sum(1 for _ in open(out / "textqa.jsonl")) == n_qa
    table = pq.read_table(out / "voice_assistant.parquet")
    assert table.num_rows == n_va
    codec = SnacCodec.from_pretrained(out / "snac")
    for row in table.to_pylist():
        audio, rate = sf.read(io.BytesIO(row["question_audio"]["bytes"]))
        assert rate == ASR_RATE and audio.ndim == 1 and len(audio) > 0
        frames = parse_answer_snac(row["answer_snac"])
        assert frames.size(0) >= 1 and int(frames.max()) < codec.model.codebook_size
    print("check passed", flush=True)


if __name__ == "__main__":
    main()
