"""The sub-commands of `lift-dist`: each module holds its arguments (light imports only, so `--help` is
quick) and names the function that runs it (`RUN = "module:function"`), imported only once parsed."""

COMMANDS = {
    "train": "train on a shard directory (one process, or one of N under torchrun/srun)",
    "demo": "the embedded CPU demo: data, shards, 2-rank training, evaluation, report",
    "params": "trainable-parameter report for a model + module + recipe (no download)",
    "shards": "build WebDataset shard sets from image datasets; verify them",
    "launch": "submit a multi-node training job to Slurm (submitit)",
    "sweep": "Ray Tune sweep over module, r / α, σ and learning rate",
    "predict": "class probabilities for images or a shard split from a trained run or an exported model",
    "export": "a trained run as one self-contained model file (safetensors, TorchScript, ONNX)",
    "report": "HTML page with plots comparing one or more runs",
}
