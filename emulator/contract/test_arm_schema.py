"""The raw JSON of the emulator's ARM responses, as the SDKs received it, against the definitions in Microsoft's
Swagger files (azure-specs/, see swagger.py for how Swagger 2.0 is read as JSON Schema draft 4).

Each response is checked twice: schema validation (types, required properties, formats, strict enums), and a
search for properties that the definitions do not declare (Swagger objects accept them silently)."""

import uuid

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.authorization.v2022_04_01.models import Permission, RoleAssignmentCreateParameters, RoleDefinition
from azure.mgmt.containerservice.models import ManagedClusterServicePrincipalProfile

import swagger
from conftest import CLUSTER_NAME, LEGACY_CLUSTER_CLIENT_ID, RG_AKS, RG_AKS_SCOPE, SUBSCRIPTION_SCOPE, unique

ACRPULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"

# Properties Azure returns although the definitions used here do not declare them. Role definitions carry
# createdOn/updatedOn/createdBy/updatedBy in ARM's responses (as `az role definition list` shows); the
# 2022-04-01 description of RoleDefinitionProperties omits them (later api-versions declare them).
KNOWN_UNDECLARED = {
    "RoleDefinition": {"/properties/createdOn", "/properties/updatedOn", "/properties/createdBy", "/properties/updatedBy"},
}

SAMPLES = [
    # label, file, definition
    ("role assignment PUT 201", swagger.ROLE_ASSIGNMENTS, "RoleAssignment"),
    ("role assignment GET", swagger.ROLE_ASSIGNMENTS, "RoleAssignment"),
    ("role assignment list atScope()", swagger.ROLE_ASSIGNMENTS, "RoleAssignmentListResult"),
    ("role assignment list principalId eq", swagger.ROLE_ASSIGNMENTS, "RoleAssignmentListResult"),
    ("role assignment DELETE 200", swagger.ROLE_ASSIGNMENTS, "RoleAssignment"),
    ("role definition list roleName eq", swagger.ROLE_DEFINITIONS, "RoleDefinitionListResult"),
    ("role definition GET built-in", swagger.ROLE_DEFINITIONS, "RoleDefinition"),
    ("role definition GET by id (tenant)", swagger.ROLE_DEFINITIONS, "RoleDefinition"),
    ("custom role definition PUT 201", swagger.ROLE_DEFINITIONS, "RoleDefinition"),
    ("custom role definition DELETE 200", swagger.ROLE_DEFINITIONS, "RoleDefinition"),
    ("error InvalidRoleAssignmentId", swagger.COMMON_TYPES_V2, "ErrorResponse"),
    ("error RoleAssignmentExists", swagger.COMMON_TYPES_V2, "ErrorResponse"),
    ("error role assignment GET 404", swagger.COMMON_TYPES_V2, "ErrorResponse"),
    ("error RoleDefinitionWithSameNameExists", swagger.COMMON_TYPES_V2, "ErrorResponse"),
    ("managed cluster GET", swagger.MANAGED_CLUSTERS, "ManagedCluster"),
    ("managed cluster error 404", swagger.MANAGED_CLUSTERS, "CloudError"),
    # The Azure-AsyncOperation body (azure-contract.md, "Long-running operations"): common-types' shape.
    ("AKS async operation status", swagger.COMMON_TYPES_V5, "OperationStatusResult"),
]


@pytest.fixture(scope="module")
def spec(specs):
    return swagger.Specs(specs)


def error_body(call):
    with pytest.raises(HttpResponseError) as err:
        call()
    return err.value


@pytest.fixture(scope="module")
def samples(authz, aks, workload):
    """Drives the SDKs through the calls above and returns the raw JSON each received, by label."""
    rec, got = authz.recorder, {}
    name = str(uuid.uuid4())
    params = RoleAssignmentCreateParameters(
        role_definition_id=f"{SUBSCRIPTION_SCOPE}/providers/Microsoft.Authorization/roleDefinitions/{ACRPULL}",
        principal_id=workload.sp_id,
        principal_type="ServicePrincipal",
        description="contract suite: schema",
    )
    authz.role_assignments.create(RG_AKS_SCOPE, name, params)
    got["role assignment PUT 201"] = rec.last("PUT", f"/roleAssignments/{name}", 201)["body"]
    authz.role_assignments.get(RG_AKS_SCOPE, name)
    got["role assignment GET"] = rec.last("GET", f"/roleAssignments/{name}", 200)["body"]
    list(authz.role_assignments.list_for_scope(RG_AKS_SCOPE, filter="atScope()"))
    got["role assignment list atScope()"] = rec.last("GET", f"{RG_AKS_SCOPE}/providers/Microsoft.Authorization/roleAssignments", 200)["body"]
    list(authz.role_assignments.list_for_scope(SUBSCRIPTION_SCOPE, filter=f"principalId eq '{workload.sp_id}'"))
    got["role assignment list principalId eq"] = rec.last("GET", f"{SUBSCRIPTION_SCOPE}/providers/Microsoft.Authorization/roleAssignments", 200)["body"]
    got["error InvalidRoleAssignmentId"] = swagger_error(error_body(lambda: authz.role_assignments.create(RG_AKS_SCOPE, "not-a-guid", params)))
    got["error RoleAssignmentExists"] = swagger_error(error_body(lambda: authz.role_assignments.create(RG_AKS_SCOPE, str(uuid.uuid4()), params)))
    authz.role_assignments.delete(RG_AKS_SCOPE, name)
    got["role assignment DELETE 200"] = rec.last("DELETE", f"/roleAssignments/{name}", 200)["body"]
    got["error role assignment GET 404"] = swagger_error(error_body(lambda: authz.role_assignments.get(RG_AKS_SCOPE, name)))

    list(authz.role_definitions.list(SUBSCRIPTION_SCOPE, filter="roleName eq 'AcrPull'"))
    got["role definition list roleName eq"] = rec.last("GET", f"{SUBSCRIPTION_SCOPE}/providers/Microsoft.Authorization/roleDefinitions", 200)["body"]
    authz.role_definitions.get(SUBSCRIPTION_SCOPE, ACRPULL)
    got["role definition GET built-in"] = rec.last("GET", f"{SUBSCRIPTION_SCOPE}/providers/Microsoft.Authorization/roleDefinitions/{ACRPULL}", 200)["body"]
    authz.role_definitions.get_by_id(f"/providers/Microsoft.Authorization/roleDefinitions/{ACRPULL}")
    got["role definition GET by id (tenant)"] = rec.last("GET", f"/providers/Microsoft.Authorization/roleDefinitions/{ACRPULL}", 200)["body"]
    guid, role_name = str(uuid.uuid4()), unique("contract-schema-role")
    definition = RoleDefinition(
        role_name=role_name, description="contract suite: schema", role_type="CustomRole", assignable_scopes=[SUBSCRIPTION_SCOPE],
        permissions=[Permission(actions=["Microsoft.Compute/disks/read"], not_actions=[], data_actions=[], not_data_actions=[])],
    )
    authz.role_definitions.create_or_update(SUBSCRIPTION_SCOPE, guid, definition)
    got["custom role definition PUT 201"] = rec.last("PUT", f"/roleDefinitions/{guid}", 201)["body"]
    got["error RoleDefinitionWithSameNameExists"] = swagger_error(error_body(lambda: authz.role_definitions.create_or_update(SUBSCRIPTION_SCOPE, str(uuid.uuid4()), definition)))
    authz.role_definitions.delete(SUBSCRIPTION_SCOPE, guid)
    got["custom role definition DELETE 200"] = rec.last("DELETE", f"/roleDefinitions/{guid}", 200)["body"]

    aks.managed_clusters.get(RG_AKS, CLUSTER_NAME)
    got["managed cluster GET"] = aks.recorder.last("GET", f"/managedClusters/{CLUSTER_NAME}", 200)["body"]
    got["managed cluster error 404"] = swagger_error(error_body(lambda: aks.managed_clusters.get(RG_AKS, "no-such-cluster")))
    # Reset to the cluster's current client id and a fresh secret, so as not to disturb test_aks_sdk.
    current = aks.managed_clusters.get(RG_AKS, CLUSTER_NAME).service_principal_profile.client_id or LEGACY_CLUSTER_CLIENT_ID
    aks.managed_clusters.begin_reset_service_principal_profile(
        RG_AKS, CLUSTER_NAME, ManagedClusterServicePrincipalProfile(client_id=current, secret=workload.secret), polling_interval=0.2
    ).result()
    got["AKS async operation status"] = aks.recorder.last("GET", "/providers/Microsoft.ContainerService/locations/", 200)["body"]
    return got


def swagger_error(exc: HttpResponseError):
    import json

    return json.loads(exc.response.text())


@pytest.mark.parametrize("label, file, definition", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_response_matches_the_swagger_definition(spec, samples, label, file, definition):
    body = samples[label]
    assert isinstance(body, dict), f"{label}: no JSON body: {body!r}"
    errors = spec.validate(body, file, definition)
    assert not errors, f"{label} does not validate against {file}#/definitions/{definition}:\n" + "\n".join(errors) + f"\nbody: {body}"
    undeclared = set(spec.undeclared(body, file, definition))
    # The known extras, wherever a definition of that name sits in the response (lists hold them under /value/i).
    for known_definition, paths in KNOWN_UNDECLARED.items():
        if definition.startswith(known_definition):
            undeclared = {u for u in undeclared if not any(u == p or u.endswith(p) for p in paths)}
    assert not undeclared, f"{label}: properties that {file}#/definitions/{definition} does not declare: {sorted(undeclared)}\nbody: {body}"


def test_unresolvable_refs_are_only_the_known_ones(spec):
    """PROVENANCE.md names what is missing; anything else unresolved would weaken the checks unnoticed."""
    assert all("managedidentitywithdelegation.json" in u for u in spec.unresolved), spec.unresolved
    assert all("#/definitions/systemData" in c for c in spec.case_fixed), spec.case_fixed
