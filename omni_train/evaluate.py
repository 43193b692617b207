"""Evaluation shared by training runs and ``omni-eval``.

- ASR WER on LibriSpeech-layout folders, in the paper's table form (`asr_split`, `wer_table`);
- speech-text consistency: WER of a Whisper transcript of the spoken answer against the model's
  own text answer, Mini-Omni's weak point (`consistency`);
- conversations: the answers to the last turns of held-out conversations against their references,
  in text and, through a Whisper transcript, in speech (`dialogue`);
- text retention: perplexity of the base LLM and of the trained model on the same text (`retention`);
- the per-task loss curves of a run's stages on one figure (`plot_losses`);
- a spoken answer written to wav (`speak`, for training runs).

Scoring follows the paper's practice, by language (`scoring`): Whisper's English text normaliser on
both sides for English, its basic normaliser for any other language, then jiwer's WER; languages
written without spaces between words (Chinese, Japanese, Thai, ...) are scored by characters (CER).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
import yaml
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from tqdm import tqdm
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from omni_train.audio import WHISPER_SAMPLE_RATE, AudioError, SnacCodec, load_audio, save_wav
from omni_train.checkpoints import ModelBundle
from omni_train.config import EvalConfig
from omni_train.data.collator import build_prompt, drop_oldest_turns
from omni_train.data.samples import Encoded, Sample
from omni_train.data.sources import clips, is_librispeech, utterances
from omni_train.demo_asr import DemoRecognizer, normalize
from omni_train.generate import (
    Answer,
    answer,
    answer_room,
    decode_text,
    encode_history,
    generate,
    transcribe,
)
from omni_train.model import OmniGPT
from omni_train.tasks import Task
from omni_train.vocab import PAD_A

_normalize = EnglishTextNormalizer()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def librispeech_utterances(root: str | Path, limit: int | None = None) -> list[tuple[str, Path, str]]:
    """(utterance id, audio file, transcript) of the first `limit` utterances with audio under a
    LibriSpeech-layout folder (`omni_train.data.sources.utterances`, the scanner training reads with)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (a LibriSpeech-layout split)")
    out = [(u.id, u.audio, u.text) for u in utterances(root) if u.audio is not None]
    if not out:
        raise FileNotFoundError(f"{root}: no *.trans.txt with audio beside it")
    return out[:limit]


def corpus_utterances(layout: str, path: str | Path, limit: int | None = None) -> tuple[list[tuple[str, Path, str]], int]:
    """(clip id, audio file, transcript) of the first `limit` usable clips of a corpus in one of
    `omni_train.data.sources.LAYOUTS` (e.g. a Common Voice ``test.tsv``), and how many clips were left
    out (an unreadable line, a missing audio file or an empty text: the reader names each one)."""
    out, left_out = [], 0
    for c in clips(layout, path):
        if c.error is None and c.audio.is_file() and c.text:
            out.append((c.id, c.audio, c.text))
        else:
            left_out += 1
    if not out:
        raise FileNotFoundError(f"{path}: no {layout} clip with audio and text")
    return out[:limit], left_out


# Written without spaces between words: a "word" is not a unit there, so these are scored by
# characters, as Whisper's paper scores its Chinese, Japanese, Thai, Lao and Burmese sets.
NO_SPACES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})


@dataclass(frozen=True)
class Scoring:
    """How transcripts of one language are compared: the normaliser and the metric ("wer" or "cer")."""

    language: str
    metric: str
    normalize: Callable[[str], str]


def scoring(language: str = "en") -> Scoring:
    """The scoring of `language`, a Whisper language code or name (``de``, ``German``, ``zh``).

    English gets Whisper's English normaliser (spellings, numbers, contractions); every other
    language its basic one (lower case, brackets and punctuation removed). Note the basic one also
    turns combining marks into spaces (Whisper's own choice), which splits words in scripts such as
    Devanagari; the CER languages lose their spaces after normalising, so there it drops the marks.
    """
    code = str(language).strip().lower()
    code = TO_LANGUAGE_CODE.get(code, code)
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}: give a Whisper language code or name (en, de, zh, ...)")
    if code == "en":
        return Scoring(code, "wer", _normalize)
    basic = BasicTextNormalizer()
    if code in NO_SPACES:
        return Scoring(code, "cer", lambda text: "".join(basic(text).split()))
    return Scoring(code, "wer", basic)


def error_rate(references: list[str], hypotheses: list[str], language: str = "en") -> float:
    """The language's error rate in percent (WER, or CER for `NO_SPACES` languages) after its
    normaliser on both sides; an empty reference is skipped."""
    score = scoring(language)
    pairs = [(score.normalize(r), score.normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no non-empty references to score")
    measure = jiwer.cer if score.metric == "cer" else jiwer.wer
    return 100.0 * measure([r for r, _ in pairs], [h for _, h in pairs])


# ---- ASR: LibriSpeech WER in the paper's table ---------------------------------------------------
SPLITS = ("test-clean", "test-other", "dev-clean", "dev-other")
# DESIGN.md "Published results" (LibriSpeech WER %); a missing split is one the paper does not report
PUBLISHED = {
    "wav2vec2-base": {"test-clean": 6.0, "test-other": 13.4},
    "VITA": {"test-clean": 8.14, "test-other": 18.41, "dev-clean": 7.57, "dev-other": 16.57},
    "whisper-small (Mini-Omni paper)": {"test-clean": 3.4, "test-other": 7.6},
    "Mini-Omni": {"test-clean": 4.5, "test-other": 9.7, "dev-clean": 4.6, "dev-other": 9.2},
}


def _is_split(folder: Path) -> bool:
    """Transcripts at most two folders down (SPLIT/speaker/chapter), so a folder of splits is not taken for one split."""
    return is_librispeech(folder, depth=2)


def find_splits(root: str | Path, names: list[str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Find LibriSpeech-layout splits as ``ROOT/NAME`` or ``ROOT/LibriSpeech/NAME`` (where the tarballs unpack).

    With the default names (the four of `SPLITS`), a `root` that holds none of them but is itself
    a split is returned under its own folder name: any folder of that layout can be scored.

    Returns:
        ``{name: folder}`` of the splits found, and the names not found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (a LibriSpeech root or split)")
    found, missing = {}, []
    for name in names or SPLITS:
        folder = next((f for f in (root / name, root / "LibriSpeech" / name) if _is_split(f)), None)
        if folder is None:
            missing.append(name)
        else:
            found[name] = folder
    if not found and not names and _is_split(root):
        return {root.resolve().name: root}, []
    return found, missing


def transcribe_files(
    model: OmniGPT, encoder, tokenizer, paths: list[Path], batch_size: int = 16, max_new_tokens: int = 256,
    desc: str | None = None,
) -> list[str]:  # fmt: skip
    """`transcribe` of audio files, shortest first, reading one batch at a time (a split need not fit in memory)."""

    def seconds(path: Path) -> float:
        try:
            info = sf.info(str(path))
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(f"cannot read audio {path}: {e}") from e
        return info.frames / info.samplerate

    order = sorted(range(len(paths)), key=lambda i: seconds(paths[i]))
    texts = [""] * len(paths)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=desc is None):
        idx = order[start : start + batch_size]
        audios = [load_audio(paths[i], WHISPER_SAMPLE_RATE) for i in idx]
        hyps = transcribe(model, encoder, tokenizer, audios, batch_size=len(idx), max_new_tokens=max_new_tokens)
        for i, hyp in zip(idx, hyps):
            texts[i] = hyp
    return texts


@torch.inference_mode()
def asr_split(
    model: OmniGPT, encoder, tokenizer, folder: str | Path, limit: int | None = None, batch_size: int = 16,
    max_new_tokens: int = 256, desc: str | None = None, language: str = "en", layout: str | None = None,
) -> dict:  # fmt: skip
    """Greedy ASR of one LibriSpeech-layout folder (or a corpus in `layout`): its error rate and every
    utterance's id, reference and hypothesis.

    Returns:
        ``{"folder", "language", "metric": "wer" or "cer", <metric>: percent, "n", "utterances"}``
        (the metric by `scoring(language)`), and with `layout` ``"left_out"``: the clips not scored.
    """
    metric = scoring(language).metric
    left_out = None
    if layout is None:
        utts = librispeech_utterances(folder, limit)
    else:
        utts, left_out = corpus_utterances(layout, folder, limit)
    paths = [path for _, path, _ in utts]
    hyps = transcribe_files(model, encoder, tokenizer, paths, batch_size, max_new_tokens, desc)
    refs = [text for _, _, text in utts]
    utterances = [{"id": u, "ref": r, "hyp": h} for (u, _, _), r, h in zip(utts, refs, hyps)]
    out = {"folder": str(folder), "language": scoring(language).language, "metric": metric,
           metric: round(error_rate(refs, hyps, language), 2), "n": len(utts), "utterances": utterances}  # fmt: skip
    if left_out is not None:
        out["left_out"] = left_out
    return out


def wer_table(results: dict[str, dict[str, float]], published: bool = True, metric: str = "wer") -> str:
    """A markdown table in the paper's form: a row a model, a column a split, '-' where there is no number.

    Args:
        results: ``{model name: {split: WER %}}``; splits beyond the paper's four get columns too.
        published: put the published rows (DESIGN.md) first, marked as published.
        metric: what the numbers are ("wer" or "cer"), named in the header.
    """
    extra = [s for r in results.values() for s in r if s not in SPLITS]
    # the paper's four splits only where they are wanted: another language's set has none of them
    splits = [s for s in SPLITS if published or any(s in r for r in results.values())]
    splits += list(dict.fromkeys(extra))
    rows = {f"{name} (published)": r for name, r in PUBLISHED.items()} if published else {}
    rows.update(results)
    head = "model" if metric == "wer" else f"model ({metric.upper()} %)"  # the paper's table is WER
    lines = [f"| {head} | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for name, r in rows.items():
        published_row = name.endswith("(published)")  # its numbers as the papers print them
        cells = ["-" if s not in r else str(r[s]) if published_row else f"{r[s]:.2f}" for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.inference_mode()
def asr_wer(bundle: ModelBundle, cfg: EvalConfig, batch_size: int = 16, language: str = "en") -> dict:
    """Error rate (WER, or CER for `NO_SPACES` languages) of a model on the folder `cfg.asr` (the
    run's checks before and after training): ``{"metric", <metric>, "n", "examples"}``."""
    model = bundle.model.eval().to(DEVICE)
    encoder = bundle.encoder.to(DEVICE)
    tokenizer = Tokenizer(bundle.tokenizer_dir)
    result = asr_split(
        model, encoder, tokenizer, cfg.asr, cfg.asr_max_utterances, batch_size, cfg.max_new_tokens, language=language
    )
    metric = result["metric"]
    return {"metric": metric, metric: result[metric], "n": result["n"], "examples": result["utterances"]}


def mel_picture(wave: torch.Tensor, sample_rate: int, title: str, n_mels: int = 80):
    """A matplotlib figure (Agg, no display) of the log-mel spectrogram of a mono wave."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft, hop = 1024, 256
    wave = torch.nn.functional.pad(wave.float(), (0, max(0, n_fft - wave.numel())))  # stft needs one window
    power = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    fbank = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)  # (freqs, mels)
    mel = torch.log10((fbank.T @ power).clamp(min=1e-10))  # (n_mels, frames)
    fig, ax = plt.subplots(figsize=(6, 2.5), dpi=100)
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", interpolation="nearest",
              extent=(0, wave.numel() / sample_rate, 0, n_mels))  # fmt: skip
    ax.set(xlabel="seconds", ylabel="mel bin", title=title)
    fig.tight_layout()
    return fig


@torch.inference_mode()
def speak(bundle: ModelBundle, cfg: EvalConfig, out: Path) -> dict:
    """Answer `cfg.speak` (text in, text and speech out: T1A2); write the speech to `out` and its mel picture beside it.

    With `cfg.speak_recognizer` the speech is transcribed by that `DemoRecognizer` and scored (CER)
    against the text answer: does the model say what it writes?
    """
    model = bundle.model.eval().to(DEVICE)
    tokenizer = Tokenizer(bundle.tokenizer_dir)
    reply = answer(model, None, tokenizer, text=cfg.speak, task="T1A2", max_new_tokens=cfg.max_new_tokens * 4)
    codec = SnacCodec.from_pretrained(bundle.snac, device=DEVICE)
    result = {"question": cfg.speak, "text": reply.text, "frames": int(reply.frames.size(0)), "seconds": 0.0,
              "wav": None}  # fmt: skip
    if not reply.frames.size(0):
        return result
    audio = codec.decode(reply.frames).cpu()
    save_wav(out, audio, codec.sample_rate)
    picture = mel_picture(audio, codec.sample_rate, f"{cfg.speak!r} -> {reply.text!r}"[:80])
    picture.savefig(out.with_suffix(".png"))
    import matplotlib.pyplot as plt  # mel_picture has chosen the Agg backend

    plt.close(picture)  # pyplot keeps every figure until it is closed
    seconds = round(audio.numel() / codec.sample_rate, 2)
    result |= {"seconds": seconds, "wav": str(out), "mel_png": str(out.with_suffix(".png"))}
    if cfg.speak_recognizer:
        recognizer = DemoRecognizer.load(cfg.speak_recognizer)
        if normalize(reply.text, recognizer.alphabet):  # no CER against an empty text
            transcript, score = recognizer.score(audio, reply.text, codec.sample_rate)
            result |= {"heard": transcript, "cer": round(score, 1)}
    return result


# ---- speech-text consistency -------------------------------------------------------------------
@dataclass
class Question:
    """One question for `consistency`: written (`text`), spoken (`audio`), or both (a LibriSpeech utterance)."""

    id: str
    text: str | None = None
    audio: Path | None = None


def _jsonl_rows(path: Path):
    """(row number, parsed row) of each non-blank line; a line that is not JSON is an error naming it."""
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, row {i}: not JSON ({e})") from e


def read_questions(path: str | Path) -> list[Question]:
    """Questions from a file: ``.jsonl`` rows with ``question`` (or ``text``) and/or ``audio`` (a path,
    relative to the file) and an optional ``id``; any other file holds one written question a line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such questions file")
    if path.suffix != ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        questions = [Question(f"{path.stem}.{i}", text=t.strip()) for i, t in enumerate(lines, 1) if t.strip()]
    else:
        questions = []
        for i, row in _jsonl_rows(path):
            text = row.get("question", row.get("text")) if isinstance(row, dict) else None
            audio = row.get("audio") if isinstance(row, dict) else None
            if not text and not audio:
                raise ValueError(f"{path}, row {i}: needs a 'question' (or 'text') or an 'audio' field")
            audio = None if audio is None else path.parent / audio
            if audio is not None and not audio.is_file():
                raise FileNotFoundError(f"{path}, row {i}: audio file {audio} not found")
            questions.append(Question(str(row.get("id", f"{path.stem}.{i}")), text=text, audio=audio))
    if not questions:
        raise ValueError(f"{path}: no questions in it")
    return questions


def librispeech_questions(folders: list[Path], limit: int | None = None) -> list[Question]:
    """LibriSpeech utterances as questions: spoken (A1A2) or, by their transcripts, written (T1A2)."""
    utts = [u for folder in folders for u in librispeech_utterances(folder)]
    return [Question(u, text=text, audio=path) for u, path, text in utts[:limit]]


@torch.inference_mode()
def spoken_answers(
    model: OmniGPT, encoder, tokenizer, questions: list[Question], task: Task | str = Task.A1A2,
    batch_size: int = 8, max_new_tokens: int = 1024, desc: str | None = None,
) -> list[Answer]:  # fmt: skip
    """Greedy answers to many questions, `batch_size` at a time (each row stops on its own)."""
    task, vocab = Task(task), model.config.vocab
    out = []
    for start in tqdm(range(0, len(questions), batch_size), desc=desc, unit="batch", disable=desc is None):
        batch = questions[start : start + batch_size]
        if task.audio_in:
            if missing := [q.id for q in batch if q.audio is None]:
                raise ValueError(f"task {task.value} needs spoken questions; {missing[:3]} have no audio")
            features, frames = encoder.encode_clips([load_audio(q.audio, WHISPER_SAMPLE_RATE) for q in batch])
            prompts = [build_prompt(Encoded(task, [], audio_frames=int(T)), vocab) for T in frames]
        else:
            if missing := [q.id for q in batch if not q.text]:
                raise ValueError(f"task {task.value} needs written questions; {missing[:3]} have no text")
            ids = [tokenizer.encode(q.text, bos=False, eos=False).tolist() for q in batch]
            prompts = [build_prompt(Encoded(task, [], question_ids=i), vocab) for i in ids]
            features = frames = None
        for g in generate(model, prompts, task, features, frames, max_new_tokens=max_new_tokens):
            out.append(Answer(decode_text(tokenizer, g.text_tokens), g.text_tokens, g.audio_tokens, g.frames))
    return out


def transcribe_speech(judge, wave: torch.Tensor, sample_rate: int, language: str = "en") -> str:
    """What an openai-whisper model (`whisper.load_model`) hears in `wave`: greedy, in `language`, no prompt."""
    wave = AF.resample(wave.detach().float().cpu().reshape(-1), sample_rate, WHISPER_SAMPLE_RATE)
    if wave.numel() == 0:
        return ""
    cuda = next(judge.parameters()).device.type == "cuda"
    result = judge.transcribe(
        wave.numpy(), language=scoring(language).language, temperature=0.0, condition_on_previous_text=False, fp16=cuda, verbose=None
    )
    return result["text"].strip()


@torch.inference_mode()
def consistency(
    model: OmniGPT, encoder, tokenizer, codec: SnacCodec, judge, questions: list[Question],
    task: Task | str = Task.A1A2, batch_size: int = 8, max_new_tokens: int = 1024, desc: str | None = None,
    language: str = "en",
) -> dict:  # fmt: skip
    """Speech-text consistency: WER (CER for `NO_SPACES` languages) of `judge`'s transcript of each
    spoken answer, transcribed as `language`, against its text answer.

    The text answer is the reference. An answer whose text normalises to nothing is listed but not
    scored (``None``); one with text but no speech scores 100.

    Returns:
        ``{"language", "metric": "wer" or "cer", <metric>: corpus % or None, "n", "scored",
        "items": [{id, question, text, transcript, seconds, <metric>}]}``.
    """
    score = scoring(language)
    metric = score.metric
    task = Task(task)
    if not task.audio_out:
        raise ValueError(f"task {task.value} has no spoken answer; consistency needs A1A2 or T1A2")
    answers = spoken_answers(model, encoder, tokenizer, questions, task, batch_size, max_new_tokens, desc)
    items = []
    for q, a in zip(questions, answers):
        wave = codec.decode(a.frames.to(codec.device)) if a.frames.size(0) else torch.zeros(0)
        transcript = transcribe_speech(judge, wave, codec.sample_rate, score.language)
        scored = bool(score.normalize(a.text).strip())
        items.append({
            "id": q.id, "question": str(q.audio) if task.audio_in else q.text, "text": a.text,
            "transcript": transcript, "seconds": round(wave.numel() / codec.sample_rate, 2),
            metric: round(error_rate([a.text], [transcript], language), 2) if scored else None,
        })  # fmt: skip
    scored = [i for i in items if i[metric] is not None]
    texts, transcripts = [i["text"] for i in scored], [i["transcript"] for i in scored]
    total = round(error_rate(texts, transcripts, language), 2) if scored else None
    return {"language": score.language, "metric": metric, metric: total, "n": len(items), "scored": len(scored),
            "items": items}  # fmt: skip


# ---- text retention ----------------------------------------------------------------------------
def read_documents(path: str | Path, limit: int | None = None) -> list[str]:
    """Held-out text: ``.jsonl`` rows with a ``text`` field, else plain text, one document a line.

    A line is a document, as a jsonl row is: held-out text is usually kept that way, and a file of
    lines read as one document would be scored across unrelated lines. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    if path.suffix == ".jsonl":
        docs = []
        for i, row in _jsonl_rows(path):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{path}, row {i}: needs a string 'text' field")  # noqa: TRY004 (bad data)
            docs.append(row["text"])
    else:
        docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"{path}: no text in it")
    return docs[:limit]


def _answer_logits(model: OmniGPT, x: torch.Tensor) -> torch.Tensor:
    """Text logits ``(1, T, V)`` of tokens ``(1, T)`` read as the text answer of an empty T1T2 prompt."""
    vocab = model.config.vocab
    prompt = build_prompt(Encoded(Task.T1T2, [], question_ids=[]), vocab).to(x.device)  # (8, 3)
    pad_a = torch.tensor(vocab.audio_layer_ids(PAD_A), device=x.device)  # (7,)
    body = torch.cat([pad_a[:, None].expand(-1, x.size(1)), x], dim=0)  # (8, T): text answers read pad_a
    text, _ = model(torch.cat([prompt, body], dim=1)[None], with_audio=False)  # (1, 3 + T, text_vocab)
    return text[:, prompt.size(1) :, : vocab.base_vocab_size]


@torch.inference_mode()
def _perplexity(logits_fn, docs: list[torch.Tensor], window: int, device) -> float:
    """exp(mean NLL) of every token but each document's first, read in windows of `window` tokens."""
    nll, count = 0.0, 0
    for ids in docs:
        for start in range(0, ids.numel() - 1, window):
            y = ids[start + 1 : start + window + 1].to(device)  # (T,)
            x = ids[start : start + y.numel()].to(device)  # (T,)
            logits = logits_fn(x[None])[0].float()  # (T, V)
            nll += F.cross_entropy(logits, y, reduction="sum").item()
            count += y.numel()
    return math.exp(nll / count)


@torch.inference_mode()
def retention(
    base: GPT, model: OmniGPT, tokenizer, documents: list[str], max_length: int = 1024, desc: str | None = None
) -> dict:
    """Text perplexity of the base LLM and of the trained model on the same documents and tokens.

    The trained model is read two ways, both over the base vocabulary rows (so the numbers compare):
    - ``llm_path``: the text embedded alone, as the base LLM reads it (litgpt's `GPT.forward` on the
      trained weights). A model fresh from `omni_from_base` gives exactly the base perplexity here.
    - ``t1t2_answer``: the text as the model reads it in its own tasks, the answer of a T1T2 row
      (8 averaged layers, pad_a in the 7 audio layers). Before training this differs from the base
      (the pad_a embeddings dilute the text's); it is the number that says whether the speech model
      still writes well.
    """
    V = model.config.vocab.base_vocab_size
    if base.config.padded_vocab_size != V:
        raise ValueError(f"the base has {base.config.padded_vocab_size} text rows, the model {V}: not its base")
    device = model.device
    docs = [ids for ids in (tokenizer.encode(d).long() for d in documents) if ids.numel() > 1]
    if not docs:
        raise ValueError("no document is two tokens long or more")
    window = min(max_length, base.max_seq_length, model.max_seq_length - 3)
    paths = {
        "base": lambda x: base(x),
        "llm_path": lambda x: GPT.forward(model, x)[..., :V],
        "t1t2_answer": lambda x: _answer_logits(model, x),
    }
    ppl = {k: _perplexity(fn, docs, window, device) for k, fn in tqdm(paths.items(), desc=desc, disable=desc is None)}
    return {
        "documents": len(docs), "tokens": sum(d.numel() - 1 for d in docs), "window": window,
        "perplexity": {k: round(v, 4) for k, v in ppl.items()},
        "ratio_to_base": {k: round(v / ppl["base"], 4) for k, v in ppl.items() if k != "base"},
    }  # fmt: skip


# ---- loss curves -------------------------------------------------------------------------------
TASK_LOSS = re.compile(r"^train/loss_(?P<task>[A-Z0-9]+)/(?P<kind>text|audio)$")  # written by stages.OmniModule


def _version(path: Path) -> int:
    return int(path.parent.name.rpartition("_")[2] or 0)


def run_losses(run_dir: str | Path) -> list[dict]:
    """The per-task train losses of every stage of a run, as the CSV logger wrote them, in run order.

    Returns:
        one dict a stage: ``stage``, ``offset`` (its first step on the cumulative axis), ``steps``,
        ``losses`` (``{column: ([steps], [values])}``).

    Raises:
        FileNotFoundError: no ``<stage>/logs/<stage>/version_*/metrics.csv`` (the CSV logger is needed).
    """
    from omni_train.stages import STAGES

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    files: dict[str, list[Path]] = {}
    for f in sorted(run_dir.glob("*/logs/*/version_*/metrics.csv"), key=_version):
        files.setdefault(f.relative_to(run_dir).parts[0], []).append(f)
    if not files:
        raise FileNotFoundError(
            f"{run_dir}: no <stage>/logs/<stage>/version_*/metrics.csv; the plot reads the CSV logger's files "
            "(train with logger=csv, or e.g. logger=[csv,wandb])"
        )
    order = list(STAGES)
    if (run_dir / "config.yaml").is_file():
        order = list((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("run_stages") or []) + order
    rank = {s: i for i, s in reversed(list(enumerate(order)))}
    stages, offset = [], 0
    for stage in sorted(files, key=lambda s: (rank.get(s, len(rank)), s)):
        points: dict[str, dict[int, float]] = {}
        for f in files[stage]:  # a resumed stage writes a new version; the later one wins a step
            with open(f, newline="", encoding="utf-8") as fp:
                for row in csv.DictReader(fp):
                    for col, value in row.items():
                        if col and TASK_LOSS.match(col) and value not in (None, "") and row.get("step"):
                            points.setdefault(col, {})[int(float(row["step"]))] = float(value)
        last = max((s for p in points.values() for s in p), default=-1)
        summary = run_dir / stage / "summary.json"
        steps = json.loads(summary.read_text()).get("steps", last + 1) if summary.is_file() else last + 1
        steps = max(int(steps), last + 1)
        losses = {c: (sorted(p), [p[s] for s in sorted(p)]) for c, p in sorted(points.items())}
        stages.append({"stage": stage, "offset": offset, "steps": steps, "losses": losses})
        offset += steps
    if not any(s["losses"] for s in stages):
        raise ValueError(
            f"{run_dir}: the metrics.csv files hold no train/loss_<task>/text or /audio column (they are logged "
            "every stages.<stage>.log_every steps: a shorter stage logs none)"
        )
    return stages


def plot_losses(run_dir: str | Path, out: str | Path) -> list[dict]:
    """Draw every stage's per-task losses on one PNG: text losses above, audio losses below.

    x is the step counted across stages; each stage after the first starts at a dashed line, and
    every stage is named above the plot. A task keeps its colour in every stage.

    Returns:
        `run_losses`'s stages (offsets and steps: where the boundaries are).
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, safe in any process

    stages = run_losses(run_dir)
    columns = {c for s in stages for c in s["losses"]}
    tasks = sorted({TASK_LOSS.match(c)["task"] for c in columns})
    kinds = [k for k in ("text", "audio") if any(c.endswith("/" + k) for c in columns)]
    fig = Figure(figsize=(10, 3.2 * len(kinds) + 0.6), layout="constrained")
    axes = fig.subplots(len(kinds), 1, sharex=True, squeeze=False)[:, 0]
    colors = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    for ax, kind in zip(axes, kinds):
        labelled = set()
        for s in stages:
            for col, (steps, values) in s["losses"].items():
                task = TASK_LOSS.match(col)["task"]
                if col.endswith("/" + kind):
                    x = [s["offset"] + step for step in steps]
                    label = None if task in labelled else task
                    ax.plot(x, values, color=colors[task], label=label, marker="." if len(x) < 30 else None)
                    labelled.add(task)
        for s in stages[1:]:
            ax.axvline(s["offset"] - 0.5, color="0.4", linestyle="--", linewidth=1)
        ax.set_ylabel(f"{kind} loss")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        by_task = sorted(zip(labels, handles))
        ax.legend([h for _, h in by_task], [t for t, _ in by_task], title="task", fontsize="small", loc="upper right")
    for s in stages:
        axes[0].text(s["offset"], 1.02, s["stage"], transform=axes[0].get_xaxis_transform(), fontsize="small")
    axes[-1].set_xlabel("step (counted across stages)")
    fig.suptitle(f"per-task train loss: {Path(run_dir).resolve().name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return stages


# ---- conversations -----------------------------------------------------------------------------
def same_answer(reference: str, hypothesis: str, language: str = "en") -> bool:
    """Whether an answer is right: the reference's words exactly, after the language's normaliser (`scoring`)."""
    normalize = scoring(language).normalize
    return normalize(reference).split() == normalize(hypothesis).split()


def _question(s: Sample, task: Task) -> str:
    """What was asked, for the results: the text, or the audio's file (with the file's text when it has one)."""
    if not task.audio_in:
        return s.question_text
    where = str(s.question_audio.path) if s.question_audio.path is not None else repr(s.question_audio)
    return f"{where} ({s.question_text})" if s.question_text else where


@torch.inference_mode()
def dialogue(
    model: OmniGPT, encoder, tokenizer, samples: list[Sample], task: Task | str, *, history: bool = True,
    codec: SnacCodec | None = None, judge=None, batch_size: int = 8, max_new_tokens: int = 256,
    desc: str | None = None, language: str = "en",
) -> dict:  # fmt: skip
    """Answer the last turns of held-out conversations and score them against their references.

    Each sample is a conversation's last turn (`sources.conversations(..., turns="last")`): its
    earlier turns, as the file has them, are the history (the oldest give way when the prompt would
    leave fewer than `answer_room` steps), unless `history` is False, which asks the question alone,
    as a single-turn model would see it. Scored in `language` (`scoring`: its normaliser, WER or
    CER): the text answer's error rate against the reference answer and how many answers are exactly
    right (`same_answer`); for a spoken answer with `codec` and `judge` (an openai-whisper model,
    transcribing in `language`), the error rate of the judge's transcript against the reference too.

    Returns:
        ``{"task", "history", "language", "metric", "n", "right", "accuracy", <metric>,
        "spoken_<metric>", "items": [...]}``, the metric ``wer`` or ``cer``; ``spoken_<metric>`` is
        None without a spoken answer to judge.
    """
    task, vocab, score = Task(task), model.config.vocab, scoring(language)
    metric, rate = score.metric, (lambda refs, hyps: error_rate(refs, hyps, language))
    room = answer_room(model, max_new_tokens)
    items = []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch", disable=desc is None):
        batch = samples[start : start + batch_size]
        encs = [Encoded(task, [], history=encode_history(tokenizer, s.history) if history else []) for s in batch]
        features = frames = None
        if task.audio_in:
            waves = [load_audio(s.question_audio, WHISPER_SAMPLE_RATE) for s in batch]
            features, frames = encoder.encode_clips(waves)
            for e, T in zip(encs, frames.tolist()):
                e.audio_frames = T
        else:
            for e, s in zip(encs, batch):
                e.question_ids = tokenizer.encode(s.question_text, bos=False, eos=False).tolist()
        for e in encs:
            drop_oldest_turns(e, model.max_seq_length, room)
        prompts = [build_prompt(e, vocab) for e in encs]
        answers = generate(model, prompts, task, features, frames, max_new_tokens=max_new_tokens)
        for s, e, g in zip(batch, encs, answers):
            text = decode_text(tokenizer, g.text_tokens)
            item = {
                "id": s.row, "history": [list(t) for t in s.history[e.dropped_turns :]] if history else [],
                "question": _question(s, task), "reference": s.answer_text,
                "text": text, "right": same_answer(s.answer_text, text, language),
                metric: round(rate([s.answer_text], [text]), 2),
            }  # fmt: skip
            if task.audio_out and codec is not None and judge is not None:
                wave = codec.decode(g.frames.to(codec.device)) if g.frames.size(0) else torch.zeros(0)
                item["transcript"] = transcribe_speech(judge, wave, codec.sample_rate, score.language)
                item[f"spoken_{metric}"] = round(rate([s.answer_text], [item["transcript"]]), 2)
            items.append(item)
    if not items:
        raise ValueError("no conversation to score")
    right = sum(i["right"] for i in items)
    spoken = [i for i in items if "transcript" in i]
    spoken_rate = rate([i["reference"] for i in spoken], [i["transcript"] for i in spoken]) if spoken else None
    return {
        "task": task.value, "history": history, "language": score.language, "metric": metric, "n": len(items),
        "right": right, "accuracy": round(100.0 * right / len(items), 2),
        metric: round(rate([i["reference"] for i in items], [i["text"] for i in items]), 2),
        f"spoken_{metric}": None if spoken_rate is None else round(spoken_rate, 2),
        "items": items,
    }  # fmt: skip
