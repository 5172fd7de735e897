"""Crafted files for tests that check nothing read back runs code."""

import torch


class WritesOnLoad(torch.nn.Module):
    """A scripted module whose __setstate__ (TorchScript, run by torch.jit.load) writes a file."""

    def __init__(self, target: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w, self.target, self.training = state[0], state[1], state[2]
        torch.save(torch.zeros(1), self.target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w
