"""omni-eval: the paper's numbers for a checkpoint, the field's spoken-dialogue benchmarks, one report.

    omni-eval asr --checkpoint CKPT --librispeech /data/LibriSpeech --out RUN/eval/asr.json
    omni-eval asr --checkpoint CKPT --librispeech /data/de/heldout --language de    # German: basic normaliser
    omni-eval asr --checkpoint CKPT --librispeech /data/cv-ja/test.tsv --layout common-voice --language ja  # CER
    omni-eval consistency --checkpoint CKPT --whisper large-v3 --librispeech /data/LibriSpeech --splits test-clean
    omni-eval consistency --checkpoint CKPT --whisper small.pt --questions questions.txt --task T1A2
    omni-eval retention --base checkpoints/Qwen/Qwen2-0.5B --checkpoint CKPT --text heldout.jsonl
    omni-eval spoken-qa --checkpoint CKPT --whisper large-v3 --data llama-questions triviaqa --out RUN/eval/sqa.json
    omni-eval voicebench --checkpoint CKPT --data /data/voicebench --out-dir RUN/eval/voicebench
    omni-eval voicebench --checkpoint CKPT --data /data/voicebench --subsets commoneval --judge-url URL/v1 --out-dir ...
    omni-eval speech --checkpoint CKPT --data llama-questions --mos utmos.pt --max-items 50 --out RUN/eval/speech.json
    omni-eval report RUN                                   # RUN/eval_report.md, .json, .png
    omni-eval plot outputs/RUN --out loss.png
    omni-eval dialogue --checkpoint CKPT --conversations heldout.jsonl --task T1T2

Task codes: the input modality (1) and the answer's (2); A = audio, T = text. A1T1 is ASR; A1T2 a
spoken question answered in text; A1A2 a spoken question answered in speech (and text); T1A2 a
written question answered in speech; T1T2 text to text.

The checkpoint's Whisper encoder and SNAC come from the checkpoint (``omni_audio.json``, written by
omni-train) unless --encoder / --snac name others. ``--whisper`` is a different model: the full
openai-whisper (a name, which whisper downloads, or a local checkpoint file) that transcribes the
spoken answers: a whole Whisper, not an encoder trained for omni-train such as the demo's
whisper.pt. Missing files and bad input end with one line and exit status 2.

--language (a Whisper code or name; default: the language the checkpoint was trained in, as its
``omni_audio.json`` records it, else en) picks the text normaliser of asr and consistency:
Whisper's English one for en, its basic one otherwise; languages written without spaces (zh, yue,
ja, th, lo, my, km, bo) are scored by CER instead of WER. consistency also has --whisper transcribe
in that language.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import torch
from litgpt.tokenizer import Tokenizer

from omni_train import evaluate
from omni_train.atomic import write_json, write_text
from omni_train.audio import DownloadFailed, SnacCodec, WhisperEncoder, load_whisper
from omni_train.checkpoints import ModelBundle, audio_sources, base_model, load_base
from omni_train.data import sources
from omni_train.data.sources.conversations import CONVERSATION_TASKS
from omni_train.data.sources import LAYOUTS
from omni_train.data.sources.corpora import check_layout
from omni_train.evals import report as eval_report
from omni_train.evals import speech_quality, spoken_qa, voicebench
from omni_train.tasks import Task, describe_tasks, spoken_answer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPOKEN_ANSWERS = [t.value for t in Task if t.audio_out]  # the tasks whose answer consistency and speech-quality hear


class EvalError(Exception):
    """A problem the user can fix (a missing file, a bad row); printed as one line."""


def _model_args(p: argparse.ArgumentParser, encoder: bool = True) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (ours or Mini-Omni's)")
    if encoder:
        p.add_argument("--encoder", help="the model's Whisper encoder: file, name or Hugging Face folder (default: the checkpoint's)")
    p.add_argument("--device", default=evaluate.DEVICE)
    p.add_argument("--dtype", choices=list(DTYPES), help="default: the checkpoint's")


def _language_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--language",
                   help="the speech's language, a Whisper code or name (default: the checkpoint's training data's, "
                        "else en): picks the normaliser, and CER instead of WER for languages written without "
                        "spaces (zh, ja, th, ...)")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter  # keeps the examples' lines
    parser = argparse.ArgumentParser(
        prog="omni-eval", description=__doc__.splitlines()[0], formatter_class=raw,
        epilog="examples:\n" + "\n".join(__doc__.splitlines()[2:]),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("asr", help="LibriSpeech WER in the paper's table form")
    _model_args(p)
    p.add_argument("--librispeech", type=Path, required=True,
                   help="folder holding the splits, or one split folder (with --layout: one corpus split)")
    p.add_argument("--layout", choices=list(LAYOUTS),
                   help="--librispeech is a corpus split in this layout instead (Common Voice: its test.tsv)")
    p.add_argument("--splits", nargs="+", help=f"split folder names (default: {' '.join(evaluate.SPLITS)})")
    p.add_argument("--max-utterances", type=int, help="score only the first N of each split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    _language_arg(p)
    p.add_argument("--out", type=Path, default=Path("asr_results.json"), help="per-utterance results (JSON)")

    p = sub.add_parser("consistency", help="WER of the spoken answer's transcript against the text answer")
    _model_args(p)
    p.add_argument("--whisper", required=True, help="openai-whisper model that transcribes the answers: name, file or Hugging Face folder")
    questions = p.add_mutually_exclusive_group(required=True)
    questions.add_argument("--questions", type=Path, help="text file (a question a line) or jsonl (question/audio)")
    questions.add_argument("--librispeech", type=Path, help="LibriSpeech utterances as questions")
    p.add_argument("--splits", nargs="+", help="with --librispeech (default: the splits found)")
    p.add_argument("--task", choices=SPOKEN_ANSWERS,
                   help=f"default: A1A2 for spoken questions, T1A2 for written ones. {describe_tasks()}")  # fmt: skip
    p.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    p.add_argument("--max-items", type=int, help="answer only the first N questions")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    _language_arg(p)
    p.add_argument("--out", type=Path, default=Path("consistency_results.json"), help="per-item results (JSON)")

    p = sub.add_parser("retention", help="text perplexity of the base LLM and the trained model, side by side")
    _model_args(p, encoder=False)
    p.add_argument("--base", type=Path, required=True, help="the base LLM: a litgpt or Hugging Face checkpoint folder")
    p.add_argument("--base-name", help="litgpt config name of the base (when its folder does not tell)")
    p.add_argument("--text", type=Path, required=True,
                   help="held-out text: plain text, one document a line (blank lines skipped), or .jsonl with a "
                        "'text' field a row")  # fmt: skip
    p.add_argument("--max-documents", type=int)
    p.add_argument("--max-length", type=int, default=1024, help="tokens a window (capped by the models' length)")
    p.add_argument("--out", type=Path, help="write the numbers as JSON too")

    p = sub.add_parser("spoken-qa", help="spoken QA accuracy (Llama Questions, Web Questions, TriviaQA): A1T2 and A1A2",
                       description=spoken_qa.__doc__, formatter_class=raw)
    _model_args(p)
    p.add_argument("--data", nargs="+", required=True,
                   help=f"sets: {', '.join(spoken_qa.SETS)} (their hub copies), a hub name, a folder in HF's parquet "
                        "layout, a .parquet or a .jsonl (audio/source_wav, question/source_text, answers/target_text)")
    p.add_argument("--split", help="the split to read (default: the only one in a folder; the set's own for hub names)")
    tasks = [t.value for t in spoken_qa.TASKS]
    p.add_argument("--tasks", nargs="+", choices=tasks, default=tasks,
                   help="A1T2: answer in text; A1A2: answer in speech, transcribed by --whisper (default: both)")
    p.add_argument("--whisper", help="openai-whisper model that transcribes the A1A2 answers: name, file or Hugging Face folder")
    p.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    p.add_argument("--max-items", type=int, help="answer only the first N questions of each set")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--out", type=Path, default=Path("spoken_qa_results.json"), help="per-question results (JSON)")

    p = sub.add_parser("voicebench", help="VoiceBench: rule-scored subsets, and answers for its GPT judge",
                       description=voicebench.__doc__, formatter_class=raw)
    _model_args(p)
    p.add_argument("--data", required=True,
                   help=f"a local snapshot of {voicebench.HUB} (ROOT/<subset>/<split>-*.parquet), or that hub name")
    p.add_argument("--subsets", nargs="+", choices=list(voicebench.EVALUATORS), default=list(voicebench.RULE_SCORED),
                   help=f"default: the rule-scored {' '.join(voicebench.RULE_SCORED)}")
    p.add_argument("--splits", nargs="+", help="only these splits of one subset (default: all: mmsu's 12 areas, ...)")
    p.add_argument("--max-items", type=int, help="answer only the first N rows of each split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--name", help="model name in the answer files (default: the checkpoint folder's name)")
    p.add_argument("--out-dir", type=Path, default=Path("voicebench"),
                   help="answers as VoiceBench's main.py writes them (NAME-SUBSET-SPLIT-audio.jsonl); voicebench.json")
    p.add_argument("--judge-url", help="an OpenAI-compatible endpoint to judge the open-ended subsets (.../v1)")
    p.add_argument("--judge-model", default="gpt-4o-mini", help="the judge model (VoiceBench uses gpt-4o-mini)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the judge's API key")

    p = sub.add_parser("speech", help="time to first audio, real-time factor and MOS of streamed spoken answers",
                       description=speech_quality.__doc__, formatter_class=raw)
    _model_args(p)
    questions = p.add_mutually_exclusive_group(required=True)
    questions.add_argument("--data", help="spoken questions: a spoken-qa set (name, hub, folder, .parquet, .jsonl)")
    questions.add_argument("--questions", type=Path, help="text file (a question a line) or jsonl (question/audio)")
    p.add_argument("--split", help="with --data: the split to read")
    p.add_argument("--task", choices=SPOKEN_ANSWERS,
                   help="default: A1A2 for spoken questions, T1A2 for written ones")  # fmt: skip
    p.add_argument("--mos", type=Path, help="MOS predictor: a TorchScript file, 16 kHz wave (B, T) -> scores (B,)")
    p.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    p.add_argument("--max-items", type=int, default=20, help="answer the first N questions (default 20)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured answers first (default 1)")
    p.add_argument("--chunk", type=int, default=4, help="SNAC frames a streamed chunk")
    p.add_argument("--context", type=int, default=3, help="SNAC frames of context either side of a chunk")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--save-audio", type=Path, help="write each spoken answer's wav into this folder")
    p.add_argument("--out", type=Path, default=Path("speech_results.json"), help="per-answer results (JSON)")

    p = sub.add_parser("report", help="every omni-eval result under a folder in one table, with the published rows")
    p.add_argument("run_dir", type=Path, help="a run (or any folder) holding omni-eval result JSON files")
    p.add_argument("--out-dir", type=Path, help="where eval_report.{md,json,png} go (default: RUN_DIR)")

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


def _load_model(args) -> tuple[ModelBundle, Tokenizer]:
    """The checkpoint in eval mode, with the Whisper and SNAC it was trained with unless --encoder / --snac name others."""
    with _loading(args.checkpoint):
        bundle = ModelBundle.load(args.checkpoint, device=args.device, dtype=DTYPES.get(args.dtype))
    bundle.model.eval()
    bundle.whisper = getattr(args, "encoder", None) or bundle.whisper
    bundle.snac = getattr(args, "snac", None) or bundle.snac
    return bundle, Tokenizer(bundle.tokenizer_dir)


def _saved(bundle: ModelBundle, key: str, flag: str) -> str:
    if getattr(bundle, key) is None:
        raise EvalError(f"{bundle.origin} does not say which {key} it was trained with: pass {flag}")
    return getattr(bundle, key)


def _load_encoder(args, bundle: ModelBundle) -> WhisperEncoder:
    with _loading(_saved(bundle, "whisper", "--encoder")):
        return bundle.load_encoder(args.device)


def _load_codec(args, bundle: ModelBundle) -> SnacCodec:
    return SnacCodec.from_pretrained(_saved(bundle, "snac", "--snac"), device=args.device)


def _load_whisper(args):
    """The user's whole Whisper that transcribes spoken answers (--whisper)."""
    try:
        return load_whisper(args.whisper, device=args.device, transcribes=True)
    except DownloadFailed as e:
        raise EvalError(e.advice("--whisper ")) from None


def _missing(root: Path, names: list[str]) -> str:
    there = sorted(f.name for f in root.iterdir() if f.is_dir() and evaluate.find_splits(f)[0]) if root.is_dir() else []
    hint = f"; split folders there: {', '.join(there)} (pass --splits NAME ...)" if there else ""
    return f"no {', '.join(names)} under {root} (looked for {root}/NAME and {root}/LibriSpeech/NAME){hint}"


# ---- commands -----------------------------------------------------------------------------------
def run_asr(args) -> dict:
    metric = evaluate.scoring(args.language).metric  # an unknown language fails before any model loads
    if args.layout:  # one corpus split, named by its file or folder
        if args.splits:
            raise EvalError("--splits picks LibriSpeech split folders; with --layout, --librispeech is the one split")
        splits, missing = {args.librispeech.stem: args.librispeech}, []
        check_layout(args.layout, args.librispeech)
    else:
        splits, missing = evaluate.find_splits(args.librispeech, args.splits)
    if not splits or (args.splits and missing):
        raise EvalError(_missing(args.librispeech, missing))
    if missing:
        print(f"omni-eval asr: note: {_missing(args.librispeech, missing)}; their columns show '-'", file=sys.stderr)
    bundle, tokenizer = _load_model(args)
    model = bundle.model
    encoder = _load_encoder(args, bundle)
    name = str(args.checkpoint)
    out = {"checkpoint": name, "splits": {}}
    for split, folder in splits.items():
        result = evaluate.asr_split(
            model, encoder, tokenizer, folder, args.max_utterances, args.batch_size, args.max_new_tokens, desc=split,
            language=args.language, layout=args.layout,
        )  # fmt: skip
        out["splits"][split] = result
        if result.get("left_out"):
            print(f"omni-eval asr: note: {split}: {result['left_out']} clips left out (no audio, no text or an "
                  f"unreadable line)", file=sys.stderr)  # fmt: skip
        write_json(args.out, out)  # after every split: a long evaluation keeps what it finished
        print(f"{split}: {metric.upper()} {result[metric]:.2f} on {result['n']} utterances", file=sys.stderr)
    scores = {name: {s: r[metric] for s, r in out["splits"].items()}}
    # the paper's rows are English WER: beside another language's numbers they would only mislead
    english = evaluate.scoring(args.language).language == "en"
    out["table"] = evaluate.wer_table(scores, published=english, metric=metric)
    write_json(args.out, out)
    print(out["table"])
    print(f"per-utterance results: {args.out}", file=sys.stderr)
    return out


def run_consistency(args) -> dict:
    metric = evaluate.scoring(args.language).metric  # an unknown language fails before any model loads
    if args.questions:
        questions = evaluate.read_questions(args.questions)[: args.max_items]
    else:
        splits, missing = evaluate.find_splits(args.librispeech, args.splits)
        if not splits or (args.splits and missing):
            raise EvalError(_missing(args.librispeech, missing))
        questions = evaluate.librispeech_questions(list(splits.values()), args.max_items)
    task = Task(args.task or spoken_answer(all(q.audio for q in questions)))
    judge = _load_whisper(args)  # first: the judge is the model most often missing
    bundle, tokenizer = _load_model(args)
    model = bundle.model
    encoder = _load_encoder(args, bundle) if task.audio_in else None
    codec = _load_codec(args, bundle)
    result = evaluate.consistency(
        model, encoder, tokenizer, codec, judge, questions, task, args.batch_size, args.max_new_tokens, desc="answers",
        language=args.language,
    )  # fmt: skip
    result = {"checkpoint": str(args.checkpoint), "whisper": args.whisper, "task": task.value, **result}
    write_json(args.out, result)
    number = "-" if result[metric] is None else f"{result[metric]:.2f}"
    if result[metric] is None:
        print("omni-eval consistency: note: no text answer had words to score against", file=sys.stderr)
    print(f"| model | task | answers | scored | speech-text {metric.upper()} |\n|---|---|---|---|---|\n"
          f"| {args.checkpoint} | {task.value} | {result['n']} | {result['scored']} | {number} |")  # fmt: skip
    print(f"per-item results: {args.out}", file=sys.stderr)
    return result


def run_retention(args) -> dict:
    documents = evaluate.read_documents(args.text, args.max_documents)
    bundle, tokenizer = _load_model(args)
    model = bundle.model
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
        write_json(args.out, result)
    ppl, ratio = result["perplexity"], result["ratio_to_base"]
    print(f"{result['tokens']} tokens in {result['documents']} documents, windows of {result['window']}")
    print("| model | perplexity | ratio to base |\n|---|---|---|")
    print(f"| base LLM ({args.base}) | {ppl['base']:.3f} | 1.000 |")
    print(f"| {args.checkpoint}, text as the base reads it | {ppl['llm_path']:.3f} | {ratio['llm_path']:.3f} |")
    print(f"| {args.checkpoint}, text as a T1T2 answer | {ppl['t1t2_answer']:.3f} | {ratio['t1t2_answer']:.3f} |")
    return result


def run_spoken_qa(args) -> dict:
    tasks = [Task(t) for t in dict.fromkeys(args.tasks)]
    if Task.A1A2 in tasks and not args.whisper:
        raise EvalError("A1A2 answers are spoken: pass --whisper (a model to transcribe them), or --tasks A1T2")
    sets = [spoken_qa.read_set(source, args.split) for source in args.data]  # every set opens before any model loads
    bundle, tokenizer = _load_model(args)
    model = bundle.model
    encoder = _load_encoder(args, bundle)
    codec = judge = None
    if Task.A1A2 in tasks:
        codec = _load_codec(args, bundle)
        judge = _load_whisper(args)
    rule = "normalised answer contained in the normalised response"
    out = {"command": "spoken-qa", "checkpoint": str(args.checkpoint), "whisper": args.whisper,
           "tasks": [t.value for t in tasks], "rule": rule, "sets": {}}
    for name, source, items, total in sets:
        result = spoken_qa.evaluate_set(
            model, encoder, tokenizer, items, codec=codec, judge=judge, tasks=tasks, limit=args.max_items,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, total=total, desc=name,
        )  # fmt: skip
        out["sets"][name] = {"source": source, **result}
        write_json(args.out, out)  # after every set: a long evaluation keeps what it finished
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}%" for k, v in result["accuracy"].items()) + f" of {result['n']}",
              file=sys.stderr)  # fmt: skip
    out["table"] = spoken_qa.table({str(args.checkpoint): out["sets"]})
    write_json(args.out, out)
    print(out["table"])
    print(f"per-question results: {args.out}", file=sys.stderr)
    return out


def run_voicebench(args) -> dict:
    judged = [s for s in args.subsets if s not in voicebench.RULE_SCORED]
    key = voicebench.judge_key(args.judge_key_env) if args.judge_url and judged else None
    if args.judge_url and not judged:
        raise EvalError(f"--judge-url judges {', '.join(set(voicebench.EVALUATORS) - set(voicebench.RULE_SCORED))}; "
                        "none of them is in --subsets")  # fmt: skip
    if args.splits and len(args.subsets) > 1:
        raise EvalError("--splits names the splits of one subset: pass one --subsets with it")
    plan = {s: voicebench.subset_splits(args.data, s, args.splits) for s in args.subsets}
    bundle, tokenizer = _load_model(args)
    model = bundle.model
    encoder = _load_encoder(args, bundle)
    name = args.name or args.checkpoint.resolve().name
    out = {"command": "voicebench", "checkpoint": str(args.checkpoint), "data": str(args.data), "task": "A1T2",
           "subsets": {}}
    for subset, splits in plan.items():
        kind, answered = voicebench.EVALUATORS[subset], {}
        for split, files in splits.items():
            rows = voicebench.read_rows(args.data, subset, split, files)
            answered[split] = voicebench.answer_rows(
                model, encoder, tokenizer, rows, args.max_items, args.batch_size, args.max_new_tokens,
                total=voicebench.split_size(files), desc=f"{subset}/{split}",
            )  # fmt: skip
        rows = [r for split_rows in answered.values() for r in split_rows]
        paths = {split: args.out_dir / voicebench.jsonl_name(name, subset, split) for split in answered}
        for split, path in paths.items():  # the answers as VoiceBench's main.py writes them, before any scoring
            voicebench.write_jsonl(path, answered[split])
        result = {"evaluator": kind, "n": len(rows), "files": [str(p) for p in paths.values()]}
        if kind not in ("open", "qa"):
            result["scores"] = voicebench.score(subset, rows)  # also marks each row (choice, refused, follow_*)
        elif key is not None:
            result["scores"] = voicebench.judge(rows, kind, args.judge_url, key, args.judge_model, f"judge {subset}")
            result["judge"] = {"url": args.judge_url, "model": args.judge_model}
        else:
            result["scores"] = {}
            result["note"] = "not judged: run VoiceBench's api_judge.py on the files, or pass --judge-url"
        if "judge" in result:
            for split, path in paths.items():  # the judge's replies, as VoiceBench's api_judge.py names its output
                voicebench.write_jsonl(path.with_name("result-" + path.name), answered[split])
        out["subsets"][subset] = result
        write_json(args.out_dir / "voicebench.json", out)
        shown = ", ".join(f"{k} {v}" for k, v in result["scores"].items()) or result.get("note", "")
        print(f"{subset}: {shown} ({result['n']} rows)", file=sys.stderr)
    out["table"] = voicebench.table({str(args.checkpoint): out["subsets"]})
    write_json(args.out_dir / "voicebench.json", out)
    print(out["table"])
    print(f"answers and scores: {args.out_dir}", file=sys.stderr)
    return out


def run_speech(args) -> dict:
    if args.data:
        _, _, items, _ = spoken_qa.read_set(args.data, args.split)
        questions = list(islice(items, args.max_items))
    else:
        questions = evaluate.read_questions(args.questions)[: args.max_items]
    task = Task(args.task or spoken_answer(all(q.audio for q in questions)))
    mos = speech_quality.MosPredictor(args.mos, args.device) if args.mos else None
    bundle, tokenizer = _load_model(args)
    model = bundle.model
    encoder = _load_encoder(args, bundle) if task.audio_in else None
    codec = _load_codec(args, bundle)
    result = speech_quality.measure(
        model, encoder, tokenizer, codec, questions, task=task, mos=mos, warmup=args.warmup, chunk=args.chunk,
        context=args.context, max_new_tokens=args.max_new_tokens, save_dir=args.save_audio, desc="answers",
    )  # fmt: skip
    result = {"command": "speech", "checkpoint": str(args.checkpoint), "mos": str(args.mos) if args.mos else None,
              "device": str(args.device), **result}  # fmt: skip
    result["table"] = speech_quality.table({str(args.checkpoint): result})
    write_json(args.out, result)
    print(result["table"])
    print(f"per-answer results: {args.out}", file=sys.stderr)
    return result


def run_report(args) -> dict:
    report = eval_report.build(args.run_dir)
    out_dir = args.out_dir or args.run_dir
    write_json(out_dir / "eval_report.json", report)
    write_text(out_dir / "eval_report.md", report["markdown"])
    panels = eval_report.plot(report, out_dir / "eval_report.png")
    print(report["markdown"])
    made = ["eval_report.md", "eval_report.json"] + (["eval_report.png"] if panels else [])
    print(f"wrote {', '.join(str(out_dir / m) for m in made)} from {len(report['files'])} results", file=sys.stderr)
    return report


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
    _language_arg(p)


def run_dialogue(args) -> dict:
    metric = evaluate.scoring(args.language).metric  # an unknown language fails before any model loads
    # the last turns with their question spoken (read as A1T2) and written (T1T2); the reference is the text answer
    src = sources.conversations(args.conversations, tasks=["A1T2", "T1T2"], turns="last")
    last = list(src)
    spoken = [s for s in last if s.task is Task.A1T2]
    written = [s for s in last if s.task is Task.T1T2]
    task = Task(args.task or spoken_answer(bool(spoken)))
    pool, kind = (spoken, "spoken") if task.audio_in else (written, "written")
    if not pool:
        raise EvalError(f"{args.conversations}: no conversation's last turn has a {kind} question for {task.value}")
    if src.skips.n_skipped():
        print(f"omni-eval dialogue: note: {src.skips.summary()}", file=sys.stderr)
    if without := len({s.row for s in last}) - len(pool):
        print(f"omni-eval dialogue: note: {without} conversations end with no {kind} question; they are not asked",
              file=sys.stderr)  # fmt: skip
    samples = pool[: args.max_items]
    judge = _load_whisper(args) if task.audio_out and args.whisper else None  # first: the most often missing
    if task.audio_out and not args.whisper:
        print("omni-eval dialogue: note: without --whisper only the text answers are scored", file=sys.stderr)
    bundle, tokenizer = _load_model(args)
    model = bundle.model
    encoder = _load_encoder(args, bundle) if task.audio_in else None
    codec = None
    if judge is not None:
        codec = _load_codec(args, bundle)
    result = evaluate.dialogue(
        model, encoder, tokenizer, samples, task, history=not args.no_history, codec=codec, judge=judge,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, desc="answers", language=args.language,
    )  # fmt: skip
    result = {"checkpoint": str(args.checkpoint), "conversations": str(args.conversations), **result}
    write_json(args.out, result)
    spoken, name = result[f"spoken_{metric}"], metric.upper()
    spoken = "-" if spoken is None else f"{spoken:.2f}"
    print(f"| model | task | history | conversations | right | text {name} | spoken {name} |\n"
          "|---|---|---|---|---|---|---|\n"
          f"| {args.checkpoint} | {task.value} | {'yes' if result['history'] else 'no'} | {result['n']} | "
          f"{result['right']} ({result['accuracy']:.1f}%) | {result[metric]:.2f} | {spoken} |")  # fmt: skip
    print(f"per-conversation results: {args.out}", file=sys.stderr)
    return result


COMMANDS = {
    "asr": run_asr, "consistency": run_consistency, "retention": run_retention, "spoken-qa": run_spoken_qa,
    "voicebench": run_voicebench, "speech": run_speech, "report": run_report, "plot": run_plot,
    "dialogue": run_dialogue,
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if "language" in args and args.language is None:
            args.language = (audio_sources(args.checkpoint) or {}).get("language", "en")
            if args.language != "en":  # not the default a user may expect: say where it came from
                print(f"omni-eval {args.command}: scoring in {args.language!r}, the language the checkpoint was "
                      "trained in (--language to change)", file=sys.stderr)  # fmt: skip
        COMMANDS[args.command](args)
    except (EvalError, OSError, ValueError) as e:  # FileNotFoundError, AudioError, bad rows: one line
        print(f"omni-eval {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
