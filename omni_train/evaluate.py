"""Evaluation shared by training runs and ``omni-eval``: ASR WER on LibriSpeech-layout folders, and
spoken answers written to wav.

WER follows the paper's practice: Whisper's English text normaliser on both sides, then jiwer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jiwer
import torch
from litgpt.tokenizer import Tokenizer
from whisper.normalizers import EnglishTextNormalizer

from omni_train.audio import SnacCodec, load_audio, save_wav
from omni_train.data.sources import AUDIO_EXTS
from omni_train.generate import answer, transcribe

_normalize = EnglishTextNormalizer()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def librispeech_utterances(root: str | Path, limit: int | None = None) -> list[tuple[str, Path, str]]:
    """(utterance id, audio file, transcript) of every utterance under a LibriSpeech-layout folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (a LibriSpeech-layout split)")
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.strip().partition(" ")
            audio = next((trans.parent / (utt + e) for e in AUDIO_EXTS if (trans.parent / (utt + e)).is_file()), None)
            if utt and audio is not None:
                out.append((utt, audio, text))
    if not out:
        raise FileNotFoundError(f"{root}: no *.trans.txt with audio beside it")
    return out[:limit]


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate in percent, after Whisper's English normaliser (an empty reference is skipped)."""
    pairs = [(_normalize(r), _normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no non-empty references to score")
    return 100.0 * jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])


@torch.inference_mode()
def asr_wer(init: dict, cfg: Any, batch_size: int = 16) -> dict:
    """WER of a model (an `init` dict of `omni_train.train`) on the folder `cfg.asr`."""
    utts = librispeech_utterances(cfg.asr, cfg.asr_max_utterances)
    model = init["model"].eval().to(DEVICE)
    encoder = init["encoder"].to(DEVICE)
    tokenizer = Tokenizer(init["tokenizer_dir"])
    audios = [load_audio(path, 16_000) for _, path, _ in utts]
    hyps = transcribe(model, encoder, tokenizer, audios, batch_size=batch_size, max_new_tokens=cfg.max_new_tokens)
    refs = [text for _, _, text in utts]
    examples = [{"id": u, "ref": r, "hyp": h} for (u, _, _), r, h in zip(utts, refs, hyps)]
    return {"wer": round(wer(refs, hyps), 2), "n": len(utts), "examples": examples}


@torch.inference_mode()
def speak(init: dict, cfg: Any, out: Path) -> dict:
    """Answer `cfg.speak` (text in, text and speech out: T1A2) and write the speech to `out`."""
    model = init["model"].eval().to(DEVICE)
    tokenizer = Tokenizer(init["tokenizer_dir"])
    reply = answer(model, None, tokenizer, text=cfg.speak, task="T1A2", max_new_tokens=cfg.max_new_tokens * 4)
    codec = SnacCodec.from_pretrained(init["snac"], device=DEVICE)
    seconds = 0.0
    if reply.frames.size(0):
        audio = codec.decode(reply.frames)
        save_wav(out, audio, codec.sample_rate)
        seconds = audio.numel() / codec.sample_rate
    return {"question": cfg.speak, "text": reply.text, "frames": int(reply.frames.size(0)),
            "seconds": round(seconds, 2), "wav": str(out) if seconds else None}
