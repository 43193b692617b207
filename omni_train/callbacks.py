"""Listening to the model while it trains: answers to fixed questions, and held-out WER.

A loss curve says little about whether a speech model has learnt to talk; its answers do. Every
N steps `SampleLogger` answers the same few questions with the model as it stands and logs the text,
the speech (decoded with the stage's SNAC codec) and a mel-spectrogram picture of it, so a run can
be listened to step by step; each validation also measures word error rate on held-out speech.

`Throughput` and `LossHistory` keep what a stage's summary reports: samples and tokens a second,
and the first and last loss of each task.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from litgpt.tokenizer import Tokenizer

from omni_train.atomic import write_json
from omni_train.audio import SNAC_SAMPLE_RATE, WHISPER_SAMPLE_RATE, SnacCodec, load_audio, save_wav
from omni_train.config import DEMO_DATA
from omni_train.evaluate import error_rate, librispeech_utterances, mel_picture, scoring
from omni_train.generate import answer, transcribe
from omni_train.tasks import Task

log = logging.getLogger("omni_train")
DEFAULT_QUESTION = "what can you do for me"


@dataclass
class Probe:
    """One fixed question: spoken (`audio`, a file) or written (`text`), and the task answering it."""

    task: str
    text: str | None = None
    audio: str | None = None
    reference: str | None = None  # the transcript of a spoken question, when its folder has one


@dataclass
class Sample:
    """One probe's answer at one step, as logged."""

    step: int
    question: str
    task: str
    text: str
    frames: int
    seconds: float
    reference: str | None = None


def spoken_questions(speech: str | list[str] | None, limit: int) -> list[tuple[str, str | None]]:
    """(audio file, transcript or None) of each spoken question: files, or a LibriSpeech folder's first `limit`."""
    if speech is None:
        speech = str(DEMO_DATA / "asr" / "heldout")
    if isinstance(speech, (str, Path)) and Path(speech).is_dir():
        return [(str(path), text) for _, path, text in librispeech_utterances(speech, limit)]
    files = [speech] if isinstance(speech, (str, Path)) else list(speech)
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"SampleLogger speech: {f}: no such audio file or LibriSpeech-layout folder")
    return [(str(f), None) for f in files]


@contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode for a moment, then every submodule back in the mode it was in."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


class SampleLogger(L.Callback):
    """Every `every_n_steps` steps and at the end of a stage, on rank 0: answers to fixed questions.

    Each answer is logged as text, speech and a mel-spectrogram picture: to wandb (a table,
    ``wandb.Audio``, images), TensorBoard (``add_text``, ``add_audio``, ``add_figure``) and, for
    any other logger (CSV) or none, as files ``samples/step-XXXXXX.json``, ``.wav`` and ``.png``
    in its log folder. Each validation also logs ``val/wer``: greedy ASR on held-out speech.

    The tokenizer and SNAC codec are the stage's (its module's `ModelBundle`).
    Generation runs on rank 0 while the other ranks wait, so keep the probes few and short; under
    FSDP the model is sharded and the callback does nothing.

    Args:
        every_n_steps: steps between samples (0: only at the end).
        speech: spoken questions: audio files, or a LibriSpeech-layout folder; None: the demo's held-out clips.
        max_speech: how many utterances of a folder.
        speech_task: the task answering them: A1A2, A1T2 or A1T1.
        text: written questions (one or a list); None: one general question.
        text_task: T1A2 or T1T2.
        max_new_tokens: answer steps at most.
        wer: a LibriSpeech-layout folder for ``val/wer``; None: no WER.
        wer_max_utterances: its first N utterances (None: all).
        wer_batch_size: utterances decoded at once.
        language: of the held-out speech: its normaliser, and ``val/cer`` instead of ``val/wer`` for
            languages written without spaces (`omni_train.evaluate.scoring`).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        speech: str | list[str] | None = None,
        max_speech: int = 2,
        speech_task: str = "A1A2",
        text: str | list[str] | None = None,
        text_task: str = "T1A2",
        max_new_tokens: int = 96,
        wer: str | None = None,
        wer_max_utterances: int | None = 50,
        wer_batch_size: int = 16,
        language: str = "en",
    ) -> None:
        self.metric = scoring(language).metric  # an unknown language fails before training
        self.language = language
        for key, task, spoken in (("speech_task", speech_task, True), ("text_task", text_task, False)):
            if task not in Task.__members__ or Task(task).audio_in != spoken:
                allowed = [t.value for t in Task if t.audio_in == spoken]
                raise ValueError(f"SampleLogger {key}={task!r}: choose one of {', '.join(allowed)}")
        questions = [text] if isinstance(text, str) else list(text or [DEFAULT_QUESTION])
        self.probes = [Probe(speech_task, audio=f, reference=r) for f, r in spoken_questions(speech, max_speech)]
        self.probes += [Probe(text_task, text=q) for q in questions]
        self.wer_utterances = librispeech_utterances(wer, wer_max_utterances) if wer else []  # checks the folder now
        self.every_n_steps, self.max_new_tokens, self.wer_batch_size = every_n_steps, max_new_tokens, wer_batch_size
        self._codec = self._waves = self._wer_waves = None
        self._last_step = -1

    # ---- hooks ----------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.log_samples(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        if trainer.global_step != self._last_step:
            self.log_samples(trainer, module)

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not self.wer_utterances or trainer.sanity_checking or not self._usable(trainer):
            return
        with torch.inference_mode(), evaluating(module.model):
            if self._wer_waves is None:
                self._wer_waves = [load_audio(path, WHISPER_SAMPLE_RATE) for _, path, _ in self.wer_utterances]
            hyps = transcribe(module.model, module.encoder, self._tokenizer(module), self._wer_waves,
                              batch_size=self.wer_batch_size, max_new_tokens=self.max_new_tokens)  # fmt: skip
        score = error_rate([text for _, _, text in self.wer_utterances], hyps, self.language)
        module.log(f"val/{self.metric}", score, rank_zero_only=True, batch_size=len(hyps))

    # ---- generation -----------------------------------------------------------------------------
    def _usable(self, trainer) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy

        if not trainer.is_global_zero:
            return False
        if isinstance(trainer.strategy, FSDPStrategy):
            log.warning("SampleLogger: the model is sharded under FSDP; no samples or val/wer are logged")
            return False
        return True

    @staticmethod
    def _tokenizer(module) -> Tokenizer:
        return Tokenizer(module.bundle.tokenizer_dir)

    @torch.inference_mode()
    def answers(self, module, step: int) -> list[tuple[Sample, torch.Tensor | None]]:
        """Each probe's answer from the model as it stands, with its speech ``(S,)`` (None if it has none)."""
        model, tokenizer = module.model, self._tokenizer(module)
        if self._waves is None:
            self._waves = [load_audio(p.audio, WHISPER_SAMPLE_RATE) if p.audio else None for p in self.probes]
        out = []
        with evaluating(model):
            for probe, wave in zip(self.probes, self._waves):
                question = {"audio": wave} if probe.audio else {"text": probe.text}
                reply = answer(model, module.encoder, tokenizer, **question, task=probe.task,
                               max_new_tokens=self.max_new_tokens)  # fmt: skip
                speech, frames = None, 0 if reply.frames is None else int(reply.frames.size(0))
                if frames:
                    if self._codec is None:
                        self._codec = SnacCodec.from_pretrained(module.bundle.snac, device=module.device)
                    speech = self._codec.decode(reply.frames)
                seconds = 0.0 if speech is None else round(speech.numel() / self._codec.sample_rate, 3)
                name = Path(probe.audio).name if probe.audio else probe.text
                out.append((Sample(step, name, probe.task, reply.text, frames, seconds, probe.reference), speech))
        return out

    def log_samples(self, trainer, module) -> None:
        self._last_step = step = trainer.global_step
        if not self._usable(trainer):
            return
        answers = self.answers(module, step)
        rate = self._codec.sample_rate if self._codec is not None else SNAC_SAMPLE_RATE
        figures = [mel_picture(s, rate, f"{a.task}: {a.question}"[:80]) if s is not None else None for a, s in answers]
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        file_dir = None
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _to_wandb(logger, step, answers, figures, rate)
            elif isinstance(logger, TensorBoardLogger):
                _to_tensorboard(logger, step, answers, figures, rate)
            elif file_dir is None:
                file_dir = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir) / "samples"
        if file_dir is None and not trainer.loggers:
            file_dir = Path(trainer.default_root_dir) / "samples"
        if file_dir is not None:
            _to_files(file_dir, step, answers, figures, rate)
        import matplotlib.pyplot as plt

        for fig in figures:
            if fig is not None:
                plt.close(fig)
        log.info("step %d samples: %s", step, " | ".join(f"{a.question} -> {a.text[:60]!r}" for a, _ in answers))


# ---- what the run summary reports -----------------------------------------------------------------
class Throughput(L.Callback):
    """samples/s and tokens/s (real, unpadded positions) of each training step, over the whole stage too."""

    def __init__(self) -> None:
        self.samples = self.tokens = 0
        self.seconds = 0.0
        self._start = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._start
        n, t = batch.input_ids.size(0), int(batch.lengths.sum())
        self.samples, self.tokens, self.seconds = self.samples + n, self.tokens + t, self.seconds + dt
        if module.logs_this_step():  # Lightning's log costs ~4 ms a call, written or not
            module.log("train/samples_per_s", n / dt, batch_size=n)
            module.log("train/tokens_per_s", t / dt, batch_size=n, prog_bar=True)


class LossHistory(L.Callback):
    """Keeps the per-task losses every `every` steps, for the stage summary (first and last values)."""

    def __init__(self, every: int) -> None:
        self.every, self.rows = every, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 1 or step % self.every == 0:
            metrics = {k: float(v) for k, v in module.last_metrics.items() if k.startswith("loss")}
            self.rows.append({"step": step, **metrics})

    def state_dict(self) -> dict:  # a resumed stage's summary still starts at step 1
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def first_last(self, window: int = 5) -> dict[str, dict[str, float]]:
        """Per metric: the mean of its first and of its last `window` recorded values."""
        keys = sorted({k for r in self.rows for k in r if k != "step"})
        out = {}
        for k in keys:
            values = [r[k] for r in self.rows if k in r and math.isfinite(r[k])]
            if values:
                n = min(window, max(1, len(values) // 3))
                out[k] = {"first": sum(values[:n]) / n, "last": sum(values[-n:]) / n}
        return out


def stage_progress_bar(stage: str) -> L.Callback:
    """Lightning's progress bar (rich where installed, else tqdm) reading ``adaption 186/340``: a
    stage trains for steps, not epochs, so Lightning's own "Epoch 0/-2" says nothing."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if _RICH_AVAILABLE:

        class StageBar(RichProgressBar):
            def _get_train_description(self, current_epoch: int) -> str:
                return stage

    else:

        class StageBar(TQDMProgressBar):
            def on_train_epoch_start(self, trainer, *args) -> None:
                super().on_train_epoch_start(trainer, *args)
                self.train_progress_bar.set_description(stage)

    return StageBar()


# ---- the loggers ----------------------------------------------------------------------------------
def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _to_wandb(logger, step: int, answers, figures, rate: int) -> None:
    columns = ["step", "task", "question", "reference", "answer", "seconds"]
    rows = [[a.step, a.task, a.question, a.reference or "", a.text, a.seconds] for a, _ in answers]
    logger.log_table("samples/answers", columns=columns, data=rows, step=step)
    spoken = [(a, s, f) for (a, s), f in zip(answers, figures) if s is not None]
    if spoken:
        captions = [f"{a.question}: {a.text}" for a, _, _ in spoken]
        logger.log_audio("samples/speech", [s.numpy() for _, s, _ in spoken], step=step, caption=captions,
                         sample_rate=[rate] * len(spoken))  # fmt: skip
        logger.log_image("samples/mel", [_pixels(f) for _, _, f in spoken], step=step, caption=captions)


def _to_tensorboard(logger, step: int, answers, figures, rate: int) -> None:
    writer = logger.experiment
    for i, ((a, speech), fig) in enumerate(zip(answers, figures)):
        lines = [f"**{a.task}** {a.question}", f"answer: {a.text}"]
        lines += [f"reference: {a.reference}"] if a.reference else []
        writer.add_text(f"samples/{i}", "  \n".join(lines), step)
        if speech is not None:
            writer.add_audio(f"samples/{i}/speech", speech[None], step, sample_rate=rate)
            writer.add_figure(f"samples/{i}/mel", fig, step, close=False)


def _to_files(directory: Path, step: int, answers, figures, rate: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:06d}"
    records = []
    for i, ((a, speech), fig) in enumerate(zip(answers, figures)):
        record = asdict(a)
        if speech is not None:
            save_wav(directory / f"{stem}-{i}.wav", speech, rate)
            fig.savefig(directory / f"{stem}-{i}.png")
            record.update(wav=f"{stem}-{i}.wav", mel=f"{stem}-{i}.png")
        records.append(record)
    write_json(directory / f"{stem}.json", records)
