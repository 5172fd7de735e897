"""Test helpers shared by the test suite (local Slurm cluster, ...)."""
