"""omni-serve on a tiny random checkpoint, over real HTTP on a loopback port, and its page in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
import uvicorn
from tiny import WHISPER, tiny_omni, train_tokenizer, whisper_model

import omni_train.serve as serve
from omni_train.audio import SnacCodec, load_audio
from omni_train.checkpoints import save_omni
from omni_train.cli.serve import main
from omni_train.data.samples import Turn
from omni_train.generate import Conversation, answer, to_frames
from omni_train.model import OmniGPT
from omni_train.serve import BadRequest, Talker, Worker, create_app

DEMO_SNAC = Path(serve.__file__).parent / "demo_data" / "snac"
BROWSER_WEBM = Path(__file__).parent / "data" / "chromium_recorder_440hz.webm"
MAX_NEW_TOKENS = 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random checkpoint with a tiny Whisper and a SNAC of the demo's shape (24 kHz, frames of
    2048 samples) inside, random, its decoder noise off so that two decodings of the same frames agree."""
    root = tmp_path_factory.mktemp("serve")
    train_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    ckpt = save_omni(OmniGPT(tiny_omni()), root / "model", root / "tokenizer")
    torch.save(
        {"dims": asdict(WHISPER), "model_state_dict": whisper_model(WHISPER).state_dict()}, ckpt / "whisper.pt"
    )
    config = json.loads((DEMO_SNAC / "config.json").read_text())
    SnacCodec.from_config({**config, "noise": False}).save_pretrained(ckpt / "snac")
    return ckpt


def running(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def server(checkpoint):
    talker = Talker.from_checkpoint(checkpoint, max_new_tokens=MAX_NEW_TOKENS)
    uv, thread, url = running(create_app(talker, max_queue=8))
    yield SimpleNamespace(url=url, talker=talker)
    uv.should_exit = True
    thread.join(timeout=30)


def wav_bytes(seconds: float, rate: int = 16000, fmt: str = "WAV", seed: int = 0, **kw) -> bytes:
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * (220 + 60 * np.sin(3 * t)) * t) + 0.02 * g.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format=fmt, **kw)
    return buf.getvalue()


def ask(url: str, path: str = "/api/answer", audio: bytes | None = None, **fields) -> httpx.Response:
    files = {"audio": ("question.wav", audio, "audio/wav")} if audio is not None else None
    return httpx.post(url + path, data={k: str(v) for k, v in fields.items()}, files=files, timeout=120)


def stream(url: str, audio: bytes | None = None, **fields) -> list[dict]:
    response = ask(url, "/api/stream", audio, **fields)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def pcm(b64: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(b64), dtype="<f4").copy())


def summary(event: dict) -> tuple:
    return event["task"], event["text"], event["text_tokens"], event["audio_tokens"]


# ---- the API --------------------------------------------------------------------------------------
def test_info_lists_the_tasks_and_limits(server):
    info = httpx.get(server.url + "/api/info").json()
    assert info["tasks"] == ["A1T1", "T1A2", "A1T2", "A1A2", "T1T2"]
    # the page picks its task from the table by input and answer, not by parsing task names
    assert info["task_rules"]["A1T1"] == {"audio_in": True, "audio_out": False, "converses": False}
    assert info["task_rules"]["T1A2"] == {"audio_in": False, "audio_out": True, "converses": True}
    assert info["sample_rate"] == 24000 and info["max_new_tokens"] == MAX_NEW_TOKENS
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "api/stream" in page.text


@pytest.mark.parametrize(
    "question",
    [
        dict(text="what is two plus three"),  # T1A2
        dict(audio=1.3),  # A1A2
        dict(text="the model hears and talks", task="T1T2"),
        dict(audio=0.8, task="A1T1"),
        dict(text="question answer speech", temperature=0.9, top_k=50, top_p=0.9, seed=7),
    ],
    ids=["T1A2", "A1A2", "T1T2", "A1T1", "T1A2-sampled"],
)
def test_streamed_chunks_concatenate_to_the_whole_answer(server, question):
    audio = wav_bytes(question.pop("audio")) if "audio" in question else None
    events = stream(server.url, audio, **question)
    whole = ask(server.url, audio=audio, **question)
    assert whole.status_code == 200, whole.text
    whole = whole.json()

    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "error" not in kinds
    done = events[-1]
    assert summary(done) == summary(whole) and done["text_tokens"]
    assert "".join(e["text"] for e in events if e["event"] == "text").strip() == done["text"]
    # the same answer as the library gives without any server
    t = server.talker
    knobs = {k: question[k] for k in ("temperature", "top_k", "top_p") if k in question}
    if "seed" in question:
        torch.manual_seed(question["seed"])
    wave = load_audio(audio, 16000) if audio else None
    direct = answer(t.model, t.encoder, t.tokenizer, audio=wave, text=question.get("text"), task=question.get("task"),
                    max_new_tokens=MAX_NEW_TOKENS, **knobs)  # fmt: skip
    assert (direct.text, direct.text_tokens, direct.audio_tokens) == summary(whole)[1:]

    chunks = [pcm(e["pcm"]) for e in events if e["event"] == "audio"]
    if whole["audio"] is None:
        assert not chunks and done["stats"]["rtf"] is None
        return
    streamed, decoded = torch.cat(chunks), pcm(whole["audio"]["pcm"])
    frames = to_frames(done["audio_tokens"]).size(0)
    assert frames > 0 and decoded.numel() == frames * 2048 and len(chunks) == -(-frames // 4)
    torch.testing.assert_close(streamed, decoded, atol=1e-5, rtol=1e-4)
    stats = done["stats"]
    assert stats["seconds"] == pytest.approx(frames * 2048 / 24000)
    assert 0 < stats["first_audio_s"] <= stats["elapsed_s"] and stats["rtf"] == pytest.approx(
        stats["elapsed_s"] / stats["seconds"]
    )


@pytest.mark.parametrize(
    "fmt, kw",
    [("FLAC", {}), ("OGG", {"subtype": "VORBIS"}), ("MP3", {}), ("WAV", {"subtype": "FLOAT"}), ("WEBM", {})],
)
def test_audio_uploads_in_each_container_are_decoded(server, fmt, kw):
    # WEBM: what Chromium's MediaRecorder wrote (webm/opus); libsndfile cannot open it by itself
    data = BROWSER_WEBM.read_bytes() if fmt == "WEBM" else wav_bytes(1.0, rate=22050, fmt=fmt, **kw)
    got = ask(server.url, audio=data, task="A1T1", max_new_tokens=6)
    assert got.status_code == 200, got.text
    t = server.talker
    direct = answer(t.model, t.encoder, t.tokenizer, audio=load_audio(data, 16000), task="A1T1", max_new_tokens=6)
    assert got.json()["text_tokens"] == direct.text_tokens


LONG_TEXT = "what is two plus three " * 60


@pytest.mark.parametrize(
    "audio, fields, status, message",
    [
        (None, {}, 400, "no question: send an audio file (field 'audio') or text (field 'text')"),
        (wav_bytes(0.5), {"text": "hi"}, 400, "send either audio or text, not both"),
        (None, {"text": "   "}, 400, "the text question is empty"),
        (None, {"text": "hi", "task": "A9T9"}, 400, "unknown task 'A9T9'; tasks: A1T1, T1A2, A1T2, A1A2, T1T2"),
        (None, {"text": "hi", "task": "A1A2"}, 400, "task A1A2 answers a spoken question, but the request sent text"),
        (wav_bytes(0.5), {"task": "T1T2"}, 400, "task T1T2 answers a written question, but the request sent audio"),
        (b"", {}, 400, "audio upload 'question.wav' (audio/wav) is empty"),
        (b"this is not audio" * 50, {}, 415, "cannot decode audio upload 'question.wav' (audio/wav): not a format"),
        (wav_bytes(31.0), {}, 413, "is 31.0 s long; this server takes questions up to 30 s"),
        (None, {"text": LONG_TEXT}, 413, "positions, leaving none for an answer"),
        (None, {"text": "hi", "temperature": "-1"}, 400, "temperature must be >= 0.0, got '-1'"),
        (None, {"text": "hi", "temperature": "nan"}, 400, "temperature must be >= 0.0, got 'nan'"),
        (None, {"text": "hi", "temperature": "hot"}, 400, "temperature must be a number, got 'hot'"),
        (None, {"text": "hi", "top_p": "1.5"}, 400, "top_p must be in [0.0, 1.0], got '1.5'"),
        (None, {"text": "hi", "top_k": "0"}, 400, "top_k must be >= 1, got '0'"),
        (None, {"text": "hi", "top_k": "2.5"}, 400, "top_k must be an integer, got '2.5'"),
        (None, {"text": "hi", "max_new_tokens": "0"}, 400, f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}], got '0'"),
        (None, {"text": "hi", "max_new_tokens": "100000"}, 400, "max_new_tokens must be in [1, 40], got '100000'"),
        (None, {"text": "hi", "temprature": "0.5"}, 400, "unknown form field 'temprature'"),
        (None, {"text": "hi", "history": "[{'question': 'a'}]"}, 400, "history is not JSON (Expecting property name"),
        (None, {"text": "hi", "history": '{"question": "a"}'}, 400, 'history must be a JSON list of {"question"'),
        (None, {"text": "hi", "history": '[{"question": "a", "answer": "b"}, {"question": "c"}]'}, 400,
         'history turn 2 must be {"question": text, "answer": text}, got {"question": "c"}'),
        (wav_bytes(0.5), {"task": "A1T1", "history": "[]"}, 400, "task A1T1 (a transcript) takes no conversation"),
    ],
)
@pytest.mark.parametrize("path", ["/api/answer", "/api/stream"])
def test_bad_requests_get_one_clear_message(server, path, audio, fields, status, message):
    got = ask(server.url, path, audio, **fields)
    assert got.status_code == status and message in got.json()["error"], got.text


def test_more_bad_requests_and_the_server_keeps_serving(server):
    webm = b"\x1a\x45\xdf\xa3" + bytes(300)  # a browser recorder's container, but broken
    got = httpx.post(server.url + "/api/stream", files={"audio": ("rec.webm", webm, "audio/webm")})
    assert got.status_code == 415
    assert got.json()["error"] == (
        "audio upload 'rec.webm' (audio/webm): cannot decode audio <304 bytes>: WebM: not an EBML element at byte 4"
    )
    got = httpx.post(server.url + "/api/stream", files={"audio": ("rec.aac", b"\xff\xf1" * 200, "audio/aac")})
    assert (got.status_code, got.json()["error"]) == (
        415,
        "cannot decode audio upload 'rec.aac' (audio/aac): not a format this server reads (wav, flac, ogg, mp3, webm)",
    )
    got = httpx.post(server.url + "/api/answer", json={"text": "hi"})
    assert got.status_code == 415 and got.json()["error"].startswith(
        "send a form (multipart/form-data), not application/json"
    )
    got = httpx.post(server.url + "/api/answer", data={"audio": "question.wav"})
    assert (got.status_code, got.json()["error"]) == (
        400,
        "field 'audio' must be a file upload (curl -F audio=@question.wav)",
    )
    got = httpx.post(server.url + "/api/answer", files=[("text", (None, "a")), ("text", (None, "b"))])
    assert (got.status_code, got.json()["error"]) == (400, "form field 'text' is given more than once")
    got = httpx.get(server.url + "/api/stream")
    assert got.status_code == 405 and got.json() == {"error": "Method Not Allowed"}
    assert ask(server.url, text="still there", max_new_tokens=3).status_code == 200


def test_a_conversation_goes_on_from_the_turns_the_client_sends(server):
    """The server keeps no conversation: each question comes with the earlier turns, and the answer
    is the one the library gives with that history; the done event says what to add to it."""
    t = server.talker
    first = stream(server.url, text="what is two plus three", history="[]")[-1]
    assert (first["question"], first["dropped_turns"]) == ("what is two plus three", 0)
    history = [Turn("what is two plus three", first["text"])]

    audio = wav_bytes(1.3)
    sent = json.dumps([t._asdict() for t in history])
    streamed, whole = stream(server.url, audio, history=sent)[-1], ask(server.url, audio=audio, history=sent).json()
    wave = load_audio(audio, 16000)
    direct = answer(t.model, t.encoder, t.tokenizer, audio=wave, history=history, max_new_tokens=MAX_NEW_TOKENS)
    alone = answer(t.model, t.encoder, t.tokenizer, audio=wave, max_new_tokens=MAX_NEW_TOKENS)
    assert summary(streamed) == summary(whole) and summary(whole)[2:] == (direct.text_tokens, direct.audio_tokens)
    assert (direct.text_tokens, direct.audio_tokens) != (alone.text_tokens, alone.audio_tokens)  # the history counts
    heard = Conversation(t.model, t.encoder, t.tokenizer).heard(wave)  # a spoken question enters as its transcript
    assert streamed["question"] == whole["question"] == heard and whole["dropped_turns"] == 0

    # more turns than the context holds: the oldest are left out and the client is told how many
    long = [Turn("what is two plus three " * 8, "five " * 30)] * 6
    got = ask(server.url, text="and plus one", history=json.dumps([t._asdict() for t in long])).json()
    direct = answer(t.model, t.encoder, t.tokenizer, text="and plus one", history=long, max_new_tokens=MAX_NEW_TOKENS)
    assert got["dropped_turns"] == direct.dropped_turns > 0 and got["text_tokens"] == direct.text_tokens
    assert "question" not in ask(server.url, text="no history", max_new_tokens=3).json()  # not a conversation


def test_concurrent_requests_each_get_their_own_answer(server, monkeypatch):
    """Generations overlapping in time would share litgpt's one KV cache; the worker runs them one at a time."""
    questions = [
        dict(text="what is two plus three"),
        dict(text="the model hears and talks", task="T1T2"),
        dict(audio=wav_bytes(1.0, seed=1)),
        dict(text="question answer speech", temperature=1.0, seed=3),
        dict(audio=wav_bytes(0.6, seed=2), task="A1T2"),
        dict(text="two plus three", max_new_tokens=25),
    ]
    alone = [stream(server.url, **q) for q in questions]
    # the first generation waits until every request is queued: all of them are in flight at once,
    # however the threads happen to be scheduled
    queued, all_in = [], threading.Event()
    submit, run = serve.Worker.submit, serve.Job.run

    def counting_submit(self, events):
        job = submit(self, events)
        queued.append(job)
        if len(queued) == len(questions):
            all_in.set()
        return job

    def waiting_run(self):
        assert all_in.wait(120), f"only {len(queued)} of {len(questions)} requests arrived"
        return run(self)

    monkeypatch.setattr(serve.Worker, "submit", counting_submit)
    monkeypatch.setattr(serve.Job, "run", waiting_run)
    with ThreadPoolExecutor(len(questions)) as pool:
        runs = list(pool.map(lambda q: stream(server.url, **q), questions))
    assert len(queued) == len(questions)
    for a, b in zip(alone, runs, strict=True):
        assert summary(a[-1]) == summary(b[-1])
        assert [e.get("pcm") for e in a if e["event"] == "audio"] == [e.get("pcm") for e in b if e["event"] == "audio"]


def test_a_client_that_hangs_up_stops_its_generation(server, monkeypatch):
    produced, closed = [], threading.Event()
    # slowed down, so that the whole answer would take 2 s at least
    monkeypatch.setattr(serve, "stream_events", slowed(serve.stream_events, 0.05, produced, closed))
    with httpx.stream("POST", server.url + "/api/stream", data={"text": "what is two plus three"}) as response:
        first = json.loads(next(response.iter_lines()))
        assert first["event"] == "start"
    assert closed.wait(timeout=60)
    assert len(produced) < MAX_NEW_TOKENS  # it stopped early: a whole answer yields 40 ids and its chunks
    assert server.talker.model.mask_cache is None  # and freed its KV cache
    assert ask(server.url, text="next", max_new_tokens=2).status_code == 200


def test_worker_refuses_past_its_queue_and_skips_cancelled_jobs():
    release, ran = threading.Event(), []

    def blocking():
        release.wait(timeout=30)
        yield {"event": "done"}

    def quick(name):
        def events():
            ran.append(name)
            yield {"event": "done"}

        return events

    async def scenario():
        worker = Worker(max_queue=2)
        first = worker.submit(blocking)
        while worker.jobs.qsize():  # the worker has taken the first job
            await asyncio.sleep(0.01)
        cancelled, waiting = worker.submit(quick("cancelled")), worker.submit(quick("waiting"))
        with pytest.raises(BadRequest, match="busy: 2 requests are already waiting") as refused:
            worker.submit(quick("refused"))
        assert refused.value.status == 503
        cancelled.cancelled.set()
        release.set()
        results = []
        for job in (first, cancelled, waiting):
            results.append([e async for e in job])
        worker.stop()
        return results

    assert asyncio.run(scenario()) == [[{"event": "done"}], [], [{"event": "done"}]] and ran == ["waiting"]


def test_a_server_without_whisper_or_snac_says_what_it_lacks(server):
    t = server.talker  # the same model: the two servers take turns here, never generate at once
    uv, thread, url = running(create_app(Talker(t.model, t.tokenizer, name="text only", max_new_tokens=5)))
    try:
        assert httpx.get(url + "/api/info").json()["tasks"] == ["T1T2"]
        got = ask(url, audio=wav_bytes(0.5), task="A1T2")
        assert got.json() == {
            "error": "task A1T2 needs a Whisper encoder (omni-serve --whisper), which this server has not loaded"
        }
        got = ask(url, text="hi")
        assert got.json() == {
            "error": "task T1A2 needs a SNAC codec (omni-serve --snac), which this server has not loaded"
        }
        got = ask(url, text="hi", task="T1T2")
        assert got.status_code == 200 and got.json()["audio"] is None
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def test_cli_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="omni-serve: error: .*nowhere"):
        main(["--checkpoint", str(tmp_path / "nowhere")])


# ---- the page in a real browser -------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def slowed(events, delay: float, produced: list | None = None, closed: threading.Event | None = None):
    """`stream_events` that waits `delay` s after each event (an answer long enough to hear it start
    early), appends each event to `produced` and sets `closed` once the generation is closed."""

    def slow(*args, **kwargs):
        stream = events(*args, **kwargs)
        try:
            while True:
                event = next(stream)
                time.sleep(delay)
                if produced is not None:
                    produced.append(event)
                yield event
        except StopIteration as stop:
            return stop.value
        finally:
            stream.close()
            if closed is not None:
                closed.set()

    return slow


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (.ci/run does)",
)
def test_the_page_in_headless_chromium(server, tmp_path, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    mic = tmp_path / "mic.wav"
    mic.write_bytes(wav_bytes(3.0, rate=48000, subtype="PCM_16"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,900",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 120)

    def finished_turn(n: int):
        """The newest turn once `n` turns exist and it is done; a failed turn fails the test with its error."""

        def check(d):
            turns = d.find_elements(By.CSS_SELECTOR, ".turn")
            if len(turns) < n:
                return False
            state = turns[0].get_attribute("data-state")
            assert state != "error", d.find_element(By.ID, "error").text
            return turns[0] if state == "done" else False

        return wait.until(check)

    def audio_duration(element) -> float:
        """Seconds of the <audio> element's media once the browser has decoded its header (NaN: not playable)."""
        return driver.execute_async_script(
            """const [audio, done] = arguments;
            if (audio.readyState >= 1) return done(audio.duration);
            audio.onloadedmetadata = () => done(audio.duration);
            audio.onerror = () => done(-1);""",
            element,
        )

    # every streamed answer takes 2 s at least (40 steps and their chunks, 50 ms each), so that playing
    # before the end shows in time
    monkeypatch.setattr(serve, "stream_events", slowed(serve.stream_events, 0.05))
    # the screenshot, the test's artifact, is taken whether the test passes or fails (in $TEST_ARTIFACTS if set)
    shot = Path(os.environ.get("TEST_ARTIFACTS") or tmp_path) / "omni-serve-page.png"
    try:
        driver.get(server.url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")

        # a typed question: the text appears and the speech plays, chunk by chunk
        question = "what is two plus three"
        driver.find_element(By.ID, "text").send_keys(question)
        driver.find_element(By.ID, "send").click()
        turn = finished_turn(1)
        expected = ask(server.url, text=question).json()
        assert turn.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == expected["text"] != ""
        assert turn.get_attribute("data-history") == "0"  # the conversation's first question
        history = [{"question": question, "answer": expected["text"]}]
        samples = pcm(expected["audio"]["pcm"]).numel()
        assert int(turn.get_attribute("data-chunks")) == -(-samples // (4 * 2048))  # each chunk played as it came
        # the speech began (on the AudioContext's clock) while the rest of the answer was still coming:
        # at least 26 more steps at 50 ms each followed the first chunk
        speech_start, answer_end = (turn.get_attribute(f"data-{k}") for k in ("speech-start", "answer-end"))
        assert speech_start is not None, "no speech had been started when the answer ended"
        assert float(speech_start) < float(answer_end) - 0.5, (speech_start, answer_end)
        assert audio_duration(turn.find_element(By.TAG_NAME, "audio")) == pytest.approx(samples / 24000, abs=1e-3)
        stats = turn.find_element(By.CSS_SELECTOR, ".stats").text
        assert "first audio after" in stats and "real-time factor" in stats, stats

        # a spoken question from the fake microphone: recorded, converted to WAV, answered in speech,
        # sent with the first turn as the conversation so far
        driver.find_element(By.ID, "record").click()
        time.sleep(1.5)
        driver.find_element(By.ID, "record").click()
        turn = finished_turn(2)
        assert turn.get_attribute("data-task") == "A1A2" and turn.get_attribute("data-history") == "1"
        recording = audio_duration(turn.find_element(By.CSS_SELECTOR, "audio.recording"))
        assert 0.8 < recording < 10, recording
        uploaded = base64.b64decode(driver.execute_async_script(
            """const [audio, done] = arguments;
            const bytes = new Uint8Array(await (await fetch(audio.src)).arrayBuffer());
            done(btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join("")));""",
            turn.find_element(By.CSS_SELECTOR, "audio.recording"),
        ))  # fmt: skip
        assert sf.info(io.BytesIO(uploaded)).samplerate == 16000  # the page converted the recorder's webm to WAV
        expected = ask(server.url, audio=uploaded, history=json.dumps(history)).json()  # the same through the API
        assert turn.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == expected["text"]
        assert turn.find_element(By.CSS_SELECTOR, ".heard").text == f"heard: {expected['question']}".strip()
        samples = pcm(expected["audio"]["pcm"]).numel()
        assert audio_duration(turn.find_elements(By.TAG_NAME, "audio")[-1]) == pytest.approx(samples / 24000, abs=1e-3)
        assert int(turn.get_attribute("data-chunks")) == -(-samples // (4 * 2048))
        assert float(turn.get_attribute("data-first-audio")) > 0
        assert driver.find_element(By.ID, "error").text == ""
        assert driver.find_element(By.ID, "conversation").text.startswith("conversation: 2 earlier turns")

        # a new conversation: the next question goes without the earlier turns
        driver.find_element(By.ID, "reset").click()
        driver.find_element(By.ID, "text").send_keys(question)
        driver.find_element(By.ID, "send").click()
        turn = finished_turn(3)
        assert turn.get_attribute("data-history") == "0"
        assert turn.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == history[0]["answer"]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".turn.earlier")) == 2

        # the answer kinds pick their task from the server's task table: a written answer to a typed
        # question is T1T2 (sent with the conversation), a transcript of a recording A1T1 (sent alone)
        answer_kind = Select(driver.find_element(By.ID, "answer-kind"))
        answer_kind.select_by_value("text")
        driver.find_element(By.ID, "text").send_keys(question)
        driver.find_element(By.ID, "send").click()
        turn = finished_turn(4)
        assert turn.get_attribute("data-task") == "T1T2" and turn.get_attribute("data-history") == "1"
        answer_kind.select_by_value("transcript")
        driver.find_element(By.ID, "record").click()
        time.sleep(1.5)
        driver.find_element(By.ID, "record").click()
        turn = finished_turn(5)
        assert turn.get_attribute("data-task") == "A1T1" and turn.get_attribute("data-history") == "0"

        # the recorder's own webm/opus, sent as it is (no conversion in the page): the API decodes it
        kind, recorded = driver.execute_async_script(
            """const done = arguments[0];
            const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
            const recorder = new MediaRecorder(stream), parts = [];
            recorder.ondataavailable = (e) => parts.push(e.data);
            recorder.onstop = async () => {
              stream.getTracks().forEach((t) => t.stop());
              const bytes = new Uint8Array(await new Blob(parts).arrayBuffer());
              done([recorder.mimeType, btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""))]);
            };
            recorder.start();
            setTimeout(() => recorder.stop(), 1000);"""
        )
        recorded = base64.b64decode(recorded)
        assert kind.startswith("audio/webm") and recorded[:4] == b"\x1a\x45\xdf\xa3", kind
        got = httpx.post(server.url + "/api/answer", data={"task": "A1T2"}, timeout=120,
                         files={"audio": ("recording.webm", recorded, kind)})  # fmt: skip
        assert got.status_code == 200, got.text
        wave = load_audio(recorded, 16000)
        assert 0.8 < wave.numel() / 16000 < 1.6
        t = server.talker
        direct = answer(t.model, t.encoder, t.tokenizer, audio=wave, task="A1T2", max_new_tokens=MAX_NEW_TOKENS)
        assert got.json()["text_tokens"] == direct.text_tokens
    finally:
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        driver.quit()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
