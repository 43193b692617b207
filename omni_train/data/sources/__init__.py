"""Where samples come from: one reader a dataset family, each a factory that returns a `Source`.

A config names a factory and its arguments; Hydra builds it::

    _target_: omni_train.data.sources.voice_assistant
    path: /data/VoiceAssistant-400K/data
    tasks: [A1A2, T1A2]

The reader contract (what a new source must do; `omni_train.data.sources.tables` is the example):

1. **The factory** takes plain keyword arguments (paths, column names, ...) plus ``tasks`` (the
   tasks it is asked to feed: a list of task codes, checked with `check_tasks` against the tasks it
   can make), ``name`` (its name in logs and skip counts), ``skips`` and ``max_skip_fraction``.
   It checks what it can at once, so that a wrong path or column is one line naming the file and
   column before training starts (`FileNotFoundError`, `MissingColumnError`), and reads nothing else.
2. **It returns** ``Source(name, read, skips, max_skip_fraction)``, where ``read(source)`` is a
   `functools.partial` of a module-level function (so it pickles into loader workers). Each
   iteration reads the data again, lazily, and yields `Sample`s.
3. **Shards**: ``read`` takes only the units (row groups, lines, utterances) that
   ``source.owns(unit)``; units are counted in one fixed order across all files, so the ranks and
   loader workers read disjoint shares and together read everything once.
4. **Bad rows cost a sample, not the run**: build each sample inside ``source.make(row, task,
   build)``; ``build`` raises `BadRow(reason, detail)` for anything wrong with the row (`Row` does
   this for missing, empty or malformed values), which is counted under that reason with the row's
   id. ``row`` names where to look: ``"<file name>:<row>"`` for parquet (0-based) and JSONL (line
   number, 1-based), the utterance id for LibriSpeech, the index in the split for HF datasets.
   A row may give several samples, one per configured task; they share its row id. A `BadRow`
   that stands for many rows (a lost shard or row group) says how many (``rows=``), so the skip
   fraction weighs it right. Read text as bytes and decode a line at a time (`files.text_line`),
   so that a byte that is not UTF-8 costs its line, not the run.
5. **Limits**: `Source.make` stops the run (`TooManySkips`) once the skips are clearly over the
   source's ``max_skip_fraction``, or (in training) nothing was made for `Source.max_streak`
   attempts in a row.

`conversations` reads multi-turn dialogues (a ``messages`` column in the chat convention): each
answered turn is a sample whose earlier turns are its history.

`files.read_rows` reads parquet and JSONL for any table source (only the needed columns; sharded;
unreadable rows come back as `BadRow` values); `librispeech.utterances` scans LibriSpeech-layout
folders for the training source, omni-prep and the evaluations alike; `corpora.clips` lists the
clips of the other layouts speech corpora ship in (LJSpeech, Common Voice, MLS, LibriTTS, VCTK, a
folder of audio/txt pairs), which `corpora.corpus` reads as ASR and TTS samples.
"""

from omni_train.data.sources.base import BadRow, MissingColumnError, Row, Source, check_tasks, to_audio, to_frames
from omni_train.data.sources.conversations import conversations, read_conversation
from omni_train.data.sources.corpora import LAYOUTS, Clip, clips, corpus
from omni_train.data.sources.files import TABLE_EXTS, first_object, read_rows, resolve_files, text_line
from omni_train.data.sources.hf import hf_asr
from omni_train.data.sources.librispeech import AUDIO_EXTS, Utterance, is_librispeech, librispeech, utterances
from omni_train.data.sources.tables import asr_manifest, moss_audioqa, open_orca, slam_s2s_jsonl, voice_assistant

__all__ = [
    "AUDIO_EXTS",
    "LAYOUTS",
    "TABLE_EXTS",
    "BadRow",
    "Clip",
    "MissingColumnError",
    "Row",
    "Source",
    "Utterance",
    "asr_manifest",
    "check_tasks",
    "conversations",
    "clips",
    "corpus",
    "first_object",
    "hf_asr",
    "is_librispeech",
    "librispeech",
    "moss_audioqa",
    "open_orca",
    "read_conversation",
    "read_rows",
    "resolve_files",
    "slam_s2s_jsonl",
    "text_line",
    "to_audio",
    "to_frames",
    "utterances",
    "voice_assistant",
]
