"""Run under torchrun by test_train_eval_tools: rank 1's RoI box loss turns NaN at its second step.

Each rank that stops with TrainingDiverged writes its message to OUTPUT_DIR/diverged_rank<R>.txt.
Usage: nan_on_one_rank.py OUTPUT_DIR key=value ...
"""
import sys
from pathlib import Path

from detect.config import load_config
from detect.training import distributed as dist
from detect.training.trainer import Trainer, TrainingDiverged


def main() -> int:
    cfg = load_config("configs/faster_rcnn/shapes.yaml", sys.argv[2:])
    trainer = Trainer(cfg, sys.argv[1], progress=False)
    if trainer.rank == 1:
        original = trainer.model.roi_head.losses
        calls = {"n": 0}

        def poisoned(*args, **kwargs):
            calls["n"] += 1
            out = original(*args, **kwargs)
            if calls["n"] == 2:
                out["loss_box"] = out["loss_box"] * float("nan")
            return out

        trainer.model.roi_head.losses = poisoned
    try:
        trainer.train()
    except TrainingDiverged as err:
        (Path(sys.argv[1]) / f"diverged_rank{trainer.rank}.txt").write_text(str(err))
        dist.barrier()  # both ranks wrote before either exits (torchrun stops the rest when one exits)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
