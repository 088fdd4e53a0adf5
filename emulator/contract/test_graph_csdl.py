"""Every application, servicePrincipal, passwordCredential and federatedIdentityCredential the emulator returns
uses only properties that Graph v1.0's CSDL declares on that type or its bases (directoryObject, entity), with
JSON values of the declared kinds. The JSON is fetched raw (no SDK), to see exactly what goes over the wire."""

import pytest

from csdl import Csdl
from conftest import unique

# label -> CSDL type; each label's objects are collected by the `objects` fixture.
CASES = {
    "POST /applications": "application",
    "PATCH /applications(uniqueName=) 201": "application",
    "GET /applications/{id}": "application",
    "GET /applications(appId=)": "application",
    "GET /applications?$filter value[]": "application",
    "POST addPassword": "passwordCredential",
    "GET /applications/{id} passwordCredentials[]": "passwordCredential",
    "POST /servicePrincipals": "servicePrincipal",
    "GET /servicePrincipals/{id}": "servicePrincipal",
    "GET /servicePrincipals(appId=)": "servicePrincipal",
    "GET /servicePrincipals?$filter value[]": "servicePrincipal",
    "POST federatedIdentityCredentials": "federatedIdentityCredential",
    "GET federatedIdentityCredentials value[]": "federatedIdentityCredential",
    "GET federatedIdentityCredentials/{id}": "federatedIdentityCredential",
    "GET /directory/deletedItems/{app id}": "application",
    "GET /directory/deletedItems/microsoft.graph.application value[]": "application",
    "GET /directory/deletedItems/{sp id}": "servicePrincipal",
}


@pytest.fixture(scope="module")
def metadata(specs):
    path = specs / "graph" / "v1.0" / "cleanMetadata.xml"
    if not path.is_file():
        pytest.skip(f"{path} is absent: CSDL checks skipped")
    return Csdl(path)


@pytest.fixture(scope="module")
def objects(emulator):
    got: dict[str, list] = {}

    def call(label, method, path, expect, **kw):
        response = emulator.graph_raw(method, path, **kw)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        body = response.json() if response.content else None
        if label:
            got[label] = body["value"] if label.endswith("value[]") else [body]
        return body

    app = call("POST /applications", "POST", "applications", 201, json={"displayName": unique("contract-csdl"), "description": "csdl", "notes": "n", "tags": ["t"]})
    app_id, object_id = app["appId"], app["id"]
    call("PATCH /applications(uniqueName=) 201", "PATCH", f"applications(uniqueName='{unique('contract-csdl')}')", 201,
         json={"displayName": "csdl upsert"}, headers={"Prefer": "create-if-missing"})
    password = call("POST addPassword", "POST", f"applications/{object_id}/addPassword", 200, json={"passwordCredential": {"displayName": "csdl"}})
    assert password["secretText"]
    fetched = call("GET /applications/{id}", "GET", f"applications/{object_id}", 200)
    got["GET /applications/{id} passwordCredentials[]"] = fetched["passwordCredentials"]
    assert len(fetched["passwordCredentials"]) == 1
    call("GET /applications(appId=)", "GET", f"applications(appId='{app_id}')", 200)
    call("GET /applications?$filter value[]", "GET", "applications", 200, params={"$filter": f"appId eq '{app_id}'"})
    sp = call("POST /servicePrincipals", "POST", "servicePrincipals", 201, json={"appId": app_id})
    call("GET /servicePrincipals/{id}", "GET", f"servicePrincipals/{sp['id']}", 200)
    call("GET /servicePrincipals(appId=)", "GET", f"servicePrincipals(appId='{app_id}')", 200)
    call("GET /servicePrincipals?$filter value[]", "GET", "servicePrincipals", 200, params={"$filter": f"appId eq '{app_id}'"})
    fic = call("POST federatedIdentityCredentials", "POST", f"applications/{object_id}/federatedIdentityCredentials", 201,
               json={"name": "csdl", "issuer": "https://issuer.example/", "subject": "system:serviceaccount:ns:sa", "audiences": ["api://AzureADTokenExchange"]})
    call("GET federatedIdentityCredentials value[]", "GET", f"applications/{object_id}/federatedIdentityCredentials", 200)
    call("GET federatedIdentityCredentials/{id}", "GET", f"applications/{object_id}/federatedIdentityCredentials/{fic['id']}", 200)
    call(None, "DELETE", f"applications/{object_id}", 204)
    call("GET /directory/deletedItems/{app id}", "GET", f"directory/deletedItems/{object_id}", 200)
    call("GET /directory/deletedItems/microsoft.graph.application value[]", "GET", "directory/deletedItems/microsoft.graph.application", 200)
    call("GET /directory/deletedItems/{sp id}", "GET", f"directory/deletedItems/{sp['id']}", 200)
    return got


@pytest.mark.parametrize("label", list(CASES))
def test_properties_exist_in_the_csdl(metadata, objects, label):
    type_name = CASES[label]
    items = objects[label]
    assert items, f"{label}: nothing returned to check"
    problems = [p for item in items for p in metadata.problems(type_name, item)]
    assert not problems, f"{label} ({type_name}):\n" + "\n".join(problems)


def test_the_checker_catches_an_invented_property(metadata):
    """The check is not vacuous: an undeclared name, a wrong JSON kind and a forbidden null are reported."""
    problems = metadata.problems("application", {"id": "x", "appId": "y", "secretHash": "z", "tags": None, "createdDateTime": 5})
    assert any("secretHash" in p for p in problems)
    assert any("/tags" in p for p in problems)
    assert any("/createdDateTime" in p for p in problems)
