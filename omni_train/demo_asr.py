"""The demo's own speech recogniser: its tiny Whisper encoder and the CTC head it was pretrained with.

Mini-Omni's spoken answers are judged by a large Whisper (`omni_train.evaluate.consistency`),
which the demo cannot download. The demo's ``whisper.pt`` was pretrained with a character CTC head
on the demo's training speech (``data_prep/train_demo_whisper.py``); that head is kept beside it
(``whisper_ctc.pt``), so the pair transcribes demo-like speech, such as a spoken answer decoded by
the demo's codec, and `cer` scores it against a text. Only the demo's alphabet exists for it:
capital letters, space and apostrophe.

    recognizer = DemoRecognizer.load()
    transcript, score = recognizer.score("answer.wav", "two plus three is five")   # score: CER in %
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jiwer
import torch
import torch.nn as nn
import torchaudio.functional as AF

from omni_train.audio import WHISPER_SAMPLE_RATE, AudioSource, WhisperEncoder, load_audio

DEMO_DATA = Path(__file__).parent / "demo_data"
CTC_HEAD_FILE = "whisper_ctc.pt"  # beside whisper.pt: {"alphabet": str, "state_dict": nn.Linear's}


def save_ctc_head(path: str | os.PathLike, head: nn.Linear, alphabet: str) -> None:
    """Write a CTC head: ``head`` maps encoder features to blank (index 0) + one logit per `alphabet` character."""
    if head.out_features != len(alphabet) + 1:
        raise ValueError(f"a CTC head over {len(alphabet)} characters needs {len(alphabet) + 1} outputs, "
                         f"has {head.out_features}")
    torch.save({"alphabet": alphabet, "state_dict": head.state_dict()}, path)


def normalize(text: str, alphabet: str) -> str:
    """Uppercase, characters outside `alphabet` dropped, runs of spaces made one: what CER compares."""
    kept = "".join(c for c in text.upper() if c in alphabet)
    return re.sub(" +", " ", kept).strip()


class DemoRecognizer:
    """Greedy character CTC over a frozen `WhisperEncoder`.

    Args:
        encoder: the encoder the head was trained on.
        head: ``nn.Linear(encoder.width, len(alphabet) + 1)``; output 0 is CTC's blank.
        alphabet: the characters of outputs 1, 2, ...
    """

    def __init__(self, encoder: WhisperEncoder, head: nn.Linear, alphabet: str) -> None:
        if head.in_features != encoder.width or head.out_features != len(alphabet) + 1:
            raise ValueError(
                f"CTC head {head.in_features} -> {head.out_features} does not fit an encoder of width "
                f"{encoder.width} and {len(alphabet)} characters + blank"
            )
        self.encoder = encoder
        self.head = head.eval().requires_grad_(False)
        self.alphabet = alphabet

    @classmethod
    def load(
        cls, whisper_path: str | os.PathLike = DEMO_DATA / "whisper.pt", head_path: str | os.PathLike | None = None
    ) -> DemoRecognizer:
        """The encoder of `whisper_path` and the head beside it (`CTC_HEAD_FILE`, or `head_path`)."""
        head_path = Path(head_path) if head_path is not None else Path(whisper_path).parent / CTC_HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path}: no CTC head (data_prep/train_demo_whisper.py writes it)")
        saved = torch.load(head_path, map_location="cpu", weights_only=True)
        weight = saved["state_dict"]["weight"]
        head = nn.Linear(weight.size(1), weight.size(0))
        head.load_state_dict({k: v.float() for k, v in saved["state_dict"].items()})
        return cls(WhisperEncoder.from_pretrained(whisper_path), head, saved["alphabet"])

    @torch.no_grad()
    def transcribe(self, audios: list[torch.Tensor]) -> list[str]:
        """Clips ``(S_i,)`` at 16 kHz -> their transcripts (uppercase), in one padded batch."""
        if not audios:
            return []
        features, frames = self.encoder.encode_clips(audios)  # (B, T, width), (B,)
        best = self.head(features.float()).argmax(-1)  # (B, T)
        return [self._collapse(best[b, : frames[b]].tolist()) for b in range(len(audios))]

    def _collapse(self, path: list[int]) -> str:
        """CTC's greedy rule: merge repeats, then drop blanks."""
        chars = [self.alphabet[c - 1] for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        return re.sub(" +", " ", "".join(chars)).strip()

    def score(
        self, audio: AudioSource | torch.Tensor, text: str, sample_rate: int = WHISPER_SAMPLE_RATE
    ) -> tuple[str, float]:
        """Transcribe one clip (a file of any rate, or a tensor at `sample_rate`) and score it against `text`.

        Returns:
            the transcript and its CER in percent against `text`.
        """
        if isinstance(audio, torch.Tensor):
            wave = AF.resample(audio.detach().float().cpu().reshape(-1), sample_rate, WHISPER_SAMPLE_RATE)
        else:
            wave = load_audio(audio, WHISPER_SAMPLE_RATE)
        transcript = self.transcribe([wave])[0]
        return transcript, cer([text], [transcript], self.alphabet)

    def score_clips(self, clips: list[torch.Tensor], texts: list[str]) -> tuple[list[str], float]:
        """Transcribe clips ``(S_i,)`` at 16 kHz; their transcripts and corpus CER (%) against `texts`."""
        transcripts = self.transcribe(clips)
        return transcripts, cer(texts, transcripts, self.alphabet)


def cer(references: list[str], hypotheses: list[str], alphabet: str) -> float:
    """Corpus character error rate in percent after `normalize`: edits over reference characters, spaces included.

    An empty (normalised) reference is an error; an empty hypothesis scores 100.
    """
    refs = [normalize(r, alphabet) for r in references]
    if not all(refs):
        raise ValueError("CER needs a non-empty reference text for every clip")
    return 100.0 * jiwer.cer(refs, [normalize(h, alphabet) for h in hypotheses])
