"""The staged trainer of every LLM recommender (HistLLM Sec. 3.3; CoLLM's two steps; TALLRec).

* stage 0: the model's collaborative model (:meth:`LLMRecommender.collaborative_model`: MF for
  CoLLM and HistLLM's CIA, BinLLM's hashing model) trained on the same train split with BCE, as a
  RecBole model with RecBole's trainer, unless its checkpoint key (``mf_checkpoint``,
  ``hash_checkpoint``) names a finished one; the model then loads what it needs from it.
  Skipped for models without one. Its optimisation keys are the ``mf_*`` ones.
* stages 1, 2, ...: every stage of :meth:`LLMRecommender.training_stages`, each on its own prompt
  with its own trainable set (``stage_trainable``): by default stage 1 LoRA (Eq. 15-16), stage 2
  LoRA frozen and the mapping modules and UHEM trained (Eq. 17). A model without training stages
  (zero-shot) is only scored.

Each stage has its own ``stage{k}_epochs``, ``stage{k}_learning_rate``, ``stage{k}_batch_size`` and
``stage{k}_train_rows`` (rows drawn afresh each epoch unless ``stage{k}_repeat_rows``; ~ = all;
``stage{k}_epochs: 0`` skips the stage and leaves its weights as initialised, recorded as ``skipped: true``),
early-stops on AUC over a fixed ``valid_rows`` subsample of the valid split, saves ONLY trainable weights (never
the backbone) to ``<checkpoint_dir>/<model>-stage{k}.pth`` after every epoch, and resumes from there after a
kill when rerun with the same ``--output_dir``.

Under ``torchrun --nproc_per_node=N`` (:mod:`recbole_histllm.distributed`): rank 0's initial trainable
weights are broadcast; stage 0 is trained by rank 0 alone while the others wait, then every rank loads
its checkpoint; each global batch of ``stage{k}_batch_size`` rows is split between the ranks and their
gradients are summed before every optimiser step (the single-process update); validation and test rows
are scored once each, sharded without padding and gathered in row order, so every rank computes the same
metrics and takes the same early-stopping decision. Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import torch
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer
from recbole.utils import set_color
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from recbole_histllm import distributed
from recbole_histllm.evaluator import user_auc
from recbole_histllm.model.llm_recommender import ITEM_SLOTS, LORA, USER_SLOTS
from recbole_histllm.split import impression_field
from recbole_histllm.utils import UsageError, config_value

BUCKET_BATCHES = 50  # length_buckets: batches per chunk of the epoch's random order sorted by prompt length


def stage0_config(config: Config, model: str) -> Config:
    """A copy of an LLM run's ``config`` set up for its stage-0 collaborative ``model`` (the ``mf_*`` keys)."""
    out = copy.copy(config)
    out.final_config_dict = dict(config.final_config_dict)
    out.final_config_dict.update(model=model, embedding_size=config["mf_embedding_size"],
                                 learning_rate=config["mf_learning_rate"], epochs=config["mf_epochs"],
                                 reg_weight=config["mf_reg_weight"], init_std=0.01,
                                 stopping_step=config["mf_stopping_step"], weight_decay=0.0)
    return out


@dataclass
class _StageRun:
    """What one training stage carries from epoch to epoch (and through a resume)."""

    stage: int
    epochs: int
    batch_size: int
    rows_per_epoch: int
    accumulate: int
    patience: int
    params: list
    optimizer: torch.optim.Optimizer
    clip: dict | None = None  # keyword arguments of clip_grad_norm_ (None: no clipping)
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    first_epoch: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -math.inf, "epoch": None, "state": None})
    elapsed: float = 0.0
    seen: int = 0
    stale: int = 0

    def restore(self, saved: dict, model) -> None:
        """Continue after the last finished epoch of an unfinished stage file."""
        model.load_checkpoint_state(saved["state"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.first_epoch, self.history = saved["epoch"] + 1, saved["history"]
        self.elapsed, self.seen = saved["time_s"], saved["rows"]
        self.best = {"score": saved["best_score"], "epoch": saved["best_epoch"], "state": saved["best_state"]}
        self.stale = 0 if self.best["epoch"] is None else len(self.history) - 1 - self.best["epoch"]

    def end_epoch(self, epoch: int, loss: float, rows: int, train_s: float, epoch_s: float, result: dict,
                  model, grads: dict | None = None) -> None:
        """Record an epoch (``grads``: its gradient-norm summary); keep the model's trainable state when
        valid AUC improved (early stopping)."""
        self.elapsed += epoch_s
        self.seen += rows
        self.history.append({"epoch": epoch, "loss": loss, "train_s": round(train_s, 2),
                             "rows_per_s": round(rows / max(train_s, 1e-9), 2), **(grads or {}), **result})
        score = result["auc"] if not math.isnan(result["auc"]) else -math.inf
        if score > self.best["score"]:
            self.best = {"score": score, "epoch": epoch, "state": model.checkpoint_state()}
            self.stale = 0
        else:
            self.stale += 1

    def progress(self, epoch: int, model) -> dict:
        """The unfinished stage file written after ``epoch`` (what :meth:`restore` reads)."""
        return {"done": False, "epoch": epoch, "state": model.checkpoint_state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best_score": self.best["score"], "best_epoch": self.best["epoch"], "best_state": self.best["state"],
                "history": self.history, "time_s": self.elapsed, "rows": self.seen}

    def summary(self, valid_rows: int, peak_bytes: int | None) -> dict:
        """The stage's entry of ``result.json``'s ``stages``."""
        return {
            "time_s": round(self.elapsed, 2),
            "rows_trained": self.seen,
            "samples_per_s": round(sum(h["rows_per_s"] for h in self.history) / max(len(self.history), 1), 2),
            "best_epoch": self.best["epoch"],
            "best_valid_auc": self.best["score"] if self.best["epoch"] is not None else None,
            "best_valid": next((h for h in self.history if h["epoch"] == self.best["epoch"]), None),
            "valid_rows": valid_rows,
            "world_size": distributed.world_size(),
            "peak_gpu_gib": round(peak_bytes / 2**30, 2) if peak_bytes is not None else None,
            "epochs": self.history,
        }


class LLMTrainer(Trainer):
    """Trainer for :class:`~recbole_histllm.model.llm_recommender.LLMRecommender` models."""

    def __init__(self, config, model) -> None:
        super().__init__(config, model)
        self.logger = getLogger()
        self.saved_model_file = os.path.join(self.checkpoint_dir, f"{config['model']}-best.pth")
        self.stage_summaries: dict[str, dict] = {}
        if distributed.world_size() > 1:  # every rank starts from rank 0's random initialisation (as DDP)
            keys = set(model.checkpoint_state())
            distributed.broadcast_([t for k, t in model.state_dict(keep_vars=True).items() if k in keys])

    # ---- helpers ------------------------------------------------------------------------------
    def _stage_file(self, stage: int) -> str:
        return os.path.join(self.checkpoint_dir, f"{self.config['model']}-stage{stage}.pth")

    def _generator(self, *salt: int) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(int(self.config["seed"]) * 1_000_003 + sum(s * 7919**i for i, s in enumerate(salt, 1)))
        return gen

    def _valid_rows(self, dataset) -> np.ndarray:
        budget = config_value(self.config, "valid_rows")
        n = len(dataset)
        if budget is None or budget >= n:
            return np.arange(n)
        return np.sort(torch.randperm(n, generator=self._generator(99))[: int(budget)].numpy())

    @torch.no_grad()
    def score_rows(self, dataset, rows: np.ndarray, desc: str = "score") -> dict[str, np.ndarray]:
        """``score``, ``label``, ``user`` and ``item`` of ``dataset[rows]`` in the order of ``rows``, in eval
        mode (the model's current stage). Under torchrun each rank scores its shard and gets all rows back."""
        self.model.eval()
        rows = distributed.shard(np.asarray(rows))
        # length_buckets: score this rank's rows longest first (little padding per batch), then restore
        by_length = None
        if config_value(self.config, "length_buckets", False) and hasattr(self.model, "row_lengths") and len(rows) > 1:
            by_length = np.argsort(-np.asarray(self.model.row_lengths(dataset, rows)), kind="stable")
            rows = rows[by_length]
        size = int(self.config["eval_batch_size"])
        fields = {"label": "LABEL_FIELD", "user": "USER_ID_FIELD", "item": "ITEM_ID_FIELD"}
        if impression_field(self.config, dataset.inter_feat.columns):
            fields["impression"] = "IMPRESSION_FIELD"  # the impression metrics group by it
        out: dict[str, list[np.ndarray]] = {"score": [], **{key: [] for key in fields}}
        batches = range(0, len(rows), size)
        for start in tqdm(batches, desc=desc, ncols=100, disable=not self.config["show_progress"]):
            inter = dataset[torch.as_tensor(rows[start : start + size])].to(self.device)
            out["score"].append(self.model.predict(inter).float().cpu().numpy())
            for key, name in fields.items():
                out[key].append(inter[self.config[name]].cpu().numpy())
        local = {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}
        if by_length is not None:  # back to the order of ``rows``
            restore = np.empty_like(by_length)
            restore[by_length] = np.arange(len(by_length))
            local = {k: v[restore] for k, v in local.items()}
        return distributed.gather_shards(local)

    def train_batches(self, dataset, order: torch.Tensor, batch_size: int, stage: int,
                      epoch: int) -> list[torch.Tensor]:
        """An epoch's global batches from its random row ``order``: ``order.split(batch_size)``. With
        ``length_buckets``: the order is cut into chunks of ``BUCKET_BATCHES`` batches, each chunk sorted by
        prompt length (:meth:`LLMRecommender.row_lengths`) and split, and the batches shuffled, all from
        the trainer's seeded generator: every row once per epoch, little padding per batch, and the same
        batches on every rank under torchrun."""
        if not config_value(self.config, "length_buckets", False) or not hasattr(self.model, "row_lengths") \
                or len(order) <= batch_size:
            return list(order.split(batch_size))
        lengths = torch.as_tensor(np.asarray(self.model.row_lengths(dataset, order.numpy())))
        batches: list[torch.Tensor] = []
        chunk = batch_size * BUCKET_BATCHES
        for rows, length in zip(order.split(chunk), lengths.split(chunk)):
            batches.extend(rows[torch.sort(length, stable=True).indices].split(batch_size))
        shuffle = torch.randperm(len(batches), generator=self._generator(stage, epoch, 1))
        return [batches[i] for i in shuffle.tolist()]

    def valid_metrics(self, dataset, rows: np.ndarray, desc: str = "valid") -> dict[str, float]:
        out = self.score_rows(dataset, rows, desc)
        labels = out["label"] > 0.5
        auc = float(roc_auc_score(labels, out["score"])) if 0 < labels.sum() < len(labels) else float("nan")
        uauc = user_auc(out["user"], out["score"], labels)[0]
        return {"auc": round(auc, 4), "uauc": round(uauc, 4)}

    # ---- stage 0 ----------------------------------------------------------------------------
    def _rows_per_epoch(self, stage: int, n_train: int) -> int:
        budget = config_value(self.config, f"stage{stage}_train_rows")
        return n_train if budget is None else min(int(budget), n_train)

    def _epoch_order(self, stage: int, epoch: int, n_train: int) -> torch.Tensor:
        """The train rows of one epoch of a stage (seed-fixed): fresh rows each epoch, or with
        ``stage{k}_repeat_rows`` the first epoch's rows in a new order (fewer rows for ``mf_holdout`` to hold out)."""
        if epoch > 0 and config_value(self.config, f"stage{stage}_repeat_rows", False):
            first = self._epoch_order(stage, 0, n_train)
            return first[torch.randperm(len(first), generator=self._generator(stage, epoch, 2))]
        return torch.randperm(n_train, generator=self._generator(stage, epoch))[:self._rows_per_epoch(stage, n_train)]

    def _collaborative_stages(self) -> list[int]:
        """The stages that train with collaborative (CIA) slots in their prompt."""
        slots = set(USER_SLOTS + ITEM_SLOTS)
        return [stage for stage in self.model.training_stages() if slots & set(self.model.templates[stage].slots)]

    def holdout_rows(self, n_train: int) -> np.ndarray:
        """Every train row a stage with collaborative slots will train on (``mf_holdout``), sorted."""
        rows = [self._epoch_order(stage, epoch, n_train) for stage in self._collaborative_stages()
                for epoch in range(int(config_value(self.config, f"stage{stage}_epochs", 1)))]
        return np.unique(torch.cat(rows).numpy()) if rows else np.zeros(0, dtype=np.int64)

    def _holdout_data(self, train_data):
        """``train_data`` without the rows the later stages train on, so that the collaborative inputs of those
        rows are out of sample, as they are for valid and test rows (stacking's out-of-fold fit)."""
        dataset = train_data._dataset
        held = self.holdout_rows(len(dataset))
        if len(held) >= len(dataset):
            raise UsageError(f"mf_holdout: True holds out all {len(dataset)} train rows (the stages train on the"
                             " whole split); set stage<k>_train_rows to a budget, or --mf_holdout=False"
                             " --cia_interaction=False (HistLLM's defaults turn both on; the MF product without"
                             " the holdout is in sample on the rows the stages train)")
        keep = np.ones(len(dataset), dtype=bool)
        keep[held] = False
        subset = dataset.copy(dataset.inter_feat[torch.from_numpy(np.nonzero(keep)[0])])
        return type(train_data)(self.config, subset, train_data._sampler, shuffle=True), len(held)

    def _holdout_mismatch(self, fitted) -> str | None:
        """Why a given stage-0 checkpoint (``fitted``: the config saved with it) did not hold out this run's
        ``mf_holdout`` rows, or None when it did (same seed, the same rows per stage, ``mf_holdout`` on)."""
        if fitted is None:
            return "records no config"
        if not config_value(fitted, "mf_holdout"):
            return "was fit without mf_holdout (on the whole train split)"
        keys = ["seed"] + [f"stage{k}_{what}" for k in self._collaborative_stages()
                           for what in ("train_rows", "epochs", "repeat_rows")]
        off = {k: False for k in keys if k.endswith("_repeat_rows")}  # a Bool key: unset is False
        differ = [k for k in keys if config_value(fitted, k, off.get(k)) != config_value(self.config, k, off.get(k))]
        return f"held out other rows ({', '.join(differ)} differ)" if differ else None

    def _stage0(self, train_data, valid_data) -> None:
        """Train (or resume, or take as given) the model's collaborative model and load it."""
        spec = self.model.collaborative_model()
        if spec is None:
            return
        start = time.time()
        held = 0
        checkpoint = config_value(self.config, spec.checkpoint_key)
        if checkpoint:
            source = "given"
        else:
            checkpoint = os.path.join(self.checkpoint_dir, f"{spec.name}-stage0.pth")
            source = "resumed" if os.path.isfile(checkpoint) else "trained"
            distributed.barrier()  # every rank has looked for the checkpoint before rank 0 may write it
            if source == "trained" and distributed.is_main():  # the other ranks wait, then load it
                config = stage0_config(self.config, spec.name)
                net = spec.model(config, train_data._dataset).to(self.device)
                fit_data = train_data
                if self.config["mf_holdout"]:
                    fit_data, held = self._holdout_data(train_data)
                trainer = Trainer(config, net)
                partial = checkpoint + ".partial"
                trainer.saved_model_file = partial
                split = "the train split"
                if held:
                    split += f" less the {held} rows the later stages train on (mf_holdout)"
                self.logger.info(set_color("stage 0", "green") + f": {spec.name} on {split} (collaborative)")
                trainer.fit(fit_data, valid_data, saved=True, show_progress=False)
                os.replace(partial, checkpoint)  # only a finished stage 0 counts on resume
            distributed.barrier()
        self.model.load_collaborative(checkpoint, train_data._dataset)
        # RecBole's Trainer saves the config with the weights: a given stage 0 must have held out this run's rows
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        uses_mf = self.config["cia_interaction"] or self.config["cia_residual"]  # MF's product / logit per row
        if source == "given" and uses_mf and self._collaborative_stages():
            mismatch = self._holdout_mismatch(saved.get("config") if isinstance(saved, dict) else None)
            if mismatch:
                self.logger.warning(f"{spec.checkpoint_key} {checkpoint}: {mismatch}, so with cia_interaction or"
                                    " cia_residual the MF product is in sample on rows the later stages train on;"
                                    " give the stage-0 checkpoint of a run with the same seed, stage rows and"
                                    " mf_holdout: True, or --cia_interaction=False --cia_residual=False")
        elif source == "trained" and uses_mf and not self.config["mf_holdout"]:
            self.logger.warning("cia_interaction or cia_residual without mf_holdout: stage 0 fit MF on the rows the"
                                " later stages train on, so the MF product is in sample there (and out of sample on"
                                " valid and test rows)")
        # RecBole's Trainer saves its best epoch and valid score with the weights: recorded so that runs
        # whose stage 0 was trained apart (e.g. table rows in separate processes) can be compared
        score = saved.get("best_valid_score") if isinstance(saved, dict) else None
        self.stage_summaries["stage0"] = {
            "model": spec.name, "checkpoint": str(checkpoint), "source": source,
            "best_epoch": saved.get("epoch") if isinstance(saved, dict) else None,
            "best_valid_score": None if score is None else round(float(score), 4),
            "valid_metric": self.config["valid_metric"], "time_s": round(time.time() - start, 2),
            "holdout_rows": held if source == "trained" else None}

    # ---- prompt stages ---------------------------------------------------------------------
    def _load_lora_stage(self, key: str, path: str) -> dict:
        """Take a LoRA-only stage as finished from ``lora_checkpoint``: the ``<Model>-stage1.pth`` of
        another run (any LLM model whose stage 1 is the same LoRA stage); only its LoRA tensors are
        loaded. Its summary is kept, marked ``source: given``."""
        start = time.time()
        if not os.path.isfile(path):
            raise UsageError(f"config key `lora_checkpoint`: no such file {path}")
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(saved, dict) or not saved.get("done"):
            raise UsageError(f"config key `lora_checkpoint`: {path} is not a finished stage checkpoint "
                             "(a <Model>-stage1.pth written at the end of a stage)")
        lora = {k: v for k, v in saved["best_state"].items() if "lora_" in k}
        mine = {k for k in self.model.checkpoint_state() if "lora_" in k}
        if set(lora) != mine or any(lora[k].shape != v.shape for k, v in self.model.state_dict().items() if k in mine):
            raise UsageError(f"config key `lora_checkpoint`: the LoRA tensors of {path} do not fit this model "
                             f"({len(lora)} tensors there, {len(mine)} here: another backbone or LoRA shape?)")
        self.model.load_state_dict(lora, strict=False)
        self.logger.info(f"{key}: LoRA taken from {path} (lora_checkpoint)")
        summary = dict(saved.get("summary") or {})
        summary.update(source="given", checkpoint=path, load_s=round(time.time() - start, 2))
        return summary

    def _optimizer(self, key: str) -> torch.optim.Optimizer:
        """AdamW over the stage's trainable parameters: LoRA at ``stage{k}_learning_rate``, the mapping
        modules and UHEM at ``module_learning_rate`` (~ = the stage's rate)."""
        cfg = self.config
        lr = float(config_value(cfg, f"{key}_learning_rate", 1e-4))
        module_lr = float(config_value(cfg, "module_learning_rate", lr))
        decay = float(config_value(cfg, "weight_decay", 0.0))
        lora, modules = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (lora if "lora_" in name else modules).append(param)
        groups = [{"params": ps, "lr": rate} for ps, rate in ((lora, lr), (modules, module_lr)) if ps]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=decay)

    def _clip_args(self, stage: int) -> dict | None:
        """Gradient clipping of LLM stage ``stage``: ``stage{k}_max_grad_norm`` when set, else ``max_grad_norm``,
        else RecBole's ``clip_grad_norm``."""
        max_norm = config_value(self.config, f"stage{stage}_max_grad_norm")
        max_norm = config_value(self.config, "max_grad_norm") if max_norm is None else max_norm
        return {"max_norm": float(max_norm)} if max_norm is not None else (self.clip_grad_norm or None)

    def _scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """``lr_schedule``: ``cosine`` (linear warmup over ``warmup_ratio`` of the stage's optimiser steps,
        then cosine decay to 0) or ``constant`` (warmup, then flat)."""
        cfg = self.config
        kind = str(config_value(cfg, "lr_schedule", "constant"))
        if kind not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {kind!r}")
        total = max(int(total_steps), 1)
        warmup = int(round(float(config_value(cfg, "warmup_ratio", 0.0)) * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if kind == "constant":
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _run_stage(self, stage: int, train_ds, valid_ds, valid_rows: np.ndarray, show_progress: bool) -> dict:
        """Train one stage (or skip it, or take it from ``lora_checkpoint`` or its finished file) and return
        its summary: epochs of ``stage{k}_train_rows`` rows (:meth:`_epoch_order`), early stopping on valid AUC,
        the stage file rewritten after every epoch (resume) and once more, marked done, at the end."""
        key, model, cfg = f"stage{stage}", self.model, self.config
        model.set_stage(stage)
        given = config_value(cfg, "lora_checkpoint")
        modules = model.trainable_modules()
        present = {g for g in model.stage_trainable.get(stage, ()) if g == LORA or modules.get(g) is not None}
        if given and present == {LORA}:  # a LoRA-only stage (TALLRec's vma group is absent without images)
            return self._load_lora_stage(key, str(given))
        if int(config_value(cfg, f"{key}_epochs", 1)) == 0:  # off: its trainable weights stay as initialised
            self.logger.info(set_color(key, "green") + f": skipped ({key}_epochs: 0)")
            return {"skipped": True, "time_s": 0.0, "rows_trained": 0, "best_epoch": None, "best_valid_auc": None,
                    "best_valid": None, "epochs": []}
        path = self._stage_file(stage)
        saved = torch.load(path, map_location="cpu", weights_only=False) if os.path.isfile(path) else None
        distributed.barrier()  # every rank has read the stage file before rank 0 may rewrite it
        if saved is not None and saved["done"]:
            model.load_checkpoint_state(saved["best_state"])
            self.logger.info(f"{key}: finished earlier, loaded its best weights from {path}")
            return saved["summary"]
        run = self._start_stage(stage, len(train_ds), saved)
        cuda = torch.device(self.device).type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        for epoch in range(run.first_epoch, run.epochs):
            if run.stale >= run.patience:
                break
            start = time.time()
            loss, rows, train_s, grads = self._train_epoch(run, train_ds, epoch, show_progress)
            result = self.valid_metrics(valid_ds, valid_rows, desc=f"{key} valid")
            run.end_epoch(epoch, loss, rows, train_s, time.time() - start, result, model, grads)
            self.logger.info(f"{key} epoch {epoch}: loss {loss:.4f}, valid {result}, {run.history[-1]['rows_per_s']} "
                             f"rows/s, gradient norm {grads['grad_norm']} (median; {grads['clipped']:.0%} clipped)")
            if distributed.is_main():
                torch.save(run.progress(epoch, model), path)
        if run.best["state"] is not None:
            model.load_checkpoint_state(run.best["state"])
        summary = run.summary(len(valid_rows), torch.cuda.max_memory_allocated(self.device) if cuda else None)
        if distributed.is_main():
            torch.save({"done": True, "best_state": model.checkpoint_state(), "summary": summary}, path)
        return summary

    def _start_stage(self, stage: int, n_train: int, saved: dict | None) -> _StageRun:
        """The optimiser, schedule and counters of a stage, restored from an unfinished stage file."""
        key, cfg = f"stage{stage}", self.config
        run = _StageRun(
            stage=stage, epochs=int(config_value(cfg, f"{key}_epochs", 1)),
            batch_size=int(config_value(cfg, f"{key}_batch_size", 8)),
            rows_per_epoch=self._rows_per_epoch(stage, n_train),
            accumulate=int(config_value(cfg, "gradient_accumulation_steps", 1)),
            patience=int(config_value(cfg, "stopping_step", 2)),
            params=[p for p in self.model.parameters() if p.requires_grad], optimizer=self._optimizer(key),
            clip=self._clip_args(stage))
        steps_per_epoch = math.ceil(math.ceil(run.rows_per_epoch / run.batch_size) / run.accumulate)
        run.scheduler = self._scheduler(run.optimizer, steps_per_epoch * run.epochs)
        if saved is not None:
            run.restore(saved, self.model)
            self.logger.info(f"{key}: resuming after epoch {saved['epoch']} from {self._stage_file(stage)}")
        self.logger.info(
            set_color(key, "green") + f": {sum(p.numel() for p in run.params):,} trainable parameters, "
            f"{run.rows_per_epoch} rows/epoch, batch {run.batch_size}, up to {run.epochs} epochs"
        )
        return run

    def _train_epoch(self, run: _StageRun, train_ds, epoch: int,
                     show_progress: bool) -> tuple[float, int, float, dict]:
        """One epoch of ``run.rows_per_epoch`` rows (:meth:`_epoch_order`): ``(mean batch loss over all ranks, rows,
        seconds, gradient norms)``, the last the median total norm before clipping and the share of steps clipped.
        Each global batch is split between the ranks; their gradients are summed before every step."""
        start, model = time.time(), self.model
        model.train()
        order = self._epoch_order(run.stage, epoch, len(train_ds))
        batches = self.train_batches(train_ds, order, run.batch_size, run.stage, epoch)  # global; each rank its shard
        bar = tqdm(batches, desc=f"stage{run.stage} epoch {epoch}", ncols=100, disable=not show_progress)
        total = 0.0  # this rank's share of the sum of batch-mean losses (summed over ranks after the epoch)
        local_total = 0.0  # the losses of this rank's own shards (progress bar)
        run.optimizer.zero_grad()
        norms = []  # total gradient norm of each optimiser step, before clipping
        for step, idx in enumerate(bar, 1):
            mine = distributed.shard(idx)
            share = len(mine) / len(idx)  # shares sum to 1: the summed gradient is the batch mean's
            if len(mine):
                loss = model.calculate_loss(train_ds[mine].to(self.device))
                (loss * share / run.accumulate).backward()
                total += loss.detach().item() * share
                local_total += loss.detach().item()
            if step % run.accumulate == 0 or step == len(batches):
                distributed.all_reduce_grads(run.params)
                if run.clip:
                    norms.append(float(torch.nn.utils.clip_grad_norm_(run.params, **run.clip)))
                else:
                    norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in run.params
                                                                       if p.grad is not None])))
                run.optimizer.step()
                run.scheduler.step()
                run.optimizer.zero_grad()
            bar.set_postfix(loss=f"{local_total / step:.4f}")
        total = distributed.all_reduce_sum(total, self.device)
        limit = run.clip["max_norm"] if run.clip else math.inf
        grads = {"grad_norm": round(statistics.median(norms), 4) if norms else None,
                 "clipped": round(sum(n > limit for n in norms) / max(len(norms), 1), 3)}
        return total / max(len(batches), 1), len(order), time.time() - start, grads

    # ---- RecBole interface ------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Stage 0 (if the model has a collaborative model), then every training stage in order;
        a model without training stages (zero-shot) is only scored on the valid rows."""
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        self._stage0(train_data, valid_data)
        train_ds, valid_ds = train_data._dataset, valid_data._dataset
        valid_rows = self._valid_rows(valid_ds)
        stages = self.model.training_stages()
        for stage in stages:
            self.stage_summaries[f"stage{stage}"] = self._run_stage(stage, train_ds, valid_ds, valid_rows,
                                                                    show_progress)
        trained = [s for s in stages if not self.stage_summaries[f"stage{s}"].get("skipped")]
        if trained:
            last = self.stage_summaries[f"stage{trained[-1]}"]
            best = dict(last["best_valid"] or {})
            self.best_epoch = last["best_epoch"]
        else:
            self.model.set_stage(max(self.model.templates))
            start = time.time()
            best = self.valid_metrics(valid_ds, valid_rows, desc="valid (no training)")
            self.stage_summaries["no_training"] = {"time_s": round(time.time() - start, 2),
                                                   "valid_rows": len(valid_rows), "valid": best}
            self.logger.info(f"{self.config['model']} is not trained: valid {best}")
            self.best_epoch = None
        self.best_valid_result = {k: best[k] for k in ("auc", "uauc") if k in best}
        self.best_valid_score = self.best_valid_result.get("auc", -math.inf)
        if saved and distributed.is_main():
            torch.save({"state_dict": self.model.checkpoint_state(), "config": dict(self.config.final_config_dict),
                        "stages": self.stage_summaries}, self.saved_model_file)
        distributed.barrier()  # the best weights are on disk before any rank's evaluate() loads them
        return self.best_valid_score, self.best_valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):  # RecBole's hook; stages save their own
        pass

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """Score every row of ``eval_data`` once (:meth:`score_rows`: sharded under torchrun, no padding)
        and compute the configured metrics with RecBole's collector and evaluator; the collector keeps the
        rows in ``eval_collector.last_data_struct`` (test_predictions.csv). ``load_best_model`` loads the
        saved trainable weights (not a full state dict) first."""
        if not eval_data:
            return None
        if load_best_model:
            checkpoint = torch.load(model_file or self.saved_model_file, map_location="cpu", weights_only=False)
            self.model.load_checkpoint_state(checkpoint["state_dict"])
        dataset = eval_data._dataset
        out = self.score_rows(dataset, np.arange(len(dataset)), desc="evaluate")
        fields = {"LABEL_FIELD": "label", "USER_ID_FIELD": "user", "ITEM_ID_FIELD": "item",
                  "IMPRESSION_FIELD": "impression"}
        rows = Interaction({self.config[name]: torch.from_numpy(out[key])
                            for name, key in fields.items() if key in out})
        self.eval_collector.eval_batch_collect(torch.from_numpy(out["score"]), rows, None, None)
        self.eval_collector.model_collect(self.model)
        result = self.evaluator.evaluate(self.eval_collector.get_data_struct())
        self.wandblogger.log_eval_metrics(result, head="eval")
        return result
