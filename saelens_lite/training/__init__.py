"""SAE training: config (``TrainConfig``), loop (``train``), data sources, checkpoints, logging.

``train(TrainConfig(...), data)`` trains one SAE per hook point and writes ``out_dir`` with
``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``<hook>/{cfg.json,sae.safetensors}``.
"""

from saelens_lite.training.config import TrainConfig
from saelens_lite.training.data import (
    ArraySource,
    CacheSource,
    DataSource,
    StreamSource,
    open_source,
)
from saelens_lite.training.trainer import train

__all__ = ["TrainConfig", "train", "DataSource", "ArraySource", "CacheSource", "StreamSource", "open_source"]
