"""The real Azure CLI against the emulator: the seed's own `az` commands, run unchanged, as a user runs them.

az comes pinned from PyPI (az-requirements.txt, installed by az-venv.sh into target/az-venv; run.sh passes
its path as $AZ_CLI_BIN). Every test gets a fresh AZURE_CONFIG_DIR, registers the emulator as a custom cloud
with endpoint discovery (`/metadata/endpoints`), and signs in as the operator's identity from the built-in
configuration, with a client secret or a federated token. The one emulator of the session serves them all.

az's settings for a cloud outside Microsoft's list (see docs/local-azure.md): REQUESTS_CA_BUNDLE is the
emulator's CA, and instance discovery is off (MSAL would ask login.microsoftonline.com about the authority).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import (
    LEGACY_CLUSTER_CLIENT_ID,
    OPERATOR,
    REPO,
    RG_AKS,
    RG_AKS_SCOPE,
    SUBSCRIPTION,
    SUBSCRIPTION_SCOPE,
    TENANT_ID,
    Emulator,
    unique,
)

CLOUD = "Local"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
RG_DISKS = "rg-disks"
SEED_GROUPS = {"rg-shared", "rg-network", "rg-disks", "rg-aci", "rg-aks"}


def az_binary() -> Path:
    value = os.environ.get("AZ_CLI_BIN")
    if not value:
        pytest.skip("AZ_CLI_BIN is not set: run the suite with emulator/contract/run.sh, which installs az")
    return Path(value)


class AzError(AssertionError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess) -> None:
        super().__init__(f"az {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        self.stderr = result.stderr


@dataclass
class Az:
    """One user's az: its own configuration directory, trusting the emulator's CA."""

    binary: Path
    config_dir: Path
    emulator: Emulator
    # HTTPS_PROXY for az, to reach vault hosts through the emulator's CONNECT proxy.
    https_proxy: Optional[str] = None

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        return {
            **keep,
            "AZURE_CONFIG_DIR": str(self.config_dir),
            "REQUESTS_CA_BUNDLE": self.emulator.ca_file,
            "AZURE_CORE_INSTANCE_DISCOVERY": "false",
            "AZURE_CORE_COLLECT_TELEMETRY": "false",
            "AZURE_CORE_SURVEY_MESSAGE": "false",
            "AZURE_CORE_NO_COLOR": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            **({"HTTPS_PROXY": self.https_proxy} if self.https_proxy else {}),
        }

    def raw(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), *args], env=self.env(), capture_output=True, text=True, timeout=180)

    def __call__(self, *args: str) -> Any:
        """Runs az, expects success, and returns what it printed as JSON (None when it printed nothing)."""
        result = self.raw(*args, "--output", "json")
        if result.returncode != 0:
            raise AzError(list(args), result)
        return json.loads(result.stdout) if result.stdout.strip() else None

    def fails(self, *args: str) -> str:
        """Runs az, expects failure, and returns its stderr."""
        result = self.raw(*args, "--output", "json")
        assert result.returncode != 0, f"az {' '.join(args)} succeeded: {result.stdout[-2000:]}"
        return result.stderr

    def register_cloud(self) -> Any:
        self("cloud", "register", "--name", CLOUD, "--endpoint-resource-manager", f"{self.emulator.url}/")
        self("cloud", "set", "--name", CLOUD)
        return self("cloud", "show", "--name", CLOUD)

    def login_secret(self, app_id: str, secret: str, *extra: str) -> Any:
        return self("login", "--service-principal", "--username", app_id, "--password", secret, "--tenant", TENANT_ID, *extra)


@pytest.fixture
def az(emulator: Emulator, tmp_path: Path) -> Az:
    return Az(binary=az_binary(), config_dir=tmp_path / "azure-config", emulator=emulator)


@pytest.fixture
def operator_az(az: Az) -> Az:
    """az in the emulator's cloud, signed in as the operator's identity with its client secret."""
    az.register_cloud()
    az.login_secret(OPERATOR["appId"], az.emulator.operator_secret)
    return az


def operator_az_secret_keys() -> set[str]:
    """The keys of the operator's `az` Secret format, read from the operator's own renderer."""
    source = (REPO / "src" / "controller" / "secret_format.rs").read_text()
    arm = re.search(r"SecretFormat::Az => \{(.*?)\n\s*\}", source, re.S)
    assert arm, "SecretFormat::Az not found in src/controller/secret_format.rs"
    return set(re.findall(r'data\.insert\("([^"]+)"', arm.group(1)))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Cloud registration and sign-in.


def test_cloud_register_discovers_the_emulator(az: Az):
    cloud = az.register_cloud()
    root = f"{az.emulator.url}/"
    endpoints = cloud["endpoints"]
    assert cloud["isActive"] is True
    assert endpoints["resourceManager"] == root
    assert endpoints["activeDirectory"] == root
    assert endpoints["microsoftGraphResourceId"] == root, "the emulator is this cloud's Graph"
    assert endpoints["activeDirectoryResourceId"] == "https://management.core.windows.net/"
    assert endpoints["management"] == "https://management.core.windows.net/"


def test_cloud_register_takes_key_vaults_dns_suffix(az: Az):
    assert az.register_cloud()["suffixes"]["keyvaultDns"] == ".vault.azure.net"


def test_login_with_a_client_secret_then_account_show(az: Az):
    az.register_cloud()
    subscriptions = az.login_secret(OPERATOR["appId"], az.emulator.operator_secret)
    assert [s["id"] for s in subscriptions] == [SUBSCRIPTION]
    account = az("account", "show")
    assert account["id"] == SUBSCRIPTION
    assert account["tenantId"] == TENANT_ID
    assert account["environmentName"] == CLOUD
    assert account["state"] == "Enabled"
    assert account["user"] == {"name": OPERATOR["appId"], "type": "servicePrincipal"}


def test_login_with_a_wrong_secret_fails_as_entra_does(az: Az):
    az.register_cloud()
    stderr = az.fails("login", "--service-principal", "-u", OPERATOR["appId"], "-p", "not-the-secret", "--tenant", TENANT_ID)
    assert "AADSTS7000215" in stderr, stderr


def test_login_with_a_federated_token(az: Az, tmp_path: Path):
    """As the operator signs in: a workload identity token, exchanged for Entra tokens by az/MSAL."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "issuer.pub.pem"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    issuer = f"https://oidc.az-cli.example/{uuid.uuid4()}"
    subject = "system:serviceaccount:entra-operator-system:entra-operator"
    seeded = az.emulator.admin(
        "POST",
        "seed",
        json={
            "trustedIssuers": [{"issuer": issuer, "publicKeyFile": str(public)}],
            "applications": [{**OPERATOR, "federatedCredentials": [{"name": unique("az-cli"), "issuer": issuer, "subject": subject}]}],
        },
    )
    assert seeded.status_code == 200, seeded.text
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "sub": subject, "aud": "api://AzureADTokenExchange", "iat": now, "nbf": now, "exp": now + 600},
        key,
        algorithm="RS256",
        headers={"kid": "az-cli"},
    )
    az.register_cloud()
    subscriptions = az("login", "--service-principal", "-u", OPERATOR["appId"], "--tenant", TENANT_ID, "--federated-token", token)
    assert [s["id"] for s in subscriptions] == [SUBSCRIPTION]
    assert az("account", "show")["user"] == {"name": OPERATOR["appId"], "type": "servicePrincipal"}
    # The Entra tokens it got work for Graph (the emulator's URL as audience) and ARM.
    assert az("group", "show", "--name", RG_AKS)["name"] == RG_AKS


def test_graph_tokens_for_the_emulator_url_do_not_open_arm(emulator: Emulator):
    """The emulator's own URL is a Graph audience only: ARM still refuses a token for it."""
    token = emulator.credential().get_token(f"{emulator.url}//.default").token
    auth = {"Authorization": f"Bearer {token}"}
    graph = emulator.session.get(f"{emulator.url}/v1.0/servicePrincipals?$top=1", headers=auth, timeout=30)
    assert graph.status_code == 200, graph.text
    arm = emulator.session.get(f"{emulator.url}/subscriptions?api-version=2022-12-01", headers=auth, timeout=30)
    assert arm.status_code == 401, arm.text
    assert arm.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"


# Service principals and their credentials.


def test_create_for_rbac_prints_the_operator_az_secret_format(operator_az: Az):
    name = unique("az-cli-rbac")
    created = operator_az("ad", "sp", "create-for-rbac", "--name", name)
    assert set(created) == operator_az_secret_keys() == {"appId", "displayName", "password", "tenant"}
    assert created["displayName"] == name
    assert created["tenant"] == TENANT_ID
    assert uuid.UUID(created["appId"])
    # The password it printed signs in (no role yet, hence no subscription).
    other = Az(binary=operator_az.binary, config_dir=operator_az.config_dir.parent / "rbac-config", emulator=operator_az.emulator)
    other.register_cloud()
    accounts = other.login_secret(created["appId"], created["password"], "--allow-no-subscriptions")
    assert [a["tenantId"] for a in accounts] == [TENANT_ID]


def test_service_principal_and_application_views(operator_az: Az):
    az = operator_az
    name = unique("az-cli-views")
    app_id = az("ad", "sp", "create-for-rbac", "--name", name)["appId"]

    sp = az("ad", "sp", "show", "--id", app_id)
    assert (sp["appId"], sp["displayName"], sp["servicePrincipalType"]) == (app_id, name, "Application")
    assert app_id in sp["servicePrincipalNames"]
    listed = az("ad", "sp", "list", "--display-name", name)
    assert [s["appId"] for s in listed] == [app_id]
    app = az("ad", "app", "show", "--id", app_id)
    assert (app["appId"], app["displayName"]) == (app_id, name)

    ends = az("ad", "app", "credential", "list", "--id", app_id, "--query", "[].endDateTime")
    assert len(ends) == 1
    year = utc(ends[0]) - datetime.now(timezone.utc)
    assert timedelta(days=364) < year < timedelta(days=367), ends

    before = {c["keyId"] for c in az("ad", "app", "credential", "list", "--id", app_id)}
    reset = az("ad", "app", "credential", "reset", "--id", app_id)
    assert (reset["appId"], reset["tenant"]) == (app_id, TENANT_ID) and reset["password"]
    after = {c["keyId"] for c in az("ad", "app", "credential", "list", "--id", app_id)}
    assert len(after) == 1 and after.isdisjoint(before), "reset without --append replaces the password"

    az("ad", "sp", "delete", "--id", app_id)
    assert az("ad", "sp", "list", "--display-name", name) == []
    assert f"Resource '{app_id}' does not exist" in az.fails("ad", "sp", "show", "--id", app_id)
    assert az("ad", "app", "show", "--id", app_id)["appId"] == app_id, "deleting the SP keeps the application"


# Roles.


def test_role_definitions_list_and_create(operator_az: Az):
    az = operator_az
    reader = az("role", "definition", "list", "--name", "Reader")
    assert [(r["roleName"], r["name"], r["roleType"]) for r in reader] == [("Reader", READER, "BuiltInRole")]

    role_name = unique("az-cli Disk Reader")
    definition = {
        "Name": role_name,
        "Description": "Reads managed disks (the seed's custom role).",
        "Actions": ["Microsoft.Compute/disks/read"],
        "NotActions": [],
        "AssignableScopes": [SUBSCRIPTION_SCOPE],
    }
    created = az("role", "definition", "create", "--role-definition", json.dumps(definition))
    assert created["roleName"] == role_name and created["roleType"] == "CustomRole"
    assert created["permissions"][0]["actions"] == ["Microsoft.Compute/disks/read"]
    assert created["assignableScopes"] == [SUBSCRIPTION_SCOPE]
    listed = az("role", "definition", "list", "--name", role_name)
    assert [r["name"] for r in listed] == [created["name"]]


def test_role_assignment_create_and_list(operator_az: Az):
    az = operator_az
    name = unique("az-cli-ra")
    app_id = az("ad", "sp", "create-for-rbac", "--name", name)["appId"]
    sp_id = az("ad", "sp", "show", "--id", app_id)["id"]
    scope = f"{SUBSCRIPTION_SCOPE}/resourceGroups/{RG_DISKS}"

    created = az("role", "assignment", "create", "--assignee", app_id, "--scope", scope, "--role", "Reader")
    assert created["principalId"] == sp_id
    assert created["principalType"] == "ServicePrincipal"
    assert created["scope"] == scope
    assert created["roleDefinitionId"].lower().endswith(READER)

    listed = az("role", "assignment", "list", "--assignee", app_id, "--all")
    assert [(a["principalId"], a["scope"], a["roleDefinitionId"].lower().rsplit("/", 1)[-1]) for a in listed] == [(sp_id, scope, READER)]


# AKS and resource groups.


def test_aks_show_list_and_update_credentials(operator_az: Az):
    az = operator_az
    # A cluster of its own, so that the SDK tests' cluster keeps its principal.
    cluster = unique("az-cli-aks")
    cluster_id = f"{RG_AKS_SCOPE}/providers/Microsoft.ContainerService/managedClusters/{cluster}"
    seeded = az.emulator.admin("POST", "seed", json={"aksClusters": [{"id": cluster_id, "clientId": LEGACY_CLUSTER_CLIENT_ID}]})
    assert seeded.status_code == 200, seeded.text

    shown = az("aks", "show", "--resource-group", RG_AKS, "--name", cluster)
    assert shown["id"].lower() == cluster_id.lower()
    assert shown["servicePrincipalProfile"]["clientId"] == LEGACY_CLUSTER_CLIENT_ID
    assert cluster in {c["name"] for c in az("aks", "list")}
    assert cluster in {c["name"] for c in az("aks", "list", "--resource-group", RG_AKS)}

    sp = az("ad", "sp", "create-for-rbac", "--name", unique("az-cli-aks-sp"))
    # The reset finishes before az's first poll (a second after the 202, its Retry-After): az waits out its
    # 30 s polling interval after a status that is still InProgress.
    knobs = az.emulator.admin("GET", "knobs").json()
    assert az.emulator.admin("PATCH", "knobs", json={"aks": {"resetDurationMs": 0}}).status_code == 200
    try:
        az("aks", "update-credentials", "--resource-group", RG_AKS, "--name", cluster, "--reset-service-principal",
           "--service-principal", sp["appId"], "--client-secret", sp["password"])
    finally:
        az.emulator.admin("PATCH", "knobs", json={"aks": knobs["aks"]})
    after = az("aks", "show", "--resource-group", RG_AKS, "--name", cluster, "--query", "servicePrincipalProfile.clientId")
    assert after == sp["appId"]
    check = az.emulator.admin("POST", "aks/check", json={"clusterId": cluster_id, "secret": sp["password"]})
    assert check.status_code == 200 and check.json() == {"clientId": sp["appId"], "secretMatches": True}, check.text


def test_group_list_and_show(operator_az: Az):
    az = operator_az
    groups = az("group", "list")
    assert {g["name"] for g in groups} == SEED_GROUPS, "the operator has roles across the subscription"
    shown = az("group", "show", "--name", RG_AKS)
    assert shown["id"] == f"{SUBSCRIPTION_SCOPE}/resourceGroups/{RG_AKS}"
    assert shown["type"] == "Microsoft.Resources/resourceGroups"
    assert shown["properties"]["provisioningState"] == "Succeeded"
    assert shown["location"] == "westeurope"
    assert "ResourceGroupNotFound" in az.fails("group", "show", "--name", "rg-does-not-exist")


def test_role_assignment_table_names_principals_for_a_directory_reader(operator_az: Az):
    """`az role assignment list` names principals through directoryObjects/getByIds, which needs
    Directory.Read.All: the operator (Application.ReadWrite.OwnedBy only) is refused and az prints no names;
    an identity holding it gets them, and az's table then works without --query."""
    az = operator_az
    app_id = az("ad", "sp", "create-for-rbac", "--name", unique("az-cli-named"))["appId"]
    az("role", "assignment", "create", "--assignee", app_id, "--scope", f"{SUBSCRIPTION_SCOPE}/resourceGroups/{RG_DISKS}", "--role", "Reader")
    unnamed = az("role", "assignment", "list", "--assignee", app_id, "--all")
    assert [a.get("principalName") for a in unnamed] == [None] and [a["roleDefinitionName"] for a in unnamed] == ["Reader"]

    reader = {"displayName": unique("az-cli-directory-reader"), "appId": str(uuid.uuid4()), "objectId": str(uuid.uuid4()), "servicePrincipalId": str(uuid.uuid4())}
    secret = "dr~" + uuid.uuid4().hex
    seeded = az.emulator.admin(
        "POST",
        "seed",
        json={
            "applications": [{**reader, "graphPermissions": ["Directory.Read.All"], "clientSecrets": [secret]}],
            "roleAssignments": [{"scope": SUBSCRIPTION_SCOPE, "role": "Reader", "principalId": reader["servicePrincipalId"]}],
        },
    )
    assert seeded.status_code == 200, seeded.text
    other = Az(binary=az.binary, config_dir=az.config_dir.parent / "reader-config", emulator=az.emulator)
    other.register_cloud()
    other.login_secret(reader["appId"], secret)
    named = other("role", "assignment", "list", "--assignee", app_id, "--all")
    assert [a["principalName"] for a in named] == [app_id], "az names a service principal by its appId"
    table = other.raw("role", "assignment", "list", "--assignee", app_id, "--all", "--output", "table")
    assert table.returncode == 0, table.stderr
    assert app_id in table.stdout and "Reader" in table.stdout and RG_DISKS in table.stdout


# Key Vault, through the emulator's CONNECT proxy (HTTPS_PROXY), under the vault's real name.


def test_keyvault_secret_set_and_show(operator_az: Az):
    operator_az.https_proxy = operator_az.emulator.proxy_url
    name = unique("az-secret")
    operator_az("keyvault", "secret", "set", "--vault-name", "contoso-kv", "--name", name, "--value", "from-az")
    shown = operator_az("keyvault", "secret", "show", "--vault-name", "contoso-kv", "--name", name)
    assert shown["value"] == "from-az"
    assert shown["id"].startswith(f"https://contoso-kv.vault.azure.net/secrets/{name}/")
