"""Talking over several turns: generation reads a conversation's prompt exactly as training lays it
out, a `Conversation` keeps its turns, and omni-infer takes --history and --interactive."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
import pytest
import soundfile as sf
import torch
from litgpt.tokenizer import Tokenizer
from tiny import SNAC_TINY, WHISPER, clips, make_model, train_tokenizer, whisper_model

import omni_train.generate
from omni_train.audio import SnacCodec, WhisperEncoder, load_audio
from omni_train.checkpoints import load_omni, save_omni
from omni_train.cli.infer import as_mini_omni_returns, main
from omni_train.data.collator import OmniCollator, build_prompt
from omni_train.data.samples import Encoded, Turn
from omni_train.generate import Conversation, answer, encode_history, generate, transcribe
from omni_train.tasks import Task

HISTORY = [Turn("what is two plus three", "two plus three is five"), Turn("the model hears", "and talks")]


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return WhisperEncoder.from_dims(WHISPER)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint with its whisper.pt and snac/ inside (as test_infer makes it), and a spoken question."""
    root = tmp_path_factory.mktemp("infer")
    train_tokenizer(root / "tokenizer")
    full = save_omni(make_model(), root / "full", root / "tokenizer")
    state = whisper_model(WHISPER).state_dict()
    torch.save({"dims": asdict(WHISPER), "model_state_dict": state}, full / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(full / "snac")
    sf.write(root / "question.wav", 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32), 16000)
    return {"full": full, "question": root / "question.wav"}


@pytest.mark.parametrize("task", [Task.A1T2, Task.T1T2])
def test_generation_reads_the_row_training_lays_out(task, model, encoder, tokenizer, monkeypatch):
    """Teacher-forced on the collator's row of (history, question, the generated answer), the model's
    text logits at every answer position are those generation decoded from: the history, the question
    and the Whisper frames sit where training puts them."""
    vocab = model.config.vocab
    history = encode_history(tokenizer, HISTORY)
    (wave,) = clips(0.6)
    enc = Encoded(task, [], history=history)
    if task.audio_in:
        features, frames = encoder.encode_clips([wave])
        enc.audio_frames, enc.audio = int(frames[0]), wave
    else:
        features = frames = None
        enc.question_ids = tokenizer.encode("question answer speech", bos=False, eos=False).tolist()
    seen, logits_of = [], model.logits
    monkeypatch.setattr(model, "logits", lambda h, head: seen.append(logits_of(h, head)) or seen[-1])
    (g,) = generate(model, [build_prompt(enc, vocab)], task, features, frames, max_new_tokens=6)
    monkeypatch.undo()
    decoded = torch.cat(seen)  # (steps, text vocab): one text head call a step (no audio for text answers)

    enc.answer_ids = g.text_tokens
    b = OmniCollator(vocab)([enc])
    feats = encoder.encode_audio(b.audio, b.audio_samples) if task.audio_in else None
    with torch.inference_mode():
        h_text, _ = model.hidden_states(b.input_ids, feats, b.audio_lengths, b.audio_mask, with_audio=False)
        trained = model.logits(h_text[0], model.text_head())  # (L, text vocab)
    P = build_prompt(enc, vocab).size(1)
    assert torch.allclose(trained[P - 1 : P - 1 + len(decoded)], decoded, atol=1e-4)


def test_conversation_rows_batch_with_others_and_the_history_matters(model, encoder, tokenizer):
    vocab = model.config.vocab
    features, frames = encoder.encode_clips(clips(0.5, 0.8))
    history = encode_history(tokenizer, HISTORY)
    prompts = [
        build_prompt(Encoded(Task.A1T2, [], audio_frames=int(frames[0]), history=history), vocab),
        build_prompt(Encoded(Task.A1T2, [], audio_frames=int(frames[1])), vocab),
        build_prompt(Encoded(Task.T1T2, [], question_ids=[5, 6], history=history[1:]), vocab),
    ]
    tasks = [Task.A1T2, Task.A1T2, Task.T1T2]
    batched = generate(model, prompts, tasks, features, frames, max_new_tokens=10)
    assert batched == generate(model, prompts, tasks, features, frames, max_new_tokens=10, kv_cache=False)
    first = features[:1, : frames[0]], frames[:1]
    assert batched[0] == generate(model, prompts[:1], Task.A1T2, *first, max_new_tokens=10)[0]
    alone = build_prompt(Encoded(Task.A1T2, [], audio_frames=int(frames[0])), vocab)
    assert generate(model, [alone], Task.A1T2, *first, max_new_tokens=10)[0] != batched[0]
    with pytest.raises(ValueError, match="cannot end in 3 Whisper frames"):
        generate(model, prompts[2:], Task.A1T2, features[:1], torch.tensor([3]), max_new_tokens=2)


def test_a_conversation_keeps_its_turns(model, encoder, tokenizer):
    chat = Conversation(model, encoder, tokenizer)
    first = chat.ask(text="what is two plus three", task="T1T2", max_new_tokens=8)
    (wave,) = clips(0.7, seed=3)
    second = chat.ask(audio=wave, task="A1T2", max_new_tokens=8)
    heard = transcribe(model, encoder, tokenizer, [wave])[0]  # a spoken question enters as the model's transcript
    assert chat.history == [Turn("what is two plus three", first.text), Turn(heard, second.text)]
    expected = answer(model, encoder, tokenizer, audio=wave, task="A1T2", max_new_tokens=8,
                      history=[Turn("what is two plus three", first.text)])  # fmt: skip
    assert second == expected


def test_the_oldest_turns_give_way_to_the_answer():
    model = make_model()  # block_size 256: the answer keeps min(max_new_tokens, 128) steps free
    tok = Words()
    long = [Turn("word " * 50, "word " * 10)] * 3  # 64 positions a turn
    reply = answer(model, None, tok, text="word word", task="T1T2", history=long, max_new_tokens=100)
    assert reply.dropped_turns == 1  # 3 turns + a prompt of 5 = 197 > 256 - 100; 2 turns + 5 = 133 <= 156
    shorter = answer(model, None, tok, text="word word", task="T1T2", history=long[1:], max_new_tokens=100)
    assert (reply.text_tokens, shorter.dropped_turns) == (shorter.text_tokens, 0)
    chat = Conversation(model, None, tok, list(long))
    chat.ask(text="word word", task="T1T2", max_new_tokens=100)
    assert len(chat.history) == 3 and chat.history[:2] == long[1:]  # what no longer fits is let go


class Words:
    """One id a word, for answers whose lengths are easy to count."""

    def encode(self, text, bos=False, eos=False):
        return torch.tensor([7] * len(text.split()))

    def decode(self, ids):
        return " ".join("w" for _ in ids.tolist())


# ---- omni-infer -----------------------------------------------------------------------------------
def write_history(path, messages):
    path.write_text(json.dumps({"messages": messages}) + "\n")


def run_json(capsys, *argv) -> tuple[list[dict], str]:
    """omni-infer's JSON lines, and what it wrote to stderr."""
    main([*map(str, argv), "--max-new-tokens", "12", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.strip().splitlines()], captured.err


def library(files):
    model = load_omni(files["full"])[0].eval()
    return model, WhisperEncoder.from_pretrained(files["full"] / "whisper.pt"), Tokenizer(files["full"])


def test_infer_with_history(files, capsys, tmp_path, monkeypatch):
    turns = [{"role": role, "content": text} for t in HISTORY for role, text in zip(("user", "assistant"), t)]
    write_history(tmp_path / "chat.jsonl", turns)
    prompts, generate_ = [], omni_train.generate.generate
    monkeypatch.setattr(omni_train.generate, "generate", 
                        lambda m, p, *a, **k: prompts.extend(p) or generate_(m, p, *a, **k))
    chat = tmp_path / "chat.jsonl"
    argv = ["--checkpoint", files["full"], "--history", chat, "--text", "what is it", "--task", "T1T2"]
    (out,), _ = run_json(capsys, *argv)
    model, encoder, tok = library(files)
    question = tok.encode("what is it", bos=False, eos=False).tolist()
    (prompt,) = prompts  # the turns of the file, then the question
    expected_prompt = Encoded(Task.T1T2, [], question, history=encode_history(tok, HISTORY))
    assert torch.equal(prompt, build_prompt(expected_prompt, model.config.vocab))
    expected = answer(model, None, tok, text="what is it", task="T1T2", history=HISTORY, max_new_tokens=12)
    assert out == {"text": expected.text, "text_tokens": expected.text_tokens, "audio_tokens": None}

    # a file that ends with its own (spoken) question: it is answered, streamed, as the last turn
    (tmp_path / "q.wav").write_bytes((files["question"]).read_bytes())
    write_history(tmp_path / "ask.jsonl", [*turns, {"role": "user", "audio": "q.wav"}])
    wav = tmp_path / "a.wav"
    ask = tmp_path / "ask.jsonl"
    (out,), err = run_json(capsys, "--checkpoint", files["full"], "--history", ask, "--out", wav, "--stream")
    assert "first audio after" in err
    expected = answer(model, encoder, tok, audio=files["question"], history=HISTORY, max_new_tokens=12)
    assert out["text_tokens"] == expected.text_tokens
    assert out["audio_tokens"] == as_mini_omni_returns(expected.audio_tokens)
    assert load_audio(wav, 24000).numel() == expected.frames.size(0) * 32


def test_infer_interactive_keeps_the_conversation(files, capsys, tmp_path, monkeypatch):
    lines = ["what is two plus three", f"/audio {files['question']}", "/audio nowhere.wav", "/reset", "and then"]
    lines += ["/quit", "never asked"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    out, err = run_json(capsys, "--checkpoint", files["full"], "--interactive", "--out", tmp_path / "turns")
    assert len(out) == 3  # the missing file is one error line, and the conversation goes on
    assert "omni-infer: error: " in err and "nowhere.wav" in err
    model, encoder, tok = library(files)
    chat = Conversation(model, encoder, tok)
    expected = [chat.ask(text="what is two plus three", max_new_tokens=12)]
    expected.append(chat.ask(audio=files["question"], max_new_tokens=12))
    chat.history.clear()
    expected.append(chat.ask(text="and then", max_new_tokens=12))
    assert [o["text_tokens"] for o in out] == [e.text_tokens for e in expected]
    assert sorted(p.name for p in (tmp_path / "turns").iterdir()) == ["turn-01.wav", "turn-02.wav", "turn-03.wav"]
    assert sf.info(tmp_path / "turns" / "turn-02.wav").frames == expected[1].frames.size(0) * 32


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--history-row", "2", "--text", "hi"], "--history-row needs --history"),
        (["--history", "ask.jsonl", "--text", "hi"], "ends with a question"),
        (["--history", "nowhere.jsonl", "--text", "hi"], "--history: nowhere.jsonl: no such file"),
        (["--history", "bad.jsonl", "--text", "hi"], "bad messages"),
        (["--history", "chat.jsonl", "--audio", "q.wav", "--task", "A1T1"], "A1T1 (ASR) has no conversation"),
        ([], "give a question"),
        (["--interactive", "--text", "hi"], "--interactive reads its questions from the terminal"),
    ],
)
def test_conversation_usage_errors(files, capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    write_history(tmp_path / "chat.jsonl", chat)
    write_history(tmp_path / "ask.jsonl", [*chat, {"role": "user", "content": "and"}])
    write_history(tmp_path / "bad.jsonl", [{"role": "assistant", "content": "hello"}])
    (tmp_path / "q.wav").write_bytes(files["question"].read_bytes())
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(files["full"]), *argv])
    assert message in capsys.readouterr().err
