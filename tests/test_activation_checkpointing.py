"""Activation checkpointing (``model.activation_checkpointing``): each block runs again in backward.

The real stage-3 module steps a tiny model, LoRA (with dropout, whose masks must be drawn alike
twice) and full, with and without the setting: the loss, every gradient and the weights after
AdamW steps are the plain run's, while backward keeps less and each block runs twice. The setting
reaches the model from the config, and the FSDP preset's old switch for it is refused.
"""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from runs import config
from tiny import WHISPER, all_tasks_batch, tiny_omni

from omni_train.audio import WhisperEncoder
from omni_train.builders import build_model, build_trainer
from omni_train.checkpoints import ModelBundle
from omni_train.config import ConfigError, LoraConfig, StageConfig
from omni_train.model import OmniGPT
from omni_train.resume import fsdp_strategy
from omni_train.stages import STAGES

LORA = LoraConfig(r=4, alpha=8.0, dropout=0.3, head=True)  # a high dropout: masks redrawn differently would show


def finetune_module(lora: bool, post_adapter: bool, checkpointed: bool):
    torch.manual_seed(0)
    model = OmniGPT(tiny_omni(post_adapter=post_adapter))
    model.apply(model._init_weights)
    if lora:
        model.add_lora(LORA, seed=1)
        with torch.no_grad():  # B starts at zero: give the updates (and their gradients' paths) a value
            for name, p in model.named_parameters():
                if model.part(name) == "lora":
                    p.normal_(0, 0.1)
    model.activation_checkpointing = checkpointed
    torch.manual_seed(1)
    module = STAGES["finetune"](ModelBundle(model, WhisperEncoder.from_dims(WHISPER)),
                                StageConfig(tasks={}, max_steps=10, max_lr=1e-2, warmup_steps=1))  # fmt: skip
    module.train()
    return module


def steps(module, n: int = 3):
    """Losses and gradients of `n` AdamW steps on one batch, the saved bytes of the first backward,
    and how often the blocks ran."""
    calls, in_block = [], []

    def counted(forward):  # not a forward hook: the checkpoint's recomputation runs none
        def run(*args, **kwargs):
            calls.append(1)
            in_block.append(1)
            try:
                return forward(*args, **kwargs)
            finally:
                in_block.pop()

        return run

    for block in module.model._all_blocks():
        block.forward = counted(block.forward)
    saved = {"all": 0, "in blocks": 0}

    def pack(t):
        saved["all"] += t.numel() * t.element_size()
        if in_block:
            saved["in blocks"] += t.numel() * t.element_size()
        return t

    optimizer = module.configure_optimizers()["optimizer"]
    batch = all_tasks_batch(module.model.config.vocab)
    torch.manual_seed(2)  # the dropout masks of both runs come from the same stream
    losses, grads = [], []
    for i in range(n):
        optimizer.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if i == 0 else torch.enable_grad():
            loss = module.model_step(batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad.clone() for k, p in module.model.named_parameters() if p.grad is not None})
        optimizer.step()
    return losses, grads, saved, len(calls)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("post_adapter", [False, True])
def test_checkpointed_steps_equal_the_plain_ones(lora, post_adapter):
    plain = finetune_module(lora, post_adapter, checkpointed=False)
    checkpointed = finetune_module(lora, post_adapter, checkpointed=True)
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.equal(a, b)
    losses, grads, saved, calls = steps(plain)
    c_losses, c_grads, c_saved, c_calls = steps(checkpointed)
    torch.testing.assert_close(c_losses, losses, rtol=0, atol=0)
    for want, got in zip(grads, c_grads):
        assert got.keys() == want.keys() and want
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)
    for (k, a), b in zip(plain.model.state_dict().items(), checkpointed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=k)  # after 3 AdamW steps
    n_blocks = len(list(plain.model._all_blocks()))
    assert calls == 3 * n_blocks and c_calls == 2 * 3 * n_blocks  # each block again in each backward
    # backward keeps the blocks' inputs, not what they compute (the checkpoint's own hooks take that)
    assert saved["in blocks"] > 0 and c_saved["in blocks"] == 0
    assert c_saved["all"] < saved["all"] - 0.9 * saved["in blocks"]


def test_no_recompute_without_gradients():
    module = finetune_module(lora=True, post_adapter=False, checkpointed=True)
    batch = all_tasks_batch(module.model.config.vocab)
    module.eval()
    with torch.no_grad():
        a = module.model_step(batch).loss
    plain = copy.deepcopy(module)
    plain.model.activation_checkpointing = False
    with torch.no_grad():
        assert torch.equal(a, plain.model_step(batch).loss)


def test_the_setting_reaches_the_model(tmp_path):
    cfg = config("experiment=demo", "model.activation_checkpointing=true", "model.lora.r=2", f"run_dir={tmp_path}")
    bundle = build_model(OmegaConf.to_object(cfg.model), None, seed=0, run_dir=tmp_path)
    assert bundle.model.activation_checkpointing and bundle.model.lora is not None
    cfg = config("experiment=demo", f"run_dir={tmp_path}")
    bundle = build_model(OmegaConf.to_object(cfg.model), None, seed=0, run_dir=tmp_path)
    assert not bundle.model.activation_checkpointing


@pytest.mark.parametrize("key", ["activation_checkpointing", "activation_checkpointing_policy"])
def test_the_fsdp_presets_own_switch_is_refused(key, tmp_path):
    with pytest.raises(ConfigError, match="model.activation_checkpointing"):
        fsdp_strategy(**{key: True})
    # from the command line: the one line, not Hydra's wrapper around it
    cfg = config("experiment=demo", "trainer=fsdp", f"+trainer.strategy.{key}=true", f"run_dir={tmp_path}")
    with pytest.raises(ConfigError, match=f"^trainer.strategy.{key}: use model.activation_checkpointing=true"):
        build_trainer(cfg, "adaption", tmp_path, [])
