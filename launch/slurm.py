"""Submit a multi-node lift-dist training job to Slurm through submitit.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 240 -- \
        --preset inat2018/lift --shards /data/inat-shards --out runs/inat
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from lift_dist.launch import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
