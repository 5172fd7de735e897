"""Ray Tune sweep over module, r / α, σ and learning rate (= `lift-dist sweep`).

    python tune/sweep.py --preset places_lt --shards DIR --backend local --num-samples 16 --out SWEEP
    python tune/sweep.py ... --backend slurm --launch "--nodes 2 --gpus-per-node 8 --partition gpu"
    python tune/sweep.py ... --resume          # after the driver was killed: the same trials continue
"""

import sys

from lift_dist.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["sweep", *sys.argv[1:]], prog="tune/sweep.py"))
