"""Graph pages: attribution graphs (``saelens-lite trace``, :mod:`saelens_lite.circuits.export`)
put into a dashboard site, with hand-made supernodes saved beside each graph.

Layout of ``SITE/graphs/`` (``add_graphs``)::

    index.html                  the graph page (the repository's dashboards/graph.html)
    assets/graph.js, graph.css  its front-end, no network access
    data/index.js               saeGraphIndex({"graphs": [summary, ...], "dashboards": {...}})
    data/SLUG.json              the graph as trace wrote it (the served API reads this one)
    data/SLUG.js                saeGraph("SLUG", {...}): the same, for file://, with the saved
                                supernodes in its qParams
    data/SLUG.supernodes.json   the saved grouping: {"format", "graph", "supernodes"}

A supernode is ``[name, node_id, node_id, ...]``, the form of ``qParams.supernodes`` in
circuit-tracer's and Neuronpedia's viewer, so a graph exported with its grouping opens there
grouped. Every node is in at most one supernode.

``dashboards`` maps a model and a layer to the feature dashboard of that layer's transcoder:
any dashboard site inside SITE (SITE itself included, at most :data:`MAX_DEPTH` folders down)
whose saved features (:mod:`saelens_lite.features.store`) were computed at
``blocks.L.hook_mlp_in`` with target ``blocks.L.hook_mlp_out``. A feature node of layer L then
links to ``DASHBOARD/index.html#fN`` and takes its label from that dashboard's explanations.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from saelens_lite.circuits.export import FEATURE_TYPE
from saelens_lite.dashboards.site import ASSETS_DIR, js_json
from saelens_lite.features.store import SITE_SUBDIR, read_manifest
from saelens_lite.lm.hooks import is_mlp_pair
from saelens_lite.util.atomic import write_json, write_text

log = logging.getLogger(__name__)

GRAPHS_SUBDIR = "graphs"
SUPERNODES_SUFFIX = ".supernodes.json"
SUPERNODES_FORMAT = 1
MAX_DEPTH = 3
"""How deep below SITE feature dashboards are looked for."""
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SLUG_RULE = "letters, digits, '_', '.', '-' (at most 100, starting with a letter or digit)"
NODE_KEYS = ("node_id", "layer", "ctx_idx", "feature_type")
ASSETS = {"graph.html": "index.html", "graph.js": "assets/graph.js", "graph.css": "assets/graph.css"}


def graphs_dir(site: str | os.PathLike) -> Path:
    return Path(site) / GRAPHS_SUBDIR


def check_slug(slug) -> str:
    if not isinstance(slug, str) or not SLUG.fullmatch(slug) or slug.endswith(".supernodes"):
        raise ValueError(f"graph name {slug!r} is invalid; allowed: {SLUG_RULE}")
    return slug


def check_graph(doc, where: str) -> dict:
    """``doc`` if it is a graph in circuit-tracer's schema (``metadata``, ``nodes`` with unique
    ``node_id``, ``links`` between them); a one-line ValueError naming ``where`` otherwise."""
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), t) for k, t in
                                            (("metadata", dict), ("nodes", list), ("links", list))):
        raise ValueError(f"{where}: not an attribution graph (expected an object with metadata, "
                         "nodes and links, as saelens-lite trace writes)")
    ids = set()
    for i, node in enumerate(doc["nodes"]):
        missing = [k for k in NODE_KEYS if not isinstance(node, dict) or k not in node]
        if missing:
            raise ValueError(f"{where}: nodes[{i}] has no {missing[0]!r}; each node needs {', '.join(NODE_KEYS)}")
        if node["node_id"] in ids:
            raise ValueError(f"{where}: node id {node['node_id']!r} occurs twice")
        ids.add(node["node_id"])
    for i, link in enumerate(doc["links"]):
        for end in ("source", "target"):
            if not isinstance(link, dict) or link.get(end) not in ids:
                raise ValueError(f"{where}: links[{i}] {end} {link.get(end) if isinstance(link, dict) else link!r} "
                                 "is not a node of the graph")
        if not isinstance(link.get("weight"), (int, float)) or isinstance(link.get("weight"), bool):
            raise ValueError(f"{where}: links[{i}] weight {link.get('weight')!r} is not a number")
    return doc


def check_supernodes(supernodes, node_ids: set[str], slug: str) -> list[list[str]]:
    """Supernodes as ``[[name, node_id, ...], ...]`` (module docstring), stripped names; a
    one-line ValueError naming the first problem: not that shape, an empty or repeated name, no
    node, a node that is not in graph ``slug`` or in two supernodes."""
    if not isinstance(supernodes, list):
        raise ValueError("supernodes must be a list of [name, node_id, ...] lists")
    out, names, owner = [], set(), {}
    for i, group in enumerate(supernodes):
        if not (isinstance(group, list) and len(group) >= 2 and all(isinstance(x, str) for x in group)):
            raise ValueError(f"supernodes[{i}] must be [name, node_id, ...]: a name and at least one node id")
        name = group[0].strip()
        if not name or name in names:
            raise ValueError(f"supernodes[{i}]: name {group[0]!r} is {'empty' if not name else 'used twice'}; "
                             "give each supernode its own name")
        names.add(name)
        for node in group[1:]:
            if node not in node_ids:
                raise ValueError(f"supernodes[{i}] ({name}): node {node!r} is not in graph {slug!r} "
                                 f"(it has {len(node_ids)} nodes)")
            if node in owner:
                raise ValueError(f"supernodes[{i}] ({name}): node {node!r} is already in supernode "
                                 f"{owner[node]!r}; a node belongs to one supernode")
            owner[node] = name
        out.append([name, *group[1:]])
    return out


def read_graph(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"graph {str(path)!r}: no such file (saelens-lite trace --out writes one)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"graph {str(path)!r} is not JSON ({e.msg}, line {e.lineno})") from None
    return check_graph(doc, str(path))


def graph_slug(doc: dict, path: str | os.PathLike) -> str:
    """The graph's name in the site: its ``metadata.slug`` (trace: the file name), else the
    file name without ``.json``."""
    slug = doc["metadata"].get("slug") or Path(path).stem
    return check_slug(slug)


def summary(doc: dict, slug: str) -> dict:
    """What the list of graphs shows."""
    md = doc["metadata"]
    return {"slug": slug, "prompt": md.get("prompt"), "model": md.get("model"),
            "n_nodes": len(doc["nodes"]),
            "n_features": sum(n["feature_type"] == FEATURE_TYPE for n in doc["nodes"]),
            "n_links": len(doc["links"]), "scores": md.get("scores")}


def find_dashboards(site: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """{model: {layer: {"path": folder relative to SITE ('' or ending in '/'), "n_features"}}}
    for every transcoder feature dashboard inside SITE (module docstring); the first in sorted
    order wins when two describe one layer."""
    site = Path(site)
    out: dict[str, dict[str, dict]] = {}
    for folder in sorted(_dashboard_folders(site, 0)):
        try:
            _, manifest = read_manifest(folder)
        except (OSError, ValueError) as e:
            log.warning("skipping the dashboard %s: %s", folder, e)
            continue
        meta, hook = manifest.get("meta", {}), manifest.get("hook", "")
        if not is_mlp_pair(hook, meta.get("target_hook") or ""):
            continue
        layer, model = hook.split(".")[1], str(meta.get("model"))
        rel = folder.relative_to(site).as_posix()
        entry = {"path": "" if rel == "." else rel + "/", "n_features": manifest["n_features"]}
        if layer in out.setdefault(model, {}):
            log.warning("two dashboards for layer %s of %s: %s and %s; linking the first", layer, model,
                        out[model][layer]["path"] or ".", entry["path"])
            continue
        out[model][layer] = entry
    return out


def _dashboard_folders(folder: Path, depth: int):
    if (folder / SITE_SUBDIR / "features.json").is_file() and (folder / "index.html").is_file():
        yield folder
    if depth >= MAX_DEPTH:
        return
    for sub in folder.iterdir():
        skip = sub.name.startswith(".") or sub.name in (GRAPHS_SUBDIR, SITE_SUBDIR, "data", "assets")
        if not skip and sub.is_dir() and not sub.is_symlink():
            yield from _dashboard_folders(sub, depth + 1)


def graph_path(site: str | os.PathLike, slug: str) -> Path:
    """The stored graph ``slug`` of SITE; FileNotFoundError naming the graphs there."""
    path = graphs_dir(site) / "data" / f"{check_slug(slug)}.json"
    if not path.is_file():
        have = sorted(s["slug"] for s in list_graphs(site))
        raise FileNotFoundError(f"no graph {slug!r} in this site; it has: {', '.join(have) or 'none'}")
    return path


def list_graphs(site: str | os.PathLike) -> list[dict]:
    """Summaries of the graphs stored in SITE, by name."""
    data = graphs_dir(site) / "data"
    out = []
    for path in sorted(data.glob("*.json")) if data.is_dir() else []:
        slug = path.name[:-len(".json")]
        if slug.endswith(".supernodes") or not SLUG.fullmatch(slug):
            continue
        try:
            out.append(summary(read_graph(path), slug))
        except ValueError as e:
            log.warning("skipping %s: %s", path, e)
    return out


def load_supernodes(site: str | os.PathLike, slug: str, doc: dict | None = None) -> list[list[str]]:
    """The saved grouping of graph ``slug`` (``SLUG.supernodes.json``), else its
    ``qParams.supernodes``; members no longer in the graph (traced again) are dropped, with a
    warning, and so are supernodes left empty."""
    doc = doc if doc is not None else read_graph(graph_path(site, slug))
    path = graphs_dir(site) / "data" / f"{slug}{SUPERNODES_SUFFIX}"
    saved = (json.loads(path.read_text(encoding="utf-8")).get("supernodes", []) if path.is_file()
             else (doc.get("qParams") or {}).get("supernodes") or [])
    ids = {n["node_id"] for n in doc["nodes"]}
    kept = [[g[0], *(x for x in g[1:] if isinstance(x, str) and x in ids)]
            for g in saved if isinstance(g, list) and g]
    kept = [g for g in kept if len(g) > 1]
    if sum(len(g) for g in kept) != sum(len(g) for g in saved if isinstance(g, list) and g):
        log.warning("graph %s: dropped supernode members that are no longer in the graph", slug)
    try:
        return check_supernodes(kept, ids, slug)
    except ValueError as e:
        log.warning("graph %s: ignoring its saved supernodes: %s", slug, e)
        return []


def save_supernodes(site: str | os.PathLike, slug: str, supernodes) -> list[list[str]]:
    """Check ``supernodes`` against graph ``slug`` (:func:`check_supernodes`), write them
    atomically to ``SLUG.supernodes.json`` and refresh the page's ``SLUG.js``; returns them."""
    doc = read_graph(graph_path(site, slug))
    groups = check_supernodes(supernodes, {n["node_id"] for n in doc["nodes"]}, slug)
    data = graphs_dir(site) / "data"
    write_json(data / f"{slug}{SUPERNODES_SUFFIX}",
               {"format": SUPERNODES_FORMAT, "graph": slug, "supernodes": groups})
    _write_graph_js(data, slug, doc, groups)
    return groups


def _write_graph_js(data: Path, slug: str, doc: dict, supernodes: list) -> None:
    doc = {**doc, "qParams": {**(doc.get("qParams") or {}), "supernodes": supernodes}}
    write_text(data / f"{slug}.js", f"saeGraph({js_json(slug)},{js_json(doc)});\n")


def write_graph_index(site: str | os.PathLike) -> None:
    """``data/index.js``: the graphs stored in SITE and the dashboards their nodes link to."""
    index = {"graphs": list_graphs(site), "dashboards": find_dashboards(site)}
    write_text(graphs_dir(site) / "data" / "index.js", f"saeGraphIndex({js_json(index)});\n")


def read_graphs(paths) -> dict[str, tuple[Path, dict]]:
    """{name: (path, graph)} of the graph JSON files ``paths``, each checked; two of one name
    are an error."""
    docs: dict[str, tuple[Path, dict]] = {}
    for path in map(Path, paths):
        doc = read_graph(path)
        slug = graph_slug(doc, path)
        if slug in docs:
            raise ValueError(f"two graphs named {slug!r}: {docs[slug][0]} and {path}; rename one")
        docs[slug] = (path, doc)
    return docs


def check_site(site: str | os.PathLike) -> None:
    """Refuse a SITE whose ``graphs/`` folder is something else than graph pages."""
    gdir = graphs_dir(site)
    if gdir.exists() and (not gdir.is_dir() or any(gdir.iterdir())) and not (gdir / "data" / "index.js").is_file():
        raise FileExistsError(f"{gdir} exists and holds no graph pages; move it away or choose another site")


def add_graphs(site: str | os.PathLike, paths) -> list[str]:
    """Put the graph JSON files ``paths`` into SITE's graph pages (module docstring; created when
    missing, the front-end refreshed, graphs of the same name replaced, their saved supernodes
    kept); returns the names. Every graph is read and checked before anything is written."""
    site = Path(site)
    docs = read_graphs(paths)
    check_site(site)
    if not (ASSETS_DIR / "graph.html").is_file():
        raise FileNotFoundError(f"front-end assets not found in {ASSETS_DIR}")
    gdir = graphs_dir(site)
    (gdir / "data").mkdir(parents=True, exist_ok=True)
    (gdir / "assets").mkdir(exist_ok=True)
    for src, dst in ASSETS.items():
        shutil.copyfile(ASSETS_DIR / src, gdir / dst)
    for slug, (path, doc) in docs.items():
        stored = gdir / "data" / f"{slug}.json"
        if not (stored.exists() and os.path.samefile(stored, path)):
            write_json(stored, doc)
        _write_graph_js(gdir / "data", slug, doc, load_supernodes(site, slug, doc))
    write_graph_index(site)
    return list(docs)


def refresh_enclosing(folder: str | os.PathLike) -> list[Path]:
    """Rewrite the graph index of every graph site at or above ``folder`` (at most
    :data:`MAX_DEPTH` up), so that a feature dashboard written there is linked from its graphs;
    returns those sites."""
    here = Path(folder).resolve()
    found = [p for p in [here, *here.parents][:MAX_DEPTH + 1] if is_graph_site(p)]
    for site in found:
        write_graph_index(site)
    return found


def is_graph_site(site: str | os.PathLike) -> bool:
    """Whether SITE holds graph pages."""
    return (graphs_dir(site) / "index.html").is_file()


__all__ = ["add_graphs", "check_graph", "check_site", "check_slug", "check_supernodes", "read_graphs",
           "refresh_enclosing", "find_dashboards", "graph_path",
           "graphs_dir", "is_graph_site", "list_graphs", "load_supernodes", "read_graph", "save_supernodes",
           "summary", "write_graph_index", "GRAPHS_SUBDIR", "SUPERNODES_SUFFIX"]
