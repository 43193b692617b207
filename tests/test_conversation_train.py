"""Conversations in a run: experiment=demo_dialogue feeds the demo's two-turn conversations to stage 3
only, mixed by weight, and its batches train the current answers of those rows."""

import pytest
import torch
from omegaconf import OmegaConf
from runs import config

from omni_train.builders import build_data, build_model, build_module, build_sources
from omni_train.config import ConfigError
from omni_train.tasks import TASKS, Task
from omni_train.vocab import IGNORE_INDEX, TEXT_LAYER


def test_conversations_feed_the_stages_they_name():
    cfg = config("experiment=demo_dialogue")
    _, adaption = build_sources(cfg, "adaption")
    assert not [k for k in adaption if k.startswith("conversations")]
    sources, weights = build_sources(cfg, "finetune")
    # stage 3's A1T2 (2.0) comes 3 : 1 from the conversations and VoiceAssistant, T1T2 (2.0) 3 : 1 : 1
    assert weights["conversations:A1T2"] == pytest.approx(1.5) and weights["voice_assistant:A1T2"] == pytest.approx(0.5)
    assert weights["conversations:T1T2"] == pytest.approx(1.2) and weights["textqa:T1T2"] == pytest.approx(0.4)
    assert sources["conversations:T1T2"].name == "conversations:T1T2"

    with pytest.raises(ConfigError, match=r"data.sources.conversations.stages: unknown stage 'fine_tune'"):
        build_sources(config("experiment=demo_dialogue", "data.sources.conversations.stages=[fine_tune]"), "finetune")


def test_demo_dialogue_batches_train_the_current_answer(tmp_path):
    cfg = config("experiment=demo_dialogue", f"run_dir={tmp_path}", "data.buffer_size=64")
    bundle = build_model(OmegaConf.to_object(cfg.model), None, seed=0, run_dir=tmp_path)
    data = build_data(cfg, "finetune", bundle)
    vocab = bundle.model.config.vocab
    def second_turns(batch):  # conversation rows that hold an earlier turn before the current one
        text = batch.input_ids[:, TEXT_LAYER]
        return [b for b, name in enumerate(batch.sources)
                if name.startswith("conversations") and (text[b] == vocab.input_t).sum() == 2]  # fmt: skip

    batch = next(batch for batch in data.train_dataloader() if second_turns(batch))
    for b in second_turns(batch):
        text, targets = batch.input_ids[b, TEXT_LAYER], batch.targets[b, TEXT_LAYER]
        marks = (text == vocab.answer_t).nonzero().flatten().tolist()
        assert len(marks) == 2  # the earlier turn's answer marker, then the current one's
        trained = (targets != IGNORE_INDEX).nonzero().flatten()
        assert int(trained.min()) == marks[1]  # loss from the current answer on (not on the earlier one)
        assert (batch.targets[b, :TEXT_LAYER] == IGNORE_INDEX).all()  # text answers: no audio loss
        assert TASKS[batch.task_ids[b]] in (Task.A1T2, Task.T1T2)
    out = build_module(cfg, "finetune", bundle).model_step(batch)
    assert torch.isfinite(out.loss)
