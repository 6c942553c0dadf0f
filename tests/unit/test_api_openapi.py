"""The published OpenAPI document (schemas/openapi.json) is the one the app generates."""

from __future__ import annotations

import json
from pathlib import Path

from schemas import openapi


def test_committed_spec_is_current() -> None:
    assert not openapi.is_stale(), "run: python -m schemas.openapi"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    assert openapi.main(["--check", "--out", str(out)]) == 1  # missing
    assert openapi.main(["--out", str(out)]) == 0
    assert openapi.main(["--check", "--out", str(out)]) == 0
    out.write_text("{}\n", encoding="utf-8")
    assert openapi.main(["--check", "--out", str(out)]) == 1


def test_spec_documents_auth_errors_and_examples() -> None:
    spec = json.loads(openapi.render())
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    open_paths = {"/healthz", "/readyz", "/metrics"}
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            assert "200" in responses
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (path, status)
            if path in open_paths:
                assert "security" not in operation, path
            else:
                assert operation["security"] == [{"ApiKey": []}], path
                assert {"401", "422", "503"} <= set(responses), path
    for name in ("SegmentResponse", "ProfileResponse", "SegmentList", "ErrorResponse"):
        assert spec["components"]["schemas"][name]["examples"], name
    batch = spec["components"]["schemas"]["BatchGetRequest"]["properties"]["customer_ids"]
    assert batch["maxItems"] == 1000
