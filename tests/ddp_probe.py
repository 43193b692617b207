"""A callback the DDP test adds through the config (+callbacks.probe._target_=ddp_probe.Probe).

Each rank writes what it trained on, the loss it logged and a fingerprint of its weights.
"""

import json
from pathlib import Path

import lightning as L
import torch


class Probe(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.samples, self.losses = Path(out), [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.samples += [f"{s}|{r}" for s, r in zip(batch.sources, batch.rows)]
        if "train/loss" in trainer.callback_metrics:  # logged only on the steps the loggers write (log_every)
            self.losses.append(float(trainer.callback_metrics["train/loss"]))

    def on_train_end(self, trainer, module) -> None:
        weights = torch.cat([p.detach().flatten() for p in module.model.parameters()])
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "samples": self.samples,
                  "losses": self.losses, "weights": [float(weights.sum()), float(weights.abs().sum())]}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
