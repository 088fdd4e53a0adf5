"""Wire details the SDKs hide: request ids, JSON batching (azure-contract.md sections 1 and 2)."""

import uuid

from conftest import RG_AKS_SCOPE


def test_graph_echoes_client_request_id(emulator):
    mine = str(uuid.uuid4())
    response = emulator.graph_raw("GET", f"applications/{uuid.uuid4()}", headers={"client-request-id": mine})
    assert response.status_code == 404
    assert response.headers.get("client-request-id") == mine
    assert response.headers.get("request-id")
    inner = response.json()["error"]["innerError"]
    assert inner["client-request-id"] == mine
    assert inner["request-id"] == response.headers["request-id"]
    assert inner["date"]


def test_arm_request_id_headers(emulator):
    response = emulator.arm_raw("GET", f"{RG_AKS_SCOPE}/providers/Microsoft.Authorization/roleAssignments", params={"api-version": "2022-04-01"})
    assert response.status_code == 200, response.text
    for header in ("x-ms-request-id", "x-ms-correlation-request-id", "x-ms-routing-request-id"):
        assert response.headers.get(header), header
    assert response.headers.get("x-ms-ratelimit-remaining-subscription-reads")


def test_batch_dependency_failure_is_424(emulator):
    missing = str(uuid.uuid4())
    response = emulator.graph_raw("POST", "$batch", json={"requests": [
        {"id": "1", "method": "GET", "url": f"/applications/{missing}"},
        {"id": "2", "method": "GET", "url": "/applications", "dependsOn": ["1"]},
        {"id": "3", "method": "POST", "url": "/applications", "headers": {"Content-Type": "application/json"}, "body": {"displayName": "contract-batch"}},
    ]})
    assert response.status_code == 200, response.text
    statuses = {r["id"]: r["status"] for r in response.json()["responses"]}
    assert statuses == {"1": 404, "2": 424, "3": 201}


def test_batch_limits(emulator):
    duplicate = emulator.graph_raw("POST", "$batch", json={"requests": [
        {"id": "a", "method": "GET", "url": "/applications"},
        {"id": "A", "method": "GET", "url": "/applications"},  # ids are case-insensitive
    ]})
    assert duplicate.status_code == 400
    too_many = emulator.graph_raw("POST", "$batch", json={"requests": [{"id": str(i), "method": "GET", "url": "/applications"} for i in range(21)]})
    assert too_many.status_code == 400
