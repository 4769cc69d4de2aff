"""Small helpers every package may use: crash-safe writes (``atomic``), config validation
(``validate``), argparse options from config dataclasses (``dataclass_args``), device names
(``devices``) and torch.distributed set-up (``distributed``). Imports nothing above it."""
