"""omni-serve: one loaded checkpoint answering spoken or written questions over HTTP, streamed as it talks.

The API (request bodies are multipart forms, so a browser's ``FormData`` and ``curl -F`` both work):

    GET  /             the page (``serve_page/index.html``): record or type, hear the answer as it streams
    GET  /api/info     the checkpoint, the tasks this server can run (and the task table), the limits, the defaults
    POST /api/stream   the answer while it is generated: NDJSON, one event a line (below)
    POST /api/answer   the whole answer as one JSON object

Form fields: ``audio`` (wav, flac, ogg, mp3, or webm/opus as a browser's recorder writes it) or ``text``; ``task`` (default
A1A2 for audio, T1A2 for text); ``temperature`` (0: greedy), ``top_k``, ``top_p``, ``max_new_tokens``,
``seed``; ``history``: a conversation's earlier turns, a JSON list of ``{"question": text, "answer":
text}`` oldest first (``[]`` for its first question), which the model answers from (DESIGN.md,
"Conversations"). The server keeps no state between requests: the client sends the turns each time.
A browser's recorder writes webm/opus, which `load_audio` rewraps for libsndfile (`omni_train.webm`);
the page still decodes its recording with WebAudio and uploads 16 kHz WAV, so that a browser
recording in any other container (Safari's mp4) works too. Anything undecodable gets 415 naming the
upload.

Stream events: ``{"event": "start", "task", "sample_rate", "waited_s"}``, then in decoding order
``{"event": "text", "text": <new characters>}`` and ``{"event": "audio", "pcm": <base64 float32
little-endian mono at sample_rate>}``, last ``{"event": "done", "text", "text_tokens",
"audio_tokens", "stats"}`` (or ``{"event": "error", "message"}`` if generation fails). The audio
chunks come from `StreamDecoder`, so they concatenate to the whole answer's decoding.
``/api/answer`` returns the done event's fields plus ``audio: {"sample_rate", "pcm"}`` (or null).
With ``history`` the done event also says what enters the history for this turn: ``question`` (the
text, or the model's own transcript of a spoken question, as `Conversation` keeps it) and
``dropped_turns`` (how many of the oldest turns no longer fit the model's context: drop them too).

Why one worker thread: litgpt's KV cache lives on the model, so two generations at once would
write into one cache. Every generation runs on that thread, one at a time in arrival order; the
others wait in a bounded queue (full: 503). A client that hangs up cancels its generation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from litgpt.tokenizer import Tokenizer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from omni_train.audio import (
    MAX_SECONDS,
    WHISPER_SAMPLE_RATE,
    AudioError,
    SnacCodec,
    WhisperEncoder,
    load_audio,
    whisper_frames,
)
from omni_train.checkpoints import ModelBundle
from omni_train.data.collator import build_prompt
from omni_train.data.samples import Encoded, Turn
from omni_train.generate import Conversation, answer, stream_events
from omni_train.model import OmniGPT
from omni_train.tasks import Task, spoken_answer

log = logging.getLogger("omni_train.serve")

PAGE = Path(__file__).parent / "serve_page" / "index.html"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # 30 s of 48 kHz stereo float32 WAV is 11.5 MB; this only stops abuse
FIELDS = ("audio", "text", "task", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "history")


class BadRequest(Exception):
    """A request this server will not run; the message is the one line the client gets back."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Question:
    """One validated request: what to answer and how to sample."""

    task: Task
    max_new_tokens: int
    audio: torch.Tensor | None = None  # (S,) 16 kHz
    text: str | None = None
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    history: list[Turn] | None = None  # None: not a conversation; [] its first question

    @property
    def knobs(self) -> dict:
        return dict(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, max_new_tokens=self.max_new_tokens
        )


# ---- the model side (runs on the worker thread) ---------------------------------------------------
@dataclass
class Talker:
    """A checkpoint with what it needs to hear (Whisper) and talk (SNAC); either may be missing.

    Args:
        max_audio_seconds: longest spoken question taken (at most Whisper's 30 s window).
        max_new_tokens: the most answer steps a request may ask for (also its default).
        chunk, context: `StreamDecoder`'s frames a chunk and frames of context either side.
    """

    model: OmniGPT
    tokenizer: Tokenizer
    encoder: WhisperEncoder | None = None
    codec: SnacCodec | None = None
    name: str = ""
    max_audio_seconds: float = MAX_SECONDS
    max_new_tokens: int = 512
    chunk: int = 4
    context: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.max_audio_seconds <= MAX_SECONDS:
            raise ValueError(f"max_audio_seconds must be in (0, {MAX_SECONDS}], got {self.max_audio_seconds}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.model.eval()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        whisper: str | None = None,
        snac: str | None = None,
        pad_to_30s: bool | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        **settings,
    ) -> Talker:
        """Load a checkpoint with the Whisper and SNAC named here, else those it was trained with."""
        bundle = ModelBundle.load(checkpoint, device=device, dtype=dtype)
        bundle.whisper, snac = whisper or bundle.whisper, snac or bundle.snac
        bundle.pad_to_30s = bundle.pad_to_30s if pad_to_30s is None else pad_to_30s
        encoder = bundle.load_encoder(device) if bundle.whisper else None
        codec = SnacCodec.from_pretrained(snac, device=device) if snac else None
        return cls(bundle.model, Tokenizer(checkpoint), encoder, codec, name=str(checkpoint), **settings)

    @property
    def tasks(self) -> list[Task]:
        """The tasks this server can run: speech in needs Whisper, speech out needs SNAC."""
        return [t for t in Task if (self.encoder or not t.audio_in) and (self.codec or not t.audio_out)]

    def info(self) -> dict:
        return dict(
            checkpoint=self.name,
            tasks=[t.value for t in self.tasks],
            # the task table, for the page to pick a task by what goes in and comes out, not by its name
            task_rules={t.value: dict(audio_in=t.audio_in, audio_out=t.audio_out, converses=t.rule.converses)
                        for t in Task},  # fmt: skip
            sample_rate=self.codec.sample_rate if self.codec else None,
            max_audio_seconds=self.max_audio_seconds,
            max_new_tokens=self.max_new_tokens,
            defaults=dict(
                temperature=Question.temperature,
                top_k=Question.top_k,
                top_p=Question.top_p,
                max_new_tokens=self.max_new_tokens,
                seed=Question.seed,
            ),
        )

    def stream(self, q: Question, submitted: float) -> Iterator[dict]:
        """The events of `q`'s answer (see the module docstring), as `stream_events` makes it.

        Args:
            submitted: `time.perf_counter()` when the request arrived (its wait is reported).
        """
        start = time.perf_counter()
        sample_rate = self.codec.sample_rate if self.codec else None
        yield {"event": "start", "task": q.task.value, "sample_rate": sample_rate, "waited_s": start - submitted}
        if q.seed is not None:
            torch.manual_seed(q.seed)
        events = stream_events(
            self.model, self.encoder, self.tokenizer, self.codec, audio=q.audio, text=q.text, task=q.task,
            history=q.history, chunk=self.chunk, context=self.context, **q.knobs,
        )  # fmt: skip
        text = IncrementalText(self.tokenizer)
        samples, first_audio = 0, None
        try:
            while True:
                try:
                    event = next(events)
                except StopIteration as stop:
                    result = stop.value
                    break
                if isinstance(event, int):
                    if new := text.add(event):
                        yield {"event": "text", "text": new}
                else:
                    first_audio = first_audio if first_audio is not None else time.perf_counter() - start
                    samples += event.numel()
                    yield {"event": "audio", "pcm": pcm_base64(event)}
        finally:  # closed early (the client hung up): decode_steps' own `finally` frees the KV cache now
            events.close()
        if rest := text.finish():
            yield {"event": "text", "text": rest}
        turn = self._turn(q, result)  # before the stats: transcribing a spoken question is part of the work
        stats = self._stats(start, samples, first_audio_s=first_audio, waited_s=start - submitted)
        yield {"event": "done", **_fields(q.task, result), **turn, "stats": stats}

    def whole(self, q: Question, submitted: float) -> Iterator[dict]:
        """`q`'s answer in one event: `answer`, then SNAC on all frames at once; arguments as `stream`."""
        start = time.perf_counter()
        if q.seed is not None:
            torch.manual_seed(q.seed)
        result = answer(
            self.model, self.encoder, self.tokenizer, audio=q.audio, text=q.text, task=q.task, history=q.history,
            **q.knobs,
        )  # fmt: skip
        audio, samples = None, 0
        if q.task.audio_out:
            wave = self.codec.decode(result.frames) if result.frames.size(0) else torch.zeros(0)
            audio, samples = dict(sample_rate=self.codec.sample_rate, pcm=pcm_base64(wave)), wave.numel()
        yield {
            "event": "done",
            **_fields(q.task, result),
            **self._turn(q, result),
            "audio": audio,
            "stats": self._stats(start, samples, waited_s=start - submitted),
        }

    def _turn(self, q: Question, result) -> dict:
        """In a conversation, what the client adds to its history: the question as text, and how many
        of its oldest turns the model left out to fit (they would be left out again)."""
        if q.history is None:
            return {}
        heard = q.text if q.text is not None else Conversation(self.model, self.encoder, self.tokenizer).heard(q.audio)
        return dict(question=heard, dropped_turns=result.dropped_turns)

    def _stats(self, start: float, samples: int, **extra) -> dict:
        elapsed = time.perf_counter() - start
        seconds = samples / self.codec.sample_rate if self.codec else 0.0
        rtf = elapsed / seconds if seconds else None  # generation seconds a second of speech: < 1 keeps up
        return dict(elapsed_s=elapsed, seconds=seconds, rtf=rtf, **extra)


def _fields(task: Task, result) -> dict:
    return dict(task=task.value, text=result.text, text_tokens=result.text_tokens, audio_tokens=result.audio_tokens)


class IncrementalText:
    """Text ids -> the characters each new id adds.

    One id can hold part of a UTF-8 character (byte-level BPE), so the whole prefix is decoded each
    time and characters are released only once they are complete.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._release(final=False)

    def finish(self) -> str:
        """What is left once no more ids will come (an unfinished character stays one: U+FFFD)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.tokenizer.decode(torch.tensor(self.ids, dtype=torch.long))
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.sent):
            return ""  # the done event carries the whole text anyway
        new, self.sent = text[len(self.sent) :], text
        return new


def pcm_base64(wave: torch.Tensor) -> str:
    """Audio ``(S,)`` as base64 float32 little-endian: exact, and a ``Float32Array`` in the browser."""
    return base64.b64encode(wave.detach().float().cpu().numpy().astype("<f4").tobytes()).decode("ascii")


# ---- one generation at a time ---------------------------------------------------------------------
_END = object()


@dataclass
class Job:
    """One request's generation: made on the worker thread, its events read on the event loop."""

    events: Callable[[], Iterator[dict]]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """On the worker thread: make the events, hand each to the loop, stop early if cancelled."""
        if self.cancelled.is_set():
            return self._send(_END)
        stream = None
        try:
            stream = self.events()
            for event in stream:
                if self.cancelled.is_set():
                    break
                self._send(event)
        except Exception as e:  # the response has started (200); the error becomes its last event
            log.exception("generation failed")
            self._send({"event": "error", "message": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            if stream is not None:
                stream.close()  # a generation cut short stops here, on this thread
            self._send(_END)

    def _send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop has closed: the server is shutting down
            self.cancelled.set()

    async def __aiter__(self):
        while (item := await self.out.get()) is not _END:
            yield item


class Worker:
    """The one thread that runs generations, in arrival order; at most `max_queue` wait."""

    def __init__(self, max_queue: int = 16) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self.thread = threading.Thread(target=self._run, name="omni-serve-model", daemon=True)
        self.thread.start()

    def submit(self, events: Callable[[], Iterator[dict]]) -> Job:
        job = Job(events, asyncio.get_running_loop())
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise BadRequest(f"busy: {self.max_queue} requests are already waiting; try again shortly", 503) from None
        return job

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            job.run()


# ---- reading a request ----------------------------------------------------------------------------
async def read_question(request: Request, talker: Talker) -> Question:
    """Validate a request's form into a `Question`; every problem is a `BadRequest` with one line."""
    kind, size = request.headers.get("content-type", ""), int(request.headers.get("content-length") or 0)
    is_form = kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded"))
    if not is_form and (kind or size):
        raise BadRequest(f"send a form (multipart/form-data), not {kind or 'a body without a content type'}; "
                         f"fields: {', '.join(FIELDS)}", 415)  # fmt: skip
    if size > MAX_UPLOAD_BYTES:
        raise BadRequest(f"request of {size} bytes; the limit is {MAX_UPLOAD_BYTES}", 413)
    form = await request.form(max_files=1, max_fields=len(FIELDS)) if is_form else {}
    unknown = sorted(set(form) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown form field {unknown[0]!r}; fields: {', '.join(FIELDS)}")
    repeated = sorted(k for k in set(form) if len(form.getlist(k)) > 1)
    if repeated:
        raise BadRequest(f"form field {repeated[0]!r} is given more than once")
    upload, text = form.get("audio"), form.get("text")
    if upload is not None and not isinstance(upload, UploadFile):
        raise BadRequest("field 'audio' must be a file upload (curl -F audio=@question.wav)")
    if isinstance(text, UploadFile):
        raise BadRequest("field 'text' must be text, not a file")
    if upload is None and text is None:
        raise BadRequest("no question: send an audio file (field 'audio') or text (field 'text')")
    if upload is not None and text is not None:
        raise BadRequest("send either audio or text, not both")
    if text is not None and not text.strip():
        raise BadRequest("the text question is empty")

    task_name = form.get("task") or spoken_answer(upload is not None).value
    try:
        task = Task(task_name)
    except ValueError:
        raise BadRequest(f"unknown task {task_name!r}; tasks: {', '.join(t.value for t in Task)}") from None
    if task.audio_in != (upload is not None):
        raise BadRequest(f"task {task.value} answers a {'spoken' if task.audio_in else 'written'} question, "
                         f"but the request sent {'audio' if upload is not None else 'text'}")  # fmt: skip
    if task not in talker.tasks:
        what, flag = (
            ("Whisper encoder", "--whisper") if task.audio_in and not talker.encoder else ("SNAC codec", "--snac")
        )
        raise BadRequest(f"task {task.value} needs a {what} (omni-serve {flag}), which this server has not loaded")

    history = _history(form.get("history"))
    if history is not None and not task.rule.converses:
        raise BadRequest(f"task {task.value} (a transcript) takes no conversation: drop the history field")

    q = Question(
        task,
        text=text,
        history=history,
        temperature=_number(form, "temperature", float, Question.temperature, lo=0.0),
        top_k=_number(form, "top_k", int, Question.top_k, lo=1),
        top_p=_number(form, "top_p", float, Question.top_p, lo=0.0, hi=1.0),
        max_new_tokens=_number(form, "max_new_tokens", int, talker.max_new_tokens, lo=1, hi=talker.max_new_tokens),
        seed=_number(form, "seed", int, Question.seed, lo=0),
    )
    if upload is not None:
        q.audio = await _read_audio(upload, talker.max_audio_seconds)
        prompt = build_prompt(
            Encoded(task, [], audio_frames=whisper_frames(q.audio.numel())), talker.model.config.vocab
        )
    else:
        ids = talker.tokenizer.encode(text, bos=False, eos=False).tolist()
        prompt = build_prompt(Encoded(task, [], question_ids=ids), talker.model.config.vocab)
    if prompt.size(1) >= talker.model.max_seq_length:
        raise BadRequest(f"the question takes {prompt.size(1)} of the model's {talker.model.max_seq_length} "
                         "positions, leaving none for an answer; ask a shorter one", 413)  # fmt: skip
    return q


def _history(raw) -> list[Turn] | None:
    if raw is None:
        return None
    if isinstance(raw, UploadFile):
        raise BadRequest("field 'history' must be text (JSON), not a file")
    want = 'a JSON list of {"question": text, "answer": text}, oldest first'
    try:
        turns = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadRequest(f"history is not JSON ({e.msg} at character {e.pos}); send {want}") from None
    if not isinstance(turns, list):
        raise BadRequest(f"history must be {want}, got {type(turns).__name__}")
    for k, turn in enumerate(turns, 1):
        if not (isinstance(turn, dict) and set(turn) == {"question", "answer"}
                and all(isinstance(v, str) for v in turn.values())):  # fmt: skip
            raise BadRequest(f"history turn {k} must be {{\"question\": text, \"answer\": text}}, got "
                             f"{json.dumps(turn)[:80]}")  # fmt: skip
    return [Turn(t["question"], t["answer"]) for t in turns]


def _number(form, key: str, kind: type, default, lo: float | None = None, hi: float | None = None):
    raw = form.get(key)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise BadRequest(f"{key} must be {bounds}, got {raw!r}")
    return value


async def _read_audio(upload: UploadFile, max_seconds: float) -> torch.Tensor:
    name = f"audio upload {upload.filename or '(no name)'!r} ({upload.content_type or 'no type'})"
    data = await upload.read()
    if not data:
        raise BadRequest(f"{name} is empty")
    try:
        wave = await run_in_threadpool(load_audio, data, WHISPER_SAMPLE_RATE)
    except AudioError as e:
        if isinstance(e.__cause__, (sf.SoundFileError, RuntimeError, OSError)):
            raise BadRequest(f"cannot decode {name}: not a format this server reads (wav, flac, ogg, mp3, webm)", 415) from e
        raise BadRequest(f"{name}: {e}", 415) from e
    seconds = wave.numel() / WHISPER_SAMPLE_RATE
    if seconds > max_seconds:
        raise BadRequest(f"{name} is {seconds:.1f} s long; this server takes questions up to {max_seconds:g} s", 413)
    return wave


# ---- the app ----------------------------------------------------------------------------------------
def create_app(talker: Talker, max_queue: int = 16) -> FastAPI:
    """The HTTP app over `talker`; its worker thread starts and stops with the app."""
    state = {}

    async def lifespan(app: FastAPI):
        state["worker"] = Worker(max_queue)
        yield
        state["worker"].stop()

    app = FastAPI(title="omni-serve", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(HTTPException)  # Starlette's own (404, 405, a malformed form): the same shape
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/api/info")
    async def info() -> dict:
        return talker.info()

    @app.post("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        submitted = time.perf_counter()
        q = await read_question(request, talker)
        job = state["worker"].submit(lambda: talker.stream(q, submitted))

        async def lines():
            try:
                async for event in job:
                    yield _json_line(event)
            finally:  # also when the client hangs up: the worker stops at its next event
                job.cancelled.set()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.post("/api/answer")
    async def whole(request: Request) -> JSONResponse:
        submitted = time.perf_counter()
        q = await read_question(request, talker)
        job = state["worker"].submit(lambda: talker.whole(q, submitted))
        result = None
        try:
            async for event in job:
                if event["event"] == "error":
                    return JSONResponse({"error": event["message"]}, status_code=500)
                if event["event"] == "done":
                    result = {k: v for k, v in event.items() if k != "event"}
        finally:
            job.cancelled.set()
        return JSONResponse(result)

    return app


def _json_line(event: dict) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"
