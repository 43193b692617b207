"""How well a demo model reads its audio: the adapter's scale, the audio's worth to the loss, alignment.

For a stage's model folder (or, without ``--model``, the untrained demo model: the base LLM and a
fresh adapter), on the demo's held-out utterances (A1T1, teacher-forced):

- the scale of what the LLM reads: RMS of the base vocabulary's embedding rows, of the Whisper
  adapter's output and of its part that varies from frame to frame; and whether the adapter is a
  linear or a quadratic map of the frames: the cosine of its output for -x against that for x, less
  the bias (-1: odd, like a linear map; +1: even, like a product of two linear maps);
- the transcript loss with each utterance's own audio, with another utterance's (the batch rolled by
  one row; the frame count kept) and with none (zero features): how much the LLM uses the audio;
- the attention from transcript positions to the audio frames, per layer and head: the mass on the
  frames, and how the centre of that mass follows the word's place in the transcript (Pearson r
  between the word's relative position and the centre's relative frame; 1 = a monotonic alignment).

    python benchmarks/demo_reading.py --model RUN/adaption/model
    python benchmarks/demo_reading.py --tiny  # smoke test: the untrained model, one batch
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F


def rms(t: torch.Tensor) -> float:
    return t.float().pow(2).mean().sqrt().item()


def attention_weights(model, batch, features) -> list[torch.Tensor]:
    """Each block's attention probabilities, ``(B, H, T, T)``, recorded from the model's own q and k."""
    recorded, sdpa = [], F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.size(-1) ** -0.5)
        causal = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1)
        recorded.append(s.masked_fill(causal, float("-inf")).softmax(-1))
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)

    with mock.patch.object(F, "scaled_dot_product_attention", recording):
        model.hidden_states(batch.input_ids, features, batch.audio_lengths, batch.audio_mask, with_audio=False)
    if len(recorded) != model.config.n_layer:
        raise RuntimeError(f"recorded {len(recorded)} attention maps for {model.config.n_layer} blocks")
    return recorded


def alignment(weights: torch.Tensor, batch, text_layer: int) -> tuple[float, float]:
    """One head's mean attention mass on the audio frames, and the Pearson r of word place vs frame centre.

    Args:
        weights: one head's attention probabilities, ``(B, T, T)``.
    """
    targets = batch.targets[:, text_layer]  # (B, T): the positions that predict a transcript token
    mass, place, centre = [], [], []
    for b in range(weights.size(0)):
        pos = (targets[b] != -100).nonzero().flatten()
        frames = batch.audio_mask[b].nonzero().flatten()
        a = weights[b][pos][:, frames]  # (words + eot, F)
        mass.append(a.sum(-1).mean().item())
        share = a / a.sum(-1, keepdim=True).clamp_min(1e-9)
        centres = (share * torch.linspace(0, 1, len(frames))).sum(-1)
        n = len(pos) - 1  # the last target is the transcript's end
        place += [(i + 0.5) / n for i in range(n)]
        centre += centres[:n].tolist()
    return statistics.mean(mass), statistics.correlation(place, centre)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a stage's model folder (default: the untrained demo model)")
    parser.add_argument("--tiny", action="store_true", help="one batch of held-out utterances (smoke test)")
    parser.add_argument("overrides", nargs="*", help="omni-train overrides of the demo's config")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from omni_train.builders import build_data, build_model
    from omni_train.cli.train import CONFIGS
    from omni_train.config import register
    from omni_train.loss import omni_loss
    from omni_train.vocab import TEXT_LAYER

    torch.set_num_threads(1)
    register()
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "threads=1", "run_dir=.", *args.overrides])
    bundle = build_model(cfg.model, args.model, seed=cfg.seed, run_dir=Path("."), requested=())
    model, encoder = bundle.model.eval(), bundle.encoder.eval()
    data = build_data(cfg, "adaption", bundle)
    data.setup("fit")
    loaders = data.val_dataloader()
    loader = loaders[0] if isinstance(loaders, list) else loaders

    losses: dict[str, list[float]] = {"own audio": [], "another's audio": [], "no audio": []}
    adapted, flipped, first = [], [], None
    with torch.no_grad():
        for batch in loader:
            first = batch if first is None else first
            features = encoder.encode_audio(batch.audio, batch.audio_samples)  # (B, F, whisper width)
            valid = torch.arange(features.size(1)) < batch.audio_lengths[:, None]
            adapted.append(model.whisper_adapter(features[valid]))  # (frames, C)
            flipped.append(model.whisper_adapter(-features[valid]))
            other = features.roll(1, dims=0) * valid[..., None]  # another row's features, this row's frame count
            inputs = {"own audio": features, "another's audio": other, "no audio": torch.zeros_like(features)}
            for name, f in inputs.items():
                h_text, h_audio = model.hidden_states(
                    batch.input_ids, f, batch.audio_lengths, batch.audio_mask, with_audio=False
                )
                losses[name].append(omni_loss(model, h_text, h_audio, batch.targets, batch.task_ids).loss.item())
            if args.tiny:
                break
        maps = attention_weights(model, first, encoder.encode_audio(first.audio, first.audio_samples))
        bias = model.whisper_adapter(torch.zeros(1, encoder.width))  # the output for x = 0

    out = torch.cat(adapted)
    parity = F.cosine_similarity(torch.cat(flipped) - bias, out - bias, dim=-1).mean().item()
    vocab = model.config.vocab
    rows = model.transformer.wte.weight[: min(model.config.vocab_size, vocab.base_vocab_size)]
    print(f"model: {args.model or 'untrained (base LLM, fresh adapter)'}; adapter {model.config.asr_adapter}")
    print(f"RMS: base vocabulary rows {rms(rows):.3f}; adapter output {rms(out):.3f}, "
          f"its frame-to-frame part {rms(out - out.mean(0)):.3f}")  # fmt: skip
    print(f"cosine of adapter(-x) and adapter(x), less its bias: {parity:+.2f} (-1: linear, odd; +1: even)")
    print("held-out transcript loss (nats a token), teacher-forced:")
    for name, values in losses.items():
        print(f"  {name:16s} {statistics.mean(values):.3f}")
    print("attention from transcript positions to the audio frames (mass, alignment r), per head:")
    for layer, weights in enumerate(maps):
        heads = [alignment(weights[:, h], first, TEXT_LAYER) for h in range(weights.size(1))]
        print(f"  layer {layer}: " + "; ".join(f"{m:.2f} r={r:+.2f}" for m, r in heads))
    own, other = statistics.mean(losses["own audio"]), statistics.mean(losses["another's audio"])
    print(f"ratio loss with another's audio / own audio: {other / own:.3f}")


if __name__ == "__main__":
    main()
