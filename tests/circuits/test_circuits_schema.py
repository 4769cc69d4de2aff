"""A traced graph's JSON validates against circuit-tracer's own pydantic model of the graph
(``circuit_tracer/frontend/graph_models.py``: ``Model`` for the file, ``Link`` for each link),
the schema its local viewer and Neuronpedia read.

circuit-tracer's PyPI release (0.5.0) pins transformers<=4.57.3 and huggingface-hub<1.0, which the
peers' versions do not meet, so `make peers-venv` installs it into .venv-peers with --no-deps (its
schema module needs only pydantic). The test runs under the first interpreter that imports it
(SAELENS_LITE_CIRCUIT_TRACER_PYTHON, .venv-peers/bin/python, this one); without one it skips, or
fails where the peers are required (CI, `make test`), as the interop tests do.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
from helpers import no_peers, python_with, tiny_graph

REPO = pathlib.Path(__file__).resolve().parents[2]
VALIDATE = """
import json, sys
from circuit_tracer.frontend.graph_models import Link, Model
doc = json.load(open(sys.argv[1]))
model = Model.model_validate(doc)
links = [Link.model_validate(link) for link in doc["links"]]
print(json.dumps({"nodes": len(model.nodes), "links": len(links), "slug": model.metadata.slug,
                  "feature_types": sorted({n.feature_type for n in model.nodes})}))
"""


@pytest.mark.slow  # circuit-tracer's schema is checked in a process
def test_a_traced_graph_validates_against_circuit_tracers_graph_model(tiny_llama, tmp_path):
    python = python_with("import circuit_tracer.frontend.graph_models", "SAELENS_LITE_CIRCUIT_TRACER_PYTHON")
    if python is None:
        no_peers("no interpreter imports circuit_tracer.frontend.graph_models: `make peers-venv`, or "
                 "pip install --no-deps circuit-tracer (needs pydantic) and set SAELENS_LITE_CIRCUIT_TRACER_PYTHON")
    doc = tiny_graph(tiny_llama)
    path = tmp_path / "abc.json"
    path.write_text(json.dumps(doc))
    r = subprocess.run([python, "-c", VALIDATE, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout)
    assert (seen["nodes"], seen["links"], seen["slug"]) == (len(doc["nodes"]), len(doc["links"]), "abc")
    assert {"embedding", "logit", "cross layer transcoder"} <= set(seen["feature_types"])
