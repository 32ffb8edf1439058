"""Does a whole-split MF at scoring time close HistLLM's gap to MF? For a finished HistLLM run (``cia_interaction``
+ ``mf_holdout``), continue its held-out stage-0 MF on the whole train split (warm start, RecBole's trainer, early
stopping on valid), put those tables into CIA (the mapping's input statistics and product scale stay as trained),
and re-score the run's test rows. Prints the refit MF's valid AUC and the re-scored test AUC / UAUC.

    python docs/results/scripts/mf_refit_rescore.py saved/tables/ml-100k/<row>/seed2020
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from recbole.trainer import Trainer

from recbole_histllm.model.mf import MF, load_mf_embeddings
from recbole_histllm.quick_start import subsample_test
from recbole_histllm.run_io import load_run
from recbole_histllm.trainer.llm_trainer import stage0_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    run = load_run(args.run)
    config = stage0_config(run.config, "MF")
    with tempfile.TemporaryDirectory() as scratch:
        config["checkpoint_dir"] = scratch
        net = MF(config, run.train_data._dataset)
        saved = torch.load(args.run / "MF-stage0.pth", map_location="cpu", weights_only=False)
        net.load_state_dict(saved["state_dict"])
        trainer = Trainer(config, net)
        trainer.saved_model_file = str(Path(scratch) / "MF-refit.pth")
        valid, _ = trainer.fit(run.train_data, run.valid_data, saved=True, show_progress=False)
        user, item = load_mf_embeddings(trainer.saved_model_file, run.train_data._dataset)
        cia = run.model.cia
        shift = (cia.item_table - item).pow(2).mean().sqrt() / cia.item_table.pow(2).mean().sqrt()
        cia.user_table.copy_(user.to(cia.user_table))
        cia.item_table.copy_(item.to(cia.item_table))
        scorer = run.trainer(checkpoint_dir=scratch)
        result = scorer.evaluate(subsample_test(run.test_data, run.config), load_best_model=False,
                                 show_progress=False)
    print(f"{run.config['dataset']} seed {run.config['seed']}: refit MF valid AUC {valid:.4f} (held-out stage 0 "
          f"{saved.get('best_valid_score'):.4f}; item table moved {float(shift):.3f} of its RMS); re-scored test AUC "
          f"{result['auc']:.4f} UAUC {result['uauc']:.4f} (the run: {run.result['test_result']['auc']:.4f} / "
          f"{run.result['test_result']['uauc']:.4f})")


if __name__ == "__main__":
    main()
