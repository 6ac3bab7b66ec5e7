"""DiMint: a distributed in-memory key-value store built as a simulation-first research testbed."""

__version__ = "0.1.0"
