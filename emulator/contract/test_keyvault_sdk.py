"""Key Vault secrets as azure-keyvault-secrets uses them: through the emulator's CONNECT proxy (HTTPS_PROXY),
with the real vault URL, the SDK's own challenge flow (its first request carries no token; the 401's
WWW-Authenticate names the tenant and https://vault.azure.net), and Key Vault's RBAC permission model."""

import uuid
from datetime import datetime, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from conftest import SUBSCRIPTION, VAULT_ID, VAULT_NAME, VAULT_URL, unique

SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


@pytest.fixture()
def via_proxy(emulator, monkeypatch):
    """HTTPS_PROXY for vault hosts; NO_PROXY (set by run.sh, again here) keeps the emulator's own URL direct."""
    monkeypatch.setenv("HTTPS_PROXY", emulator.proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def client(emulator, credential, **kw):
    return SecretClient(VAULT_URL, credential, connection_verify=emulator.ca_file, retry_total=1, **kw)


def test_secret_life_cycle(emulator, credential, via_proxy):
    secrets = client(emulator, credential)
    name = unique("db-password")
    not_before = datetime(2026, 1, 1, tzinfo=timezone.utc)
    expires_on = datetime(2030, 6, 30, 12, 0, tzinfo=timezone.utc)
    first = secrets.set_secret(name, "value-1", content_type="text/plain", tags={"owner": "team-a"}, not_before=not_before, expires_on=expires_on)
    assert first.value == "value-1"
    assert first.id.startswith(f"{VAULT_URL}/secrets/{name}/")
    assert first.properties.vault_url == VAULT_URL
    assert len(first.properties.version) == 32
    assert first.properties.recovery_level == "Recoverable+Purgeable"
    # The SDK's first request went without a token and was challenged: its challenge policy did the rest.
    calls = emulator.admin("GET", "calls").json()
    assert calls["keyvault PUT /secrets/{name}"].get("401"), calls

    got = secrets.get_secret(name)
    assert (got.value, got.properties.content_type, got.properties.tags) == ("value-1", "text/plain", {"owner": "team-a"})
    assert (got.properties.not_before, got.properties.expires_on) == (not_before, expires_on)
    assert got.properties.enabled is True
    assert got.properties.created_on and got.properties.updated_on

    second = secrets.set_secret(name, "value-2")
    assert secrets.get_secret(name).value == "value-2"
    versions = list(secrets.list_properties_of_secret_versions(name, max_page_size=1))
    assert sorted(v.version for v in versions) == sorted([first.properties.version, second.properties.version])
    assert name in {p.name for p in secrets.list_properties_of_secrets()}

    updated = secrets.update_secret_properties(name, first.properties.version, enabled=False)
    assert updated.enabled is False
    with pytest.raises(HttpResponseError) as err:
        secrets.get_secret(name, first.properties.version)
    assert err.value.status_code == 403
    assert err.value.error.code == "Forbidden"
    assert secrets.get_secret(name).value == "value-2"

    deleted = secrets.begin_delete_secret(name).result()
    assert deleted.recovery_id == f"{VAULT_URL}/deletedsecrets/{name}"
    assert deleted.deleted_date and deleted.scheduled_purge_date
    assert secrets.get_deleted_secret(name).name == name
    assert name in {d.name for d in secrets.list_deleted_secrets()}
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    with pytest.raises(HttpResponseError) as err:
        secrets.set_secret(name, "reuse")
    assert err.value.status_code == 409

    recovered = secrets.begin_recover_deleted_secret(name).result()
    assert recovered.name == name
    assert secrets.get_secret(name).value == "value-2"

    secrets.begin_delete_secret(name).wait()
    secrets.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_deleted_secret(name)
    view = emulator.admin("GET", f"keyvault/{VAULT_NAME}/secrets").json()
    assert name not in {s["name"] for s in view["secrets"] + view["deleted"]}
    secrets.close()


def test_an_older_api_version_works_too(emulator, credential, via_proxy):
    secrets = client(emulator, credential, api_version="7.5")
    name = unique("older")
    secrets.set_secret(name, "v")
    assert secrets.get_secret(name).value == "v"
    secrets.close()


def test_secrets_user_reads_but_cannot_write(emulator, credential, via_proxy, authz, workload):
    from azure.mgmt.authorization.models import RoleAssignmentCreateParameters

    name = unique("shared")
    client(emulator, credential).set_secret(name, "for-the-workload")
    authz.role_assignments.create(
        VAULT_ID,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{SECRETS_USER}",
            principal_id=workload.sp_id,
            principal_type="ServicePrincipal",
        ),
    )
    reader = client(emulator, emulator.credential(workload.app_id, workload.secret))
    assert reader.get_secret(name).value == "for-the-workload"
    with pytest.raises(HttpResponseError) as err:
        reader.set_secret(name, "overwritten")
    assert err.value.status_code == 403
    assert err.value.error.code == "Forbidden"
    assert "Microsoft.KeyVault/vaults/secrets/setSecret/action" in err.value.error.message
    reader.close()
