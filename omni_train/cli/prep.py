"""omni-prep: prepare speech data for omni-train (the logic lives in `omni_train.prep`).

    omni-prep snac-encode INPUT OUT_DIR --snac DIR      # audio -> parquet shards with answer_snac
    omni-prep voice MANIFEST OUT_DIR --snac DIR         # question, answer, answer_audio -> VoiceAssistant rows
    omni-prep snac-decode PARQUET_OR_STRING OUT_DIR --snac DIR [--limit N]   # answer_snac -> wav
    omni-prep convert {librispeech,open-orca,moss} INPUT OUT_DIR            # -> parquet our sources read
    omni-prep convert ljspeech /data/LJSpeech-1.1 OUT_DIR     # or wav-txt, common-voice (a .tsv), mls, libritts, vctk
    omni-prep snac-encode /data/cv-de/train.tsv OUT_DIR --snac DIR --layout common-voice
    omni-prep stats PATH [--tokenizer DIR]              # rows, hours, tokens, SNAC frames, histogram

Writers make ``part-00000.parquet, ...`` atomically; rerunning one skips the shards already written.
See data_prep/README.md for the commands for each data set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni_train import prep
from omni_train.data import sources


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omni-prep", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("snac-encode", help="encode audio into SNAC codes (answer_snac column), sharded and resumable")
    p.add_argument("input", help="LibriSpeech-layout folder, JSONL manifest, or parquet file/folder with audio")
    p.add_argument("out_dir", type=Path, help="folder for part-NNNNN.parquet shards (id, text, answer_snac)")
    p.add_argument("--snac", required=True, type=Path, help="SNAC codec folder (config.json + pytorch_model.bin)")
    p.add_argument("--audio-column", default="audio", help="audio column/key of a table input (default: audio)")
    p.add_argument("--text-column", default="text",
                   help="text column/key kept beside the codes when the input has it (default: text)")
    p.add_argument("--id-column", default=None, help="id column/key (default: utterance id, or FILE:ROW for tables)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="clips a forward pass (length-sorted); 1 = codes exactly as one clip at a time")
    p.add_argument("--shard-size", type=int, default=1000, help="input rows a shard (default 1000)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--workers", type=int, default=4, help="audio decoding threads (default 4)")
    p.add_argument("--layout", choices=list(sources.LAYOUTS),
                   help="INPUT is a corpus in this layout (Common Voice: its .tsv) instead of a LibriSpeech folder or "
                        "table; the shards' id is the clip id its `corpus` source looks codes up by")  # fmt: skip

    p = sub.add_parser("voice", help="questions, answers and the answers spoken in your voice -> VoiceAssistant rows")
    p.add_argument("manifest", help="JSONL or parquet: question, answer, answer_audio (and optional question_audio)")
    p.add_argument("out_dir", type=Path, help="folder for part-NNNNN.parquet shards (VoiceAssistant-400K's columns)")
    p.add_argument("--snac", required=True, type=Path, help="SNAC codec folder (config.json + pytorch_model.bin)")
    p.add_argument("--question-column", default="question", help="question text (default: question)")
    p.add_argument("--answer-column", default="answer", help="answer text (default: answer)")
    p.add_argument("--answer-audio-column", default="answer_audio",
                   help="the answer spoken in the target voice: path (relative to the manifest), bytes or HF Audio")
    p.add_argument("--question-audio-column", default="question_audio",
                   help="optional spoken question; rows with it also give A1A2 (default: question_audio)")
    p.add_argument("--split-name", default="voice", help="split_name of the rows (default: voice)")
    p.add_argument("--batch-size", type=int, default=16, help="clips a forward pass (length-sorted)")
    p.add_argument("--shard-size", type=int, default=1000, help="input rows a shard (default 1000)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--workers", type=int, default=4, help="audio decoding threads (default 4)")

    p = sub.add_parser("snac-decode", help="decode answer_snac values to wav files")
    p.add_argument("source", help="parquet/JSONL file or folder with an answer_snac column, or an answer_snac string")
    p.add_argument("out_dir", type=Path, help="folder for the .wav files")
    p.add_argument("--snac", required=True, type=Path, help="SNAC codec folder")
    p.add_argument("--limit", type=int, default=None, help="decode at most this many rows")
    p.add_argument("--column", default="answer_snac", help="column holding the codes (default: answer_snac)")
    p.add_argument("--id-column", default=None, help="column naming the files (default: id, or split_name-index-round)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")

    p = sub.add_parser("convert", help="convert a data set into the parquet form omni_train.data.sources reads")
    p.add_argument("kind", choices=("librispeech", "open-orca", "moss", *sources.LAYOUTS))
    p.add_argument("input", help="LibriSpeech-layout folder; Open-Orca parquet/JSONL; Moss-style manifest; a corpus "
                                 "folder (Common Voice: its .tsv)")  # fmt: skip
    p.add_argument("out_dir", type=Path, help="folder for part-NNNNN.parquet shards")
    p.add_argument("--shard-size", type=int, default=None, help="rows a shard (default: 1000; open-orca 100000)")
    p.add_argument("--audio-column", default="question_audio", help="moss: audio column/key (default: question_audio)")
    p.add_argument("--question-column", default="question", help="moss: question text column (default: question)")
    p.add_argument("--answer-column", default="answer", help="moss: answer text column (default: answer)")

    p = sub.add_parser("stats", help="rows, hours of audio, text tokens, SNAC frames and a length histogram")
    p.add_argument("path", help="parquet file or folder of shards, JSONL manifest, or LibriSpeech-layout folder")
    p.add_argument("--tokenizer", type=Path, default=None, help="litgpt tokenizer folder (default: whitespace words)")
    p.add_argument("--bins", type=int, default=10, help="histogram bins (default 10)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as e:
        sys.exit(f"omni-prep {args.command}: error: {e}")


def run(args: argparse.Namespace) -> None:
    if args.command == "snac-encode":
        report = prep.snac_encode(
            args.input, args.out_dir, args.snac, audio_column=args.audio_column, text_column=args.text_column,
            id_column=args.id_column, batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
            workers=args.workers, layout=args.layout,
        )
        print(f"{report}\nwrote to {args.out_dir}")
    elif args.command == "voice":
        report = prep.voice_rows(
            args.manifest, args.out_dir, args.snac, question_column=args.question_column,
            answer_column=args.answer_column, answer_audio_column=args.answer_audio_column,
            question_audio_column=args.question_audio_column, split_name=args.split_name,
            batch_size=args.batch_size, shard_size=args.shard_size, device=args.device, workers=args.workers,
        )  # fmt: skip
        print(f"{report}\nwrote to {args.out_dir}")
    elif args.command == "snac-decode":
        paths = prep.snac_decode(
            args.source, args.out_dir, args.snac, column=args.column, id_column=args.id_column, limit=args.limit,
            device=args.device,
        )
        print(f"wrote {len(paths)} wav files to {args.out_dir}")
    elif args.command == "convert":
        size = {"shard_size": args.shard_size} if args.shard_size else {}
        if args.kind == "librispeech":
            report = prep.convert_librispeech(args.input, args.out_dir, **size)
        elif args.kind in sources.LAYOUTS:
            report = prep.convert_corpus(args.kind, args.input, args.out_dir, **size)
        elif args.kind == "open-orca":
            report = prep.convert_open_orca(args.input, args.out_dir, **size)
        else:
            report = prep.convert_moss(
                args.input, args.out_dir, **size, audio_column=args.audio_column,
                question_column=args.question_column, answer_column=args.answer_column,
            )
        print(f"{report}\nwrote to {args.out_dir}")
    else:
        print(prep.format_stats(prep.stats(args.path, args.tokenizer), bins=args.bins))


if __name__ == "__main__":
    main()
