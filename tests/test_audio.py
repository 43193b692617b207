import errno
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper
from tiny import SNAC_TINY, WHISPER_DIMS, whisper_model
from whisper.model import ModelDimensions

from omni_train.audio import (
    Audio,
    AudioError,
    MelCache,
    SnacCodec,
    TooLongAudio,
    WhisperEncoder,
    load_audio,
    log_mel,
    log_mels,
    save_wav,
    stack_clips,
    whisper_frames,
)
from omni_train.vocab import unflatten_snac

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
DIMS = ModelDimensions(**{**WHISPER_DIMS, "n_audio_layer": 2, "n_vocab": 64, "n_text_ctx": 8})


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Sine + a little noise, ``(S,)`` or ``(S, channels)`` float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def encode_file(x: np.ndarray, rate: int, ext: str) -> bytes:
    fmt, subtype = FORMATS[ext]
    buf = io.BytesIO()
    try:
        sf.write(buf, x, rate, format=fmt, subtype=subtype)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {ext}: {e}")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# load_audio


@pytest.mark.parametrize("ext", list(FORMATS))
def test_load_every_format_from_path_bytes_and_audio(tmp_path, ext):
    x = tone(0.5, 16000)
    data = encode_file(x, 16000, ext)
    path = tmp_path / f"clip.{ext}"
    path.write_bytes(data)
    loads = [load_audio(path, 16000), load_audio(str(path), 16000), load_audio(data, 16000)]
    loads += [load_audio(Audio(path=path), 16000), load_audio(Audio(data=data), 16000)]
    for y in loads:
        assert y.dtype == torch.float32 and y.dim() == 1
        torch.testing.assert_close(y, loads[0])
    y = loads[0].numpy()
    assert abs(len(y) - len(x)) <= 1152  # lossy codecs may pad a frame
    if ext in ("wav", "flac"):
        np.testing.assert_allclose(y, x, atol=1e-4)
    else:  # lossy: the tone survives (align on the codec's delay by cross-correlation at lag 0..1152)
        n = min(len(x), len(y)) - 1200
        best = max(np.corrcoef(x[:n], y[lag : lag + n])[0, 1] for lag in range(0, 1153))
        assert best > 0.95


def test_stereo_is_averaged_to_mono():
    x = tone(0.25, 16000, channels=2)  # right channel = 2 x left
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="FLOAT")
    y = load_audio(buf.getvalue(), 16000).numpy()
    np.testing.assert_allclose(y, x.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("rate_in,rate_out", [(44100, 16000), (44100, 24000), (22050, 16000), (16000, 24000)])
def test_resampling_keeps_duration_and_pitch(rate_in, rate_out):
    buf = io.BytesIO()
    sf.write(buf, tone(1.0, rate_in, freq=440.0), rate_in, format="WAV", subtype="FLOAT")
    y = load_audio(buf.getvalue(), rate_out)
    assert y.shape == (rate_out,)  # 1 s in, 1 s out
    spectrum = torch.fft.rfft(y).abs()
    assert abs(spectrum.argmax().item() * rate_out / y.numel() - 440.0) <= 1.0


def test_unreadable_audio_raises_audio_error_naming_the_source(tmp_path):
    data = encode_file(tone(0.5, 16000), 16000, "flac")
    for bad in (b"not audio at all" * 8, data[:30], data[: len(data) // 2]):
        with pytest.raises(AudioError, match=f"<{len(bad)} bytes>"):
            load_audio(bad, 16000)
    with pytest.raises(AudioError, match="bytes>"):
        load_audio(Audio(data=b"junk" * 10), 16000)
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav"):
        load_audio(missing, 16000)
    empty = io.BytesIO()
    sf.write(empty, np.zeros(0, np.float32), 16000, format="WAV")
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty.getvalue(), 16000)
    assert issubclass(AudioError, ValueError)


@pytest.mark.parametrize("err", [OSError(errno.EMFILE, "Too many open files"), TimeoutError("read timed out")])
def test_the_machines_trouble_is_not_counted_as_a_bad_file(tmp_path, monkeypatch, err):
    """A bad row costs a sample; running out of file handles or a hung mount must stop the run as itself."""
    path = tmp_path / "fine.wav"
    sf.write(path, tone(0.5, 16000), 16000)

    def failing(*args, **kwargs):
        raise err

    monkeypatch.setattr(sf, "SoundFile", failing)
    with pytest.raises(type(err)) as caught:
        load_audio(path, 16000)
    assert not isinstance(caught.value, AudioError)
    monkeypatch.setattr(sf, "SoundFile", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOENT, "No such file")))
    with pytest.raises(AudioError, match="fine.wav"):  # a missing file is the row's fault: counted
        load_audio(path, 16000)


def test_truncated_mp3_is_an_error():
    data = encode_file(tone(1.0, 16000), 16000, "mp3")
    with pytest.raises(AudioError, match="truncated"):
        load_audio(data[: len(data) // 2], 16000)


# What Chromium 156's MediaRecorder wrote (its default, audio/webm;codecs=opus, 1-s time slices) from a
# fake microphone playing a 440 Hz sine: 11 packets of 60 ms Opus, mono, 48 kHz.
BROWSER_WEBM = Path(__file__).parent / "data" / "chromium_recorder_440hz.webm"


def unknown_sizes(data: bytes) -> bytes:
    """The same file as a recorder that cannot seek back writes it: Segment and Cluster sizes 'unknown'."""
    out = bytearray(data)
    for element in (b"\x18\x53\x80\x67", b"\x1f\x43\xb6\x75"):  # Segment, Cluster
        starts = [at for at in range(len(out)) if out.startswith(element, at) and out[at + 4] == 0x01]
        assert starts  # each with an 8-byte size (other matches are the IDs quoted in the SeekHead)
        for at in starts:
            out[at + 4 : at + 12] = b"\x01" + b"\xff" * 7  # all ones: the same length, so nothing moves
    return bytes(out)


def test_a_browser_recording_in_webm_opus_is_decoded(tmp_path):
    data = BROWSER_WEBM.read_bytes()
    with pytest.raises(sf.SoundFileError):
        sf.read(io.BytesIO(data))  # what libsndfile alone says to a browser's recording
    wave = load_audio(BROWSER_WEBM, 16000)
    assert wave.numel() == 11 * 960  # 11 packets of 60 ms, at 16 kHz
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(spectrum.argmax().item() * 16000 / wave.numel() - 440.0) <= 2.0
    assert wave.abs().max() > 0.05
    for same in (data, Audio(data=data), unknown_sizes(data)):
        assert torch.equal(load_audio(same, 16000), wave)


@pytest.mark.parametrize(
    "cut, message",
    [
        (lambda d: d[: len(d) // 2], "WebM cut off: element 0xa3"),
        (lambda d: d[:4] + b"\x00" * 60, "WebM: not an EBML element at byte 4"),
        (lambda d: d.replace(b"A_OPUS", b"A_VORB"), "WebM without an Opus audio track .*A_VORB"),
    ],
    ids=["cut-off", "not-ebml", "not-opus"],
)
def test_a_broken_webm_names_the_problem(cut, message):
    bad = cut(BROWSER_WEBM.read_bytes())
    with pytest.raises(AudioError, match=f"cannot decode audio <{len(bad)} bytes>: {message}"):
        load_audio(bad, 16000)


def test_save_wav_round_trip_and_clipping(tmp_path):
    x = torch.from_numpy(tone(0.2, 24000))
    x[0], x[1] = 3.0, -3.0  # out of range: clipped, not wrapped
    path = tmp_path / "sub" / "out.wav"
    save_wav(path, x, 24000)
    y, rate = sf.read(path, dtype="float32")
    assert rate == 24000 and y.shape == (x.numel(),)
    assert y[0] > 0.99 and y[1] < -0.99
    np.testing.assert_allclose(y[2:], x[2:].numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Whisper input


def test_whisper_frames_is_mini_omnis_formula():
    for n in [0, 1, 319, 320, 321, 959, 960, 961, 16000, 16001, 23999, 123457, 479999]:
        assert whisper_frames(n) == int((n / 16000) * 1000 / 20) + 1
    assert whisper_frames(16000) == 51  # 1 s -> 51 frames, as in Mini-Omni
    assert whisper_frames(320) == 2 and whisper_frames(319) == 1
    assert whisper_frames(480000) == 1500 == whisper_frames(10 * 480000)  # capped at Whisper's window
    assert whisper_frames(24000, sample_rate=24000) == 51


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_covers_exactly_2T_frames(n_mels):
    for seconds in (0.01, 0.37, 1.0, 2.345):
        a = torch.from_numpy(tone(seconds, 16000))
        m = log_mel(a, n_mels=n_mels)
        assert m.shape == (n_mels, 2 * whisper_frames(a.numel()))
        assert m.dtype == torch.float32 and torch.isfinite(m).all()
    m30 = log_mel(a, n_mels=n_mels, pad_to_30s=True)
    assert m30.shape == (n_mels, 3000)
    # Same audio, same normalisation: only the frames whose window reaches the end differ.
    torch.testing.assert_close(m[:, :-2], m30[:, : m.size(1) - 2])


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_log_mels_of_a_batch_are_whispers_own_per_clip(pad_to_30s):
    """The step's batched log-mel is openai-whisper's `log_mel_spectrogram` of each clip alone:
    clips ending a few samples before a frame boundary (the STFT reflects at the end), silence
    next to loud speech (each row's log floor is its own maximum - 8), the longest clip kept."""
    g = torch.Generator().manual_seed(0)
    lengths = [320 * 40 - 10, 30390, 2240, 16000 * 3 + 5, 479999]
    clips = [torch.randn(n, generator=g) * (1e-4 if i == 2 else 0.3) for i, n in enumerate(lengths)]
    audio, samples = stack_clips(clips)
    out = log_mels(audio, samples, pad_to_30s=pad_to_30s)
    assert out.shape == (5, 80, 3000)
    for i, clip in enumerate(clips):
        if pad_to_30s:
            ref = whisper.log_mel_spectrogram(whisper.pad_or_trim(clip))
        else:
            ref = whisper.log_mel_spectrogram(clip, padding=320 * whisper_frames(clip.numel()) - clip.numel())
        torch.testing.assert_close(out[i, :, : ref.size(1)], ref, atol=1e-5, rtol=0)
        assert (out[i, :, ref.size(1) :] == 0).all()
    with pytest.raises(ValueError, match="samples must be"):
        log_mels(audio, [480000] * 5)


def test_long_audio_is_cut_or_dropped():
    a = torch.from_numpy(tone(31.0, 16000))
    m = log_mel(a)
    assert m.shape == (80, 3000) and whisper_frames(a.numel()) == 1500
    assert log_mel(a, pad_to_30s=True).shape == (80, 3000)
    assert log_mel(a[:80000], max_seconds=4.0).shape == (80, 400)
    for pad in (False, True):
        with pytest.raises(TooLongAudio, match="exceeds 30"):
            log_mel(a, pad_to_30s=pad, too_long="drop")
    assert issubclass(TooLongAudio, AudioError)
    log_mel(a[:479999], too_long="drop")  # the longest clip that fits 1500 frames
    with pytest.raises(ValueError, match="max_seconds"):
        log_mel(a, max_seconds=31)


# ---------------------------------------------------------------------------------------------
# Whisper encoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return WhisperEncoder.from_dims(DIMS)


def clip_mels(seconds):
    clips = [torch.from_numpy(tone(s, 16000, freq=200 + 100 * i, seed=i)) for i, s in enumerate(seconds)]
    return [log_mel(c) for c in clips], [whisper_frames(c.numel()) for c in clips], clips


def collate(mels):  # as the collator does: zero-pad on the right
    out = torch.zeros(len(mels), mels[0].size(0), max(m.size(1) for m in mels))
    for i, m in enumerate(mels):
        out[i, :, : m.size(1)] = m
    return out


def test_encoder_shape_and_frozen(encoder):
    mels, frames, _ = clip_mels([0.5, 1.2])
    out = encoder(collate(mels), torch.tensor(frames))
    assert out.shape == (2, max(frames), 32)
    assert (encoder.n_mels, encoder.width) == (80, 32)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not out.requires_grad and not out.is_inference()
    encoder.train()
    assert not encoder.training and not encoder.encoder.training
    # a trained adapter on top gets gradients; the encoder gets none
    adapter = torch.nn.Linear(32, 8)
    adapter(out).sum().backward()
    assert adapter.weight.grad is not None
    assert all(p.grad is None for p in encoder.parameters())


def test_batch_padding_does_not_change_a_rows_frames(encoder):
    mels, frames, _ = clip_mels([0.3, 1.7, 0.9])
    batch = collate(mels)
    out = encoder(batch, torch.tensor(frames))
    for i, (m, f) in enumerate(zip(mels, frames)):
        alone = encoder(m[None], torch.tensor([f]))
        assert alone.shape == (1, f, 32)
        torch.testing.assert_close(out[i, :f], alone[0], atol=1e-5, rtol=1e-4)
        assert (out[i, f:] == 0).all()
    # whatever lies in the padding (here noise instead of zeros) is ignored
    noisy = batch + torch.randn_like(batch) * (batch == 0)
    torch.testing.assert_close(encoder(noisy, torch.tensor(frames)), out, atol=1e-5, rtol=1e-4)


def test_full_window_equals_whispers_own_forward(encoder):
    mel = torch.randn(2, 80, 3000)
    torch.testing.assert_close(encoder(mel, torch.tensor([1500, 1500])), encoder.encoder(mel), atol=1e-5, rtol=1e-4)


def test_pad_to_30s_reproduces_mini_omni(encoder):
    enc30 = WhisperEncoder(encoder.encoder, pad_to_30s=True)
    # clips ending just before a frame boundary: the stft windows past 2T still hear their tail
    _, frames, clips = clip_mels([12790 / 16000, 30390 / 16000])
    mels30 = torch.stack([log_mel(c, pad_to_30s=True) for c in clips])
    out30 = enc30(mels30, torch.tensor(frames))
    for i, f in enumerate(frames):  # Mini-Omni: whispermodel.embed_audio(mel)[0][:leng]
        torch.testing.assert_close(out30[i, :f], encoder.encoder(mels30[i : i + 1])[0, :f])
    # short (2T) mels in 30-s mode: padding filled with log-mel silence, close to the real 30-s mel
    short30 = enc30(collate([log_mel(c) for c in clips]), torch.tensor(frames))
    masked = encoder(collate([log_mel(c) for c in clips]), torch.tensor(frames))
    for i, f in enumerate(frames):
        cos_short = torch.nn.functional.cosine_similarity(short30[i, :f], out30[i, :f], dim=-1)
        assert cos_short.min() > 0.99
        cos = torch.nn.functional.cosine_similarity(masked[i, :f], out30[i, :f], dim=-1).mean().item()
        print(f"row {i}: cosine(masked audio-length frames, Mini-Omni 30-s frames) = {cos:.4f} (random weights)")
        assert cos < 0.9999  # the two modes really differ: real frames attend to 30 s of padding in one


def test_mel_cache_gives_the_same_bits_and_makes_only_new_clips_log_mel(encoder, monkeypatch):
    """A batch's log-mel and features with the cache are those without it, bit for bit; a clip heard
    before (in another batch, at another place) gets no new STFT."""
    import omni_train.audio as audio_module

    _, frames, clips = clip_mels([0.3, 1.7, 0.9, 1.1])
    cache = MelCache(max_mb=1)
    first = stack_clips(clips[:2])
    assert torch.equal(encoder.encode_audio(*first, cache), encoder.encode_audio(*first))
    made = []  # sample counts of the clips whose log-mel is made from here on
    real = audio_module.clip_log_mel
    monkeypatch.setattr(audio_module, "clip_log_mel", lambda clip, *a: made.append(clip.numel()) or real(clip, *a))
    again = stack_clips([clips[2], clips[1], clips[0], clips[3]])  # two new clips between two known ones
    mels = log_mels(*again, cache=cache)
    assert made == [clips[2].numel(), clips[3].numel()]
    monkeypatch.undo()
    assert torch.equal(mels, log_mels(*again))
    assert (len(cache), cache.hits, cache.misses) == (4, 2, 4)
    assert cache.bytes == sum(2 * f for f in frames) * 80 * 4
    cache30 = MelCache(max_mb=10)  # the 30-s padded log-mel of the same clip is another entry
    assert torch.equal(log_mels(*first, pad_to_30s=True, cache=cache30), log_mels(*first, pad_to_30s=True))
    assert torch.equal(log_mels(*first, pad_to_30s=True, cache=cache30), log_mels(*first, pad_to_30s=True))
    assert (cache30.hits, cache30.misses, cache30.bytes) == (2, 2, 2 * 80 * 3000 * 4)


def test_mel_cache_keeps_no_more_than_its_bound():
    _, frames, clips = clip_mels([0.3, 1.7, 0.9])
    one = 2 * frames[0] * 80 * 4  # bytes of the first clip's log-mel
    cache = MelCache(max_mb=(one + 1) / 2**20)
    log_mels(*stack_clips(clips), cache=cache)
    assert (len(cache), cache.bytes) == (1, one)  # the others would not fit: not kept, nothing evicted
    log_mels(*stack_clips(clips), cache=cache)
    assert (cache.hits, cache.misses) == (1, 5)


def test_encode_audio_is_the_encoder_on_each_clips_log_mel(encoder):
    """Training's path (clips in, log-mel in the step) gives the features of the loader-made log-mel."""
    mels, frames, clips = clip_mels([0.3, 1.7, 0.9])
    audio, samples = stack_clips(clips)
    torch.testing.assert_close(encoder.encode_audio(audio, samples), encoder(collate(mels), torch.tensor(frames)))
    enc30 = WhisperEncoder(encoder.encoder, pad_to_30s=True)
    mels30 = torch.stack([log_mel(c, pad_to_30s=True) for c in clips])
    torch.testing.assert_close(enc30.encode_audio(audio, samples), enc30(mels30, torch.tensor(frames)))


def test_encoder_rejects_bad_input(encoder):
    with pytest.raises(ValueError, match="mel frames"):
        encoder(torch.zeros(1, 80, 10), torch.tensor([6]))
    with pytest.raises(ValueError, match="frames must be"):
        encoder(torch.zeros(1, 80, 3002), torch.tensor([1501]))
    with pytest.raises(ValueError, match="expected mels"):
        encoder(torch.zeros(1, 128, 10), torch.tensor([5]))


@pytest.mark.parametrize("n_mels", [80, 128])
def test_from_pretrained_whisper_checkpoint(tmp_path, n_mels):
    torch.manual_seed(1)
    dims = ModelDimensions(**{**asdict(DIMS), "n_mels": n_mels})
    model = whisper_model(dims)
    path = tmp_path / "tiny.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)  # openai-whisper's format
    enc = WhisperEncoder.from_pretrained(path)
    assert (enc.n_mels, enc.width) == (n_mels, 32)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(enc.encoder.state_dict()[k], v)
    mel = log_mel(torch.from_numpy(tone(0.6, 16000)), n_mels=n_mels)
    f = whisper_frames(9600)
    torch.testing.assert_close(enc(mel[None], torch.tensor([f])), WhisperEncoder(model.encoder)(mel[None], [f]))


# ---------------------------------------------------------------------------------------------
# SNAC


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return SnacCodec.from_config(SNAC_TINY)


def test_snac_save_and_load_directory(tmp_path, codec):
    codec.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == SNAC_TINY
    assert (tmp_path / "pytorch_model.bin").exists()
    loaded = SnacCodec.from_pretrained(tmp_path)
    for k, v in codec.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v)
    a = torch.from_numpy(tone(0.05, 24000))
    assert torch.equal(loaded.encode(a), codec.encode(a))
    assert loaded.sample_rate == 24000 and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def test_snac_encode_decode(codec):
    assert codec.samples_per_frame == 32
    for n in (1, 31, 32, 33, 1000):
        a = torch.from_numpy(tone(n / 24000, 24000)) if n > 1 else torch.tensor([0.1])
        frames = codec.encode(a)
        expected_n = math.ceil(n / 32)
        assert frames.shape == (expected_n, 7) and frames.dtype == torch.int64
        assert frames.min() >= 0 and frames.max() < 4096
        # the (N, 7) layout is SNAC's own codes, flattened in Mini-Omni's order
        own = codec.model.encode(torch.nn.functional.pad(a, (0, 32 * expected_n - n))[None, None])
        for mine, theirs in zip(unflatten_snac(frames), own):
            assert torch.equal(mine, theirs)
        audio = codec.decode(frames)
        assert audio.shape == (expected_n * 32,) and audio.dtype == torch.float32


def test_snac_encode_batch(codec):
    clips = [torch.from_numpy(tone(s, 24000, seed=i)) for i, s in enumerate([0.02, 0.05, 0.05, 0.031])]
    batch = codec.encode_batch(clips)
    assert [b.shape for b in batch] == [(math.ceil(c.numel() / 32), 7) for c in clips]
    longest = codec.encode(clips[1])
    assert torch.equal(batch[1], longest) and torch.equal(batch[2], codec.encode(clips[2]))
    assert codec.encode_batch([]) == []
    with pytest.raises(ValueError, match="empty"):
        codec.encode_batch([torch.zeros(0)])


def test_snac_decode_rejects_specials(codec):
    frames = torch.zeros(3, 7, dtype=torch.long)
    frames[1, 4] = 4097  # pad_a leaked into the codes
    with pytest.raises(ValueError, match="SNAC codes"):
        codec.decode(frames)
