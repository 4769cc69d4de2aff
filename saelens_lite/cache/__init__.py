"""The on-disk activation cache: its format (``format``), a resumable crash-safe writer
(``writer``), a memory-mapped reader (``reader``) and ``harvest`` (model + corpus -> cache).

The cache knows nothing about models; ``harvest`` knows nothing about SAEs. ``harvest`` is not
imported here (it loads transformers); import it from :mod:`saelens_lite.cache.harvest`.
"""

from saelens_lite.cache.format import (
    FORMAT_VERSION,
    MANIFEST,
    PLAIN_FORMAT_VERSION,
    STORAGE_DTYPES,
    CacheCorruptError,
    HookNotCachedError,
    as_numpy,
)
from saelens_lite.cache.reader import VERIFY_MODES, ActivationCache, ShardedArray, take_rows
from saelens_lite.cache.writer import CacheWriter, write_merged_manifest

__all__ = ["ActivationCache", "ShardedArray", "CacheWriter", "write_merged_manifest", "take_rows",
           "as_numpy", "CacheCorruptError", "HookNotCachedError", "FORMAT_VERSION",
           "PLAIN_FORMAT_VERSION", "MANIFEST", "STORAGE_DTYPES", "VERIFY_MODES"]
