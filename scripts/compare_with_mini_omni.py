"""Check that omni-infer and Mini-Omni's own generation code give the same greedy tokens.

    # a tiny checkpoint made here (Qwen2's vocabulary, exported with omni-export), every task
    python scripts/compare_with_mini_omni.py --mini-omni /tmp/mini-omni --make-tiny /tmp/parity
    # any checkpoint in Mini-Omni's format, with the Whisper and SNAC it was trained with
    python scripts/compare_with_mini_omni.py --mini-omni PATH --checkpoint DIR --whisper small.pt \\
        --snac snac_24khz/ --audio question.wav --text "what is your name"

PATH is a checkout of gpt-omni/mini-omni. Its ``inference.py`` runs in a subprocess whose sys.path
starts with PATH, so its vendored litgpt 0.4 shadows the installed one. Nothing there is changed;
the subprocess only swaps its loaders that need the network or ffmpeg (the hub SNAC, the Whisper
download, ffmpeg decoding) for local files, then calls its task functions (A1_T1, A1_T2, A1_A2,
T1_A2, T1_T2, A1_A2_batch: temperature 0.9 with top_k 1, i.e. greedy) and records what their
``generate_*`` functions return. omni-infer runs on the same checkpoint and question with
``--json --pad-to-30s`` (Mini-Omni pads Whisper's input to 30 s) and the same step budget.

What is compared, per task: the text tokens up to eot, and for spoken answers the 7 audio layers
token for token (layer-local codes, delay pads included). Both stop *before* the step at which
audio layer 6 says eoa (Mini-Omni's loop breaks there; omni-infer's JSON leaves that column out).

A tiny random model would not follow the layout (speak pad_a during the delay, end every layer
with eoa): Mini-Omni samples those tokens, omni-infer forces them, and the two would part at step
0. ``--make-tiny`` therefore builds a random model whose audio heads and eot are wired to follow the
layout (a few reserved embedding dimensions that the blocks never write carry "this input is a
code / eoa / pad"), while the rest stays random, so the answers depend on the prompt, the Whisper
features and the KV cache. ``--plain`` builds an unwired one, to see that divergence.

Exit status 0 when every task matched.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TASKS = ("A1T1", "A1T2", "A1A2", "A1A2-batch", "T1A2", "T1T2")
EOA = 4096  # layer-local eoa (DESIGN.md); Mini-Omni's _eoa
MINI_OMNI_TEXT_VOCAB = 152000  # inference.py hard-codes Qwen2's: 151936 + 64 specials
BUDGET = 2048  # Mini-Omni's max_returned_tokens: prompt plus answer steps


# ---- the Mini-Omni side (runs in its own process: no omni_train, whose litgpt is another version) ----
def mini_omni_worker(spec: dict) -> dict:
    sys.path.insert(0, spec["mini_omni"])
    os.environ["TQDM_DISABLE"] = "1"
    import inference as mo  # Mini-Omni's inference.py
    import soundfile as sf
    import torch
    import whisper

    def read_16k(path, sr=16000):  # for ffmpeg, which whisper.load_audio runs
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != sr:
            raise SystemExit(f"{path}: {rate} Hz; give a 16 kHz file (no ffmpeg here to resample)")
        return wave.mean(1)

    class LocalSnac:  # for SNAC.from_pretrained("hubertsiuzdak/snac_24khz"), a hub download
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            from snac import SNAC

            model = SNAC(**json.loads((Path(spec["snac"]) / "config.json").read_text()))
            model.load_state_dict(torch.load(Path(spec["snac"]) / "pytorch_model.bin", map_location="cpu"))
            return model

    load_whisper = whisper.load_model
    whisper.load_audio = read_16k
    whisper.load_model = lambda _name, *a, **k: load_whisper(spec["whisper"], *a, **k)  # for "small"
    mo.SNAC = LocalSnac

    recorded = {}

    def recording(generate):
        def record(*args, **kwargs):
            out = generate(*args, **kwargs)
            recorded["tokens"] = copy.deepcopy(out)  # the caller edits the lists in place
            return out

        return record

    for name in ("generate_ASR", "generate_AT", "generate_AA", "generate_TA", "generate_TT", "generate_TA_BATCH"):
        setattr(mo, name, recording(getattr(mo, name)))

    device = "cpu"
    fabric, model, tokenizer, snac, whisper_model = mo.load_model(spec["checkpoint"], device)
    out_dir, results = spec["out_dir"], {}
    for task in spec["tasks"]:
        recorded.clear()
        common = {"fabric": fabric, "model": model, "text_tokenizer": tokenizer, "step": 0}
        try:
            with torch.no_grad():
                if task in spec["heard"]:
                    mel, leng = mo.load_audio(spec["audio"])
                if task == "A1T1":
                    feat, ids = mo.get_input_ids_whisper(mel, leng, whisper_model, device, mo._pad_a, mo._asr)
                    text = mo.A1_T1(audio_feature=feat, input_ids=ids, leng=leng, **common)
                elif task == "A1T2":
                    feat, ids = mo.get_input_ids_whisper(mel, leng, whisper_model, device, mo._pad_a, mo._answer_t)
                    text = mo.A1_T2(audio_feature=feat, input_ids=ids, leng=leng, **common)
                elif task == "A1A2":
                    feat, ids = mo.get_input_ids_whisper(mel, leng, whisper_model, device)
                    text = mo.A1_A2(audio_feature=feat, input_ids=ids, leng=leng, snacmodel=snac, out_dir=out_dir,
                                    **common)  # fmt: skip
                elif task == "A1A2-batch":
                    feat, ids = mo.get_input_ids_whisper_ATBatch(mel, leng, whisper_model, device)
                    text = mo.A1_A2_batch(audio_feature=feat, input_ids=ids, leng=leng, snacmodel=snac,
                                          out_dir=out_dir, **common)  # fmt: skip
                elif task == "T1A2":
                    ids = mo.get_input_ids_TA(spec["text"], tokenizer)
                    text = mo.T1_A2(input_ids=ids, snacmodel=snac, out_dir=out_dir, **common)
                else:  # T1T2
                    ids = mo.get_input_ids_TT(spec["text"], tokenizer)
                    text = mo.T1_T2(input_ids=ids, **common)
            results[task] = {"tokens": recorded["tokens"], "text": text, "prompt_length": int(ids[0].shape[-1])}
        except Exception as err:  # e.g. SNAC cannot decode an audio special it sampled; the tokens came first
            if "tokens" not in recorded:
                raise
            results[task] = {"tokens": recorded["tokens"], "text": None, "prompt_length": int(ids[0].shape[-1]),
                             "error": f"{type(err).__name__}: {err}"}  # fmt: skip
    return results


# ---- the tiny checkpoint ---------------------------------------------------------------------------
# Same shapes as tests/tiny.py: a 1-layer Whisper of width 32 and a SNAC with 32 samples a frame.
WHISPER_DIMS = {
    "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 1,
    "n_vocab": 10, "n_text_ctx": 4, "n_text_state": 32, "n_text_head": 2, "n_text_layer": 1,
}  # fmt: skip
SNAC_TINY = {
    "sampling_rate": 24000, "encoder_dim": 8, "encoder_rates": [2, 4], "decoder_dim": 16, "decoder_rates": [4, 2],
    "attn_window_size": None, "codebook_size": 4096, "codebook_dim": 4, "vq_strides": [4, 2, 1],
}  # fmt: skip


def follow_layout(model, n_tokens: int, stop_every: int = 16, k: float = 200.0) -> None:
    """Wire a random OmniGPT's greedy choices to the layout; everything else stays random.

    19 embedding dimensions are reserved: a constant, and "this input is a code / eoa" per audio
    layer, "layer 0 reads answer_a", "the text reads eot / pad_t / a stop token". No block writes
    them (their rows of every output projection are zero) or reads them (zero norm weights), so
    they reach ``ln_f`` as the input embeddings put them, and ``lm_head`` reads rules off them:
    layer 0 speaks pad_a after answer_a or pad_t, eoa after eot, else a code; layer i > 0 copies
    the kind (pad, code, eoa) of what layer i - 1 read; the text says eot after a stop token (every
    `stop_every`-th id) and never another special or an id beyond the tokenizer's `n_tokens`.
    """
    import torch

    from omni_train.vocab import ANSWER_A, N_AUDIO_LAYERS, PAD_A

    vocab, C = model.config.vocab, model.config.n_embd
    R = list(range(C - 19, C))
    const, code, eoa, answer0, t_eot, t_pad, t_stop = R[0], R[1:8], R[8:15], R[15], R[16], R[17], R[18]
    text_vocab, audio_vocab = vocab.text_vocab_size, vocab.audio_vocab_size

    def audio_rows(layer: int, lo: int, hi: int | None = None) -> slice:
        start = vocab.audio_offset(layer)
        return slice(start + lo, start + (hi if hi is not None else lo + 1))

    with torch.no_grad():
        wte, head = model.transformer.wte.weight, model.lm_head.weight
        wte.normal_(0.0, 1.0)
        wte[:, R] = 0.0
        wte[:, const] = 1.0  # x[const] = 1 at every position (8 layers averaged)
        stops = torch.arange(0, n_tokens, stop_every)
        for value_dim, rows in [(t_eot, [vocab.eot]), (t_pad, [vocab.pad_t]), (t_stop, stops)]:
            wte[rows, value_dim] = 8.0  # one layer of 8 carries it: 1 after averaging
        wte[audio_rows(0, ANSWER_A), answer0] = 8.0
        for i in range(N_AUDIO_LAYERS):
            wte[audio_rows(i, 0, EOA), code[i]] = 8.0
            wte[audio_rows(i, EOA), eoa[i]] = 8.0
        for block in model.transformer.h:
            for p in block.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
            block.norm_1.weight[R] = 0.0
            block.norm_2.weight[R] = 0.0
            block.attn.proj.weight[R] = 0.0
            block.mlp.proj.weight[R] = 0.0
        model.whisper_adapter.proj.weight[R] = 0.0
        model.transformer.ln_f.weight.fill_(1.0)

        head[:, R] = 0.0
        head[n_tokens:text_vocab, const] = -k  # no text special, no id the tokenizer lacks ...
        head[vocab.eot, const], head[vocab.eot, t_stop] = -k, 2 * k  # ... but eot after a stop token
        for i in range(N_AUDIO_LAYERS):
            head[audio_rows(i, EOA, audio_vocab), const] = -k  # no audio special unless a rule says so
            pad, end = audio_rows(i, PAD_A), audio_rows(i, EOA)
            if i == 0:
                head[pad, answer0], head[pad, t_pad], head[pad, const] = 2 * k, 2 * k, -k
                head[end, t_eot], head[end, const] = 2 * k, -k
            else:
                head[pad, code[i - 1]], head[pad, eoa[i - 1]], head[pad, const] = -2 * k, -2 * k, k
                head[end, eoa[i - 1]], head[end, const] = 2 * k, -k


def make_tiny(out: Path, plain: bool, seed: int = 0) -> dict:
    """A tiny random model with Qwen2's vocabulary, its Whisper, SNAC and tokenizer, exported to Mini-Omni's format."""
    import torch
    import whisper
    from litgpt.config import Config
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from omni_train.audio import SnacCodec
    from omni_train.checkpoints import save_omni
    from omni_train.config import DEMO_DATA
    from omni_train.model import OmniConfig, OmniGPT

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["what is your name", "the model hears and talks", "two plus three is five"] * 20, trainer)
    (out / "tokenizer").mkdir(exist_ok=True)
    tok.save(str(out / "tokenizer" / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "add_bos_token": False}
    (out / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))

    torch.manual_seed(seed)
    base = Config.from_name(
        "Qwen2.5-0.5B", n_layer=2, n_embd=64, n_head=4, head_size=16, n_query_groups=2, intermediate_size=96,
        vocab_size=151936, padded_vocab_size=151936, block_size=BUDGET, rope_base=10000,
    )  # fmt: skip
    model = OmniGPT(OmniConfig.from_base(base, whisper_adapter_dim=WHISPER_DIMS["n_audio_state"]))
    model.apply(model._init_weights)
    if not plain:
        follow_layout(model, tok.get_vocab_size())
    save_omni(model, out / "omni", out / "tokenizer")
    dims = whisper.model.ModelDimensions(**WHISPER_DIMS)
    torch.save({"dims": WHISPER_DIMS, "model_state_dict": whisper.model.Whisper(dims).state_dict()}, out / "whisper.pt")
    SnacCodec.from_config(SNAC_TINY).save_pretrained(out / "snac")
    export = [sys.executable, "-m", "omni_train.cli.export", "--format", "mini-omni", out / "omni", out / "mini-omni"]
    subprocess.run(list(map(str, export)), check=True, capture_output=True, text=True)
    audio = min((DEMO_DATA / "asr" / "heldout").rglob("*.flac"))  # 16 kHz speech, 2 s
    return {"checkpoint": str(out / "mini-omni"), "whisper": str(out / "whisper.pt"), "snac": str(out / "snac"),
            "audio": str(audio), "text": "what is your name"}  # fmt: skip


# ---- omni-infer and the comparison ------------------------------------------------------------------
def omni_task(name: str):
    """The omni_train task of one of `TASKS` (``A1A2-batch`` is A1A2 decoded batch-parallel)."""
    from omni_train.tasks import Task

    return Task(name.removesuffix("-batch"))


def omni_infer(spec: dict, task: str, steps: int) -> dict:
    question = ["--audio", spec["audio"]] if omni_task(task).audio_in else ["--text", spec["text"]]
    cmd = [sys.executable, "-m", "omni_train.cli.infer", "--checkpoint", spec["checkpoint"], *question,
           "--task", task.removesuffix("-batch"), "--json", "--whisper", spec["whisper"], "--pad-to-30s",
           "--max-new-tokens", str(steps), "--device", "cpu"]  # fmt: skip
    if task == "A1A2-batch":
        cmd.append("--batch-parallel")
    run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"omni-infer failed on {task}:\n{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def first_difference(ours: list, theirs: list):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return i, a, b
    if len(ours) != len(theirs):
        n = min(len(ours), len(theirs))
        return n, ours[n] if n < len(ours) else "end", theirs[n] if n < len(theirs) else "end"
    return None


def compare(task: str, ours: dict, theirs: dict, eot: int) -> dict:
    tokens = theirs["tokens"]
    if task in ("A1T1", "A1T2", "T1T2"):  # generate_ASR / _AT / _TT: the text ids, eot not included
        text, audio = tokens, None
    else:  # 8 lists: 7 audio layers (layer-local), then the text with eot and pad_t
        text = tokens[7][: tokens[7].index(eot)] if eot in tokens[7] else tokens[7]
        audio = tokens[:7]
    row = {"task": task, "text_tokens": len(ours["text_tokens"]), "text_match": ours["text_tokens"] == text,
           "text_diff": first_difference(ours["text_tokens"], text),
           "decoded_match": ours["text"] == theirs["text"]}  # fmt: skip
    if theirs.get("error"):
        row["mini_omni_error"] = theirs["error"]
    if audio is not None:
        mine = ours["audio_tokens"]
        diffs = {i: d for i, (m, t) in enumerate(zip(mine, audio)) if (d := first_difference(m, t))}
        row.update(audio_steps=len(mine[0]), audio_tokens=sum(map(len, mine)), audio_match=not diffs,
                   audio_diff=diffs or None)  # fmt: skip
    row["match"] = row["text_match"] and row.get("audio_match", True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini-omni", type=Path, required=True, help="a checkout of gpt-omni/mini-omni")
    parser.add_argument("--checkpoint", help="a checkpoint in Mini-Omni's format (omni-export --format mini-omni)")
    parser.add_argument("--make-tiny", type=Path, metavar="DIR", help="build a tiny checkpoint in DIR and use it")
    parser.add_argument("--plain", action="store_true", help="with --make-tiny: leave the model unwired (see above)")
    parser.add_argument("--whisper", help="openai-whisper checkpoint file the model was trained with")
    parser.add_argument("--snac", help="SNAC directory (config.json + pytorch_model.bin)")
    parser.add_argument("--audio", help="spoken question, 16 kHz")
    parser.add_argument("--text", default="what is your name", help="written question")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--json-out", type=Path, help="write the per-task results here")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        spec = json.loads(Path(args._worker).read_text())
        Path(spec["result"]).write_text(json.dumps(mini_omni_worker(spec)))
        return 0

    if not (args.mini_omni / "inference.py").is_file() or not (args.mini_omni / "litgpt" / "model.py").is_file():
        parser.error(f"--mini-omni {args.mini_omni}: not a gpt-omni/mini-omni checkout (no inference.py, litgpt/)")
    if bool(args.make_tiny) == bool(args.checkpoint):
        parser.error("give exactly one of --checkpoint and --make-tiny")
    if args.make_tiny:
        spec = make_tiny(args.make_tiny, args.plain)
    else:
        missing = [f"--{k}" for k in ("whisper", "snac", "audio") if not getattr(args, k)]
        if missing and any(omni_task(t).audio_in or omni_task(t).audio_out for t in args.tasks):
            parser.error(f"--checkpoint needs {', '.join(missing)} for these tasks")
        spec = {k: getattr(args, k) for k in ("checkpoint", "whisper", "snac", "audio", "text")}
    import yaml

    config = yaml.safe_load((Path(spec["checkpoint"]) / "model_config.yaml").read_text())
    if config.get("text_vocab_size", MINI_OMNI_TEXT_VOCAB) != MINI_OMNI_TEXT_VOCAB or "add_qkv_bias" not in config:
        raise SystemExit(f"{spec['checkpoint']}: Mini-Omni's inference.py needs Mini-Omni's format with Qwen2's "
                         f"vocabulary (text_vocab_size {MINI_OMNI_TEXT_VOCAB})")  # fmt: skip
    eot = MINI_OMNI_TEXT_VOCAB - 64

    with tempfile.TemporaryDirectory() as tmp:
        worker = dict(spec, mini_omni=str(args.mini_omni.resolve()), tasks=args.tasks, out_dir=f"{tmp}/wav",
                      result=f"{tmp}/result.json", heard=[t for t in args.tasks if omni_task(t).audio_in])  # fmt: skip
        Path(tmp, "spec.json").write_text(json.dumps(worker))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cmd = [sys.executable, __file__, "--mini-omni", str(args.mini_omni), "--_worker", f"{tmp}/spec.json"]
        run = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=tmp)
        if run.returncode:
            raise SystemExit(f"Mini-Omni's generation failed:\n{run.stderr[-4000:]}")
        theirs = json.loads(Path(tmp, "result.json").read_text())

    rows = []
    for task in args.tasks:
        steps = BUDGET - theirs[task]["prompt_length"]  # Mini-Omni's cap: max_returned_tokens - prompt
        rows.append(compare(task, omni_infer(spec, task, steps), theirs[task], eot))
    for r in rows:
        audio = ""
        if "audio_match" in r:
            same = "==" if r["audio_match"] else "!="
            audio = f"; audio {same} ({r['audio_tokens']} tokens, {r['audio_steps']} steps)"
        print(f"{r['task']:<11} {'MATCH' if r['match'] else 'DIFFER'}: text {'==' if r['text_match'] else '!='} "
              f"({r['text_tokens']} tokens){audio}"
              + (f"; text diff at {r['text_diff']}" if r["text_diff"] else "")
              + (f"; audio diffs (layer: step, ours, theirs) {r['audio_diff']}" if r.get("audio_diff") else "")
              + (f"; Mini-Omni then failed: {r['mini_omni_error']}" if r.get("mini_omni_error") else "")
              + ("; decoded strings differ" if not (r["decoded_match"] or r.get("mini_omni_error")) else ""))  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
