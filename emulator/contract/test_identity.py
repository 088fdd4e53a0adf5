"""The Entra token endpoint as azure-identity and MSAL use it (azure-contract.md section 4, Identity)."""

import time

import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError

from conftest import ARM_SCOPE, GRAPH_SCOPE, OPERATOR, TENANT_ID, unverified_claims


@pytest.mark.parametrize(
    "scope, audiences",
    [
        (GRAPH_SCOPE, {"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"}),
        (ARM_SCOPE, {"https://management.azure.com", "https://management.azure.com/", "https://management.core.windows.net/"}),
    ],
)
def test_client_secret_credential_gets_tokens(emulator, scope, audiences):
    token = emulator.credential().get_token(scope)
    assert token.token
    # Entra issues tokens for about an hour.
    assert 3000 < token.expires_on - time.time() <= 3700
    claims = unverified_claims(token.token)
    assert claims["aud"] in audiences
    assert claims["tid"] == TENANT_ID
    assert claims["appid"] == OPERATOR["appId"]
    assert claims["oid"] == OPERATOR["servicePrincipalId"]
    if scope == GRAPH_SCOPE:
        # The application permission granted in the default configuration.
        assert "Application.ReadWrite.OwnedBy" in claims.get("roles", [])


def test_wrong_secret_is_aadsts7000215(emulator):
    with pytest.raises(ClientAuthenticationError) as err:
        emulator.credential(secret="not-the-secret").get_token(GRAPH_SCOPE)
    assert "AADSTS7000215" in str(err.value)


def test_scope_without_default_is_aadsts1002012(emulator):
    with pytest.raises(ClientAuthenticationError) as err:
        emulator.credential().get_token("https://graph.microsoft.com")
    assert "AADSTS1002012" in str(err.value)


def test_unknown_client_is_aadsts700016(emulator):
    with pytest.raises(ClientAuthenticationError) as err:
        emulator.credential(client_id="0badc0de-0000-4000-8000-000000000000").get_token(ARM_SCOPE)
    assert "AADSTS700016" in str(err.value)


def test_token_endpoint_wire_format(emulator):
    """The raw shapes azure-contract.md section 4 lists: the 200 body and the OAuth error body."""
    url = f"{emulator.url}/{emulator.tenant_id}/oauth2/v2.0/token"
    form = {"grant_type": "client_credentials", "client_id": OPERATOR["appId"], "scope": ARM_SCOPE}
    ok = emulator.session.post(url, data={**form, "client_secret": emulator.operator_secret}, timeout=30)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and 3000 < body["expires_in"] <= 3600
    assert body["access_token"]

    # HTTP Basic carries client_id:client_secret as an alternative.
    basic = emulator.session.post(url, data={"grant_type": "client_credentials", "scope": ARM_SCOPE}, auth=(OPERATOR["appId"], emulator.operator_secret), timeout=30)
    assert basic.status_code == 200, basic.text

    bad = emulator.session.post(url, data={**form, "client_secret": "wrong"}, timeout=30)
    assert bad.status_code == 401
    err = bad.json()
    assert err["error"] == "invalid_client"
    assert err["error_codes"] == [7000215]
    assert err["error_description"].startswith("AADSTS7000215: ")
    for line in ("\r\nTrace ID: ", "\r\nCorrelation ID: ", "\r\nTimestamp: "):
        assert line in err["error_description"]
    for key in ("timestamp", "trace_id", "correlation_id"):
        assert err[key]


def test_msal_uses_the_emulators_instance_discovery_and_openid_configuration(emulator):
    """MSAL validates an unknown authority through instance discovery. azure-identity can only aim that at
    login.microsoftonline.com (or turn it off); MSAL itself takes the endpoint, so the emulator's own
    /common/discovery/instance and OpenID configuration are checked here with MSAL's parser."""
    http = requests.Session()
    http.verify = emulator.ca_file
    http.trust_env = False
    app = msal.ConfidentialClientApplication(
        OPERATOR["appId"],
        client_credential=emulator.operator_secret,
        authority=f"{emulator.url}/{emulator.tenant_id}",
        instance_discovery=f"{emulator.url}/common/discovery/instance",
        http_client=http,
    )
    result = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
