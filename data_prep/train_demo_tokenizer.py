"""Train the demo's tokenizer (``omni_train/demo_data/tokenizer``) on the demo texts.

    python data_prep/train_demo_tokenizer.py [--data omni_train/demo_data] [--vocab-size 512]

The demo's base LLM is randomly initialised (no model hub here), so its tokenizer can be tiny: a
byte-level BPE (the kind Qwen2 and Llama 3 use) whose merges cover every demo word, in lower and
upper case (LibriSpeech transcripts are uppercase), with one token each. Short sequences keep the
CPU demo fast. Deterministic for the same `tokenizers` version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


def demo_texts(data: Path) -> list[str]:
    texts = []
    for trans in sorted(data.glob("asr/*/*/*/*.trans.txt")):
        texts += [line.split(" ", 1)[1].strip() for line in trans.read_text().splitlines() if " " in line]
    for line in (data / "textqa.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["system_prompt"], row["question"], row["response"]]
    table = pq.read_table(data / "voice_assistant.parquet", columns=["question", "answer"])
    texts += table.column("question").to_pylist() + table.column("answer").to_pylist()
    return [t for text in texts for t in (text, text.lower(), text.upper()) if t]


def train(data: Path, out: Path, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(demo_texts(data), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "add_bos_token": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "omni_train" / "demo_data")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    tok = train(args.data, args.data / "tokenizer", args.vocab_size)
    print(f"wrote {args.data / 'tokenizer'} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
