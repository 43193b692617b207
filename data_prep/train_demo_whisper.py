"""Pretrain the demo's tiny Whisper encoder (``omni_train/demo_data/whisper.pt``) with CTC.

    python data_prep/train_demo_whisper.py [--data omni_train/demo_data] [--steps 400] [--head-only]

Mini-Omni hears through a pretrained whisper-small: the LLM learns to read features that already
encode speech. No Whisper weights can be downloaded here, and a randomly initialised encoder
gives features a tiny LLM cannot learn ASR from within a CPU demo's minutes. So this script plays
Whisper's pretraining at toy scale: openai-whisper's own `AudioEncoder` (through our
`WhisperEncoder`, on the same audio-length log-mel the training data path makes), trained with a
character CTC head on the demo's *training* split only (``asr/train``; ``asr/heldout`` is never
seen), then saved in openai-whisper's checkpoint layout (``dims`` + ``model_state_dict``, the
unused text decoder random), so `whisper.load_model` and ``model.whisper`` take it like any other
Whisper file. The CTC head is kept beside it (``whisper_ctc.pt``): with the encoder it is the
demo's speech recogniser (`omni_train.demo_asr`), which scores spoken answers. Prints the held-out
character error rate of the CTC head as a sanity check.

``--head-only`` keeps an existing ``whisper.pt`` as it is and fits only a new CTC head to its frozen
features (the shipped encoder predates saving heads; its own head was not kept).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import whisper

from omni_train.audio import WHISPER_SAMPLE_RATE, WhisperEncoder, load_audio, log_mel, whisper_frames
from omni_train.demo_asr import CTC_HEAD_FILE, DemoRecognizer, cer, save_ctc_head
from omni_train.evaluate import librispeech_utterances

DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=128, n_audio_head=4, n_audio_layer=2,
    n_vocab=16, n_text_ctx=8, n_text_state=128, n_text_head=4, n_text_layer=1,
)
ALPHABET = " ABCDEFGHIJKLMNOPQRSTUVWXYZ'"  # CTC blank is index 0, characters from 1


def utterances(root: Path) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """(log-mel, encoder frames, character ids) of every utterance of a LibriSpeech-layout folder."""
    out = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            audio = load_audio(trans.parent / f"{utt}.flac", WHISPER_SAMPLE_RATE)
            ids = torch.tensor([ALPHABET.index(c) + 1 for c in text.upper() if c in ALPHABET])
            out.append((log_mel(audio, DIMS["n_mels"]), whisper_frames(audio.numel()), ids))
    return out


def batch(items):
    frames = torch.tensor([f for _, f, _ in items])
    mels = torch.zeros(len(items), DIMS["n_mels"], 2 * int(frames.max()))
    for b, (m, _, _) in enumerate(items):
        mels[b, :, : m.size(1)] = m
    return mels, frames, [t for _, _, t in items]


def features(encoder: WhisperEncoder, mels, frames) -> torch.Tensor:
    return encoder._encode_own_length(mels, frames, int(frames.max()))  # with gradients (forward is no_grad)


def heldout_cer(encoder: WhisperEncoder, head: nn.Linear, root: Path) -> float:
    """CER in percent of the recogniser (encoder + head) on a LibriSpeech-layout folder."""
    utts = librispeech_utterances(root)
    recognizer = DemoRecognizer(encoder, head, ALPHABET)
    hyps = recognizer.transcribe([load_audio(path, WHISPER_SAMPLE_RATE) for _, path, _ in utts])
    return cer([text for _, _, text in utts], hyps, ALPHABET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "omni_train" / "demo_data")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-only", action="store_true", help="fit only a CTC head to the existing whisper.pt")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    train = utterances(args.data / "asr" / "train")
    if args.head_only:
        encoder = WhisperEncoder.from_pretrained(args.data / "whisper.pt")  # frozen: features without gradients
    else:
        model = whisper.model.Whisper(whisper.model.ModelDimensions(**DIMS))
        encoder = WhisperEncoder(model.encoder)
        encoder.encoder.requires_grad_(True)
    head = nn.Linear(encoder.width, len(ALPHABET) + 1)
    params = [*head.parameters()] if args.head_only else [*encoder.encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    start = time.time()
    for step in range(1, args.steps + 1):
        mels, frames, targets = batch(rng.sample(train, args.batch_size))
        logp = head(features(encoder, mels, frames)).log_softmax(-1).transpose(0, 1)  # (F, B, C)
        loss = F.ctc_loss(logp, torch.cat(targets), frames, torch.tensor([len(t) for t in targets]), zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}: ctc {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    if not args.head_only:
        state = {k: v.half() for k, v in model.state_dict().items()}  # fp16 halves the file; loads as fp32
        out = args.data / "whisper.pt"
        torch.save({"dims": DIMS, "model_state_dict": state}, out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        encoder = WhisperEncoder.from_pretrained(out)  # the head is scored (and kept) with the fp16-rounded encoder
    save_ctc_head(args.data / CTC_HEAD_FILE, head, ALPHABET)
    print(f"wrote {args.data / CTC_HEAD_FILE}")
    print(f"held-out CER of the CTC head: {heldout_cer(encoder, head, args.data / 'asr' / 'heldout'):.1f}%")


if __name__ == "__main__":
    main()
