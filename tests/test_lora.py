"""LoRA (``model.lora``): litgpt's LoRA layers in the base LLM, composed with each stage's freeze rule.

Tiny models of the real classes; what is checked: the LoRA model starts as the model it was made
from, each stage trains exactly its parts and never the base (bit for bit), the merged weights
give the unmerged model's logits (our format, Mini-Omni's, and generation), and the loss over a
head split into row blocks equals the loss over the whole head. End to end: a LoRA run under DDP
(sample logger, val/wer, plain merged folders that omni-infer and omni-eval read) and an
interrupted LoRA stage with activation checkpointing that resumes exactly. With MINI_OMNI_DIR set,
Mini-Omni's own `GPT` scores a LoRA export as the unmerged model does; with OMNI_TEST_FSDP_CPU set,
a LoRA stage under the FSDP preset on 2 CPU processes resumes exactly from its sharded checkpoint.
"""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from runs import DEMO, SHORT_STAGE1, STEPS, config, omni_train, trace
from tiny import FAMILIES, WHISPER, all_tasks_batch, tiny_omni, train_tokenizer

from omni_train import checkpoints as ckpt
from omni_train.audio import WhisperEncoder
from omni_train.checkpoints import ModelBundle
from omni_train.cli.eval import main as eval_main
from omni_train.cli.export import main as export_main
from omni_train.cli.infer import main as infer_main
from omni_train.config import LoraConfig, StageConfig
from omni_train.data.collator import build_prompt
from omni_train.data.samples import Encoded
from omni_train.generate import generate
from omni_train.loss import Segment, head_cross_entropy, omni_loss
from omni_train.model import OmniGPT
from omni_train.stages import STAGES
from omni_train.tasks import Task
from omni_train.train import train

LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0, head=True)
# the parts each stage trains in a LoRA model (`OmniGPT.part`), besides the post-adapter where there is one
TRAINS = {
    "alignment": {"adapter", "new_rows"},
    "adaption": {"lora", "new_rows"},
    "finetune": {"adapter", "lora", "new_rows"},
}


def plain_model(family="qwen2", seed=0, **omni) -> OmniGPT:
    torch.manual_seed(seed)
    model = OmniGPT(tiny_omni(family, **omni))
    model.apply(model._init_weights)
    return model


def lora_model(family="qwen2", lora=LORA, **omni) -> tuple[OmniGPT, OmniGPT]:
    """A LoRA model and a copy of the plain model it was made from."""
    model = plain_model(family, **omni)
    start = copy.deepcopy(model)
    model.add_lora(lora, seed=1)
    return model, start


def trained_updates(model: OmniGPT, seed: int = 2) -> OmniGPT:
    """Non-zero LoRA updates and new rows, as training leaves them (B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if model.part(name) in ("lora", "new_rows"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def inputs(model: OmniGPT, B: int = 2, T: int = 12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.padded_vocab_size, (B, 8, T), generator=g)
    feats = torch.randn(B, 5, model.config.whisper_adapter_dim, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 1:4] = True
    return ids, feats, torch.tensor([3, 3]), mask


def assert_same_logits(a: OmniGPT, b: OmniGPT, exact: bool = False) -> None:
    a.eval(), b.eval()
    x = inputs(a)
    with torch.no_grad():
        for out_a, out_b in zip(a(*x), b(*x)):
            if exact:
                assert torch.equal(out_a, out_b)
            else:
                torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)


def base_tensors(model: OmniGPT) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if model.part(k) == "base"}


# ---- the LoRA model ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("post_adapter", [False, True])
def test_a_lora_model_starts_as_the_model_it_was_made_from(family, post_adapter):
    model, start = lora_model(family, post_adapter=post_adapter)
    assert_same_logits(model, start, exact=True)  # every B is zero: the update is exactly nothing
    parts = {name: model.part(name) for name, _ in model.named_parameters()}
    assert not {"llm", "tables"} & set(parts.values())  # the base LLM is the part no stage trains
    assert parts["transformer.h.0.attn.qkv.lora_A"] == parts["lm_head.lora_B"] == "lora"
    assert parts["transformer.h.1.mlp.proj.linear.weight"] == parts["transformer.wte.weight"] == "base"
    assert parts["transformer.wte.new"] == parts["lm_head.new"] == "new_rows"
    V = model.config.vocab.base_vocab_size
    assert model.transformer.wte.weight.shape[0] == model.lm_head.linear.weight.shape[0] == V
    if post_adapter:  # new blocks train in full: no LoRA there
        assert not any("lora_" in n for n, _ in model.transformer.post_adapter.named_parameters())


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("post_adapter", [False, True])
def test_merged_weights_give_the_unmerged_logits(family, post_adapter):
    model, _ = lora_model(family, post_adapter=post_adapter)
    trained_updates(model)
    merged = OmniGPT(model.config)
    merged.load_state_dict(model.merged_state_dict(), strict=True)  # a plain model, no LoRA code
    assert list(model.merged_state_dict()) == list(merged.state_dict())
    assert_same_logits(model, merged)


def test_only_chosen_projections_get_an_update():
    model, _ = lora_model(lora=LoraConfig(r=2, query=True, key=False, value=True, projection=False, mlp=False))
    names = set(model.lora_state_dict())
    assert {"transformer.h.0.attn.qkv.lora_A", "transformer.h.1.attn.qkv.lora_B"} <= names
    assert not any(".mlp." in n or ".attn.proj." in n or n.startswith("lm_head.") for n in names)
    trained_updates(model)
    qkv = model.merged_state_dict()["transformer.h.0.attn.qkv.weight"]
    c = model.config
    q, k = c.n_head * c.head_size, c.n_query_groups * c.head_size
    base = model.transformer.h[0].attn.qkv.linear.weight
    assert torch.equal(qkv[q : q + k], base[q : q + k])  # the key rows have no update
    assert not torch.equal(qkv[:q], base[:q])


# ---- the freeze rules, composed --------------------------------------------------------------------
@pytest.mark.parametrize("stage", list(TRAINS))
@pytest.mark.parametrize("post_adapter", [False, True])
def test_each_stage_trains_its_parts_and_never_the_base(stage, post_adapter):
    model, _ = lora_model(post_adapter=post_adapter)
    encoder = WhisperEncoder.from_dims(WHISPER)
    cfg = StageConfig(tasks={}, max_steps=10, max_lr=1e-2, warmup_steps=1)
    module = STAGES[stage](ModelBundle(model, encoder), cfg)
    trains = TRAINS[stage] | ({"post_adapter"} if post_adapter and stage != "adaption" else set())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = module.configure_optimizers()["optimizer"]
    batch = all_tasks_batch(model.config.vocab)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        module.model_step(batch).loss.backward()
        if step == 0:  # exactly the intended parameters get gradients
            got = {n for n, p in model.named_parameters() if p.grad is not None}
            assert got == {n for n, _ in model.named_parameters() if model.part(n) in trains}
        opt.step()
    now = model.state_dict()
    for k, v in before.items():
        if model.part(k) == "base":  # the base LLM, its norms, biases and base vocabulary rows
            assert torch.equal(now[k], v), f"{k} must stay bit-identical"
    changed = {model.part(k) for k, v in before.items() if not torch.equal(now[k], v)}
    assert changed == trains


def test_fsdp_is_allowed_in_every_lora_stage():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from omni_train.builders import check_strategy

    for stage in STAGES:  # no table is masked: the new rows are tensors of their own
        module = STAGES[stage](ModelBundle(lora_model()[0], WhisperEncoder.from_dims(WHISPER)), StageConfig(tasks={}, max_steps=1))
        check_strategy(SimpleNamespace(strategy=FSDPStrategy()), module)


# ---- the loss over a split head ---------------------------------------------------------------------
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_a_head_in_row_blocks_scores_as_the_whole_head(softcap, with_bias):
    torch.manual_seed(0)
    base, new = torch.randn(40, 16), torch.randn(20, 16, requires_grad=True)  # base rows frozen
    bias = (torch.randn(40), torch.randn(20, requires_grad=True)) if with_bias else None
    whole = torch.cat([base, new.detach()]).requires_grad_()
    whole_bias = torch.cat([b.detach() for b in bias]).requires_grad_() if with_bias else None
    hs = [torch.randn(k, 16, requires_grad=True) for k in (9, 6)]
    ranges = [(0, 45), (45, 60)]  # the first crosses from the base rows into the new ones
    ts = [torch.randint(0, stop - start, (h.size(0),)) for h, (start, stop) in zip(hs, ranges)]
    segments = [Segment(h, torch.arange(h.size(0)), t, *r, weight) for h, t, r, weight in zip(hs, ts, ranges, (1, 0.5))]
    split_total, split = head_cross_entropy((base, new), bias, segments, chunk_size=4, softcap=softcap)
    ref_total, ref = head_cross_entropy(whole, whole_bias, segments, chunk_size=4, softcap=softcap)
    torch.testing.assert_close(split_total, ref_total)
    for (m, losses, ok), (m_ref, losses_ref, ok_ref) in zip(split, ref):
        torch.testing.assert_close(m, m_ref)
        torch.testing.assert_close(losses, losses_ref)
        assert torch.equal(ok, ok_ref)
    wrt = [new, *hs] + ([bias[1]] if with_bias else [])
    grads = torch.autograd.grad(split_total, wrt)
    ref_wrt = [whole, *hs] + ([whole_bias] if with_bias else [])
    ref_grads = torch.autograd.grad(ref_total, ref_wrt)
    torch.testing.assert_close(grads[0], ref_grads[0][40:])  # the new rows' gradient, and only theirs
    for g, r in zip(grads[1:3], ref_grads[1:3]):
        torch.testing.assert_close(g, r)
    if with_bias:
        torch.testing.assert_close(grads[3], ref_grads[3][40:])


@pytest.mark.parametrize("post_adapter", [False, True])
def test_the_loss_of_a_lora_model_is_its_merged_models_loss(post_adapter):
    model, _ = lora_model(post_adapter=post_adapter)
    trained_updates(model)
    merged = OmniGPT(model.config)
    merged.load_state_dict(model.merged_state_dict())
    batch = all_tasks_batch(model.config.vocab)
    outs = []
    for m in (model, merged):
        h_text, h_audio = m.hidden_states(batch.input_ids)
        out = omni_loss(m, h_text, h_audio, batch.targets, batch.task_ids)
        out.loss.backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    V = model.config.vocab.base_vocab_size
    torch.testing.assert_close(model.lm_head.new.grad, merged.lm_head.weight.grad[V:])
    torch.testing.assert_close(model.transformer.wte.new.grad, merged.transformer.wte.weight.grad[V:])


# ---- what a LoRA model writes, and what reads it --------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(directory)
    return directory


def test_model_folder_holds_merged_weights_and_the_lora_matrices_alone(tmp_path, tokenizer_dir):
    model, start = lora_model()
    trained_updates(model)
    bundle = ModelBundle(model, None, tokenizer_dir, "whisper.pt", "snac", False, "/runs/x/alignment/model")
    out = bundle.save(tmp_path / "model")
    loaded, loaded_config = ckpt.load_omni(out)  # our normal format, loaded with no LoRA code
    assert loaded_config == model.config and loaded.lora is None
    assert_same_logits(model, loaded)
    info = json.loads((out / ckpt.LORA_INFO).read_text())
    assert info["applies_to"] == "/runs/x/alignment/model" and info["r"] == LORA.r and info["head"] is True
    lora = torch.load(out / ckpt.LORA_FILE, weights_only=True)
    assert set(lora) == set(model.lora_state_dict()) and all("lora_" in k for k in lora)
    # the base they apply to, plus them, gives the saved backbone (its adapters and new rows are full tensors)
    rebuilt = copy.deepcopy(start)
    rebuilt.add_lora(LORA)
    assert set(rebuilt.load_state_dict(lora, strict=False).missing_keys) == {
        n for n in rebuilt.state_dict() if rebuilt.part(n) in ("base", "new_rows", "adapter")
    }
    saved = torch.load(out / ckpt.WEIGHTS_FILE, weights_only=True)
    for k, v in rebuilt.merged_state_dict().items():
        if k.startswith("transformer.h."):
            torch.testing.assert_close(v, saved[k], rtol=0, atol=0)


@pytest.mark.parametrize("post_adapter", [False, True])
def test_mini_omni_export_of_a_lora_run_is_merged(tmp_path, tokenizer_dir, post_adapter):
    model, start = lora_model(post_adapter=post_adapter, asr_adapter="llamamlp")
    trained_updates(model)
    folder = ModelBundle(model, None, tokenizer_dir, "small", "snac", origin="base").save(tmp_path / "ours")
    export_main(["--format", "mini-omni", str(folder), str(tmp_path / "mini")])  # from the stage's model/
    values = yaml.safe_load((tmp_path / "mini" / ckpt.CONFIG_FILE).read_text())
    assert set(values) <= set(ckpt.MINI_OMNI_FIELDS)  # Mini-Omni's Config(**yaml) accepts it
    state = torch.load(tmp_path / "mini" / ckpt.WEIGHTS_FILE, weights_only=True)
    assert not any("lora_" in k or ".linear." in k or k.endswith(".new") for k in state)
    # Mini-Omni's `GPT` shape: the names and shapes of a plain model's export, which the Mini-Omni
    # parity test (test_mini_omni_parity.py) loads into Mini-Omni's own code
    plain_dir = ckpt.export_mini_omni(start, tmp_path / "plain", tokenizer_dir)
    plain = torch.load(plain_dir / ckpt.WEIGHTS_FILE, weights_only=True)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in plain.items()}
    assert values == yaml.safe_load((tmp_path / "plain" / ckpt.CONFIG_FILE).read_text())
    imported, _ = ckpt.import_mini_omni(tmp_path / "mini")
    assert_same_logits(model, imported)
    direct = ckpt.export_mini_omni(model, tmp_path / "direct", tokenizer_dir)  # the unmerged model itself
    assert torch.load(direct / ckpt.WEIGHTS_FILE, weights_only=True).keys() == state.keys()


# Runs with Mini-Omni's vendored litgpt 0.4 first on sys.path: its `GPT` loads the export strictly and
# scores text-only ids ``(B, 8, T)`` (given as its 8 ``(B, T)`` rows); prints nothing, saves (xa, xt).
MINI_OMNI_FORWARD = """
import sys, torch, yaml
mini, ckpt_dir, ids_file, out_file = sys.argv[1:]
sys.path.insert(0, mini)
from litgpt.config import Config
from litgpt.model import GPT
gpt = GPT(Config(**yaml.safe_load(open(ckpt_dir + "/model_config.yaml"))))
gpt.load_state_dict(torch.load(ckpt_dir + "/lit_model.pth", weights_only=True), strict=True)
ids = torch.load(ids_file)
with torch.no_grad():
    xa, xt = gpt.eval()(None, [ids[:, i] for i in range(8)])
torch.save((torch.stack(xa, 1), xt), out_file)
"""


@pytest.mark.skipif(
    not os.environ.get("MINI_OMNI_DIR"), reason="MINI_OMNI_DIR is not set: it names a gpt-omni/mini-omni checkout"
)
@pytest.mark.parametrize("post_adapter", [False, True])
def test_mini_omnis_own_gpt_gives_the_unmerged_lora_models_logits(tmp_path, tokenizer_dir, post_adapter):
    model, _ = lora_model(post_adapter=post_adapter, asr_adapter="llamamlp")
    trained_updates(model)
    out = ckpt.export_mini_omni(model, tmp_path / "mini", tokenizer_dir)
    ids = torch.randint(0, model.config.padded_vocab_size, (2, 8, 12), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    cmd = [sys.executable, "-c", MINI_OMNI_FORWARD, os.environ["MINI_OMNI_DIR"], str(out), str(tmp_path / "ids.pt"),
           str(tmp_path / "logits.pt")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    audio, text = torch.load(tmp_path / "logits.pt", weights_only=True)
    with torch.no_grad():
        want_text, want_audio = model.eval()(ids)
    torch.testing.assert_close(text, want_text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(audio, want_audio, rtol=1e-5, atol=1e-5)


def test_generation_on_the_unmerged_model_equals_the_merged_model(tokenizer_dir):
    model, _ = lora_model(post_adapter=False)
    trained_updates(model)
    merged = OmniGPT(model.config)
    merged.load_state_dict(model.merged_state_dict())
    vocab = model.config.vocab
    prompts = [build_prompt(Encoded(t, [], [5, 6, 7]), vocab) for t in (Task.T1A2, Task.T1T2)]
    tasks = [Task.T1A2, Task.T1T2]
    got = generate(model.eval(), prompts, tasks, max_new_tokens=12)  # the sample logger's path, KV cache
    assert got == generate(merged.eval(), prompts, tasks, max_new_tokens=12)
    assert all(len(g.text_tokens) for g in got)


# ---- settings ---------------------------------------------------------------------------------------
def test_add_lora_refuses_what_it_cannot_do():
    model, _ = lora_model()
    with pytest.raises(ValueError, match="already"):
        model.add_lora(LORA)
    with pytest.raises(ValueError, match="r > 0"):
        plain_model().add_lora(LoraConfig(r=0))


def test_lora_settings_without_a_rank_are_named(caplog):
    from omni_train.train import check

    check(config("experiment=demo", "model.lora.alpha=32"))
    assert "model.lora.alpha=32.0: not used, LoRA is off (model.lora.r=0)" in caplog.text
    caplog.clear()
    check(config("experiment=demo", "model.lora.r=8", "model.lora.alpha=32"))
    assert "model.lora" not in caplog.text


def test_a_loss_over_blocks_needs_its_bias_as_blocks():
    w, h, t = (torch.randn(4, 3), torch.randn(2, 3)), torch.randn(3, 3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="bias as blocks"):
        head_cross_entropy(w, torch.zeros(6), [Segment(h, torch.arange(3), t, 0, 6)])


# ---- a LoRA run end to end: DDP, every stage's folder, exact resume -------------------------------
def test_a_lora_run_under_ddp_writes_plain_merged_folders(tmp_path, capsys):
    run = tmp_path / "run"
    done = omni_train(
        "experiment=demo", "model.lora.r=4", "trainer=ddp_cpu", "eval.asr=null", "eval.speak=null",
        "model.activation_checkpointing=true",  # checkpointed blocks under DDP's gradient hooks
        "stages.alignment.max_steps=2", "stages.adaption.max_steps=2", "stages.finetune.max_steps=2",
        f"hydra.run.dir={run}", "+callbacks.probe._target_=ddp_probe.Probe", f"+callbacks.probe.out={tmp_path / 'probe'}",
        # the sample logger and val/wer answer with the unmerged LoRA model, on rank 0 while the other waits
        "+callbacks.samples._target_=omni_train.callbacks.SampleLogger", "+callbacks.samples.every_n_steps=2",
        "+callbacks.samples.max_speech=1", "+callbacks.samples.max_new_tokens=8",
        f"+callbacks.samples.wer={DEMO / 'asr' / 'heldout'}", "+callbacks.samples.wer_max_utterances=2",
        cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("alignment", "adaption", "finetune"):
        logs = run / stage / "logs"
        samples = json.loads(next(logs.rglob("samples/step-000002.json")).read_text())
        assert [r["task"] for r in samples] == ["A1A2", "T1A2"] and all(isinstance(r["text"], str) for r in samples)
        metrics = next(logs.rglob("metrics.csv")).read_text().splitlines()
        assert "val/wer" in metrics[0].split(",")
    # omni-infer and omni-eval read the last stage's merged folder as any other
    final, heldout = run / "finetune" / "model", DEMO / "asr" / "heldout"
    clip = min(heldout.rglob("*.flac"))
    infer_main(["--checkpoint", str(final), "--audio", str(clip), "--max-new-tokens", "8", "--device", "cpu", "--json",
                "--out", str(tmp_path / "answer.wav")])  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["text_tokens"]
    eval_main(["asr", "--checkpoint", str(final), "--librispeech", str(heldout), "--splits", "101",
               "--max-utterances", "2", "--max-new-tokens", "12", "--out", str(tmp_path / "asr.json")])  # fmt: skip
    assert json.loads((tmp_path / "asr.json").read_text())["splits"]["101"]["n"] == 2
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]  # the last stage's
    assert ranks[0]["world"] == 2 and ranks[0]["weights"] == ranks[1]["weights"]  # LoRA gradients averaged alike
    base = torch.load(DEMO / "llm" / ckpt.WEIGHTS_FILE, weights_only=True)  # the demo's pretrained base LLM
    for stage in ("alignment", "adaption", "finetune"):
        folder = run / stage / "model"
        model, _ = ckpt.load_checkpoint(folder)  # our format: no LoRA code, as omni-infer and omni-eval read it
        assert model.lora is None and (folder / ckpt.LORA_FILE).is_file()
        assert json.loads((folder / ckpt.LORA_INFO).read_text())["r"] == 4
        state = model.state_dict()
        same_base = all(torch.equal(state[k][: len(v)], v) for k, v in base.items())
        assert same_base == (stage == "alignment")  # stage 1 keeps the LLM; stages 2-3 merge their updates


HALF = [o for o in SHORT_STAGE1 if o.startswith("model.")]  # the half-size demo model of the resume tests (a random base)


def adaption_steps(run: Path) -> list[dict]:
    """The trace of stage adaption (step -> record; a step trained again after the resume replaces the lost one)."""
    records = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines()]
    return [r for _, r in sorted({r["step"]: r for r in records}.items())]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> Path:
    """A stage-1 model folder to start stage 2 (which trains the LoRA matrices) from."""
    run = tmp_path_factory.mktemp("aligned")
    train(config("experiment=demo", "stage=alignment", "stages.alignment.max_steps=1", "eval.asr=null",
                        "eval.speak=null", *HALF, f"run_dir={run}"))  # fmt: skip
    return run / "alignment" / "model"


def test_an_interrupted_lora_stage_resumes_exactly(tmp_path, aligned):
    common = [
        "experiment=demo", "stage=adaption", f"init_from={aligned}", "model.lora.r=4", "model.lora.dropout=0.1",
        "model.activation_checkpointing=true",  # its recomputed dropout masks must not shift the resumed RNG stream
        "eval.asr=null", "eval.speak=null", "~data.val.asr_heldout", f"stages.adaption.max_steps={STEPS}",
        "stages.adaption.log_every=1", "stages.adaption.max_tokens=1024", "data.buffer_size=24", *HALF,
    ]  # fmt: skip
    reference = tmp_path / "reference"
    train(
        config(*common, f"run_dir={reference}", f"stages.adaption.checkpoint_every={STEPS}", *trace(reference))
    )

    run = tmp_path / "run"
    killed = omni_train(*common, f"hydra.run.dir={run}", "stages.adaption.checkpoint_every=2",
                        *trace(run, signal_at=3, signal_name="SIGKILL"), cwd=tmp_path)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    summary = train(config(*common, f"run_dir={run}", "stages.adaption.checkpoint_every=2", "resume=auto",
                           *trace(run)))  # fmt: skip
    assert summary["stages"]["adaption"]["resumed_from"].endswith("last.ckpt")

    got, want = adaption_steps(run), adaption_steps(reference)
    assert [r["step"] for r in want] == list(range(1, STEPS + 1))
    assert [r["rows"] for r in got] == [r["rows"] for r in want]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    for name in (ckpt.WEIGHTS_FILE, ckpt.LORA_FILE):  # the merged model, and the LoRA matrices alone
        a = torch.load(run / "adaption" / "model" / name, weights_only=True)
        b = torch.load(reference / "adaption" / "model" / name, weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=k)
    assert any(b["transformer.h.0.attn.qkv.lora_B"].flatten()), "stage 2 trains the LoRA matrices"


@pytest.mark.skipif(
    not os.environ.get("OMNI_TEST_FSDP_CPU"), reason="OMNI_TEST_FSDP_CPU is not set: two FSDP runs of 2 processes"
)
def test_a_lora_stage_under_fsdp_resumes_from_its_shards_exactly(tmp_path, aligned):
    """The FSDP preset on 2 CPU processes (`fsdp_cpu`): sharded checkpoints, a resume from one, and
    the consolidated merged model; with activation checkpointing around the FSDP-wrapped blocks."""
    run, steps = tmp_path / "run", 4
    common = [
        "experiment=demo", "stage=adaption", f"init_from={aligned}", "model.lora.r=4", "model.lora.dropout=0.1",
        "model.activation_checkpointing=true", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.precision=32-true", "trainer.strategy._target_=fsdp_cpu.strategy", "eval.asr=null", "eval.speak=null",
        "~data.val.asr_heldout", f"stages.adaption.max_steps={steps}", "stages.adaption.checkpoint_every=2",
        "stages.adaption.keep_checkpoints=2", "stages.adaption.max_tokens=1024", "data.buffer_size=24", *HALF,
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    done = omni_train(*common, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    stage = run / "adaption"
    shards = stage / "checkpoints" / "step-2.ckpt"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one file a rank
    want = {name: torch.load(stage / "model" / name, weights_only=True) for name in (ckpt.WEIGHTS_FILE, ckpt.LORA_FILE)}
    model, _ = ckpt.load_checkpoint(stage / "model")  # consolidated and merged: a plain model, no LoRA code
    assert model.lora is None and any(want[ckpt.LORA_FILE]["transformer.h.0.attn.qkv.lora_B"].flatten())

    # lose everything after step 2: resume=auto continues from its shards
    for path in (stage / "summary.json", stage / "model", *(stage / "checkpoints").glob("*")):
        if path != shards:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    done = omni_train(*common, "resume=auto", cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["stages"]["adaption"]["resumed_from"] == str(shards)
    for name, tensors in want.items():
        got = torch.load(stage / "model" / name, weights_only=True)
        assert got.keys() == tensors.keys()
        for k in tensors:
            torch.testing.assert_close(got[k], tensors[k], msg=k)
