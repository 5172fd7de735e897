"""Ray Tune sweep over module, r / α, σ and learning rate — trials local or as Slurm jobs.

    python tune/sweep.py --preset places_lt --shards DIR --backend local --num-samples 16 --out SWEEP
    python tune/sweep.py ... --backend slurm --launch "--nodes 2 --gpus-per-node 8 --partition gpu"
    python tune/sweep.py ... --resume          # after the driver was killed
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from lift_dist.sweep_cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
