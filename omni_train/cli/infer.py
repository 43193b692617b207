"""omni-infer: answer one spoken or written question with a checkpoint (ours or Mini-Omni's).

    omni-infer --checkpoint CKPT --audio question.wav --out answer.wav     # A1A2: spoken answer
    omni-infer --checkpoint CKPT --text "what is two plus three" --task T1T2
    omni-infer --checkpoint CKPT --audio clip.flac --task A1T1 --json       # ASR, one JSON line

Whisper comes from --whisper (an openai-whisper checkpoint file, or a name such as ``small``, which
whisper downloads), else from what the checkpoint was trained with (``omni_audio.json``, written by
omni-train: a copied file or a name, and whether Whisper's input was padded to 30 s); SNAC likewise
from --snac or the checkpoint. Neither is read unless needed: Whisper for --audio, SNAC for --out.
A file that cannot be used (missing, empty, corrupt audio; an unreadable checkpoint; a question
longer than the model's context) ends with one line and exit status 2, as a usage error does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import torch
from litgpt.tokenizer import Tokenizer

from omni_train.audio import DownloadFailed, SnacCodec, WhisperEncoder, save_wav
from omni_train.checkpoints import audio_sources, load_checkpoint
from omni_train.generate import answer, stream_answer
from omni_train.tasks import Task, describe_tasks
from omni_train.vocab import EOA

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omni-infer", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    question = parser.add_mutually_exclusive_group(required=True)
    question.add_argument("--audio", type=Path, help="spoken question (any format libsndfile reads)")
    question.add_argument("--text", help="written question")
    parser.add_argument("--task", choices=[t.value for t in Task],
                        help=f"default: A1A2 for --audio, T1A2 for --text. {describe_tasks()}")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the spoken answer here (wav); without it no audio is decoded")
    parser.add_argument("--whisper", help="Whisper checkpoint file, name or Hugging Face folder (default: the checkpoint's)")
    parser.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    parser.add_argument("--pad-to-30s", action=argparse.BooleanOptionalAction, default=None,
                        help="pad Whisper's input to 30 s as Mini-Omni does (default: as the checkpoint was trained)")
    parser.add_argument("--batch-parallel", action="store_true", help="A1A2 speaking the text of an A1T2 row")
    parser.add_argument("--stream", action="store_true", help="decode speech while generating; report latency")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: the checkpoint's")
    parser.add_argument("--json", action="store_true", help="print one JSON line: text, text_tokens, audio_tokens")
    args = parser.parse_args(argv)

    args.task = Task(args.task or ("A1A2" if args.audio else "T1A2"))
    if args.task.audio_in != (args.audio is not None):
        parser.error(f"task {args.task.value} takes {'--audio' if args.task.audio_in else '--text'}")
    if (args.out or args.stream) and not args.task.audio_out:
        parser.error(f"task {args.task.value} has no spoken answer for --out/--stream")
    if args.stream and not args.out:
        parser.error("--stream needs --out")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    saved = audio_sources(args.checkpoint) or {}
    if args.pad_to_30s is None:
        args.pad_to_30s = saved.get("pad_to_30s", False)
    if args.audio and not args.whisper:
        if "whisper" not in saved:
            parser.error(f"--audio needs --whisper ({args.checkpoint} does not say which Whisper it was trained with)")
        args.whisper = saved["whisper"]
    if args.out and not args.snac:
        if "snac" not in saved:
            parser.error(f"--out needs --snac ({args.checkpoint} does not say which SNAC it was trained with)")
        args.snac = saved["snac"]
    return args


def fail(message: str) -> NoReturn:
    """One line and exit status 2, as omni-eval and argparse's usage errors end."""
    print(f"omni-infer: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.text is not None and not args.text.strip():
        fail("--text is empty: there is no question to answer")
    if args.audio is not None and not args.audio.is_file():
        fail(f"no such audio file: {args.audio}")
    if args.audio is not None and args.audio.stat().st_size == 0:
        fail(f"the audio file is empty (0 bytes): {args.audio}")
    try:
        run(args)
    except DownloadFailed as e:
        fail(e.advice(f"--{e.key} "))
    except (OSError, ValueError) as e:  # AudioError, CheckpointError, a prompt longer than the model's context
        fail(str(e))


def run(args: argparse.Namespace) -> None:
    try:
        model, _ = load_checkpoint(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype))
        tokenizer = Tokenizer(args.checkpoint)
        encoder = (
            WhisperEncoder.from_pretrained(args.whisper, device=args.device, pad_to_30s=args.pad_to_30s)
            if args.audio else None
        )
        codec = SnacCodec.from_pretrained(args.snac, device=args.device) if args.out else None
    except RuntimeError as e:  # a state dict that does not fit its config, an unknown device
        fail((str(e).strip().splitlines() or [type(e).__name__])[0])
    model.eval()
    torch.manual_seed(args.seed)
    question = dict(audio=args.audio, text=args.text, task=args.task, batch_parallel=args.batch_parallel)
    knobs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)

    if args.stream:
        chunks, start, first = [], time.perf_counter(), None
        stream = stream_answer(model, encoder, tokenizer, codec, **question, **knobs)
        while True:
            try:
                chunks.append(next(stream))
            except StopIteration as stop:
                result = stop.value
                break
            if first is None:
                first = time.perf_counter() - start
        elapsed, wave = time.perf_counter() - start, torch.cat(chunks) if chunks else torch.zeros(0)
        seconds = wave.numel() / codec.sample_rate
        rtf = elapsed / seconds if seconds else float("inf")
        print(f"first audio after {first or 0:.3f} s; {seconds:.2f} s of speech in {elapsed:.2f} s "
              f"(real-time factor {rtf:.3f})", file=sys.stderr)  # fmt: skip
    else:
        result = answer(model, encoder, tokenizer, **question, **knobs)
        if args.out:
            frames = result.frames
            wave = codec.decode(frames) if frames.size(0) else torch.zeros(0)
    if args.out:
        save_wav(args.out, wave, codec.sample_rate)
        print(f"wrote {wave.numel() / codec.sample_rate:.2f} s of speech to {args.out}", file=sys.stderr)

    if args.json:
        audio = as_mini_omni_returns(result.audio_tokens)
        print(json.dumps(dict(text=result.text, text_tokens=result.text_tokens, audio_tokens=audio)))
    else:
        print(result.text)


def as_mini_omni_returns(audio_tokens: list[list[int]] | None) -> list[list[int]] | None:
    """Mini-Omni's generate functions stop before the step at which audio layer 6 says eoa; so does --json."""
    if audio_tokens and audio_tokens[-1] and audio_tokens[-1][-1] == EOA:
        return [layer[:-1] for layer in audio_tokens]
    return audio_tokens


if __name__ == "__main__":
    main()
