"""omni-serve latency: time to the first audio chunk and real-time factor, streamed vs whole answers.

Starts the real server in this process on a loopback port (HTTP, NDJSON, its worker thread) and asks
each question both ways, alternating (streamed, whole, streamed, whole, ...):

- streamed (``/api/stream``): time from sending the request to the first audio chunk received
  (what the listener waits before speech starts), and to the end of the answer;
- whole (``/api/answer``): time until the whole answer has arrived, which a client without
  streaming waits before it can play anything.

Each time is given twice: wall time, which is what a listener waits, and this process's CPU time
(server, worker and client are all in it), which other jobs on a shared machine do not inflate; on
an idle machine with one torch thread the two agree. The real-time factor is the time a streamed
answer took over the seconds of speech it made (below 1, speech is made faster than it plays).
The last line is the ratio first audio (streamed) / whole answer (not streamed), in CPU time.

    python benchmarks/serve_latency.py --checkpoint RUN/finetune/model [--reps 5]
    python benchmarks/serve_latency.py --mini-omni   # random weights of Mini-Omni's shape
    python benchmarks/serve_latency.py --tiny        # the demo's base LLM with fresh adapters and heads

``--mini-omni`` times Mini-Omni's shape, which no download can give here: Qwen2-0.5B's litgpt
config (24 layers, 896 wide) with its `lm_head` audio heads, whisper-small's encoder and SNAC
24 kHz's codec, all randomly initialised, and the demo's tokenizer. Speed does not depend on the
weights, but the length of an answer does: random heads never end one, so every answer runs to
--max-new-tokens, and its speech is that many steps less the 7 of the delay.
"""

from __future__ import annotations

import argparse
import json
import math
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
from litgpt.config import Config
from litgpt.tokenizer import Tokenizer
from whisper.model import ModelDimensions
from whisper_encoder import TEXT_SIDE, WHISPER_SMALL

from omni_train.audio import SnacCodec, WhisperEncoder
from omni_train.checkpoints import load_base, save_audio_models, save_omni
from omni_train.model import OmniConfig, OmniGPT
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


# hubertsiuzdak/snac_24khz's config.json (Mini-Omni's codec); data_prep/make_demo_data.py shrinks the same
SNAC_24KHZ = dict(
    sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], latent_dim=None, decoder_dim=1024,
    decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8, vq_strides=[4, 2, 1],
    noise=True, depthwise=True,
)  # fmt: skip


def mini_omni_talker(max_new_tokens: int) -> Talker:
    """Mini-Omni's shape with random weights (see the module docstring)."""
    torch.manual_seed(0)
    encoder = WhisperEncoder.from_dims(ModelDimensions(**WHISPER_SMALL, **TEXT_SIDE))
    config = OmniConfig.from_base(Config.from_name("Qwen2.5-0.5B"), whisper_adapter_dim=encoder.width)
    model = OmniGPT(config)
    model.max_seq_length = 2048  # Qwen2.5's 32k block would make litgpt's rope and mask caches that long
    return Talker(model, Tokenizer(DEMO / "tokenizer"), encoder, SnacCodec.from_config(SNAC_24KHZ),
                  name="Mini-Omni's shape, random weights", max_new_tokens=max_new_tokens)  # fmt: skip


def serve(talker: Talker) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(talker), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def timed(request, *args) -> tuple[float, float, float | None, float | None, dict]:
    """Run ``request(*args)``, a generator that yields once at the first audio chunk and returns the answer.

    Returns wall and CPU seconds to the end, to the first audio chunk (None: no speech), and the event.
    """
    wall, cpu, first_wall, first_cpu = time.perf_counter(), time.process_time(), None, None
    events = request(*args)
    while True:
        try:
            next(events)
        except StopIteration as stop:
            done = stop.value
            break
        first_wall, first_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return time.perf_counter() - wall, time.process_time() - cpu, first_wall, first_cpu, done


def medians(results: list[tuple]) -> list[float]:
    """Each of `timed`'s four times, median over the runs (NaN where there is none: no first chunk)."""
    return [statistics.median(r[i] for r in results) if results[0][i] is not None else math.nan for i in range(4)]


def streamed(client: httpx.Client, url: str, question: dict):
    with client.stream("POST", url + "/api/stream", **question) as response:
        response.raise_for_status()
        first = True
        for line in response.iter_lines():
            event = json.loads(line)
            if event["event"] == "audio" and first:
                first = False
                yield
            elif event["event"] == "error":
                sys.exit(f"serve_latency: the server failed: {event['message']}")
            elif event["event"] == "done":
                done = event
    return done


def whole(client: httpx.Client, url: str, question: dict):
    response = client.post(url + "/api/answer", **question)
    response.raise_for_status()
    return response.json()
    yield  # a generator, as `timed` takes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="a trained model directory (omni-train's <stage>/model)")
    model.add_argument("--mini-omni", action="store_true", help="random weights of Mini-Omni's shape")
    model.add_argument("--tiny", action="store_true", help="the demo's base LLM with untrained adapters (smoke test)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    if args.tiny:
        args.reps, args.max_new_tokens = 1, min(args.max_new_tokens, 48)

    if args.mini_omni:
        talker = mini_omni_talker(args.max_new_tokens)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = tiny_checkpoint(Path(tmp)) if args.tiny else args.checkpoint
            talker = Talker.from_checkpoint(checkpoint, max_new_tokens=args.max_new_tokens)
            talker.name = "--tiny" if args.tiny else talker.name
    params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (talker.model, talker.encoder, talker.codec)]
    print(f"{talker.name}: LLM {params[0]:.1f} M, Whisper {params[1]:.1f} M, SNAC {params[2]:.1f} M parameters; "
          f"CPU, {torch.get_num_threads()} torch threads")  # fmt: skip
    server, thread, url = serve(talker)
    questions = {
        "spoken question (A1A2)": dict(files={"audio": (SPOKEN.name, SPOKEN.read_bytes(), "audio/flac")}),
        "typed question (T1A2)": dict(data={"text": TYPED}),
    }
    firsts, wholes = [], []
    try:
        with httpx.Client(timeout=3600) as client:
            for name, question in questions.items():
                runs = {"streamed": [], "whole": []}
                for rep in range(args.reps + 1):  # the first round warms up
                    for way, request in (("streamed", streamed), ("whole", whole)):
                        result = timed(request, client, url, question)
                        if rep:
                            runs[way].append(result)
                seconds = runs["streamed"][0][4]["stats"]["seconds"]
                if not seconds:
                    sys.exit(f"serve_latency: the model answered the {name} without speech; nothing to time")
                median = {way: medians(results) for way, results in runs.items()}
                print(f"{name}: {seconds:.2f} s of speech; median of {args.reps}, wall s / CPU s")
                print(f"  first audio, streamed        {median['streamed'][2]:8.3f} / {median['streamed'][3]:8.3f}")
                print(f"  whole answer, streamed       {median['streamed'][0]:8.3f} / {median['streamed'][1]:8.3f}")
                print(f"  whole answer, not streamed   {median['whole'][0]:8.3f} / {median['whole'][1]:8.3f}")
                print(f"  real-time factor, streamed   {median['streamed'][0] / seconds:8.3f} / "
                      f"{median['streamed'][1] / seconds:8.3f}")  # fmt: skip
                firsts.append(median["streamed"][3])
                wholes.append(median["whole"][1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    ratio = statistics.mean(firsts) / statistics.mean(wholes)
    print(f"ratio first audio (streamed) / whole answer (not streamed), CPU time {ratio:.3f}")


if __name__ == "__main__":
    main()
