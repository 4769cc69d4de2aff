"""``builtin:pydocs``: English prose that ships with every CPython install, offline.

Python's ``help()`` topics and the standard library's docstrings, built once per process in a
fresh child interpreter and cached on disk (:func:`build_pydocs`). Registered as a built-in
corpus in :mod:`saelens_lite.corpus.text`, which reads it through ``iter_documents("builtin:pydocs")``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_MIN_DOC_CHARS = 200  # shorter docstrings are mostly one-line signatures, not prose
# Never imported: GUI toolkits, modules whose import has visible side effects (`antigravity`
# opens a browser, `this` prints, `lib2to3` writes grammar pickles, `readline` touches the
# terminal), test suites (code, not prose) and `pydoc_data` (read directly).
_STDLIB_DENY = (
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "readline",
    "lib2to3", "test", "tests", "pydoc_data", "ensurepip", "site-packages", "dist-packages",
)  # fmt: skip


def _collect_stdlib_docstrings(out_path: str, min_chars: int, deny: tuple[str, ...]) -> None:
    """Write the stdlib's docstrings (JSON list, first-seen order, de-duplicated) to out_path.

    Runs in a fresh ``python -I -S`` child (see `build_pydocs_uncached`), so it must be
    self-contained: the child sees only the standard library, its import side effects (prints,
    warnings, signal handlers, hundreds of loaded modules) stay out of the caller, and the result
    does not depend on what the caller had already imported.

    Two passes, both in sorted order:
    1. import every module in ``sys.stdlib_module_names`` and its submodules (pkgutil, sorted),
       taking module, class, method and function docstrings: this covers C modules
       (``math``, ``itertools``, ``builtins``...) that have no source file;
    2. parse the stdlib ``.py`` files with ``ast`` for docstrings the import pass cannot reach
       (private and nested functions), without running any code.
    """
    import ast
    import contextlib
    import importlib
    import inspect
    import io
    import json
    import pkgutil
    import sys
    import sysconfig
    import warnings
    from pathlib import Path

    seen: set[str] = set()
    docs: list[str] = []

    def skip(part: str) -> bool:
        return part in deny or part.startswith(("__", "_test", "_xx", "xx", "test_"))

    def add(doc: object) -> None:
        if isinstance(doc, str):
            doc = inspect.cleandoc(doc)
            if len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                docs.append(doc)

    def visit(module: object) -> None:
        add(module.__doc__)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("__"):
                continue
            if inspect.isclass(obj):
                add(obj.__doc__)
                for _, member in sorted(vars(obj).items()):
                    add(getattr(member, "__doc__", None))
            elif inspect.isroutine(obj):
                add(obj.__doc__)

    def walk(name: str) -> None:
        if any(skip(part) for part in name.split(".")):
            return
        sink = io.StringIO()
        quiet = (contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink))
        try:
            with warnings.catch_warnings(), quiet[0], quiet[1]:
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - platform modules (winreg...) fail, SystemExit
            return
        visit(module)
        subs = pkgutil.iter_modules(getattr(module, "__path__", []))
        for sub in sorted(info.name for info in subs):
            walk(f"{name}.{sub}")

    for top in sorted(sys.stdlib_module_names):
        walk(top)

    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(skip(part) for part in rel.with_suffix("").parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                add(ast.get_docstring(node))

    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(docs, f)


def _cache_root() -> Path:
    # Same rule as models.cache_dir(); not imported from there to keep the corpus free of torch.
    return Path(os.environ.get("SAELENS_LITE_CACHE") or Path.home() / ".cache" / "saelens_lite")


def pydocs_cache_path() -> Path:
    # Keyed on the extraction code itself, so editing the rules never serves a stale cache.
    code = (_collect_stdlib_docstrings, build_pydocs_uncached)
    rules = "".join(inspect.getsource(f) for f in code)
    key = f"{rules}|{_MIN_DOC_CHARS}|{_STDLIB_DENY}|{sys.version}|{sys.base_prefix}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return _cache_root() / "corpora" / f"pydocs-{tag}-{digest}.json"


def build_pydocs_uncached() -> list[str]:
    """pydoc_data topics (sorted by topic name), then stdlib docstrings; de-duplicated."""
    from pydoc_data.topics import topics

    docs = [topics[name].strip() for name in sorted(topics)]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "docs.json")
        code = (
            f"import sys\n{inspect.getsource(_collect_stdlib_docstrings)}\n"
            f"_collect_stdlib_docstrings(sys.argv[1], {_MIN_DOC_CHARS}, {_STDLIB_DENY!r})\n"
        )
        cmd = [sys.executable, "-I", "-S", "-c", code, out]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"building builtin:pydocs failed:\n{proc.stderr[-2000:]}")
        with open(out, encoding="utf-8") as f:
            stdlib_docs = json.load(f)
    return list(dict.fromkeys(docs + stdlib_docs))  # some help topics share a page


@functools.cache
def build_pydocs() -> tuple[str, ...]:
    """The ``builtin:pydocs`` documents: Python's own help texts and stdlib docstrings.

    ``pydoc_data.topics`` (the ``help()`` pages: ~465k chars of reference prose) plus every
    module, class and function docstring of the standard library of at least 200 characters
    (~1.5M chars), de-duplicated, one document each; about 2M characters, 500k SmolLM2 tokens.
    Deterministic for a given Python build. Built once per process (a few seconds) and cached
    in ``$SAELENS_LITE_CACHE/corpora`` (default ``~/.cache/saelens_lite``).
    """
    path = pydocs_cache_path()
    try:
        with open(path, encoding="utf-8") as f:
            return tuple(json.load(f))
    except (OSError, ValueError):
        pass
    log.info("building builtin:pydocs from the standard library (once; cached at %s)", path)
    docs = build_pydocs_uncached()
    try:  # atomic: a reader never sees a half-written file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(docs, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache builtin:pydocs at %s: %s", path, e)
    return tuple(docs)


__all__ = ["build_pydocs", "build_pydocs_uncached", "pydocs_cache_path"]
