"""AKS managedClusters as azure-mgmt-containerservice calls it (azure-contract.md section 3)."""

import re

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.containerservice.models import ManagedCluster, ManagedClusterServicePrincipalProfile

from conftest import CLUSTER_ID, CLUSTER_NAME, RG_AKS, SUBSCRIPTION


def test_get_cluster_never_returns_the_secret(aks):
    cluster = aks.managed_clusters.get(RG_AKS, CLUSTER_NAME)
    assert isinstance(cluster, ManagedCluster)
    assert cluster.id.lower() == CLUSTER_ID.lower()
    assert cluster.name == CLUSTER_NAME
    assert cluster.location
    assert cluster.service_principal_profile.client_id
    assert cluster.service_principal_profile.secret is None
    raw = aks.recorder.last("GET", f"/managedClusters/{CLUSTER_NAME}", 200)["body"]
    assert raw["type"].lower() == "microsoft.containerservice/managedclusters"
    assert set(raw["properties"]["servicePrincipalProfile"]) == {"clientId"}


def test_reset_service_principal_profile(emulator, aks, workload):
    # Note: azure-mgmt-containerservice 41.x sends a plain dict body verbatim, so {"client_id": ...} would go on
    # the wire in snake case (and be rejected, as Azure would). The model serializes to clientId/secret.
    profile = ManagedClusterServicePrincipalProfile(client_id=workload.app_id, secret=workload.secret)
    poller = aks.managed_clusters.begin_reset_service_principal_profile(RG_AKS, CLUSTER_NAME, profile, polling_interval=0.2)
    assert poller.result() is None
    assert poller.status() == "Succeeded"

    # The first response: 202 with Location (the spec's only header), and Azure-AsyncOperation as the other
    # ContainerService LROs send; both under .../providers/Microsoft.ContainerService/locations/{loc}/.
    first = aks.recorder.last("POST", f"/managedClusters/{CLUSTER_NAME}/resetServicePrincipalProfile")
    assert first["status"] in (200, 202)
    if first["status"] == 202:
        headers = {k.lower(): v for k, v in first["headers"].items()}
        prefix = rf"^{re.escape(emulator.url)}/subscriptions/{SUBSCRIPTION}/providers/Microsoft\.ContainerService/locations/[^/]+/"
        assert re.match(prefix + r"operationresults/[^/?]+\?api-version=", headers["location"]), headers
        assert re.match(prefix + r"operations/[^/?]+\?api-version=", headers["azure-asyncoperation"]), headers

    check = emulator.admin("POST", "aks/check", json={"clusterId": CLUSTER_ID, "secret": workload.secret})
    assert check.status_code == 200, check.text
    assert check.json()["secretMatches"] is True
    wrong = emulator.admin("POST", "aks/check", json={"clusterId": CLUSTER_ID, "secret": workload.secret + "x"})
    assert wrong.json()["secretMatches"] is False

    cluster = aks.managed_clusters.get(RG_AKS, CLUSTER_NAME)
    assert cluster.service_principal_profile.client_id == workload.app_id
    assert cluster.service_principal_profile.secret is None
    assert cluster.provisioning_state == "Succeeded"


def test_reset_on_a_missing_cluster_is_404(aks, workload):
    profile = ManagedClusterServicePrincipalProfile(client_id=workload.app_id, secret=workload.secret)
    with pytest.raises(HttpResponseError) as err:
        aks.managed_clusters.begin_reset_service_principal_profile(RG_AKS, "no-such-cluster", profile).result()
    assert err.value.status_code == 404


def test_get_missing_cluster_is_resource_not_found(aks):
    with pytest.raises(ResourceNotFoundError) as err:
        aks.managed_clusters.get(RG_AKS, "no-such-cluster")
    assert err.value.status_code == 404
    assert err.value.error.code == "ResourceNotFound"
