"""omni-eval: the paper's numbers for a checkpoint, and a run's loss curves.

    omni-eval asr --checkpoint CKPT --librispeech /data/LibriSpeech --out asr.json
    omni-eval consistency --checkpoint CKPT --whisper large-v3 --librispeech /data/LibriSpeech --splits test-clean
    omni-eval consistency --checkpoint CKPT --whisper whisper.pt --questions questions.txt --task T1A2
    omni-eval retention --base checkpoints/Qwen/Qwen2-0.5B --checkpoint CKPT --text heldout.jsonl
    omni-eval plot outputs/RUN --out loss.png
    omni-eval dialogue --checkpoint CKPT --conversations heldout.jsonl --task T1T2

The checkpoint's Whisper encoder and SNAC come from the checkpoint (``omni_audio.json``, written by
omni-train) unless --encoder / --snac name others. ``consistency``'s --whisper is a different
model: the full openai-whisper (a name, which whisper downloads, or a local checkpoint file) that
transcribes the spoken answers. Missing files and bad input end with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import whisper
from litgpt.tokenizer import Tokenizer

from omni_train import evaluate
from omni_train.audio import SnacCodec, WhisperEncoder
from omni_train.checkpoints import audio_sources, base_model, load_base, load_checkpoint
from omni_train.data import sources
from omni_train.data.sources.conversations import CONVERSATION_TASKS
from omni_train.tasks import Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EvalError(Exception):
    """A problem the user can fix (a missing file, a bad row); printed as one line."""


def _model_args(p: argparse.ArgumentParser, encoder: bool = True) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (ours or Mini-Omni's)")
    if encoder:
        p.add_argument("--encoder", help="the model's Whisper encoder: file or name (default: the checkpoint's)")
    p.add_argument("--device", default=evaluate.DEVICE)
    p.add_argument("--dtype", choices=list(DTYPES), help="default: the checkpoint's")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("asr", help="LibriSpeech WER in the paper's table form")
    _model_args(p)
    p.add_argument("--librispeech", type=Path, required=True, help="folder holding the splits, or one split folder")
    p.add_argument("--splits", nargs="+", help=f"split folder names (default: {' '.join(evaluate.SPLITS)})")
    p.add_argument("--max-utterances", type=int, help="score only the first N of each split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path("asr_results.json"), help="per-utterance results (JSON)")

    p = sub.add_parser("consistency", help="WER of the spoken answer's transcript against the text answer")
    _model_args(p)
    p.add_argument("--whisper", required=True, help="openai-whisper model that transcribes the answers: name or file")
    questions = p.add_mutually_exclusive_group(required=True)
    questions.add_argument("--questions", type=Path, help="text file (a question a line) or jsonl (question/audio)")
    questions.add_argument("--librispeech", type=Path, help="LibriSpeech utterances as questions")
    p.add_argument("--splits", nargs="+", help="with --librispeech (default: the splits found)")
    p.add_argument("--task", choices=[Task.A1A2.value, Task.T1A2.value],
                   help="default: A1A2 for spoken questions, T1A2 for written ones")  # fmt: skip
    p.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    p.add_argument("--max-items", type=int, help="answer only the first N questions")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("consistency_results.json"), help="per-item results (JSON)")

    p = sub.add_parser("retention", help="text perplexity of the base LLM and the trained model, side by side")
    _model_args(p, encoder=False)
    p.add_argument("--base", type=Path, required=True, help="the base LLM: a litgpt or Hugging Face checkpoint folder")
    p.add_argument("--base-name", help="litgpt config name of the base (when its folder does not tell)")
    p.add_argument("--text", type=Path, required=True, help="held-out text: plain text or jsonl with a 'text' field")
    p.add_argument("--max-documents", type=int)
    p.add_argument("--max-length", type=int, default=1024, help="tokens a window (capped by the models' length)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON too")

    add_dialogue_parser(sub)

    p = sub.add_parser("plot", help="per-task losses of all stages of a run on one PNG")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="default: RUN_DIR/loss.png")
    return parser.parse_args(argv)


# ---- loading ------------------------------------------------------------------------------------
@contextmanager
def _loading(what):
    """torch.load and whisper.load_model report a bad or unknown file as RuntimeError: make it one line."""
    try:
        yield
    except RuntimeError as e:
        raise EvalError(f"cannot load {what}: {str(e).splitlines()[0]}") from e


def _load_model(args):
    with _loading(args.checkpoint):
        model, _ = load_checkpoint(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype))
    return model.eval(), Tokenizer(args.checkpoint)


def _saved(args, key: str, flag: str) -> str:
    saved = audio_sources(args.checkpoint) or {}
    if key not in saved:
        raise EvalError(f"{args.checkpoint} does not say which {key} it was trained with: pass {flag}")
    return saved[key]


def _load_encoder(args) -> WhisperEncoder:
    name = args.encoder or _saved(args, "whisper", "--encoder")
    pad = (audio_sources(args.checkpoint) or {}).get("pad_to_30s", False)
    with _loading(name):
        return WhisperEncoder.from_pretrained(name, device=args.device, pad_to_30s=pad)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _missing(root: Path, names: list[str]) -> str:
    there = sorted(f.name for f in root.iterdir() if f.is_dir() and evaluate.find_splits(f)[0]) if root.is_dir() else []
    hint = f"; split folders there: {', '.join(there)} (pass --splits NAME ...)" if there else ""
    return f"no {', '.join(names)} under {root} (looked for {root}/NAME and {root}/LibriSpeech/NAME){hint}"


# ---- commands -----------------------------------------------------------------------------------
def run_asr(args) -> dict:
    splits, missing = evaluate.find_splits(args.librispeech, args.splits)
    if not splits or (args.splits and missing):
        raise EvalError(_missing(args.librispeech, missing))
    if missing:
        print(f"omni-eval asr: note: {_missing(args.librispeech, missing)}; their columns show '-'", file=sys.stderr)
    model, tokenizer = _load_model(args)
    encoder = _load_encoder(args)
    name = str(args.checkpoint)
    out = {"checkpoint": name, "splits": {}}
    for split, folder in splits.items():
        result = evaluate.asr_split(
            model, encoder, tokenizer, folder, args.max_utterances, args.batch_size, args.max_new_tokens, desc=split
        )
        out["splits"][split] = result
        _write_json(args.out, out)  # after every split: a long evaluation keeps what it finished
        print(f"{split}: WER {result['wer']:.2f} on {result['n']} utterances", file=sys.stderr)
    out["table"] = evaluate.wer_table({name: {s: r["wer"] for s, r in out["splits"].items()}})
    _write_json(args.out, out)
    print(out["table"])
    print(f"per-utterance results: {args.out}", file=sys.stderr)
    return out


def run_consistency(args) -> dict:
    if args.questions:
        questions = evaluate.read_questions(args.questions)[: args.max_items]
    else:
        splits, missing = evaluate.find_splits(args.librispeech, args.splits)
        if not splits or (args.splits and missing):
            raise EvalError(_missing(args.librispeech, missing))
        questions = evaluate.librispeech_questions(list(splits.values()), args.max_items)
    task = Task(args.task or (Task.A1A2 if all(q.audio for q in questions) else Task.T1A2))
    model, tokenizer = _load_model(args)
    encoder = _load_encoder(args) if task.audio_in else None
    codec = SnacCodec.from_pretrained(args.snac or _saved(args, "snac", "--snac"), device=args.device)
    with _loading(args.whisper):
        judge = whisper.load_model(args.whisper, device=args.device)
    result = evaluate.consistency(
        model, encoder, tokenizer, codec, judge, questions, task, args.batch_size, args.max_new_tokens, desc="answers"
    )
    result = {"checkpoint": str(args.checkpoint), "whisper": args.whisper, "task": task.value, **result}
    _write_json(args.out, result)
    number = "-" if result["wer"] is None else f"{result['wer']:.2f}"
    if result["wer"] is None:
        print("omni-eval consistency: note: no text answer had words to score against", file=sys.stderr)
    print(f"| model | task | answers | scored | speech-text WER |\n|---|---|---|---|---|\n"
          f"| {args.checkpoint} | {task.value} | {result['n']} | {result['scored']} | {number} |")  # fmt: skip
    print(f"per-item results: {args.out}", file=sys.stderr)
    return result


def run_retention(args) -> dict:
    documents = evaluate.read_documents(args.text, args.max_documents)
    model, tokenizer = _load_model(args)
    with _loading(args.base):
        base_omni, _ = load_base(args.base, model_name=args.base_name, dtype=model.dtype)
    base = base_model(base_omni.to(args.device))
    del base_omni
    mine, theirs = model.config.base_config, base.config
    if diff := [f for f in ("n_layer", "n_embd", "n_head", "n_query_groups", "padded_vocab_size")
                if getattr(mine, f) != getattr(theirs, f)]:  # fmt: skip
        raise EvalError(f"{args.checkpoint} was not trained from {args.base}: they differ in {', '.join(diff)}")
    base_tokenizer = Tokenizer(args.base)
    for i, doc in enumerate(documents):
        if not torch.equal(tokenizer.encode(doc), base_tokenizer.encode(doc)):
            raise EvalError(f"{args.checkpoint} and {args.base} tokenize document {i} of {args.text} differently")
    result = evaluate.retention(base, model, base_tokenizer, documents, args.max_length, desc="perplexity")
    result = {"base": str(args.base), "checkpoint": str(args.checkpoint), "text": str(args.text), **result}
    if args.out:
        _write_json(args.out, result)
    ppl, ratio = result["perplexity"], result["ratio_to_base"]
    print(f"{result['tokens']} tokens in {result['documents']} documents, windows of {result['window']}")
    print("| model | perplexity | ratio to base |\n|---|---|---|")
    print(f"| base LLM ({args.base}) | {ppl['base']:.3f} | 1.000 |")
    print(f"| {args.checkpoint}, text as the base reads it | {ppl['llm_path']:.3f} | {ratio['llm_path']:.3f} |")
    print(f"| {args.checkpoint}, text as a T1T2 answer | {ppl['t1t2_answer']:.3f} | {ratio['t1t2_answer']:.3f} |")
    return result


def run_plot(args) -> list[dict]:
    out = args.out or args.run_dir / "loss.png"
    stages = evaluate.plot_losses(args.run_dir, out)
    print(f"wrote {out}: " + ", ".join(f"{s['stage']} (steps {s['offset']}-{s['offset'] + s['steps'] - 1})"
                                       for s in stages))  # fmt: skip
    return stages


# ---- dialogue: the last turns of held-out conversations ---------------------------------------------
def add_dialogue_parser(sub) -> None:
    p = sub.add_parser("dialogue", help="answers to the last turns of held-out conversations, against their references")
    _model_args(p)
    p.add_argument("--conversations", type=Path, required=True,
                   help="JSONL/parquet of conversations (messages, chat convention): each one's last turn is asked")
    p.add_argument("--task", choices=[t.value for t in CONVERSATION_TASKS],
                   help="default: A1A2 for the spoken last questions if there are any, else T1A2")
    p.add_argument("--no-history", action="store_true", help="ask the last questions alone (as single-turn)")
    p.add_argument("--whisper", help="openai-whisper model that transcribes spoken answers (A1A2, T1A2): name or file")
    p.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    p.add_argument("--max-items", type=int, help="score only the first N conversations")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path("dialogue_results.json"), help="per-conversation results (JSON)")


def run_dialogue(args) -> dict:
    # the last turns with their question spoken (read as A1T2) and written (T1T2); the reference is the text answer
    src = sources.conversations(args.conversations, tasks=["A1T2", "T1T2"], turns="last")
    last = list(src)
    spoken = [s for s in last if s.task is Task.A1T2]
    written = [s for s in last if s.task is Task.T1T2]
    task = Task(args.task or ("A1A2" if spoken else "T1A2"))
    pool, kind = (spoken, "spoken") if task.audio_in else (written, "written")
    if not pool:
        raise EvalError(f"{args.conversations}: no conversation's last turn has a {kind} question for {task.value}")
    if src.skips.n_skipped():
        print(f"omni-eval dialogue: note: {src.skips.summary()}", file=sys.stderr)
    if without := len({s.row for s in last}) - len(pool):
        print(f"omni-eval dialogue: note: {without} conversations end with no {kind} question; they are not asked",
              file=sys.stderr)  # fmt: skip
    samples = pool[: args.max_items]
    model, tokenizer = _load_model(args)
    encoder = _load_encoder(args) if task.audio_in else None
    codec = judge = None
    if task.audio_out and args.whisper:
        codec = SnacCodec.from_pretrained(args.snac or _saved(args, "snac", "--snac"), device=args.device)
        with _loading(args.whisper):
            judge = whisper.load_model(args.whisper, device=args.device)
    elif task.audio_out:
        print("omni-eval dialogue: note: without --whisper only the text answers are scored", file=sys.stderr)
    result = evaluate.dialogue(
        model, encoder, tokenizer, samples, task, history=not args.no_history, codec=codec, judge=judge,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, desc="answers",
    )  # fmt: skip
    result = {"checkpoint": str(args.checkpoint), "conversations": str(args.conversations), **result}
    _write_json(args.out, result)
    spoken_wer = "-" if result["spoken_wer"] is None else f"{result['spoken_wer']:.2f}"
    print("| model | task | history | conversations | right | text WER | spoken WER |\n|---|---|---|---|---|---|---|\n"
          f"| {args.checkpoint} | {task.value} | {'yes' if result['history'] else 'no'} | {result['n']} | "
          f"{result['right']} ({result['accuracy']:.1f}%) | {result['wer']:.2f} | {spoken_wer} |")  # fmt: skip
    print(f"per-conversation results: {args.out}", file=sys.stderr)
    return result


COMMANDS = {
    "asr": run_asr, "consistency": run_consistency, "retention": run_retention, "plot": run_plot,
    "dialogue": run_dialogue,
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (EvalError, OSError, ValueError) as e:  # FileNotFoundError, AudioError, bad rows: one line
        print(f"omni-eval {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
