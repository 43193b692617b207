"""Pretrain the demo's tiny base LLM (``omni_train/demo_data/llm``) on the demo's text.

    python data_prep/train_demo_llm.py [--data omni_train/demo_data] [--steps 300]

Mini-Omni starts from a pretrained text LLM (Qwen2-0.5B): stage 1 keeps it frozen and teaches
the adapters to speak its language. A random base LLM makes that stage meaningless. So this script
plays the base model's pretraining at toy scale: the ``tiny-qwen2`` preset's litgpt `GPT`, trained
as a plain next-token language model on the text of the demo's *training* data only (the
transcripts of ``asr/train``, and the questions and answers of ``textqa.jsonl`` and
``voice_assistant.parquet``; ``asr/heldout`` is never seen), then saved as a litgpt checkpoint
folder (``lit_model.pth``, ``model_config.yaml``, the tokenizer) that ``model.checkpoint_dir``
takes like any other base model. Prints the held-out transcripts' perplexity as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from litgpt.config import Config
from litgpt.model import GPT
from litgpt.tokenizer import Tokenizer
from litgpt.utils import save_config
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "omni_train" / "configs" / "model"


def tiny_config(preset: str) -> Config:
    """The litgpt config of a tiny preset: its name and the overrides of ``_tiny.yaml`` + its own."""
    own = OmegaConf.load(CONFIGS / f"{preset}.yaml")
    shared = OmegaConf.load(CONFIGS / "_tiny.yaml")
    overrides = {**shared.overrides, **own.get("overrides", {})}
    return Config.from_name(own.name, **overrides)


def transcripts(root: Path) -> list[str]:
    return [line.split(" ", 1)[1] for t in sorted(root.rglob("*.trans.txt")) for line in t.read_text().splitlines()]


def training_texts(data: Path) -> list[str]:
    texts = transcripts(data / "asr" / "train")
    for line in (data / "textqa.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts.append(f"{row['question']} {row['response']}")
    for row in pq.read_table(data / "voice_assistant.parquet", columns=["question", "answer"]).to_pylist():
        texts.append(f"{row['question']} {row['answer']}")
    return texts


def batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, right-padded; padding is not a target."""
    n = max(map(len, seqs))
    x = torch.zeros(len(seqs), n - 1, dtype=torch.long)
    y = torch.full((len(seqs), n - 1), -100, dtype=torch.long)
    for b, s in enumerate(seqs):
        t = torch.tensor(s)
        x[b, : len(s) - 1], y[b, : len(s) - 1] = t[:-1], t[1:]
    return x, y


@torch.no_grad()
def perplexity(model: GPT, seqs: list[list[int]]) -> float:
    x, y = batch(seqs)
    return math.exp(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "omni_train" / "demo_data")
    p.add_argument("--preset", default="tiny-qwen2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    tokenizer = Tokenizer(args.data / "tokenizer")
    eos = tokenizer.eos_id
    encode = lambda text: [*tokenizer.encode(text, bos=False, eos=False).tolist(), eos]  # noqa: E731
    train = [encode(t) for t in training_texts(args.data)]
    heldout = [encode(t) for t in transcripts(args.data / "asr" / "heldout")]

    config = tiny_config(args.preset)
    model = GPT(config)
    model.apply(model._init_weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )
    print(f"{len(train)} training texts; held-out transcript perplexity before: {perplexity(model, heldout):.1f}")
    for step in range(args.steps):
        x, y = batch(rng.sample(train, args.batch_size))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f}")
    model.eval()
    print(f"held-out transcript perplexity after: {perplexity(model, heldout):.2f}")

    out = args.data / "llm"
    out.mkdir(exist_ok=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, out / "lit_model.pth")  # half: a smaller repo
    save_config(config, out)
    for f in (args.data / "tokenizer").iterdir():
        shutil.copyfile(f, out / f.name)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
