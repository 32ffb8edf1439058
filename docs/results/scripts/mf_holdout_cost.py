"""What ``mf_holdout`` costs MF itself: for a finished HistLLM run (``cia_interaction`` + ``mf_holdout``), fit MF
with the run's stage-0 keys on the whole train split and on the split less the run's held-out rows, each from the
same seed state (``--reps`` seeds: the run's seed, +1, ...), and score both, and the run's own stage-0 MF
(``MF-stage0.pth``, the tables HistLLM saw), on the run's test rows (its ``test_rows`` subset). Prints test AUC /
UAUC per MF; writes nothing into the run folder.

    python docs/results/scripts/mf_holdout_cost.py saved/tables/ml-100k/<row>/seed2020 --reps=2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from recbole.trainer import Trainer
from recbole.utils import init_seed
from sklearn.metrics import roc_auc_score

from recbole_histllm.evaluator.uauc import user_auc
from recbole_histllm.model.mf import MF, load_mf_embeddings
from recbole_histllm.quick_start import subsample_test
from recbole_histllm.run_io import load_run
from recbole_histllm.trainer.llm_trainer import stage0_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    run = load_run(args.run)
    config = stage0_config(run.config, "MF")
    inter = subsample_test(run.test_data, run.config)._dataset.inter_feat
    users, items = inter[run.config["USER_ID_FIELD"]], inter[run.config["ITEM_ID_FIELD"]]
    labels = inter[run.config["LABEL_FIELD"]].numpy() > 0.5
    user, item = load_mf_embeddings(args.run / "MF-stage0.pth", run.train_data._dataset)
    scores = (user[users] * item[items]).sum(-1).numpy()
    print(f"{run.config['dataset']} seed {run.config['seed']} the run's stage-0 MF: test AUC "
          f"{roc_auc_score(labels, scores):.4f} UAUC {user_auc(users.numpy(), scores, labels)[0]:.4f}; the run: "
          f"{run.result['test_result']['auc']:.4f} / {run.result['test_result']['uauc']:.4f}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        config["checkpoint_dir"] = scratch
        held_data, held = run.trainer(checkpoint_dir=scratch)._holdout_data(run.train_data)
        for name, data in (("whole train split", run.train_data), (f"train split less {held} rows", held_data)):
            for rep in range(args.reps):
                init_seed(run.config["seed"] + rep, True)
                net = MF(config, run.train_data._dataset)
                trainer = Trainer(config, net)
                trainer.saved_model_file = str(Path(scratch) / "MF.pth")
                valid, _ = trainer.fit(data, run.valid_data, saved=True, show_progress=False)
                net.load_state_dict(torch.load(trainer.saved_model_file, weights_only=False)["state_dict"])
                with torch.no_grad():
                    scores = (net.user_embedding(users) * net.item_embedding(items)).sum(-1).numpy()
                print(f"{run.config['dataset']} seed {run.config['seed']} MF on the {name} (seed +{rep}): "
                      f"valid AUC {valid:.4f}, test AUC {roc_auc_score(labels, scores):.4f} "
                      f"UAUC {user_auc(users.numpy(), scores, labels)[0]:.4f} ({len(labels)} rows)", flush=True)


if __name__ == "__main__":
    main()
