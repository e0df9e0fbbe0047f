"""The training loop (in-process and per Ray Train worker) and its device choice."""
