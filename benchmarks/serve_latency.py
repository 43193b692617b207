"""omni-serve latency: time to the first audio chunk and real-time factor, streamed vs whole answers.

Starts the real server in this process on a loopback port (HTTP, NDJSON, its worker thread) and asks
each question both ways, alternating (streamed, whole, streamed, whole, ...):

- streamed (``/api/stream``): wall time from sending the request to the first audio chunk received
  (what the listener waits before speech starts), and to the end of the answer;
- whole (``/api/answer``): wall time until the whole answer has arrived, which a client without
  streaming waits before it can play anything.

The real-time factor is the server's generation time over the seconds of speech it made (from the
done event; below 1 the speech is made faster than it plays). Latency is wall time, not CPU time as
in the other benchmarks: the listener waits in wall time. Run it on an idle machine.
The last line is the ratio first audio (streamed) / whole answer (not streamed).

    python benchmarks/serve_latency.py --checkpoint RUN/finetune/model [--reps 5]
    python benchmarks/serve_latency.py --tiny        # the demo's base LLM with fresh adapters and heads
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from omni_train.audio import WhisperEncoder
from omni_train.checkpoints import load_base, save_audio_models, save_omni
from omni_train.serve import Talker, create_app

DEMO = Path(__file__).resolve().parents[1] / "omni_train" / "demo_data"
SPOKEN = DEMO / "asr" / "heldout" / "101" / "1019" / "101-1019-0002.flac"  # "what is nine minus six"
TYPED = "what is two plus three"


def tiny_checkpoint(directory: Path) -> Path:
    """The demo's pretrained tiny base LLM with fresh (random) adapters and audio heads, its Whisper and SNAC."""
    whisper = WhisperEncoder.from_pretrained(DEMO / "whisper.pt")
    model, _ = load_base(DEMO / "llm", whisper_adapter_dim=whisper.width)
    out = save_omni(model, directory / "model", DEMO / "llm")
    save_audio_models(out, str(DEMO / "whisper.pt"), str(DEMO / "snac"), pad_to_30s=False)
    return out


def serve(talker: Talker) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(talker), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def streamed(client: httpx.Client, url: str, question: dict) -> dict:
    start, first = time.perf_counter(), None
    with client.stream("POST", url + "/api/stream", **question) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            event = json.loads(line)
            if event["event"] == "audio" and first is None:
                first = time.perf_counter() - start
            elif event["event"] == "error":
                sys.exit(f"serve_latency: the server failed: {event['message']}")
            elif event["event"] == "done":
                done = event
    return dict(
        first=first, total=time.perf_counter() - start, rtf=done["stats"]["rtf"], speech=done["stats"]["seconds"]
    )


def whole(client: httpx.Client, url: str, question: dict) -> float:
    start = time.perf_counter()
    client.post(url + "/api/answer", **question).raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained model directory (omni-train's <stage>/model)")
    parser.add_argument("--tiny", action="store_true", help="no checkpoint: the demo's base LLM, untrained adapters")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    if (args.checkpoint is None) == (not args.tiny):
        parser.error("give --checkpoint DIR or --tiny")
    if args.tiny:
        args.reps, args.max_new_tokens = 1, min(args.max_new_tokens, 48)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_checkpoint(Path(tmp)) if args.tiny else args.checkpoint
        talker = Talker.from_checkpoint(checkpoint, max_new_tokens=args.max_new_tokens)
    params = sum(p.numel() for p in talker.model.parameters())
    name = "--tiny" if args.tiny else checkpoint
    print(f"checkpoint {name}: {params / 1e6:.1f} M parameters, CPU, {torch.get_num_threads()} torch threads")
    server, thread, url = serve(talker)
    questions = {
        "spoken question (A1A2)": dict(files={"audio": (SPOKEN.name, SPOKEN.read_bytes(), "audio/flac")}),
        "typed question (T1A2)": dict(data={"text": TYPED}),
    }
    firsts, wholes = [], []
    try:
        with httpx.Client(timeout=600) as client:
            for name, question in questions.items():
                runs, totals = [], []
                for _ in range(args.reps + 1):  # the first round warms up
                    runs.append(streamed(client, url, question))
                    totals.append(whole(client, url, question))
                runs, totals = runs[1:], totals[1:]
                first = statistics.median(r["first"] for r in runs)
                total = statistics.median(r["total"] for r in runs)
                rtf = statistics.median(r["rtf"] for r in runs)
                print(f"{name}: {runs[0]['speech']:.2f} s of speech; first audio after {first:.3f} s streamed, "
                      f"whole answer after {total:.3f} s streamed / {statistics.median(totals):.3f} s not streamed; "
                      f"real-time factor {rtf:.3f}")  # fmt: skip
                firsts.append(first)
                wholes.append(statistics.median(totals))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    ratio = statistics.mean(firsts) / statistics.mean(wholes)
    print(f"ratio first audio (streamed) / whole answer (not streamed) {ratio:.3f}")


if __name__ == "__main__":
    main()
