"""Reading a flow run's Prefect artifacts back through the API: the artifacts by key, a
table artifact's rows, and a markdown artifact's inline PNG (its bytes and its pixels).
Shared by the tests of the publishing stages; not a test module."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data_uri: str) -> tuple[bytes, np.ndarray]:
    """(the PNG's bytes, its pixels) from a ``data:image/png;base64,`` URI."""
    import matplotlib.image

    assert data_uri.startswith("data:image/png;base64,")
    png = base64.b64decode(data_uri.split(",", 1)[1], validate=True)
    assert png[:8] == PNG_SIGNATURE
    return png, matplotlib.image.imread(io.BytesIO(png), format="png")


def inline_png(markdown: str) -> tuple[bytes, np.ndarray]:
    """The one PNG data URI image in ``markdown``, decoded."""
    (uri,) = re.findall(r"!\[[^\]]*\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", markdown)
    return decode_png(uri)


def flow_artifacts(flow_run_id) -> dict[str, object]:
    """The keyed artifacts of a flow run, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts if a.key}


def table_data(artifact) -> list[dict]:
    """A table artifact's rows."""
    assert artifact.type == "table"
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
