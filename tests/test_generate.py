"""Generation on tiny random models: the KV cache, batching, the answer layout, steering, sampling, streaming."""

from __future__ import annotations

import pytest
import torch
from tiny import SNAC_TINY, WHISPER, clips, make_model, train_tokenizer

from omni_train.audio import SnacCodec, WhisperEncoder
from omni_train.data.collator import build_prompt
from omni_train.data.samples import Encoded
from omni_train.generate import (
    answer,
    decode_steps,
    generate,
    sample,
    stream_answer,
    stream_decode,
    stream_events,
    to_frames,
    transcribe,
)
from omni_train.tasks import Task
from omni_train.vocab import EOA, N_AUDIO_LAYERS, PAD_A, apply_delay


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


def mixed_batch(model, encoder):
    """One row of every task, with five different prompt lengths."""
    vocab = model.config.vocab
    tasks = [Task.A1T1, Task.T1A2, Task.A1T2, Task.A1A2, Task.T1T2]
    features, frames = encoder.encode_clips(clips(1.0, 0.4, 0.7))
    questions = iter([[5, 6, 7], [8, 9, 10, 11, 12, 13, 14]])
    speech = iter(frames.tolist())
    encoded = [Encoded(t, [], audio_frames=next(speech)) if t.audio_in else Encoded(t, [], next(questions))
               for t in tasks]  # fmt: skip
    prompts = [build_prompt(e, vocab) for e in encoded]
    return prompts, tasks, features, frames


def script(monkeypatch, model, head: str, token: int, at_step: int, layer: int = 0) -> list:
    """Make `token` win at answer step `at_step` and lose before, by wrapping a head (read once a step).

    Returns the list of calls; clear it before decoding again.
    """
    original, calls = getattr(model, head), []

    def wrapped(*args):
        weight, bias = original(*args)
        if head == "text_head" or args[0] == layer:
            calls.append(None)
            bias = torch.zeros(weight.size(0)) if bias is None else bias.clone()
            bias[token] = 1e4 if len(calls) == at_step + 1 else -1e4
        return weight, bias

    monkeypatch.setattr(model, head, wrapped)
    return calls


# ---- the KV cache and batching ------------------------------------------------------------------
@pytest.mark.parametrize("family,post_adapter", [("qwen2", False), ("qwen2", True), ("phi", False), ("gemma", False)])
def test_cached_decoding_equals_uncached_recomputation(family, post_adapter, encoder):
    model = make_model(family, post_adapter=post_adapter)
    prompts, tasks, features, frames = mixed_batch(model, encoder)
    cached = generate(model, prompts, tasks, features, frames, max_new_tokens=24)
    assert cached == generate(model, prompts, tasks, features, frames, max_new_tokens=24, kv_cache=False)
    assert all(len(g.text_tokens) for g in cached) and model.mask_cache is None  # cache cleared after


def test_batched_rows_equal_one_by_one(model, encoder):
    prompts, tasks, features, frames = mixed_batch(model, encoder)
    batched = generate(model, prompts, tasks, features, frames, max_new_tokens=24)
    speech = 0
    for p, t, g in zip(prompts, tasks, batched):
        f = (features[speech : speech + 1, : frames[speech]], frames[speech : speech + 1]) if t.audio_in else ()
        speech += t.audio_in
        assert generate(model, [p], t, *f, max_new_tokens=24) == [g]


def test_transcribe_batched_equals_one_by_one(encoder, tokenizer):
    model = make_model(seed=3)
    audios = clips(1.0, 0.3, 0.65, 0.5, 0.05, 0.8, seed=1)
    batched = transcribe(model, encoder, tokenizer, audios, batch_size=4, max_new_tokens=12)
    assert batched == [transcribe(model, encoder, tokenizer, [a], max_new_tokens=12)[0] for a in audios]
    assert len(set(batched)) > 2  # the rows really differ, so a mix-up would show ...
    assert len({len(t) for t in batched}) > 2  # ... and end at their own eot


# ---- the answer layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(Task))
def test_every_task_respects_the_layer_ranges(task, model, encoder):
    vocab = model.config.vocab
    if task.audio_in:
        features, frames = encoder.encode_clips(clips(0.5))
        prompt, extra = build_prompt(Encoded(task, [], audio_frames=int(frames[0])), vocab), (features, frames)
    else:
        prompt, extra = build_prompt(Encoded(task, [], [5, 6, 7]), vocab), ()
    steps = list(decode_steps(model, [prompt], task, *extra, max_new_tokens=20))
    (g,) = generate(model, [prompt], task, *extra, max_new_tokens=20)
    assert all(0 <= t < vocab.base_vocab_size for t in g.text_tokens)  # no specials inside the text
    if not task.audio_out:
        assert g.audio_tokens is None and all((a == PAD_A).all() for _, a in steps)  # text rows read pad_a
        return
    audio = torch.tensor(g.audio_tokens)  # (7, 20): the random model never ends its speech
    assert audio.shape == (N_AUDIO_LAYERS, 20)
    for i in range(N_AUDIO_LAYERS):
        assert (audio[i, : i + 1] == PAD_A).all() and (audio[i, i + 1 :] < EOA).all()
    assert to_frames(g.audio_tokens).shape == (20 - N_AUDIO_LAYERS, N_AUDIO_LAYERS)


@pytest.mark.parametrize("frames,text_end", [(3, 15), (5, 2), (0, 0)])
def test_speech_and_text_each_end_on_their_own(frames, text_end, model, monkeypatch):
    """Layer 0 says eoa after `frames` codes; the others follow one step apart, as `apply_delay` lays it out."""
    vocab = model.config.vocab
    audio_calls = script(monkeypatch, model, "audio_head", EOA, at_step=frames + 1)
    text_calls = script(monkeypatch, model, "text_head", vocab.eot, at_step=text_end)
    prompt = build_prompt(Encoded(Task.T1A2, [], [5, 6, 7]), vocab)
    steps = list(decode_steps(model, [prompt], Task.T1A2, max_new_tokens=40))
    audio_calls.clear(), text_calls.clear()
    (g,) = generate(model, [prompt], Task.T1A2, max_new_tokens=40)
    assert len(steps) == max(text_end, frames + N_AUDIO_LAYERS) + 1  # the row runs until both ended
    assert len(g.text_tokens) == text_end
    assert [int(t) for t, _ in steps[text_end:]] == [vocab.eot] + [vocab.pad_t] * (len(steps) - text_end - 1)
    assert g.frames.shape == (frames, N_AUDIO_LAYERS)
    assert g.audio_tokens == apply_delay(g.frames).tolist()  # (7, N + 8): pads, codes, eoa, pads


# ---- batch-parallel decoding --------------------------------------------------------------------
def test_batch_parallel_speaks_the_text_of_the_a1t2_row(model, encoder, tokenizer, monkeypatch):
    (audio,) = clips(0.6, seed=2)
    kw = dict(audio=audio, max_new_tokens=16)
    own = answer(model, encoder, tokenizer, task="A1A2", **kw)
    text_row = answer(model, encoder, tokenizer, task="A1T2", **kw)
    assert own.text_tokens != text_row.text_tokens  # the A1A2 row alone would say something else

    fed = []
    hidden_states = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda ids, *a, **k: fed.append(ids) or hidden_states(ids, *a, **k))
    steered = answer(model, encoder, tokenizer, batch_parallel=True, **kw)
    assert steered.text_tokens == text_row.text_tokens
    decode = torch.cat(fed[1:], dim=2)  # (2, 8, steps - 1): what both rows read after the prompt
    assert torch.equal(decode[0, -1], decode[1, -1])  # both read the A1T2 row's text
    assert decode[0, -1, : len(text_row.text_tokens)].tolist() == text_row.text_tokens[: decode.size(2)]
    assert steered.audio_tokens != own.audio_tokens  # and the speech follows it


# ---- sampling -----------------------------------------------------------------------------------
def test_sampling_knobs():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits), greedy)
    assert torch.equal(sample(logits, temperature=2.0, top_k=1), greedy)
    assert torch.equal(sample(logits, temperature=2.0, top_p=0.0), greedy)
    torch.manual_seed(0)
    top3 = logits.topk(3).indices
    draws = torch.stack([sample(logits, temperature=5.0, top_k=3) for _ in range(200)], 1)  # (4, 200)
    assert all(set(d.tolist()) == set(t.tolist()) for d, t in zip(draws, top3))
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    draws = {int(sample(probs.log(), temperature=1.0, top_p=0.6)) for _ in range(200)}
    assert draws == {0, 1}  # the smallest set holding 60% of the mass
    with pytest.raises(ValueError, match="top_p"):
        sample(logits, top_p=1.5)


def test_sampled_generation(model, encoder, tokenizer):
    (audio,) = clips(0.5)

    def tokens(**knobs):
        a = answer(model, encoder, tokenizer, audio=audio, max_new_tokens=12, **knobs)
        return a.text_tokens, a.audio_tokens

    greedy = tokens()
    assert tokens(temperature=0.8, top_k=1) == greedy
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(tokens(temperature=1.0))
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[0] != greedy


# ---- streaming ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return SnacCodec.from_config(SNAC_TINY)


def test_stream_decode_equals_whole_decoding(codec):
    frames = torch.randint(0, 4096, (13, N_AUDIO_LAYERS), generator=torch.Generator().manual_seed(0))
    whole = codec.decode(frames)
    growing = [frames[:n] for n in range(frames.size(0) + 1)]
    chunks = list(stream_decode(codec, growing, chunk=3, context=8))
    assert [c.numel() for c in chunks] == [3 * 32] * 4 + [32]
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-5, rtol=1e-4)
    # without context (Mini-Omni's chunks) the edges differ: the context is what makes the stream exact
    no_context = torch.cat(list(stream_decode(codec, growing, chunk=3, context=0)))
    assert no_context.shape == whole.shape and not torch.allclose(no_context, whole, atol=1e-3)


def test_stream_answer_yields_the_answer_chunk_by_chunk(model, encoder, tokenizer, codec, monkeypatch):
    calls = script(monkeypatch, model, "audio_head", EOA, at_step=25)  # 24 frames, 32 steps
    (audio,) = clips(0.5)
    whole = answer(model, encoder, tokenizer, audio=audio, max_new_tokens=40)
    calls.clear()
    steps = []
    hidden_states = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda *a, **k: steps.append(None) or hidden_states(*a, **k))
    stream = stream_answer(model, encoder, tokenizer, codec, audio=audio, max_new_tokens=40, chunk=2, context=8)
    chunks, steps_at_chunk = [], []
    while True:
        try:
            chunks.append(next(stream))
            steps_at_chunk.append(len(steps))
        except StopIteration as stop:
            streamed = stop.value
            break
    # the first chunk comes once 2 + 8 frames exist (step 16, 7 steps behind layer 0), long before the end
    assert steps_at_chunk[0] == 10 + N_AUDIO_LAYERS and len(steps) == 24 + 8
    assert streamed.text_tokens == whole.text_tokens and streamed.audio_tokens == whole.audio_tokens
    assert torch.equal(streamed.frames, whole.frames) and whole.frames.size(0) == 24
    torch.testing.assert_close(torch.cat(chunks), codec.decode(whole.frames), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="no spoken answer"):
        next(stream_answer(model, encoder, tokenizer, codec, audio=audio, task="A1T2"))


def test_stream_events_interleave_text_ids_and_audio_chunks(model, encoder, tokenizer, codec, monkeypatch):
    text_calls = script(monkeypatch, model, "text_head", model.config.vocab.eot, at_step=30)  # 30 text ids
    audio_calls = script(monkeypatch, model, "audio_head", EOA, at_step=25)  # 24 frames
    (audio,) = clips(0.5)
    whole = answer(model, encoder, tokenizer, audio=audio, max_new_tokens=40)
    text_calls.clear(), audio_calls.clear()
    events = []
    stream = stream_events(model, encoder, tokenizer, codec, audio=audio, max_new_tokens=40, chunk=2, context=8)
    while True:
        try:
            events.append(next(stream))
        except StopIteration as stop:
            streamed = stop.value
            break
    ids = [e for e in events if isinstance(e, int)]
    chunks = [e for e in events if isinstance(e, torch.Tensor)]
    assert ids == whole.text_tokens == streamed.text_tokens and len(ids) == 30
    assert streamed.audio_tokens == whole.audio_tokens and len(chunks) == 12
    torch.testing.assert_close(torch.cat(chunks), codec.decode(whole.frames), atol=1e-5, rtol=1e-4)
    # the first chunk (step 16, as in stream_answer) comes while the text still runs: ids 17..29 follow it
    first_chunk = next(i for i, e in enumerate(events) if isinstance(e, torch.Tensor))
    assert sum(isinstance(e, int) for e in events[first_chunk:]) == 30 - 17

    text_calls.clear()
    expected = answer(model, encoder, tokenizer, audio=audio, task="A1T2", max_new_tokens=40)
    text_calls.clear()  # a written answer: only ids, and no codec needed
    written = list(stream_events(model, encoder, tokenizer, None, audio=audio, task="A1T2", max_new_tokens=40))
    assert written == expected.text_tokens and len(written) == 30
