"""The demo recogniser (bundled encoder + CTC head) transcribes demo speech and scores it by CER."""

import pytest
import torch
import torch.nn as nn
import whisper
from tiny import WHISPER_DIMS, whisper_model

from omni_train.audio import WhisperEncoder, load_audio, save_wav
from omni_train.demo_asr import CTC_HEAD_FILE, DEMO_DATA, DemoRecognizer, cer, normalize, save_ctc_head
from omni_train.evaluate import librispeech_utterances

ALPHABET = " ABCDEFGHIJKLMNOPQRSTUVWXYZ'"


@pytest.fixture(scope="module")
def recognizer():
    return DemoRecognizer.load()


@pytest.fixture(scope="module")
def heldout():
    return librispeech_utterances(DEMO_DATA / "asr" / "heldout", limit=8)


def test_bundled_recognizer_transcribes_heldout_speech(recognizer, heldout):
    clips = [load_audio(path, 16_000) for _, path, _ in heldout]
    transcripts, score = recognizer.score_clips(clips, [text for _, _, text in heldout])
    assert score < 10.0, transcripts  # 3.7% on all 40 held-out sentences
    # one clip alone (a file, or a tensor at another rate) reads as it does in the padded batch
    _, path, text = heldout[0]
    alone, alone_score = recognizer.score(path, text)
    assert alone == transcripts[0]
    clip_24k = load_audio(path, 24_000)  # resampled twice: nearly, not exactly, the same input
    assert recognizer.score(clip_24k, text, sample_rate=24_000)[1] < 10.0
    assert alone_score == pytest.approx(cer([text], [alone], ALPHABET))


def test_wrong_text_scores_high(recognizer, heldout, tmp_path):
    _, path, _ = heldout[0]
    save_wav(tmp_path / "answer.wav", load_audio(path, 24_000), 24_000)  # as the demo writes answer.wav
    transcript, score = recognizer.score(tmp_path / "answer.wav", "a cow says moo")
    assert transcript and score > 50.0


def test_cer_normalises_case_punctuation_and_spaces():
    assert cer(["Two plus three, is five!"], ["TWO  PLUS THREE IS FIVE"], ALPHABET) == 0.0
    assert normalize("  it's  a Cat. ", ALPHABET) == "IT'S A CAT"
    assert cer(["abcd"], [""], ALPHABET) == 100.0
    assert cer(["ab", "cd"], ["ab", "xd"], ALPHABET) == pytest.approx(25.0)  # corpus: 1 edit in 4 characters
    with pytest.raises(ValueError, match="non-empty reference"):
        cer(["?!"], ["A"], ALPHABET)


def test_head_file_round_trip_and_mismatches(tmp_path):
    model = whisper_model(whisper.model.ModelDimensions(**WHISPER_DIMS))
    torch.save({"dims": WHISPER_DIMS, "model_state_dict": model.state_dict()}, tmp_path / "whisper.pt")
    with pytest.raises(FileNotFoundError, match=CTC_HEAD_FILE):
        DemoRecognizer.load(tmp_path / "whisper.pt")
    head = nn.Linear(WHISPER_DIMS["n_audio_state"], 4)
    save_ctc_head(tmp_path / CTC_HEAD_FILE, head, "AB ")
    loaded = DemoRecognizer.load(tmp_path / "whisper.pt")
    assert loaded.alphabet == "AB " and torch.equal(loaded.head.weight, head.weight)
    assert isinstance(loaded.transcribe([torch.randn(8000)])[0], str)
    with pytest.raises(ValueError, match="needs 4 outputs"):
        save_ctc_head(tmp_path / "bad.pt", nn.Linear(32, 3), "AB ")
    with pytest.raises(ValueError, match="does not fit"):
        DemoRecognizer(WhisperEncoder.from_dims(whisper.model.ModelDimensions(**WHISPER_DIMS)), nn.Linear(16, 4), "AB ")
