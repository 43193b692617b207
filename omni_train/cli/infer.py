"""omni-infer: answer a spoken or written question, or a conversation, with a checkpoint (ours or Mini-Omni's).

    omni-infer --checkpoint CKPT --audio question.wav --out answer.wav     # A1A2: spoken answer
    omni-infer --checkpoint CKPT --text "what is two plus three" --task T1T2
    omni-infer --checkpoint CKPT --audio clip.flac --task A1T1 --json       # ASR, one JSON line
    omni-infer --checkpoint CKPT --history chat.jsonl --text "and what is that plus one" --task T1T2
    omni-infer --checkpoint CKPT --interactive --out turns/                # a conversation, a wav a turn

A conversation (``--history``: JSON, JSONL or parquet with ``messages`` in the chat convention, as
``omni_train.data.sources.conversations`` reads for training) comes before the question as text
(DESIGN.md, "Conversations"); if it ends with a user turn of its own, that is the question. A user
turn with speech only enters the history as the model's own transcript of it (A1T1), as does every
spoken question of ``--interactive``, which reads questions from the terminal: a line is a written
question, ``/audio PATH`` a spoken one, ``/reset`` forgets the conversation, ``/quit`` (or end of
input) ends it; each spoken answer goes to ``OUT/turn-NN.wav``.

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
from omni_train.checkpoints import ModelBundle, audio_sources
from omni_train.data.samples import Turn
from omni_train.data.sources import BadRow, read_conversation, to_audio
from omni_train.generate import Conversation
from omni_train.tasks import Task, describe_tasks, spoken_answer
from omni_train.vocab import EOA

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omni-infer", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory")
    question = parser.add_mutually_exclusive_group()
    question.add_argument("--audio", type=Path, help="spoken question (any format libsndfile reads)")
    question.add_argument("--text", help="written question")
    parser.add_argument("--history", type=Path, help="a conversation the question continues (chat convention)")
    parser.add_argument("--history-row", type=int, help="which conversation of a --history file of several (from 1)")
    parser.add_argument("--interactive", action="store_true", help="questions from the terminal, one conversation")
    parser.add_argument("--task", choices=[t.value for t in Task],
                        help=f"default: A1A2 for --audio, T1A2 for --text. {describe_tasks()}")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="write the spoken answer here (wav); without it no audio is decoded. "
                             "--interactive: a folder for turn-NN.wav (default: omni-infer-turns)")  # fmt: skip
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
    asked = args.audio is not None or args.text is not None  # an empty --text is asked, and refused in main()

    args.turns, args.base_dir = [], None  # the --history file's answered turns (`Exchange`s)
    if args.history_row is not None and args.history is None:
        parser.error("--history-row needs --history")
    if args.history:
        try:
            args.turns, args.base_dir = read_conversation(args.history, args.history_row)
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--history: {e}")
        if args.turns[-1].assistant is None:  # the file's own last question
            if asked or args.interactive:
                parser.error(f"--history {args.history} ends with a question: drop --audio/--text/--interactive")
            last = args.turns.pop().user
            speak = last.audio is not None and (last.text is None or args.task is None or Task(args.task).audio_in)
            try:
                args.audio = to_audio(last.audio, args.base_dir, "audio") if speak else None
                args.text = None if speak else last.text
            except BadRow as bad:
                parser.error(f"--history {args.history}: its last question: {bad.reason} {bad.detail}".strip())
    if args.interactive and asked:
        parser.error("--interactive reads its questions from the terminal; drop --audio/--text")
    if not (args.audio is not None or args.text is not None or args.interactive):
        parser.error("give a question: --audio or --text (or --history ending with one, or --interactive)")

    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    saved = audio_sources(args.checkpoint) or {}
    if args.pad_to_30s is None:
        args.pad_to_30s = saved.get("pad_to_30s", False)
    args.whisper = args.whisper or saved.get("whisper")
    args.snac = args.snac or saved.get("snac")
    if args.interactive:
        args.task = Task(args.task) if args.task else None
        speaks = args.task is None or args.task.audio_out
        args.out = args.out or (Path("omni-infer-turns") if speaks else None)
        if args.out and not speaks:
            parser.error(f"task {args.task.value} has no spoken answer for --out")
        if args.task is not None and not args.task.rule.converses:
            parser.error(f"{args.task.value} (ASR) has no conversation: use another --task with --interactive")
    else:
        args.task = Task(args.task or spoken_answer(bool(args.audio)))
        if args.task.audio_in != (args.audio is not None):
            parser.error(f"task {args.task.value} takes {'--audio' if args.task.audio_in else '--text'}")
        if (args.out or args.stream) and not args.task.audio_out:
            parser.error(f"task {args.task.value} has no spoken answer for --out/--stream")
        if args.stream and not args.out:
            parser.error("--stream needs --out")
        if args.turns and not args.task.rule.converses:
            parser.error(f"{args.task.value} (ASR) has no conversation: drop --history")
    spoken_history = any(t.user.text is None for t in args.turns)  # transcribed by the model itself
    if (args.audio or spoken_history) and not args.whisper:
        why = "--audio" if args.audio else f"--history {args.history} (a turn with speech only)"
        parser.error(f"{why} needs --whisper ({args.checkpoint} does not say which Whisper it was trained with)")
    if args.out and not args.snac:
        parser.error(f"--out needs --snac ({args.checkpoint} does not say which SNAC it was trained with)")
    return args


def fail(message: str) -> NoReturn:
    """One line and exit status 2, as omni-eval and argparse's usage errors end."""
    print(f"omni-infer: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.text is not None and not args.text.strip():
        fail("--text is empty: there is no question to answer")
    given = isinstance(args.audio, Path)  # not the one a --history file ends with (that file checked it)
    if given and not args.audio.is_file():
        fail(f"no such audio file: {args.audio}")
    if given and args.audio.stat().st_size == 0:
        fail(f"the audio file is empty (0 bytes): {args.audio}")
    try:
        run(args)
    except DownloadFailed as e:
        fail(e.advice(f"--{e.key} "))
    except (OSError, ValueError) as e:  # AudioError, CheckpointError, a prompt longer than the model's context
        fail(str(e))


def run(args: argparse.Namespace) -> None:
    try:
        bundle = ModelBundle.load(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype))
        model, tokenizer = bundle.model, Tokenizer(bundle.tokenizer_dir)
        encoder = load_encoder(args) if args.audio or any(t.user.text is None for t in args.turns) else None
        codec = SnacCodec.from_pretrained(args.snac, device=args.device) if args.out else None
    except RuntimeError as e:  # a state dict that does not fit its config, an unknown device
        fail((str(e).strip().splitlines() or [type(e).__name__])[0])
    model.eval()
    torch.manual_seed(args.seed)
    # a history turn with speech only is transcribed here: its missing file is one line too (main() catches it)
    history = history_from(args.turns, args.base_dir, encoder, model, tokenizer)
    conversation = Conversation(model, encoder, tokenizer, history)
    knobs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.interactive:
        interact(conversation, codec, args, knobs)
        return
    question = dict(audio=args.audio, text=args.text, task=args.task, batch_parallel=args.batch_parallel)
    result = respond(conversation, codec, args, question, knobs, args.out)
    report(result, args.json)


def load_encoder(args) -> WhisperEncoder:
    return WhisperEncoder.from_pretrained(args.whisper, device=args.device, pad_to_30s=args.pad_to_30s)


def history_from(turns, base_dir, encoder, model, tokenizer) -> list[Turn]:
    """A file's answered turns as text; a question with speech only is the model's own transcript of it."""
    listen = Conversation(model, encoder, tokenizer)
    out = []
    for k, t in enumerate(turns, 1):
        if t.assistant.text is None:
            raise ValueError(f"turn {k} of the history has an answer with no text")
        try:
            question = t.user.text or listen.heard(to_audio(t.user.audio, base_dir, "audio"))
        except BadRow as bad:
            raise ValueError(f"turn {k} of the history: {bad.reason} {bad.detail}".strip()) from None
        out.append(Turn(question, t.assistant.text))
    return out


def respond(conversation: Conversation, codec, args, question: dict, knobs: dict, out: Path | None):
    """Answer one question of the conversation (streamed with --stream) and write its speech to `out`."""
    if args.stream:
        chunks, start, first = [], time.perf_counter(), None
        stream = conversation.stream(codec, **question, **knobs)
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
        result = conversation.ask(**question, **knobs)
        if out:
            frames = result.frames
            wave = codec.decode(frames) if frames.size(0) else torch.zeros(0)
    if result.dropped_turns:
        limit = conversation.model.max_seq_length
        print(f"omni-infer: note: left out the {result.dropped_turns} oldest turns of the conversation to leave room "
              f"for the answer in the model's {limit} positions", file=sys.stderr)  # fmt: skip
    if out:
        save_wav(out, wave, codec.sample_rate)
        print(f"wrote {wave.numel() / codec.sample_rate:.2f} s of speech to {out}", file=sys.stderr)
    return result


def report(result, as_json: bool) -> None:
    if as_json:
        audio = as_mini_omni_returns(result.audio_tokens)
        print(json.dumps(dict(text=result.text, text_tokens=result.text_tokens, audio_tokens=audio)), flush=True)
    else:
        print(result.text, flush=True)


def interact(conversation: Conversation, codec, args, knobs: dict) -> None:
    """Questions from stdin, one a line, until /quit or the end of input; the conversation carries over."""
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    turn = 0
    print("a line is a question; /audio PATH asks a spoken one; /reset forgets the conversation; /quit ends",
          file=sys.stderr)  # fmt: skip
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            conversation.history.clear()
            print("(a new conversation)", file=sys.stderr)
            continue
        spoken = line.startswith("/audio ")
        question = {"audio": Path(line[len("/audio ") :].strip())} if spoken else {"text": line}
        task = args.task or spoken_answer(spoken)
        try:
            if task.audio_in != spoken:
                raise ValueError(f"task {task.value} takes {'/audio PATH' if task.audio_in else 'a written question'}")
            if spoken and conversation.encoder is None:  # loaded at the first spoken question
                if not args.whisper:
                    raise ValueError(f"a spoken question needs --whisper ({args.checkpoint} names no Whisper)")
                conversation.encoder = load_encoder(args)
            out = args.out / f"turn-{turn + 1:02d}.wav" if args.out and task.audio_out else None
            question.update(task=task, batch_parallel=args.batch_parallel)
            result = respond(conversation, codec, args, question, knobs, out)
        except (OSError, ValueError, RuntimeError) as e:  # a missing file, a wrong kind of question: that turn
            print(f"omni-infer: error: {e}", file=sys.stderr)
            continue
        turn += 1
        report(result, args.json)


def as_mini_omni_returns(audio_tokens: list[list[int]] | None) -> list[list[int]] | None:
    """Mini-Omni's generate functions stop before the step at which audio layer 6 says eoa; so does --json."""
    if audio_tokens and audio_tokens[-1] and audio_tokens[-1][-1] == EOA:
        return [layer[:-1] for layer in audio_tokens]
    return audio_tokens


if __name__ == "__main__":
    main()
