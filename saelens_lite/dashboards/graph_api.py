"""The served graph pages' JSON API (:mod:`saelens_lite.dashboards.graphs`): the graphs of the
site, one graph, and its supernodes, read and saved.

``POST /api/graphs/{slug}/supernodes`` replaces the saved grouping with the body's after checking
it against the graph (every node id in it, each node in one supernode, names given and
distinct); a bad body is answered ``400 {"error": one line, "field": "supernodes"}`` and nothing
is written. Writes are atomic and one at a time.
"""

from __future__ import annotations

import os
import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import Field

from saelens_lite.dashboards.api import Body, require_json
from saelens_lite.dashboards.graphs import (
    SLUG,
    find_dashboards,
    graph_path,
    list_graphs,
    load_supernodes,
    read_graph,
    save_supernodes,
)
from saelens_lite.dashboards.live import RequestError

MAX_SUPERNODES = 500
MAX_NAME = 200


class SupernodesRequest(Body):
    supernodes: Annotated[list[Annotated[list[Annotated[str, Field(max_length=MAX_NAME)]],
                                         Field(min_length=2)]],
                          Field(max_length=MAX_SUPERNODES,
                                description="The whole grouping: [[name, node_id, ...], ...] (circuit-tracer's "
                                            "qParams.supernodes); each node id must be in the graph and in "
                                            "one supernode at most, each name given once.")]


Slug = Annotated[str, Path(description="The graph's name (its file name in SITE/graphs/data without .json).")]


def graph_router(site_dir: str | os.PathLike) -> APIRouter:
    """The /api/graphs routes over SITE's graph pages."""
    router = APIRouter(prefix="/api/graphs")
    lock = threading.Lock()

    def stored(slug: str):
        if not SLUG.fullmatch(slug):
            raise RequestError("slug", f"no graph {slug!r} in this site", 404)
        try:
            return graph_path(site_dir, slug)
        except FileNotFoundError as e:
            raise RequestError("slug", str(e), 404) from None

    @router.get("", summary="The graphs of this site")
    def graphs() -> dict:
        """``graphs``: name, prompt, model, node, feature and link counts and the scores of each
        stored graph; ``dashboards``: {model: {layer: {path, n_features}}}, the feature dashboards
        in the site that feature nodes link to (path relative to the site's root)."""
        return {"graphs": list_graphs(site_dir), "dashboards": find_dashboards(site_dir)}

    @router.get("/{slug}", summary="One graph, as saelens-lite trace wrote it")
    def graph(slug: Slug) -> dict:
        """The graph in circuit-tracer's schema (``metadata``, ``qParams``, ``nodes``, ``links``)."""
        return read_graph(stored(slug))

    @router.get("/{slug}/supernodes", summary="The graph's saved supernodes")
    def supernodes(slug: Slug) -> dict:
        """``{"supernodes": [[name, node_id, ...], ...]}`` (empty when none are saved)."""
        return {"supernodes": load_supernodes(site_dir, slug, read_graph(stored(slug)))}

    @router.post("/{slug}/supernodes", summary="Save the graph's supernodes",
                 dependencies=[Depends(require_json)])
    def save(slug: Slug, req: SupernodesRequest) -> dict:
        """Replace the saved grouping (module docstring); answers it as saved (names stripped)."""
        stored(slug)
        with lock:
            try:
                return {"supernodes": save_supernodes(site_dir, slug, req.supernodes)}
            except ValueError as e:
                raise RequestError("supernodes", str(e)) from None

    return router


__all__ = ["graph_router", "SupernodesRequest"]
