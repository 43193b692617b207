"""Decoding with litgpt's KV cache: all five tasks, batched rows, batch-parallel and streamed speech,
and conversations (earlier turns as text before the question, DESIGN.md "Conversations").

One step reads one column of 8 tokens per row and predicts the next column. Text leads; a spoken
answer follows it in the 7 audio layers with the delay of DESIGN.md (layer i starts i+1 steps after
the text), exactly the layout the collator trains.

What is sampled and what is forced. Mini-Omni's own decoder samples every token and stops when
audio layer 6 says eoa. Here the tokens the layout fixes are forced instead, so even an
undertrained model yields well-formed, decodable answers (a trained one predicts the same tokens):
- text: after eot, pad_t; before it only base-vocabulary tokens or eot (the text targets);
- audio layer i: pad_a for the first i+1 steps; then SNAC codes (layer 0 may also end with eoa);
  layer i > 0 says eoa exactly i steps after layer 0 did, so all layers hold the same N frames; pad_a
  after its eoa;
- text-only rows read pad_a in every audio layer, as they were trained (and as Mini-Omni feeds).
A row ends once its text said eot and, for a spoken answer, layer 6 said eoa (Mini-Omni cuts the
text when the audio ends; training lets the text run on, so this decoder does too).

Rows of different prompt lengths share a batch without left padding: prompts are right-padded and
each row decodes at its own positions (``input_pos`` of shape ``(B, 1)``). A short row's padding in
the KV cache lies ahead of its causal mask and is overwritten before it can be attended, so every
row computes what it would alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from omni_train.audio import WHISPER_SAMPLE_RATE, SnacCodec, WhisperEncoder, load_audio
from omni_train.data.collator import build_prompt, drop_oldest_turns
from omni_train.data.samples import Encoded, Turn
from omni_train.model import OmniGPT
from omni_train.tasks import Task, spoken_answer
from omni_train.vocab import EOA, N_AUDIO_LAYERS, PAD_A, TEXT_LAYER, Vocab, remove_delay

MAX_NEW_TOKENS = 1024


@dataclass
class Generation:
    """One row's answer.

    Attributes:
        text_tokens: the answer's text ids, without its eot.
        audio_tokens: for spoken answers, 7 lists of layer-local codes (0..4159) with the delay
            pads, up to and including layer 6's eoa: ``apply_delay(frames)`` for a finished answer.
    """

    text_tokens: list[int]
    audio_tokens: list[list[int]] | None = None

    @property
    def frames(self) -> torch.Tensor | None:
        return None if self.audio_tokens is None else to_frames(self.audio_tokens)


@dataclass
class Answer:
    text: str
    text_tokens: list[int]
    audio_tokens: list[list[int]] | None
    frames: torch.Tensor | None  # (N, 7) layer-local SNAC codes, for `SnacCodec.decode`
    dropped_turns: int = 0  # a conversation's oldest turns left out to fit the model's context


def to_frames(audio_tokens: list[list[int]] | torch.Tensor) -> torch.Tensor:
    """Delayed audio layers ``(7, L)`` -> SNAC frames ``(N, 7)``; N counts the frames all layers completed."""
    return remove_delay(torch.as_tensor(audio_tokens, dtype=torch.long).view(N_AUDIO_LAYERS, -1))


def sample(
    logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float = 1.0
) -> torch.Tensor:
    """Next ids ``(B,)`` from logits ``(B, V)``: top-k, then temperature, then top-p (litgpt's order).

    Temperature 0 is greedy; top_k=1 or top_p=0 is greedy at any temperature.
    """
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    logits = logits.float()
    if top_k is not None:
        v, i = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, i, v)  # scatter: ties don't widen the set
    if temperature <= 0.0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the tokens before it already hold top_p of the mass
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


def _per_row(tasks, B: int) -> list[Task]:
    tasks = [Task(t) for t in (tasks if isinstance(tasks, (list, tuple)) else [tasks] * B)]
    if len(tasks) != B:
        raise ValueError(f"{len(tasks)} tasks for {B} prompts")
    return tasks


def _allowed(vocab: Vocab, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive masks of what may be sampled: text ``(text_vocab,)``, audio ``(7, audio_vocab)``."""
    text = torch.zeros(vocab.text_vocab_size, device=device)
    text[vocab.base_vocab_size :] = float("-inf")
    text[vocab.eot] = 0.0
    audio = torch.zeros(N_AUDIO_LAYERS, vocab.audio_vocab_size, device=device)
    audio[:, EOA:] = float("-inf")
    audio[0, EOA] = 0.0  # only layer 0 chooses when the speech ends
    return text, audio


@torch.inference_mode()
def decode_steps(
    model: OmniGPT,
    prompts: list[torch.Tensor],
    tasks: Task | str | list[Task | str],
    audio_features: torch.Tensor | None = None,
    audio_lengths: torch.Tensor | None = None,
    *,
    steer: list[int] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    kv_cache: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode a batch step by step; yields each answer step's text ``(B,)`` and layer-local audio ``(B, 7)``.

    Args:
        prompts: B prompts ``(8, P_b)`` (`build_prompt`), of any lengths.
        tasks: one task for all rows, or one a row.
        audio_features: Whisper features ``(Ba, F, width)`` of the rows with speech input, in row order.
        audio_lengths: ``(Ba,)`` their frames (the T of their prompts).
        steer: row b takes its text from row ``steer[b]`` (batch-parallel decoding: the A1A2 row
            speaks the A1T2 row's text); both rows read that text at the next step.
        max_new_tokens: answer steps at most (also capped by the model's max_seq_length).
        kv_cache: False recomputes the whole sequence every step (a reference for the cache).

    Stops after the step at which every row has ended (see the module docstring).
    """
    vocab = model.config.vocab
    device = model.device
    B = len(prompts)
    tasks = _per_row(tasks, B)
    lengths = torch.tensor([p.size(1) for p in prompts], device=device)  # (B,)
    P = int(lengths.max())
    steps = min(max_new_tokens, model.max_seq_length - P)
    if steps < 1:
        raise ValueError(f"a prompt of {P} positions leaves no room in max_seq_length={model.max_seq_length}")

    # row b's prompt fills columns [0, P_b); its answer step k is read at column P_b + k
    pad = torch.tensor([*vocab.audio_layer_ids(PAD_A), vocab.pad_t], device=device)
    ids = pad.view(1, -1, 1).repeat(B, 1, P + (0 if kv_cache else steps))  # (B, 8, P [+ steps])
    audio_mask = torch.zeros(B, P, dtype=torch.bool, device=device)
    speech_rows = [b for b, t in enumerate(tasks) if t.audio_in]
    if len(speech_rows) != (0 if audio_lengths is None else len(audio_lengths)):
        raise ValueError(f"{len(speech_rows)} rows have speech input but audio_lengths has {audio_lengths}")
    for b, p in enumerate(prompts):
        ids[b, :, : p.size(1)] = p.to(device)
    for b, T in zip(speech_rows, [] if audio_lengths is None else audio_lengths.tolist()):
        start = prompts[b].size(1) - T - 2  # a speech prompt ends: input, T frames, eoa/eot, marker
        if start < 1 or int(prompts[b][TEXT_LAYER, start - 1]) != vocab.input_t:
            raise ValueError(f"row {b}: a prompt of {prompts[b].size(1)} positions cannot end in {T} Whisper frames")
        audio_mask[b, start : start + T] = True
    if audio_lengths is not None:
        audio_lengths = audio_lengths.to(device)
        audio_features = audio_features.to(device, model.dtype)

    with_audio = any(t.audio_out for t in tasks)
    audio_out = torch.tensor([t.audio_out for t in tasks], device=device)  # (B,)
    text_mask, audio_allowed = _allowed(vocab, device)
    layer = torch.arange(N_AUDIO_LAYERS, device=device)  # (7,)
    rows = torch.arange(B, device=device)
    text_ended = torch.zeros(B, dtype=torch.bool, device=device)
    eoa_step = torch.full((B,), 1 << 30, device=device)  # step at which layer 0 said eoa
    steer = torch.tensor(steer, device=device) if steer is not None else None
    knobs = dict(temperature=temperature, top_k=top_k, top_p=top_p)

    if kv_cache:
        model.set_kv_cache(B, max_seq_length=P + steps, device=device, dtype=model.dtype)
    try:
        pos = lengths - 1  # (B,) position whose states predict the current step
        h_text, h_audio = model.hidden_states(
            ids[:, :, :P], audio_features, audio_lengths, audio_mask,
            input_pos=torch.arange(P, device=device) if kv_cache else None, with_audio=with_audio,
        )  # fmt: skip
        at = pos
        column = None  # the ids step k - 1 chose: what the model reads at step k
        for k in range(steps):
            if k:
                pos = pos + 1
                if kv_cache:
                    h_text, h_audio = model.hidden_states(
                        column[..., None], input_pos=pos[:, None], input_pos_maxp1=int(pos.max()) + 1,
                        with_audio=with_audio,
                    )  # fmt: skip
                    at = torch.zeros_like(pos)
                else:
                    ids[rows, :, pos] = column
                    n = int(pos.max()) + 1
                    h_text, h_audio = model.hidden_states(
                        ids[:, :, :n], audio_features, audio_lengths, F.pad(audio_mask, (0, n - P)),
                        with_audio=with_audio,
                    )  # fmt: skip
                    at = pos
            text = sample(model.logits(h_text[rows, at], model.text_head()) + text_mask, **knobs)  # (B,)
            if steer is not None:
                text = text[steer]
            text = torch.where(text_ended, vocab.pad_t, text)
            text_ended |= text == vocab.eot

            audio = torch.full((B, N_AUDIO_LAYERS), PAD_A, device=device)  # (B, 7)
            if with_audio:
                h = h_audio[rows, at]  # (B, C)
                logits = torch.stack([model.logits(h, model.audio_head(i)) for i in range(N_AUDIO_LAYERS)], 1)
                sampled = sample((logits + audio_allowed).flatten(0, 1), **knobs).view(B, N_AUDIO_LAYERS)
                end = eoa_step[:, None] + layer  # (B, 7) each layer's eoa step
                audio = torch.where(k == end, EOA, sampled)
                audio = torch.where((k < layer + 1) | (k > end) | ~audio_out[:, None], PAD_A, audio)
                eoa_step = torch.where((audio[:, 0] == EOA) & (eoa_step > k), k, eoa_step)
            yield text, audio
            if bool((text_ended & (~audio_out | (k >= eoa_step + N_AUDIO_LAYERS - 1))).all()):
                break
            column = torch.cat([vocab.shift_frames(audio), text[:, None]], dim=1)  # (B, 8)
    finally:
        if kv_cache:
            model.clear_kv_cache()


def generate(
    model: OmniGPT,
    prompts: list[torch.Tensor],
    tasks: Task | str | list[Task | str],
    audio_features: torch.Tensor | None = None,
    audio_lengths: torch.Tensor | None = None,
    **kwargs,
) -> list[Generation]:
    """Decode a batch to the end; arguments as `decode_steps`. Returns one `Generation` a row."""
    B = len(prompts)
    tasks = _per_row(tasks, B)
    steps = list(decode_steps(model, prompts, tasks, audio_features, audio_lengths, **kwargs))
    text = torch.stack([t for t, _ in steps], dim=1).cpu()  # (B, S)
    audio = torch.stack([a for _, a in steps], dim=2).cpu()  # (B, 7, S)
    eot = model.config.vocab.eot
    return [_finish(text[b], audio[b] if task.audio_out else None, eot) for b, task in enumerate(tasks)]


def _finish(text: torch.Tensor, audio: torch.Tensor | None, eot: int) -> Generation:
    """A row's decoded steps, text ``(S,)`` and audio ``(7, S)``, cut at its eot and layer 6's eoa."""
    t = text.tolist()
    if audio is not None:
        ends = (audio[-1] == EOA).nonzero()
        audio = audio[:, : int(ends[0, 0]) + 1 if len(ends) else None].tolist()
    return Generation(t[: t.index(eot)] if eot in t else t, audio)


# ---- from audio and text ------------------------------------------------------------------------
def decode_text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(torch.tensor(ids, dtype=torch.long)).strip()


def transcribe(
    model: OmniGPT,
    encoder: WhisperEncoder,
    tokenizer,
    audios: list[torch.Tensor],
    batch_size: int = 16,
    max_new_tokens: int = 256,
) -> list[str]:
    """Greedy ASR (A1T1) of 16 kHz clips, `batch_size` at a time; the same text as one by one."""
    vocab = model.config.vocab
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))  # similar lengths: less padding
    texts = [""] * len(audios)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        features, frames = encoder.encode_clips([audios[i] for i in idx])
        prompts = [build_prompt(Encoded(Task.A1T1, [], audio_frames=int(T)), vocab) for T in frames]
        for i, g in zip(idx, generate(model, prompts, Task.A1T1, features, frames, max_new_tokens=max_new_tokens)):
            texts[i] = decode_text(tokenizer, g.text_tokens)
    return texts


AudioInput = torch.Tensor | str | os.PathLike | bytes


def answer_room(model: OmniGPT, max_new_tokens: int) -> int:
    """Answer steps a conversation keeps free: `max_new_tokens`, but at most half the model's context,
    so a long answer limit does not push out the whole history."""
    return min(max_new_tokens, model.max_seq_length // 2)


def encode_history(tokenizer, history: Sequence[Turn] | None) -> list[tuple[list[int], list[int]]]:
    """Earlier turns (question, answer texts) -> their token ids, as `Encoded.history` holds them."""

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, bos=False, eos=False).tolist()

    return [(ids(q), ids(a)) for q, a in history or []]


def _task(audio: AudioInput | None, task: Task | str | None) -> Task:
    return Task(task or spoken_answer(audio is not None))


def _inputs(
    model, encoder, tokenizer, audio: AudioInput | None, text: str | None, task, batch_parallel: bool, history, room: int
):
    """The rows one question needs: (prompts, tasks, features, frames, steer, turns dropped to fit)."""
    if (audio is None) == (text is None):
        raise ValueError("give exactly one of audio and text")
    task = _task(audio, task)
    if task.audio_in != (audio is not None):
        raise ValueError(f"task {task.value} takes {'audio' if task.audio_in else 'text'} input")
    if batch_parallel and task is not Task.A1A2:
        raise ValueError("batch-parallel decoding is for A1A2 (its text comes from an A1T2 row)")
    vocab = model.config.vocab
    tasks = [Task.A1A2, Task.A1T2] if batch_parallel else [task]
    enc = Encoded(task, [], history=encode_history(tokenizer, history))
    if audio is None:
        enc.question_ids = tokenizer.encode(text, bos=False, eos=False).tolist()
        dropped = drop_oldest_turns(enc, model.max_seq_length, room)
        return [build_prompt(enc, vocab)], tasks, None, None, None, dropped
    if encoder is None:
        raise ValueError("speech input needs a Whisper encoder")
    wave = audio if isinstance(audio, torch.Tensor) else load_audio(audio, WHISPER_SAMPLE_RATE)
    features, frames = encoder.encode_clips([wave])
    enc.audio_frames = int(frames[0])
    dropped = drop_oldest_turns(enc, model.max_seq_length, room)
    prompts = [build_prompt(Encoded(t, [], audio_frames=enc.audio_frames, history=enc.history), vocab) for t in tasks]
    if batch_parallel:
        features, frames = features.repeat(2, 1, 1), frames.repeat(2)
    return prompts, tasks, features, frames, [1, 1] if batch_parallel else None, dropped


def answer(
    model: OmniGPT,
    encoder: WhisperEncoder | None,
    tokenizer,
    *,
    audio: AudioInput | None = None,
    text: str | None = None,
    task: Task | str | None = None,
    batch_parallel: bool = False,
    history: Sequence[Turn] | None = None,
    **kwargs,
) -> Answer:
    """Answer one question, spoken (`audio`: a 16 kHz tensor or a file) or written (`text`).

    Args:
        task: default A1A2 for audio, T1A2 for text.
        batch_parallel: A1A2 only: decode A1A2 and A1T2 as a batch of two, the speech following
            the A1T2 row's text (Mini-Omni's "batch parallel decoding").
        history: a conversation's earlier turns, oldest first, as text; the oldest are left out
            while the prompt would leave fewer than `answer_room` steps (`Answer.dropped_turns`).
        **kwargs: `decode_steps`'s sampling knobs and max_new_tokens.
    """
    room = answer_room(model, kwargs.get("max_new_tokens", MAX_NEW_TOKENS))
    prompts, tasks, features, frames, steer, dropped = _inputs(
        model, encoder, tokenizer, audio, text, task, batch_parallel, history, room
    )
    g = generate(model, prompts, tasks, features, frames, steer=steer, **kwargs)[0]
    return Answer(decode_text(tokenizer, g.text_tokens), g.text_tokens, g.audio_tokens, g.frames, dropped)


# ---- streaming ----------------------------------------------------------------------------------
class StreamDecoder:
    """Decode a growing answer to audio chunks as soon as their frames (and context) exist.

    Each chunk of `chunk` frames is decoded in a window with up to `context` frames on either side,
    and only its own samples are kept. SNAC's decoder is convolutional, so once `context` covers its
    receptive field every kept sample is the whole decoding's sample: the concatenated stream equals
    ``codec.decode(all frames)`` to float rounding (with SNAC's decoder noise off; with it on, no two
    decodings agree). SNAC 24 kHz's decoder reaches about 2.3 frames either way (measured by
    perturbing one frame), hence the default of 3; the right context costs those frames of latency.
    Mini-Omni's stream decodes 4-frame chunks with no context, which clicks at chunk edges.

    Push-style, so a caller can interleave the chunks with whatever else it streams (text tokens);
    `stream_decode` is the same over an iterable.
    """

    def __init__(self, codec: SnacCodec, chunk: int = 4, context: int = 3) -> None:
        if chunk < 1 or context < 0:
            raise ValueError(f"chunk must be >= 1 and context >= 0, got {chunk} and {context}")
        self.codec, self.chunk, self.context = codec, chunk, context
        self.done = 0  # frames already decoded
        self.latest: torch.Tensor | None = None

    def push(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """The chunks that `frames` ``(N, 7)`` (extending the previous push) make ready."""
        self.latest, chunks = frames, []
        while frames.size(0) - self.done >= self.chunk + self.context:
            chunks.append(self._window(self.done, self.done + self.chunk))
            self.done += self.chunk
        return chunks

    def finish(self) -> list[torch.Tensor]:
        """The rest, once no more frames (and so no more right context) will come."""
        chunks = []
        while self.latest is not None and self.done < self.latest.size(0):
            stop = min(self.done + self.chunk, self.latest.size(0))
            chunks.append(self._window(self.done, stop))
            self.done = stop
        return chunks

    def _window(self, start: int, stop: int) -> torch.Tensor:
        spf = self.codec.samples_per_frame
        lo, hi = max(0, start - self.context), min(self.latest.size(0), stop + self.context)
        wave = self.codec.decode(self.latest[lo:hi])  # ((hi - lo) * spf,)
        return wave[(start - lo) * spf : (stop - lo) * spf]


def stream_decode(
    codec: SnacCodec, frames: Iterable[torch.Tensor], chunk: int = 4, context: int = 3
) -> Iterator[torch.Tensor]:
    """`StreamDecoder` over successive ``(N_t, 7)`` tensors, each extending the previous one."""
    decoder = StreamDecoder(codec, chunk, context)
    for latest in frames:
        yield from decoder.push(latest)
    yield from decoder.finish()


def stream_events(
    model: OmniGPT,
    encoder: WhisperEncoder | None,
    tokenizer,
    codec: SnacCodec | None,
    *,
    audio: AudioInput | None = None,
    text: str | None = None,
    task: Task | str | None = None,
    batch_parallel: bool = False,
    history: Sequence[Turn] | None = None,
    chunk: int = 4,
    context: int = 3,
    **kwargs,
) -> Generator[int | torch.Tensor, None, Answer]:
    """Yield the answer in decoding order: each text id (an int) and, for a spoken answer, its audio
    chunks (``codec.sample_rate`` tensors); returns the `Answer`. Any task; arguments as `stream_answer`.

    The ids are the answer's `text_tokens`, one a step until eot; a chunk comes as soon as
    `StreamDecoder` has it, so text and speech arrive interleaved as the model makes them.
    """
    room = answer_room(model, kwargs.get("max_new_tokens", MAX_NEW_TOKENS))
    prompts, tasks, features, frames, steer, dropped = _inputs(
        model, encoder, tokenizer, audio, text, task, batch_parallel, history, room
    )
    speaks = tasks[0].audio_out
    if speaks and codec is None:
        raise ValueError(f"task {tasks[0].value} speaks: it needs a SNAC codec")
    decoder = StreamDecoder(codec, chunk, context) if speaks else None
    eot, text_steps, audio_steps, ended = model.config.vocab.eot, [], [], False
    for t, a in decode_steps(model, prompts, tasks, features, frames, steer=steer, **kwargs):
        token = int(t[0])
        ended |= token == eot
        if not ended:
            yield token
        text_steps.append(token)
        audio_steps.append(a[0].cpu())
        if decoder is not None:
            yield from decoder.push(to_frames(torch.stack(audio_steps, dim=1)))  # (N, 7) frames completed so far
    if decoder is not None:
        yield from decoder.finish()
    g = _finish(torch.tensor(text_steps), torch.stack(audio_steps, dim=1) if speaks else None, eot)
    return Answer(decode_text(tokenizer, g.text_tokens), g.text_tokens, g.audio_tokens, g.frames, dropped)


def stream_answer(
    model: OmniGPT,
    encoder: WhisperEncoder | None,
    tokenizer,
    codec: SnacCodec,
    *,
    audio: AudioInput | None = None,
    text: str | None = None,
    task: Task | str | None = None,
    batch_parallel: bool = False,
    history: Sequence[Turn] | None = None,
    chunk: int = 4,
    context: int = 3,
    **kwargs,
) -> Generator[torch.Tensor, None, Answer]:
    """Yield the spoken answer as `codec.sample_rate` chunks while decoding; returns the `Answer`.

    ``answer = yield from stream_answer(...)`` collects it; arguments as `answer` and `StreamDecoder`.
    """
    if not _task(audio, task).audio_out:
        raise ValueError(f"task {_task(audio, task).value} has no spoken answer to stream")
    events = stream_events(
        model, encoder, tokenizer, codec, audio=audio, text=text, task=task, batch_parallel=batch_parallel,
        history=history, chunk=chunk, context=context, **kwargs,
    )  # fmt: skip
    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, torch.Tensor):
            yield event


# ---- conversations ------------------------------------------------------------------------------
@dataclass
class Conversation:
    """A dialogue with the model that keeps its turns, as text, for the next question.

    The model answers from the earlier turns as its history (DESIGN.md, "Conversations"). What a
    spoken question said enters the history as the model's own transcript of it (A1T1 on the same
    audio), as SLAM-Omni's multi-round demo adds Whisper's transcript; the model's answer enters as
    its text. `history` may start with turns of a file (`sources.read_conversation`).
    """

    model: OmniGPT
    encoder: WhisperEncoder | None
    tokenizer: object
    history: list[Turn] = field(default_factory=list)

    def heard(self, audio: AudioInput) -> str:
        """The model's transcript of a spoken question (what enters the history for it)."""
        if self.encoder is None:
            raise ValueError("speech input needs a Whisper encoder")
        wave = audio if isinstance(audio, torch.Tensor) else load_audio(audio, WHISPER_SAMPLE_RATE)
        return transcribe(self.model, self.encoder, self.tokenizer, [wave])[0]

    def ask(self, *, audio: AudioInput | None = None, text: str | None = None, **kwargs) -> Answer:
        """Answer the next question (arguments as `answer`) and keep the turn."""
        reply = answer(self.model, self.encoder, self.tokenizer, audio=audio, text=text, history=self.history, **kwargs)
        self.remember(audio, text, reply)
        return reply

    def stream(
        self, codec: SnacCodec, *, audio: AudioInput | None = None, text: str | None = None, **kwargs
    ) -> Generator[torch.Tensor, None, Answer]:
        """`stream_answer` of the next question; keeps the turn once the answer is complete."""
        reply = yield from stream_answer(
            self.model, self.encoder, self.tokenizer, codec, audio=audio, text=text, history=self.history, **kwargs
        )
        self.remember(audio, text, reply)
        return reply

    def remember(self, audio: AudioInput | None, text: str | None, reply: Answer) -> None:
        if reply.dropped_turns:  # they no longer fit: the next question would drop them again
            del self.history[: reply.dropped_turns]
        self.history.append(Turn(text if text is not None else self.heard(audio), reply.text))
