"""omni-serve: talk to a checkpoint: a streaming speech API and a page to use it from a browser.

    omni-serve --checkpoint RUN/finetune/model                 # then open http://127.0.0.1:8000/
    curl -F text="what is two plus three" http://127.0.0.1:8000/api/answer
    curl -N -F audio=@question.wav http://127.0.0.1:8000/api/stream     # NDJSON events as it talks

Whisper and SNAC come from --whisper/--snac, else from what the checkpoint was trained with (as in
omni-infer); without Whisper the server takes written questions only, without SNAC it answers in
text only. The API is described in omni_train/serve.py. It listens on 127.0.0.1 unless --host says
otherwise: it has no authentication, so expose it to a network only behind something that has.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import uvicorn

from omni_train.cli.infer import DTYPES
from omni_train.serve import Talker, create_app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omni-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint directory (ours or Mini-Omni's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--whisper", help="Whisper checkpoint file, name or Hugging Face folder (default: the checkpoint's)")
    parser.add_argument("--snac", help="SNAC directory or hub name (default: the checkpoint's)")
    parser.add_argument(
        "--pad-to-30s",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pad Whisper's input to 30 s as Mini-Omni does (default: as the checkpoint was trained)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: the checkpoint's")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=Talker.max_new_tokens,
        help="the most answer steps a request may ask for (and its default)",
    )
    parser.add_argument(
        "--max-audio-seconds", type=float, default=Talker.max_audio_seconds, help="longest spoken question taken"
    )
    parser.add_argument("--max-queue", type=int, default=16, help="requests that may wait while one is answered")
    parser.add_argument(
        "--chunk", type=int, default=Talker.chunk, help="SNAC frames a streamed audio chunk (85 ms each)"
    )
    parser.add_argument(
        "--context", type=int, default=Talker.context, help="SNAC frames decoded either side of a chunk"
    )
    args = parser.parse_args(argv)
    if args.max_queue < 1:
        parser.error(f"--max-queue must be >= 1, got {args.max_queue}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    try:
        talker = Talker.from_checkpoint(
            args.checkpoint, whisper=args.whisper, snac=args.snac, pad_to_30s=args.pad_to_30s, device=args.device,
            dtype=DTYPES.get(args.dtype), max_new_tokens=args.max_new_tokens, max_audio_seconds=args.max_audio_seconds,
            chunk=args.chunk, context=args.context,
        )  # fmt: skip
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as e:
        sys.exit(f"omni-serve: error: {e}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    if talker.encoder is None:
        logging.warning("no Whisper (--whisper): written questions only")
    if talker.codec is None:
        logging.warning("no SNAC (--snac): written answers only")
    logging.info(
        "tasks %s; open http://%s:%d/ in a browser", ", ".join(t.value for t in talker.tasks), args.host, args.port
    )
    uvicorn.run(create_app(talker, max_queue=args.max_queue), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
