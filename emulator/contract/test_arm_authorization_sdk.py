"""ARM Microsoft.Authorization 2022-04-01 as azure-mgmt-authorization calls it (azure-contract.md section 2)."""

import uuid

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.authorization.v2022_04_01.models import (
    Permission,
    RoleAssignment,
    RoleAssignmentCreateParameters,
    RoleDefinition,
)

from conftest import ARM_SCOPE, OPERATOR, RG_AKS_SCOPE, RG_SHARED_SCOPE, SUBSCRIPTION_SCOPE, arm_error_body, unique

ACRPULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"

# azure-contract.md, "Built-in role GUIDs".
BUILTIN_ROLES = {
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Network Contributor": "4d97b98b-1d4f-4787-a291-c67834d212e7",
    "Virtual Machine Contributor": "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "AcrPush": "8311e382-0749-4cb8-b61a-304f252e45ec",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
}


def guid_of(definition_id: str) -> str:
    return definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


def definition_id(guid: str) -> str:
    return f"{SUBSCRIPTION_SCOPE}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def assert_role_definition_id(value: str, guid: str) -> None:
    # Azure echoes either the tenant form (the spec's examples) or the subscription form; clients compare the
    # GUID case-insensitively (azure-contract.md: "Normalise IDs case-insensitively").
    assert value.lower() in {
        f"/providers/microsoft.authorization/roledefinitions/{guid}",
        definition_id(guid).lower(),
    }, value


def http_error(call) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as err:
        call()
    return err.value


@pytest.mark.parametrize("role_name, guid", sorted(BUILTIN_ROLES.items()))
def test_builtin_role_guids(authz, role_name, guid):
    found = list(authz.role_definitions.list(SUBSCRIPTION_SCOPE, filter=f"roleName eq '{role_name}'"))
    assert [(d.role_name, d.name) for d in found] == [(role_name, guid)]
    [role] = found
    assert isinstance(role, RoleDefinition)
    assert role.role_type == "BuiltInRole"
    assert role.assignable_scopes == ["/"]
    assert role.type == "Microsoft.Authorization/roleDefinitions"
    assert_role_definition_id(role.id, guid)
    assert role.permissions and all(isinstance(p, Permission) for p in role.permissions)


def test_role_definition_get_and_get_by_id(authz):
    at_scope = authz.role_definitions.get(SUBSCRIPTION_SCOPE, ACRPULL)
    assert (at_scope.name, at_scope.role_name) == (ACRPULL, "AcrPull")
    by_id = authz.role_definitions.get_by_id(f"/providers/Microsoft.Authorization/roleDefinitions/{ACRPULL}")
    assert (by_id.name, by_id.role_name, by_id.role_type) == (ACRPULL, "AcrPull", "BuiltInRole")


def test_role_assignment_lifecycle(authz, workload):
    name = str(uuid.uuid4())
    params = RoleAssignmentCreateParameters(role_definition_id=definition_id(ACRPULL), principal_id=workload.sp_id, principal_type="ServicePrincipal")
    created = authz.role_assignments.create(RG_AKS_SCOPE, name, params)
    assert authz.recorder.last("PUT", f"/roleAssignments/{name}")["status"] in (200, 201)
    assert isinstance(created, RoleAssignment)
    assert created.name == name
    assert created.id == f"{RG_AKS_SCOPE}/providers/Microsoft.Authorization/roleAssignments/{name}"
    assert created.type == "Microsoft.Authorization/roleAssignments"
    assert created.scope == RG_AKS_SCOPE
    assert created.principal_id == workload.sp_id
    assert created.principal_type == "ServicePrincipal"
    assert_role_definition_id(created.role_definition_id, ACRPULL)
    assert created.created_on is not None and created.updated_on is not None

    got = authz.role_assignments.get(RG_AKS_SCOPE, name)
    assert (got.id, got.principal_id, guid_of(got.role_definition_id), got.scope) == (created.id, workload.sp_id, ACRPULL, RG_AKS_SCOPE)

    # atScope(): at or above the scope. The operator's own Contributor (rg-aks) and User Access
    # Administrator (subscription) come from the default configuration.
    at_scope = list(authz.role_assignments.list_for_scope(RG_AKS_SCOPE, filter="atScope()"))
    assert name in {a.name for a in at_scope}
    operator = {(a.scope.lower(), guid_of(a.role_definition_id)) for a in at_scope if a.principal_id == OPERATOR["servicePrincipalId"]}
    assert (RG_AKS_SCOPE.lower(), "b24988ac-6180-42a0-ab88-20f7382dd24c") in operator
    assert (SUBSCRIPTION_SCOPE.lower(), "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9") in operator
    assert all(RG_AKS_SCOPE.lower().startswith(a.scope.lower()) for a in at_scope)
    # Not at or above: another resource group.
    assert name not in {a.name for a in authz.role_assignments.list_for_scope(RG_SHARED_SCOPE, filter="atScope()")}

    # principalId eq: at, above or below the scope.
    for scope in (RG_AKS_SCOPE, SUBSCRIPTION_SCOPE):
        mine = list(authz.role_assignments.list_for_scope(scope, filter=f"principalId eq '{workload.sp_id}'"))
        assert [a.name for a in mine] == [name], scope

    # The same (scope, role, principal) under another name: 409 RoleAssignmentExists.
    err = http_error(lambda: authz.role_assignments.create(RG_AKS_SCOPE, str(uuid.uuid4()), params))
    assert err.status_code == 409
    assert err.error.code == "RoleAssignmentExists"
    assert arm_error_body(err)["error"]["code"] == "RoleAssignmentExists"

    # Re-PUT with the same name and body is not an error (200 or 201 is UNCONFIRMED).
    again = authz.role_assignments.create(RG_AKS_SCOPE, name, params)
    assert again.id == created.id

    deleted = authz.role_assignments.delete(RG_AKS_SCOPE, name)
    assert authz.recorder.last("DELETE", f"/roleAssignments/{name}")["status"] == 200
    assert isinstance(deleted, RoleAssignment) and deleted.name == name
    # Already gone: 204, which the SDK returns as None.
    assert authz.role_assignments.delete(RG_AKS_SCOPE, name) is None
    assert authz.recorder.last("DELETE", f"/roleAssignments/{name}")["status"] == 204
    err = http_error(lambda: authz.role_assignments.get(RG_AKS_SCOPE, name))
    assert err.status_code == 404


def test_role_assignment_name_must_be_a_guid(authz, workload):
    params = RoleAssignmentCreateParameters(role_definition_id=definition_id(READER), principal_id=workload.sp_id, principal_type="ServicePrincipal")
    err = http_error(lambda: authz.role_assignments.create(RG_AKS_SCOPE, "not-a-guid", params))
    assert err.status_code == 400
    assert err.error.code == "InvalidRoleAssignmentId"


def test_role_assignment_principal_id_must_be_a_guid(authz):
    params = RoleAssignmentCreateParameters(role_definition_id=definition_id(READER), principal_id="not-a-guid", principal_type="ServicePrincipal")
    err = http_error(lambda: authz.role_assignments.create(RG_AKS_SCOPE, str(uuid.uuid4()), params))
    assert err.status_code == 400
    assert err.error.code == "InvalidPrincipalId"


def test_role_assignment_with_wrong_principal_type(authz, workload):
    params = RoleAssignmentCreateParameters(role_definition_id=definition_id(READER), principal_id=workload.sp_id, principal_type="User")
    err = http_error(lambda: authz.role_assignments.create(RG_AKS_SCOPE, str(uuid.uuid4()), params))
    assert err.status_code == 400
    assert err.error.code == "UnmatchedPrincipalType"


def test_caller_without_a_role_is_authorization_failed(emulator, workload):
    """A principal with no role at the scope: 403 AuthorizationFailed naming the client, its object id,
    the action and the scope."""
    from azure.mgmt.authorization import AuthorizationManagementClient

    credential = emulator.credential(client_id=workload.app_id, secret=workload.secret)
    with AuthorizationManagementClient(credential, SUBSCRIPTION_SCOPE.split("/")[-1], base_url=emulator.url, credential_scopes=[ARM_SCOPE], connection_verify=emulator.ca_file, retry_total=0) as client:
        err = http_error(lambda: list(client.role_assignments.list_for_scope(RG_SHARED_SCOPE)))
    assert err.status_code == 403
    assert err.error.code == "AuthorizationFailed"
    message = err.error.message
    for part in (workload.app_id, workload.sp_id, "Microsoft.Authorization/roleAssignments/read", RG_SHARED_SCOPE):
        assert part in message, (part, message)


def test_custom_role_definition(authz):
    guid = str(uuid.uuid4())
    role_name = unique("contract-custom-role")
    body = RoleDefinition(
        role_name=role_name,
        description="made by the contract suite",
        role_type="CustomRole",
        permissions=[Permission(actions=["Microsoft.Compute/disks/read"], not_actions=[], data_actions=[], not_data_actions=[])],
        assignable_scopes=[SUBSCRIPTION_SCOPE],
    )
    created = authz.role_definitions.create_or_update(SUBSCRIPTION_SCOPE, guid, body)
    assert authz.recorder.last("PUT", f"/roleDefinitions/{guid}")["status"] == 201
    assert created.name == guid
    assert created.role_name == role_name
    assert created.role_type == "CustomRole"
    assert created.type == "Microsoft.Authorization/roleDefinitions"
    assert created.assignable_scopes == [SUBSCRIPTION_SCOPE]
    assert created.permissions[0].actions == ["Microsoft.Compute/disks/read"]
    assert_role_definition_id(created.id, guid)

    found = list(authz.role_definitions.list(SUBSCRIPTION_SCOPE, filter=f"roleName eq '{role_name}'"))
    assert [d.name for d in found] == [guid]
    assert authz.role_definitions.get(SUBSCRIPTION_SCOPE, guid).role_name == role_name

    # Another definition with the same roleName, or a built-in's name: 409 RoleDefinitionWithSameNameExists.
    for taken in (role_name, "Reader"):
        body.role_name = taken
        err = http_error(lambda: authz.role_definitions.create_or_update(SUBSCRIPTION_SCOPE, str(uuid.uuid4()), body))
        assert err.status_code == 409, taken
        assert err.error.code == "RoleDefinitionWithSameNameExists", taken

    deleted = authz.role_definitions.delete(SUBSCRIPTION_SCOPE, guid)
    assert deleted is not None and deleted.name == guid
    assert authz.role_definitions.delete(SUBSCRIPTION_SCOPE, guid) is None
    assert list(authz.role_definitions.list(SUBSCRIPTION_SCOPE, filter=f"roleName eq '{role_name}'")) == []
