"""Fixtures of the emulator's contract suite.

One azure-emulator process serves the whole session (started from $AZURE_EMULATOR_BIN on a free loopback
port, killed at the end). The operator's identity from the built-in configuration is given a client secret
through the admin API, and Microsoft's own SDKs are pointed at the emulator: azure-identity for tokens,
msgraph-sdk for Graph, azure-mgmt-authorization and azure-mgmt-containerservice for ARM.

Tests create the objects they need under fresh names, so they do not depend on one another's order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import pytest
import requests
from azure.identity import ClientSecretCredential

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The seed of the emulator's built-in configuration (emulator/default-config.yaml).
TENANT_ID = "72f988bf-0000-4000-8000-000000000001"
OPERATOR = {
    "displayName": "entra-operator",
    "appId": "0e0e0e0e-0000-4000-8000-00000000e0e0",
    "objectId": "0e0e0e0e-0000-4000-8000-00000000a0a0",
    "servicePrincipalId": "0e0e0e0e-0000-4000-8000-00000000b0b0",
}
SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
SUBSCRIPTION_SCOPE = f"/subscriptions/{SUBSCRIPTION}"
RG_AKS = "rg-aks"
RG_AKS_SCOPE = f"{SUBSCRIPTION_SCOPE}/resourceGroups/{RG_AKS}"
RG_SHARED_SCOPE = f"{SUBSCRIPTION_SCOPE}/resourceGroups/rg-shared"
# The vault of the built-in configuration; the operator is Key Vault Secrets Officer on it.
VAULT_NAME = "contoso-kv"
VAULT_ID = f"{RG_SHARED_SCOPE}/providers/Microsoft.KeyVault/vaults/{VAULT_NAME}"
VAULT_URL = f"https://{VAULT_NAME}.vault.azure.net"
CLUSTER_NAME = "prod"
CLUSTER_ID = f"{RG_AKS_SCOPE}/providers/Microsoft.ContainerService/managedClusters/{CLUSTER_NAME}"
LEGACY_CLUSTER_CLIENT_ID = "5a5a5a5a-0000-4000-8000-000000005a5a"

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ARM_SCOPE = "https://management.azure.com/.default"
# The AKS api-version whose description is in azure-specs (the SDK's own default is newer).
AKS_API_VERSION = "2025-01-01"


def emulator_binary() -> Path:
    return Path(os.environ.get("AZURE_EMULATOR_BIN") or REPO / "target" / "debug" / "azure-emulator")


def specs_dir() -> Path:
    return Path(os.environ.get("AZURE_SPECS_DIR") or REPO.parent / "shared" / "azure-specs")


def pytest_configure(config: pytest.Config) -> None:
    binary = emulator_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.exit(
            f"azure-emulator binary not found or not executable: {binary}\n"
            "build it with 'cargo build -p azure-emulator' or set AZURE_EMULATOR_BIN",
            returncode=2,
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    specs = specs_dir()
    return [
        f"azure-emulator: {emulator_binary()}",
        f"azure-specs: {specs}" + ("" if specs.is_dir() else " (absent: schema checks will be skipped)"),
    ]


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, without checking it (the emulator's own tests check signatures)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def odata_error_code(exc: BaseException) -> Optional[str]:
    """error.code of an msgraph-sdk ODataError."""
    err = getattr(exc, "error", None)
    return getattr(err, "code", None)


def arm_error_body(exc: BaseException) -> dict[str, Any]:
    """The raw JSON body of an azure-core HttpResponseError."""
    return json.loads(exc.response.text())  # type: ignore[attr-defined]


@dataclass
class Emulator:
    url: str
    tenant_id: str
    ca_file: str
    operator_secret: str
    # The CONNECT proxy that reaches vault hosts (https://{vault}.vault.azure.net), for HTTPS_PROXY.
    proxy_url: str
    log_file: Path
    process: subprocess.Popen
    _tokens: dict[str, str] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.verify = self.ca_file
        self.session.trust_env = False

    # The admin API (loopback tooling, no authentication).
    def admin(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}/_emulator/{path.lstrip('/')}", timeout=30, **kw)

    def credential(self, client_id: str = OPERATOR["appId"], secret: Optional[str] = None, **kw: Any) -> ClientSecretCredential:
        # MSAL sends instance discovery for an authority it does not know to login.microsoftonline.com
        # (msal/authority.py _get_instance_discovery_endpoint), never to the authority itself, so the emulator's
        # /common/discovery/instance cannot be used through azure-identity: it must be turned off.
        # test_identity.py checks the emulator's discovery endpoint through MSAL directly.
        return ClientSecretCredential(
            self.tenant_id,
            client_id,
            secret if secret is not None else self.operator_secret,
            authority=self.url,
            connection_verify=self.ca_file,
            disable_instance_discovery=True,
            **kw,
        )

    def token(self, scope: str) -> str:
        if scope not in self._tokens:
            self._tokens[scope] = self.credential().get_token(scope).token
        return self._tokens[scope]

    def graph_raw(self, method: str, path: str, **kw: Any) -> requests.Response:
        """A Graph call without the SDK, for looking at the exact JSON."""
        headers = {"Authorization": f"Bearer {self.token(GRAPH_SCOPE)}", **kw.pop("headers", {})}
        return self.session.request(method, f"{self.url}/v1.0/{path.lstrip('/')}", headers=headers, timeout=30, **kw)

    def arm_raw(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token(ARM_SCOPE)}", **kw.pop("headers", {})}
        return self.session.request(method, f"{self.url}/{path.lstrip('/')}", headers=headers, timeout=30, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(binary: Path, workdir: Path) -> tuple[subprocess.Popen, dict[str, str], Path]:
    """Starts the emulator on a free port (retrying if another process takes the port first)."""
    last_error = ""
    for attempt in range(3):
        port = _free_port()
        env_file = workdir / f"emulator-{attempt}.env"
        log_file = workdir / f"emulator-{attempt}.log"
        log = open(log_file, "wb")
        process = subprocess.Popen(
            [str(binary), "--listen", f"127.0.0.1:{port}", "--state-dir", str(workdir / f"state-{attempt}"), "--env-file", str(env_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None and not env_file.exists():
            time.sleep(0.05)
        if env_file.exists():
            time.sleep(0.05)  # written in one call, but let the writer finish
            values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
            return process, values, log_file
        process.kill()
        process.wait()
        last_error = log_file.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"azure-emulator did not start; its output:\n{last_error}")


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("azure-emulator")
    process, values, log_file = _start(emulator_binary(), workdir)
    try:
        for key in ("AZURE_EMULATOR_URL", "AZURE_TENANT_ID", "AZURE_EMULATOR_CA_FILE", "AZURE_EMULATOR_PROXY_URL"):
            assert values.get(key), f"the emulator's --env-file lacks {key}: {values}"
        emu = Emulator(
            url=values["AZURE_EMULATOR_URL"].rstrip("/"),
            tenant_id=values["AZURE_TENANT_ID"],
            ca_file=values["AZURE_EMULATOR_CA_FILE"],
            # Entra's generated secrets use letters, digits and ~._- ; this one looks alike.
            operator_secret="op~" + secrets.token_urlsafe(30),
            proxy_url=values["AZURE_EMULATOR_PROXY_URL"],
            log_file=log_file,
            process=process,
        )
        assert emu.tenant_id == TENANT_ID, "the suite expects the emulator's built-in configuration"
        deadline = time.monotonic() + 30
        while True:
            try:
                if emu.admin("GET", "health").status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"GET /_emulator/health never answered 200; output:\n{log_file.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        seeded = emu.admin("POST", "seed", json={"applications": [{**OPERATOR, "clientSecrets": [emu.operator_secret]}]})
        assert seeded.status_code == 200, seeded.text
        yield emu
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def credential(emulator: Emulator) -> ClientSecretCredential:
    return emulator.credential()


class ArmRecorder:
    """azure-core raw_response_hook: keeps what the SDK received, so tests can look at the exact JSON."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, pipeline_response: Any) -> None:
        request, response = pipeline_response.http_request, pipeline_response.http_response
        try:
            text = response.text()
        except Exception:  # a streamed body (LRO first response) has not been read yet
            text = None
        body = None
        if text:
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        self.entries.append(
            {"method": request.method, "url": request.url, "status": response.status_code, "headers": dict(response.headers), "body": body}
        )

    def last(self, method: str, path_contains: str, status: Optional[int] = None) -> dict[str, Any]:
        for e in reversed(self.entries):
            path = e["url"].split("?")[0].lower()
            if e["method"] == method and path_contains.lower() in path and (status is None or e["status"] == status):
                return e
        raise AssertionError(f"no recorded {method} *{path_contains}* (status {status}) among {[(e['method'], e['url'], e['status']) for e in self.entries[-10:]]}")


def _arm_kwargs(emulator: Emulator, recorder: ArmRecorder) -> dict[str, Any]:
    return {
        "base_url": emulator.url,
        "credential_scopes": [ARM_SCOPE],
        "connection_verify": emulator.ca_file,
        "raw_response_hook": recorder,
        # Fail fast rather than retry for a minute if the emulator misbehaves.
        "retry_total": 2,
        "retry_backoff_factor": 0.1,
    }


@pytest.fixture(scope="session")
def authz(emulator: Emulator, credential: ClientSecretCredential):
    from azure.mgmt.authorization import AuthorizationManagementClient

    recorder = ArmRecorder()
    client = AuthorizationManagementClient(credential, SUBSCRIPTION, **_arm_kwargs(emulator, recorder))
    client.recorder = recorder  # type: ignore[attr-defined]
    yield client
    client.close()


@pytest.fixture(scope="session")
def aks(emulator: Emulator, credential: ClientSecretCredential):
    from azure.mgmt.containerservice import ContainerServiceClient

    recorder = ArmRecorder()
    client = ContainerServiceClient(credential, SUBSCRIPTION, api_version=AKS_API_VERSION, **_arm_kwargs(emulator, recorder))
    client.recorder = recorder  # type: ignore[attr-defined]
    yield client
    client.close()


@dataclass
class Graph:
    """msgraph-sdk's GraphServiceClient on the emulator, and the loop its async calls run on."""

    client: Any
    loop: asyncio.AbstractEventLoop
    responses: list[tuple[str, str, int, Any]]

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="session")
def graph(emulator: Emulator, credential: ClientSecretCredential):
    from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph_core import GraphClientFactory

    loop = asyncio.new_event_loop()
    responses: list[tuple[str, str, int, Any]] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        responses.append((response.request.method, str(response.request.url), response.status_code, body))

    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=emulator.ca_file), timeout=30, trust_env=False, event_hooks={"response": [keep]})
    )
    # Kiota attaches the token only for allowed hosts; the default list names graph.microsoft.com.
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=["127.0.0.1"])
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{emulator.url}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)
    yield Graph(client=client, loop=loop, responses=responses)
    loop.run_until_complete(http.aclose())
    loop.close()


@dataclass
class Workload:
    """An application the operator created through msgraph-sdk, with its service principal and a secret."""

    app_object_id: str
    app_id: str
    sp_id: str
    secret: str
    key_id: str


@pytest.fixture(scope="session")
def workload(graph: Graph) -> Workload:
    from msgraph.generated.applications.item.add_password.add_password_post_request_body import AddPasswordPostRequestBody
    from msgraph.generated.models.application import Application
    from msgraph.generated.models.password_credential import PasswordCredential
    from msgraph.generated.models.service_principal import ServicePrincipal

    app = graph.run(graph.client.applications.post(Application(display_name=f"contract-workload-{uuid.uuid4().hex[:8]}")))
    sp = graph.run(graph.client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
    pw = graph.run(
        graph.client.applications.by_application_id(app.id).add_password.post(
            AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="contract"))
        )
    )
    return Workload(app_object_id=app.id, app_id=app.app_id, sp_id=sp.id, secret=pw.secret_text, key_id=str(pw.key_id))


@pytest.fixture(scope="session")
def specs() -> Path:
    path = specs_dir()
    if not path.is_dir():
        pytest.skip(f"Azure API descriptions not found at {path} (set AZURE_SPECS_DIR): schema checks skipped")
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def poll(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
