"""Each stage's freeze rule, checked by which parameters move after real optimizer steps."""

import pytest
import torch
from tiny import WHISPER, all_tasks_batch, tiny_omni

from omni_train.audio import WhisperEncoder
from omni_train.checkpoints import ModelBundle
from omni_train.config import StageConfig
from omni_train.model import OmniGPT
from omni_train.stages import STAGES, grad_norm, warmup_cosine

FREEZE_ONLY = StageConfig(tasks={}, max_steps=1)  # where only a stage's freeze rule is under test


def run_steps(stage, post_adapter, steps=3):
    torch.manual_seed(0)
    model = OmniGPT(tiny_omni(post_adapter=post_adapter))
    encoder = WhisperEncoder.from_dims(WHISPER)
    module = STAGES[stage](ModelBundle(model, encoder), StageConfig(tasks={}, max_steps=10, max_lr=1e-2, warmup_steps=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    opt = module.configure_optimizers()["optimizer"]
    batch = all_tasks_batch(model.config.vocab)
    for _ in range(steps):
        opt.zero_grad()
        module.model_step(batch).loss.backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert all(torch.equal(v, enc_before[k]) for k, v in encoder.state_dict().items()), "Whisper must stay frozen"
    return model, before, changed


@pytest.mark.parametrize("post_adapter", [False, True])
def test_alignment_trains_adapters_and_new_rows_only(post_adapter):
    model, before, changed = run_steps("alignment", post_adapter)
    V = model.config.vocab.base_vocab_size
    assert any(k.startswith("whisper_adapter.") for k in changed)
    assert not any(k.startswith(("transformer.h.", "transformer.ln_f")) for k in changed)
    for name in ("transformer.wte.weight", "lm_head.weight"):
        now = model.state_dict()[name]
        assert torch.equal(now[:V], before[name][:V]), f"base rows of {name} must stay bit-identical"
    assert not torch.equal(model.transformer.wte.weight[V:], before["transformer.wte.weight"][V:])
    if post_adapter:
        assert {k for k in changed if k.startswith("transformer.post_adapter")}
    else:
        audio_rows = slice(model.config.text_vocab_size, None)
        assert not torch.equal(model.lm_head.weight[audio_rows], before["lm_head.weight"][audio_rows])


@pytest.mark.parametrize("post_adapter", [False, True])
def test_adaption_freezes_adapters_and_trains_the_llm(post_adapter):
    model, _, changed = run_steps("adaption", post_adapter)
    assert not any(k.startswith(("whisper_adapter.", "transformer.post_adapter")) for k in changed)
    assert {"transformer.h.0.attn.qkv.weight", "transformer.wte.weight", "lm_head.weight"} <= changed


@pytest.mark.parametrize("post_adapter", [False, True])
def test_finetune_trains_everything(post_adapter):
    model, _, changed = run_steps("finetune", post_adapter)
    must = {"whisper_adapter.proj.weight", "transformer.h.1.mlp.proj.weight", "transformer.wte.weight"}
    if post_adapter:
        must.add("transformer.post_adapter_audio_lm_head.weight")
    assert must <= changed


def test_frozen_encoder_is_not_saved_in_lightning_checkpoints():
    module = STAGES["finetune"](ModelBundle(OmniGPT(tiny_omni()), WhisperEncoder.from_dims(WHISPER)), FREEZE_ONLY)
    ckpt = {"state_dict": module.state_dict()}
    assert any(k.startswith("encoder.") for k in ckpt["state_dict"])
    module.on_save_checkpoint(ckpt)
    assert not any(k.startswith("encoder.") for k in ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])  # strict: the encoder comes back from the live module


def test_warmup_then_cosine_to_min():
    lrs = [warmup_cosine(s, 10, 110, 4e-4, 4e-6) for s in range(120)]
    assert lrs[0] == pytest.approx(4e-5) and lrs[9] == pytest.approx(4e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[60] == pytest.approx((4e-4 + 4e-6) / 2)
    assert lrs[110] == lrs[119] == 4e-6


@pytest.mark.parametrize("stage", ["alignment", "adaption", "finetune"])
def test_fsdp_refused_only_where_rows_are_masked(stage):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from omni_train.builders import check_strategy
    from omni_train.config import ConfigError

    module = STAGES[stage](ModelBundle(OmniGPT(tiny_omni()), WhisperEncoder.from_dims(WHISPER)), FREEZE_ONLY)
    check_strategy(SimpleNamespace(strategy=DDPStrategy()), module)  # DDP keeps the hooks: always fine
    if stage == "alignment":
        with pytest.raises(ConfigError, match="trainer=ddp"):
            check_strategy(SimpleNamespace(strategy=FSDPStrategy()), module)
    else:
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()), module)


def test_only_the_steps_the_loggers_write_are_logged(tmp_path, monkeypatch):
    """Lightning's `log` costs milliseconds a call written or not: values go to it on logged steps only,
    and those steps still carry every value."""
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from omni_train.callbacks import Throughput
    from omni_train.data.skips import SkipCounter, SkipReport

    torch.manual_seed(0)
    model = OmniGPT(tiny_omni())
    module = STAGES["finetune"](ModelBundle(model, WhisperEncoder.from_dims(WHISPER)),
                                StageConfig(tasks={}, max_steps=10, max_lr=1e-3, warmup_steps=1))  # fmt: skip
    batch, calls = [None], []

    class Batch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch_, batch_idx) -> None:
            batch[0] = batch_idx

    log = module.log
    monkeypatch.setattr(module, "log", lambda name, *a, **k: calls.append(batch[0]) or log(name, *a, **k))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, log_every_n_steps=3, logger=CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Batch(), Throughput(), SkipReport()],
    )  # fmt: skip
    data = all_tasks_batch(model.config.vocab)
    data.skips, data.worker = SkipCounter(), 0  # as the loader's batches carry them
    trainer.fit(module, DataLoader([data] * 6, batch_size=None))

    assert set(calls) == {2, 5}  # the 3rd and 6th batches, which the logger writes (as step 2 and 5)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    for key in ("train/loss", "train/grad_norm", "train/padding", "train/bad_steps", "train/tokens_per_s",
                "train/skipped"):  # fmt: skip
        assert [int(r["step"]) for r in rows if r.get(key)] == [2, 5], key


def _fsdp_grad_norms(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: the same model whole and under FSDP, one backward on this rank's batch."""
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    whole = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    sharded = FullyShardedDataParallel(copy.deepcopy(whole), device_id=torch.device("cpu"))
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(rank))
    sharded(x).square().sum().backward()  # FSDP leaves each rank its shard of the ranks' mean gradient
    whole(x).square().sum().backward()
    for p in whole.parameters():  # what DDP would hold: the mean gradient, whole, on every rank
        dist.all_reduce(p.grad)
        p.grad /= 2

    def summed(t):
        dist.all_reduce(t)
        return t

    norms = {"whole": grad_norm(whole.parameters()), "shard": grad_norm(sharded.parameters()),
             "sharded": grad_norm(sharded.parameters(), summed)}  # fmt: skip
    torch.save(norms, f"{out}.{rank}")
    dist.destroy_process_group()


def test_the_gradient_norm_under_fsdp_is_the_whole_gradients(tmp_path):
    """The logged and checked `train/grad_norm` under FSDP: every rank gets the norm of the whole
    gradient, not of its own shard. Real FSDP shards on two CPU processes over gloo."""
    torch.multiprocessing.spawn(_fsdp_grad_norms, args=(str(tmp_path / "init"), str(tmp_path / "norms")), nprocs=2)
    ranks = [torch.load(tmp_path / f"norms.{r}") for r in range(2)]
    for norms in ranks:
        torch.testing.assert_close(norms["sharded"], norms["whole"])
        assert norms["shard"] < 0.99 * norms["whole"]  # a shard alone is not the whole
    torch.testing.assert_close(ranks[0]["sharded"], ranks[1]["sharded"])
