"""Submit a multi-node lift-dist training job to Slurm through submitit (= `lift-dist launch`).

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 240 -- \
        --preset inat2018/lift --shards /data/inat-shards --out runs/inat
"""

import sys

from lift_dist.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["launch", *sys.argv[1:]], prog="launch/slurm.py"))
