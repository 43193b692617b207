"""Train the demo's tiny SNAC codec (``omni_train/demo_data/snac``) on the demo's training speech.

    python data_prep/train_demo_snac.py [--out omni_train/demo_data/snac] [--steps 2600] [--seed 0]

The shipped codec is these defaults (into a scratch folder), then 1800, 4500 and 4500 more steps,
each run from the codec before it:

    python data_prep/train_demo_snac.py --out /tmp/snac2600 --seed 0
    python data_prep/train_demo_snac.py --init /tmp/snac2600 --out /tmp/snac4400 --steps 1800 --lr 5e-4 --adversarial 0 --seed 0
    python data_prep/train_demo_snac.py --init /tmp/snac4400 --out /tmp/snac8900 --steps 4500 --lr 5e-4 --adversarial 0 --seed 0
    python data_prep/train_demo_snac.py --init /tmp/snac8900 --steps 4500 --lr 5e-4 --adversarial 0 --seed 0

Mini-Omni speaks through the pretrained ``hubertsiuzdak/snac_24khz``, which cannot be downloaded
here. This script trains a small one from scratch on CPU: `snac.SNAC` itself, with the 24 kHz
model's frame layout (hop 512, three codebooks of 4096 at strides 4, 2, 1, so a coarse frame is 7
codes in `omni_train.vocab.FRAME_ORDER`), but far fewer channels. The objective is SNAC's (after
DAC): multi-scale log-mel L1, waveform L1, codebook and commitment losses, and from a fifth of the
steps on an adversarial term, HiFi-GAN's multi-period discriminator (narrow: 8 to 32 channels,
about 15% more CPU a step) with feature matching. The defaults take 31 CPU minutes on one thread,
the continuations 22, 56 and 61 more.

Why this recipe (each figure: the demo recogniser's CER on the 40 held-out sentences in the
assistant's voice after a round trip, ``data_prep/eval_demo_snac.py``; originals 3.3%):

- The decoder limits intelligibility, not the quantizer. The first codec (128 depthwise decoder
  channels narrowing to 8, SNAC's noise blocks) put out about one spectrum for every vowel
  (80%). Full convolutions, 192 channels (96 after the first upsampling) and no noise blocks (they
  add texture under a discriminator; without one only hiss) move the formants at about the same
  CPU time a step. Decoding the encoder's unquantized latents is no upper bound here: the decoder
  only ever saw quantized ones (75% against 58% for a codec trained 1200 steps).
- Length of training is the main lever: 600 steps 78%, 1200 steps 58% (both without the
  discriminator), 2600 steps 41%; 1800 more from those (``--init``: a fresh one-cycle schedule
  peaking at 5e-4, the discriminator from the first step) 33.5% after 600 of them, 25.8% after
  1200, 23.7% at the end (8 voices: 53.6%, 43.6%, 39.2%, 36.9%); 4500 more from that (the same
  way) 24.8% after 750 of them, at the schedule's peak, and 13.3% at the end (8 voices 34.2%,
  24.7%; held-out mel distance 0.188 -> 0.156; 55.8 CPU minutes); 4500 more again 8.8% after 3000
  of them and 9.4% at the end (8 voices 23.4%, 22.5%; mel distance 0.141; 61.0 CPU minutes): the
  curve flattens, about 6 points above the originals. Continuing is how the steps fit one
  session; whether 13400 steps in one schedule would do better is not measured. ``--decoder-only``
  continues the decoder alone, so the codes made with the codec stay its codes (no data to
  re-encode): 3000 such steps from the shipped codec read 7.9% (8 voices 21.9%; not shipped,
  data_prep/README.md).
- The period discriminator (it compares samples one period apart) read 74% against 78% without
  it at 600 steps. It does not cure the buzz, though: voiced sounds stay periodic in the decoder's
  512-sample frame, harmonics of 46.875 Hz in place of the voice's pitch of about 109 Hz, which
  the transposed convolutions that upsample the frames make the cheapest.

The training speech is the demo's training sentences only (``make_demo_data.make_sentences`` with
the same seed and count as the shipped set; ``asr/heldout`` sentences are never seen), plus every
answer the voice assistant can give, all spoken by the voice assistant's fixed voice: the only
voice the demo model learns to speak in. One voice, not the 8 ASR voices as well, because the CPU
time buys about three passes over one voice's speech and under half of one over nine voices', and an
undertrained codec is unintelligible (its round trip on the other voices is measured, not aimed
for). Needs espeak-ng, like ``make_demo_data.py``.

Only the first ``--codes`` rows of each codebook are ever used: the demo's tiny LLM has to learn
to predict these codes in minutes, and a few hundred distinct sounds a level are plenty for one
synthetic voice. The other rows are copies of used ones, which SNAC's nearest-code search (first
of equals) never returns. The rows in use start at encoder outputs of the training speech.

The run is deterministic for a seed on one CPU thread (same torch). It prints the held-out
sentences' mel distance (assistant voice) at the end; the recogniser's CER on re-synthesised
held-out speech comes from ``data_prep/eval_demo_snac.py``.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.transforms as AT

from make_demo_data import ASSISTANT, IDENTITY, SNAC_RATE, make_sentences, qa_pool, resample, speak_all
from omni_train.audio import SnacCodec

TINY_SNAC = dict(
    sampling_rate=SNAC_RATE,
    encoder_dim=8,  # latent_dim = 8 * 2**4 = 128 (snac_24khz: 48 -> 768)
    encoder_rates=[2, 4, 8, 8],  # hop 512 as snac_24khz: 2048 samples (~85 ms) per coarse frame
    latent_dim=None,
    decoder_dim=192,  # 96, 48, 24, 12 channels after its 4 upsamplings (snac_24khz: 1024 -> 64)
    decoder_rates=[8, 8, 4, 2],
    attn_window_size=None,  # snac_24khz has local attention; convolutions are enough here
    codebook_size=4096,  # the token layout reserves 4096 codes a layer
    codebook_dim=8,
    vq_strides=[4, 2, 1],  # 1 + 2 + 4 = 7 codes a coarse frame
    noise=False,  # SNAC's noise blocks serve its adversarial training; here they only add hiss
    depthwise=False,  # full convolutions: at these widths as cheap a step, and the formants start to move
)

# DAC's multi-scale mel loss: 7 STFT windows, each with its own number of mel bands.
MEL_WINDOWS = [32, 64, 128, 256, 512, 1024, 2048]
MEL_BANDS = [5, 10, 20, 40, 80, 160, 320]
# DAC's weights (mel 15, commitment 0.25, codebook 1); waveform L1 as in SNAC's reconstruction loss.
W_MEL, W_WAVE, W_COMMIT, W_CODEBOOK = 15.0, 1.0, 0.25, 1.0
W_ADV, W_FEAT = 1.0, 2.0  # DAC's adversarial and feature-matching weights


class MultiScaleMelLoss(torch.nn.Module):
    """Mean over scales of the L1 distance between log10 mel magnitudes (DAC's ``MelSpectrogramLoss``).

    DAC floors magnitudes at 1e-5, which suits recordings. espeak-ng's pauses are digital silence,
    though: against that floor, output noise at -60 dB costs about 0.5, more than most speech
    errors, and training spends itself on making silence silent. Here each scale's floor is the
    magnitude of white noise at `floor_db` instead, so anything quieter counts as silence.
    """

    def __init__(self, sample_rate: int, floor_db: float = -60.0) -> None:
        super().__init__()
        self.mels = torch.nn.ModuleList(
            AT.MelSpectrogram(sample_rate, n_fft=w, hop_length=w // 4, n_mels=m, power=1.0, center=True)
            for w, m in zip(MEL_WINDOWS, MEL_BANDS)
        )
        noise = 10 ** (floor_db / 20) * torch.randn(1, sample_rate, generator=torch.Generator().manual_seed(0))
        self.floors = [float(mel(noise).mean()) for mel in self.mels]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: ``(B, S)`` audio -> scalar loss."""
        loss = 0.0
        for mel, floor in zip(self.mels, self.floors):
            loss = loss + F.l1_loss(mel(x).clamp(min=floor).log10(), mel(y).clamp(min=floor).log10())
        return loss / len(self.mels)


class PeriodDiscriminator(torch.nn.Module):
    """HiFi-GAN's multi-period discriminator, narrow: the audio folded into rows of ``period`` samples.

    A 2-D convolution down the rows compares samples one period apart, so it can tell a voice
    whose periodicity is wrong (the decoder's own 512-sample frame in place of the speaker's
    pitch) from real speech; SNAC and DAC train with it. Here it lowers the round trip's CER but
    has not removed that buzz within the script's steps.
    """

    def __init__(self, periods=(2, 3, 5, 7, 11), channels=(8, 16, 32, 32)) -> None:
        super().__init__()
        self.periods = periods
        wn = torch.nn.utils.parametrizations.weight_norm
        self.stacks = torch.nn.ModuleList()
        for _ in periods:
            layers, c_in = [], 1
            for i, c in enumerate(channels):
                stride = 1 if i == len(channels) - 1 else 3
                layers.append(wn(torch.nn.Conv2d(c_in, c, (5, 1), (stride, 1), padding=(2, 0))))
                c_in = c
            layers.append(wn(torch.nn.Conv2d(c_in, 1, (3, 1), padding=(1, 0))))
            self.stacks.append(torch.nn.ModuleList(layers))

    def forward(self, audio: torch.Tensor) -> list[list[torch.Tensor]]:
        """``(B, 1, S)`` -> per period, the feature maps of each layer (the last is the score map)."""
        out = []
        for period, layers in zip(self.periods, self.stacks):
            x = F.pad(audio, (0, -audio.size(-1) % period), mode="reflect")
            x = x.view(x.size(0), 1, -1, period)  # (B, 1, S / period, period)
            feats = []
            for i, layer in enumerate(layers):
                x = layer(x)
                if i < len(layers) - 1:
                    x = F.leaky_relu(x, 0.1)
                feats.append(x)
            out.append(feats)
        return out


def discriminator_loss(disc: PeriodDiscriminator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HiFi-GAN's least-squares loss: real ``x`` scores 1, the codec's ``y`` (both ``(B, 1, S)``) 0."""
    return sum((r[-1] - 1).pow(2).mean() + f[-1].pow(2).mean() for r, f in zip(disc(x), disc(y.detach())))


def generator_losses(disc: PeriodDiscriminator, x: torch.Tensor, y: torch.Tensor):
    """The codec's adversarial loss (``y`` should score 1) and feature matching (L1 to the real ``x``'s features)."""
    with torch.no_grad():
        real = disc(x)
    adv = fm = 0.0
    for r, f in zip(real, disc(y)):
        adv = adv + (f[-1] - 1).pow(2).mean()
        fm = fm + sum(F.l1_loss(a, b) for a, b in zip(f[:-1], r[:-1])) / (len(f) - 1)
    return adv, fm


def quantize(model, z: torch.Tensor, n_codes: int):
    """SNAC's residual quantization (`ResidualVectorQuantize.forward`), with its training losses.

    The same modules and arithmetic as SNAC's own forward (pool by the level's stride, project,
    nearest code by cosine on L2-normalised vectors, straight-through, project back, repeat),
    except that only the first ``n_codes`` codebook rows are searched.

    Args:
        z: ``(B, latent_dim, T)`` encoder output.

    Returns:
        z_q ``(B, latent_dim, T)``, commitment loss, codebook loss, and per level the codes
        ``(B, T / stride)`` and the projected latents ``(B * T / stride, codebook_dim)``.
    """
    z_q, residual = 0.0, z
    commit = codebook_loss = 0.0
    codes, latents = [], []
    for q in model.quantizer.quantizers:
        r = F.avg_pool1d(residual, q.stride, q.stride) if q.stride > 1 else residual
        z_e = q.in_proj(r)  # (B, D, T / stride)
        flat = z_e.transpose(1, 2).reshape(-1, z_e.size(1))  # (B * T / stride, D)
        rows = q.codebook.weight[:n_codes]  # (n_codes, D)
        idx = (F.normalize(flat.detach()) @ F.normalize(rows.detach()).T).argmax(dim=1)  # (B * T / stride,)
        chosen = rows[idx].view(z_e.size(0), -1, z_e.size(1)).transpose(1, 2)  # (B, D, T / stride)
        commit = commit + F.mse_loss(z_e, chosen.detach())
        codebook_loss = codebook_loss + F.mse_loss(chosen, z_e.detach())
        out = q.out_proj(z_e + (chosen - z_e).detach())  # straight-through
        if q.stride > 1:
            out = out.repeat_interleave(q.stride, dim=-1)
        z_q = z_q + out
        residual = residual - out
        codes.append(idx.view(z_e.size(0), -1))
        latents.append(flat.detach())
    return z_q, commit, codebook_loss, codes, latents


def seal_codebooks(model, n_codes: int) -> None:
    """Rows past ``n_codes`` become copies of used rows: the nearest-code search returns the first of equals."""
    with torch.no_grad():
        for q in model.quantizer.quantizers:
            w = q.codebook.weight
            w[n_codes:] = w[:n_codes].repeat(math.ceil(w.size(0) / n_codes), 1)[: w.size(0) - n_codes]


def training_speech(
    seed: int, n_train: int, workers: int, n_answers: int | None = None, n_heldout: int = 40
) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """The demo's training sentences (same seed and count as make_demo_data) and the assistant's answers, in its voice.

    Args:
        n_answers: how many of the sorted answers (default all; ``--tiny`` takes a few).

    Returns:
        24 kHz clips ``(S,)``, the training sentences, and the held-out ones (for the final check only).
    """
    train, heldout = make_sentences(random.Random(seed), n_train, n_heldout)
    answers = sorted({a for _, a in qa_pool()} | {a for _, a in IDENTITY})[:n_answers]
    jobs = [(s, ASSISTANT) for s in train + answers]
    print(f"speaking {len(jobs)} training utterances with espeak-ng ...", flush=True)
    clips = [resample(a, r, SNAC_RATE) for a, r in speak_all(jobs, workers)]
    return clips, train, heldout


def crops(audio: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``length`` samples from the concatenated speech -> ``(B, 1, length)``."""
    starts = torch.randint(0, audio.numel() - length, (batch,), generator=gen)
    return torch.stack([audio[s : s + length] for s in starts.tolist()])[:, None, :]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "omni_train" / "demo_data" / "snac")
    parser.add_argument("--steps", type=int, default=2600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.34, help="length of a training window (whole coarse frames)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--codes", type=int, default=512, help="codebook rows in use per level (of 4096)")
    parser.add_argument("--train", type=int, default=1200, help="training sentences (make_demo_data's --train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: deterministic)")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at a time")
    parser.add_argument("--adversarial", type=float, default=0.2,
                        help="the period discriminator joins after this fraction of the steps (1: never)")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue training this codec (its config and weights; a fresh optimiser, "
                             "schedule and discriminator) instead of starting from random weights")
    parser.add_argument("--save-every", type=int, default=0, help="also write the codec every N steps (to listen)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="with --init: train only the decoder, so that the encoder and codebooks, and with "
                             "them every code already made with the codec, stay exactly as they are")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run in seconds: a narrow codec, a few sentences and steps (for tests)")
    args = parser.parse_args(argv)
    if args.decoder_only and args.init is None:
        parser.error("--decoder-only continues a trained codec: pass --init DIR")
    config, n_answers, n_heldout = TINY_SNAC, None, 40
    if args.tiny:
        config, n_answers, n_heldout = {**TINY_SNAC, "encoder_dim": 2, "decoder_dim": 16}, 2, 2
        args.train, args.steps, args.batch_size, args.codes = 4, 3, 2, 16
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    clips, train, heldout = training_speech(args.seed, args.train, args.workers, n_answers, n_heldout)
    gap = torch.zeros(SNAC_RATE // 10)
    audio = torch.cat([t for c in clips for t in (c, gap)])  # one stream; windows may span two clips
    print(f"{len(clips)} clips, {audio.numel() / SNAC_RATE / 60:.1f} min of speech", flush=True)

    codec = SnacCodec.from_pretrained(args.init) if args.init else SnacCodec.from_config(config)
    model = codec.model.train()
    model.requires_grad_(not args.decoder_only)
    model.decoder.requires_grad_(True)
    mel_loss = MultiScaleMelLoss(SNAC_RATE)
    disc = PeriodDiscriminator()
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    adv_start = max(1, round(args.adversarial * args.steps)) if args.adversarial < 1 else args.steps + 1
    trained = [p for p in model.parameters() if p.requires_grad]
    params = sum(p.numel() for p in trained)  # the decoder's alone with --decoder-only
    opt = torch.optim.AdamW(trained, lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    length = round(args.seconds * SNAC_RATE / 2048) * 2048  # whole coarse frames: no padding inside SNAC
    usage = [torch.zeros(args.codes) for _ in model.quantizer.quantizers]
    if args.init is None:  # a trained codec's rows are in use already
        init_codebooks(model, audio, length, args.codes, gen)
    start, cpu = time.time(), time.process_time()
    logged = torch.zeros(3)  # mel, wave, commitment summed since the last log line
    for step in range(1, args.steps + 1):
        x = crops(audio, args.batch_size, length, gen)  # (B, 1, S)
        with torch.set_grad_enabled(not args.decoder_only):
            z = model.encoder(x)  # (B, latent_dim, S / 512)
            z_q, commit, cb, codes, latents = quantize(model, z, args.codes)
        y = model.decoder(z_q)  # (B, 1, S)
        mel = mel_loss(y[:, 0], x[:, 0])
        wave = F.l1_loss(y, x)
        loss = W_MEL * mel + W_WAVE * wave + W_COMMIT * commit + W_CODEBOOK * cb
        if step >= adv_start:
            opt_d.zero_grad()
            discriminator_loss(disc, x, y).backward()
            opt_d.step()
            adv, fm = generator_losses(disc, x, y)
            loss = loss + W_ADV * adv + W_FEAT * fm
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1e3)
        opt.step()
        sched.step()
        logged += torch.tensor([mel.item(), wave.item(), commit.item()])
        for u, c in zip(usage, codes):
            u += torch.bincount(c.reshape(-1), minlength=args.codes)
        if step % 100 == 0:
            restart = step <= 0.8 * args.steps and not args.decoder_only  # a moved row would change old codes
            resets = restart_dead_codes(model, usage, latents, gen) if restart else 0
            used = "/".join(str(int((u > 0).sum())) for u in usage)
            m, w, c = (logged / 100).tolist()
            logged.zero_()
            print(f"step {step}: mel {m:.3f} wave {w:.4f} commit {c:.4f} "
                  f"codes used {used}, {resets} reset "
                  f"({time.time() - start:.0f} s, cpu {time.process_time() - cpu:.0f} s)",
                  flush=True)
            usage = [torch.zeros_like(u) for u in usage]
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            seal_codebooks(model, args.codes)  # harmless mid-training: only the first rows are searched
            codec.save_pretrained(args.out)

    minutes, cpu_minutes = (time.time() - start) / 60, (time.process_time() - cpu) / 60
    seal_codebooks(model, args.codes)
    codec.save_pretrained(args.out)
    codec = SnacCodec.from_pretrained(args.out)
    print(f"trained {params / 1e6:.2f} M parameters for {args.steps} steps in {minutes:.1f} min "
          f"({cpu_minutes:.1f} CPU min); "
          f"wrote {args.out} ({(args.out / 'pytorch_model.bin').stat().st_size / 1e6:.1f} MB)")
    report(codec, clips[: len(train)], heldout, mel_loss, args.workers)


def init_codebooks(model, audio: torch.Tensor, length: int, n_codes: int, gen: torch.Generator) -> None:
    """Codebook rows start at encoder outputs of random windows, level by level.

    Random rows leave most codes dead: a random encoder's outputs all point nearly one way, and only
    the few rows near that direction are ever chosen.
    """
    windows = 2 * math.ceil(n_codes / (length // 2048))  # twice as many coarse frames as rows to fill
    with torch.no_grad():
        z = model.encoder(crops(audio, windows, length, gen))  # (windows, latent_dim, T)
        for level, q in enumerate(model.quantizer.quantizers):  # a level's inputs depend on the levels above
            latents = quantize(model, z, n_codes)[4][level]  # (windows * T / stride, codebook_dim)
            q.codebook.weight[:n_codes] = latents[torch.randperm(latents.size(0), generator=gen)[:n_codes]]


def restart_dead_codes(model, usage: list[torch.Tensor], latents: list[torch.Tensor], gen: torch.Generator) -> int:
    """Rows unused since the last call move to random encoder outputs of this step (SoundStream's dead-code restart).

    Without it the encoder soon settles on a few dozen codes a level and the decoder, told little,
    learns an average sound.
    """
    n = 0
    with torch.no_grad():
        for q, u, lat in zip(model.quantizer.quantizers, usage, latents):
            dead = torch.nonzero(u == 0).reshape(-1)
            q.codebook.weight[dead] = lat[torch.randint(0, lat.size(0), (len(dead),), generator=gen)]
            n += len(dead)
    return n


def report(codec: SnacCodec, train_clips, heldout: list[str], mel_loss, workers: int) -> None:
    """Mel distance of the codec round trip on training and held-out sentences (assistant voice), codes in use."""
    held = [resample(a, r, SNAC_RATE) for a, r in speak_all([(s, ASSISTANT) for s in heldout], workers)]
    for name, clips in (("train", train_clips[:40]), ("held-out", held)):
        dist = []
        for c in clips:
            y = codec.decode(codec.encode(c))[: c.numel()]
            dist.append(mel_loss(y[None], c[None]).item())
        print(f"{name} sentences (assistant voice): mel distance {sum(dist) / len(dist):.3f}")
    codes = torch.cat([codec.encode(c) for c in held])  # (N, 7)
    print("distinct codes in held-out frames per level:", [len(torch.unique(codes[:, j])) for j in range(7)],
          f"max {int(codes.max())}")


if __name__ == "__main__":
    main()
