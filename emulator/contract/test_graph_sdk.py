"""Microsoft Graph v1.0 as msgraph-sdk calls it (azure-contract.md section 1): every response must
deserialize into the SDK's models with the values Graph documents."""

import datetime
import uuid

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
from msgraph.generated.applications.item.add_password.add_password_post_request_body import AddPasswordPostRequestBody
from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import RemovePasswordPostRequestBody
from msgraph.generated.models.application import Application
from msgraph.generated.models.federated_identity_credential import FederatedIdentityCredential
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_credential import PasswordCredential
from msgraph.generated.models.service_principal import ServicePrincipal
from azure.core.exceptions import ClientAuthenticationError

from conftest import ARM_SCOPE, odata_error_code, unique


def is_guid(value) -> bool:
    try:
        uuid.UUID(str(value))
        return True
    except ValueError:
        return False


def prefer_create_if_missing() -> RequestConfiguration:
    config = RequestConfiguration()
    config.headers.add("Prefer", "create-if-missing")
    return config


@pytest.fixture
def app(graph):
    """A fresh application created by the operator (POST /applications)."""
    return graph.run(graph.client.applications.post(Application(display_name=unique("contract-app"))))


def test_create_application(graph):
    name = unique("contract-create")
    created = graph.run(graph.client.applications.post(Application(display_name=name, description="made by the contract suite", tags=["contract"])))
    assert isinstance(created, Application)
    assert is_guid(created.id) and is_guid(created.app_id) and created.id != created.app_id
    assert created.display_name == name
    assert created.description == "made by the contract suite"
    assert created.tags == ["contract"]
    assert created.password_credentials == []
    assert isinstance(created.created_date_time, datetime.datetime)
    assert created.deleted_date_time is None
    method, url, status, body = graph.responses[-1]
    assert (method, status) == ("POST", 201)
    assert body["@odata.context"].endswith("/$metadata#applications/$entity")


def test_upsert_by_unique_name(graph):
    unique_name = unique("contract-upsert")
    builder = graph.client.applications_with_unique_name(unique_name)

    # Missing and no Prefer: 404.
    with pytest.raises(ODataError) as err:
        graph.run(builder.patch(Application(display_name="upsert")))
    assert err.value.response_status_code == 404
    assert odata_error_code(err.value) == "Request_ResourceNotFound"

    # Missing with Prefer: create-if-missing: 201 and the application.
    created = graph.run(builder.patch(Application(display_name="upsert"), request_configuration=prefer_create_if_missing()))
    assert isinstance(created, Application)
    assert created.unique_name == unique_name
    assert created.display_name == "upsert"
    assert is_guid(created.id) and is_guid(created.app_id)
    method, url, status, body = graph.responses[-1]
    assert (method, status) == ("PATCH", 201)
    assert body["@odata.context"].endswith("/$metadata#applications/$entity")

    # Exists: 204 and no body, which the SDK returns as None.
    again = graph.run(builder.patch(Application(display_name="upsert renamed"), request_configuration=prefer_create_if_missing()))
    assert again is None
    assert graph.responses[-1][2] == 204
    fetched = graph.run(builder.get())
    assert fetched.id == created.id and fetched.display_name == "upsert renamed"


def test_get_by_id_and_by_app_id(graph, app):
    by_id = graph.run(graph.client.applications.by_application_id(app.id).get())
    by_app_id = graph.run(graph.client.applications_with_app_id(app.app_id).get())
    for got in (by_id, by_app_id):
        assert isinstance(got, Application)
        assert (got.id, got.app_id, got.display_name) == (app.id, app.app_id, app.display_name)


def test_get_missing_application_is_request_resource_not_found(graph):
    missing = str(uuid.uuid4())
    with pytest.raises(ODataError) as err:
        graph.run(graph.client.applications.by_application_id(missing).get())
    assert err.value.response_status_code == 404
    main = err.value.error
    assert main.code == "Request_ResourceNotFound"
    assert missing in main.message
    # innerError carries date, request-id and client-request-id.
    assert main.inner_error is not None
    assert main.inner_error.request_id and main.inner_error.client_request_id and main.inner_error.date


def test_add_and_remove_password(emulator, graph, app):
    items = graph.client.applications.by_application_id(app.id)
    pw = graph.run(items.add_password.post(AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="ci"))))
    assert isinstance(pw, PasswordCredential)
    assert pw.secret_text and 16 <= len(pw.secret_text) <= 64
    assert pw.hint == pw.secret_text[:3]
    assert is_guid(pw.key_id)
    assert pw.display_name == "ci"
    assert pw.custom_key_identifier is None
    # Defaults: start now, end two years later.
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((pw.start_date_time - now).total_seconds()) < 300
    lifetime = pw.end_date_time - pw.start_date_time
    assert datetime.timedelta(days=729) <= lifetime <= datetime.timedelta(days=731)

    # Later reads show the credential without its secret.
    got = graph.run(items.get())
    [stored] = got.password_credentials
    assert stored.key_id == pw.key_id and stored.hint == pw.hint and stored.secret_text is None

    # The secret is a working credential once the app has a service principal.
    graph.run(graph.client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
    assert emulator.credential(client_id=app.app_id, secret=pw.secret_text).get_token(ARM_SCOPE).token

    removed = graph.run(items.remove_password.post(RemovePasswordPostRequestBody(key_id=pw.key_id)))
    assert removed is None
    assert graph.responses[-1][2] == 204
    assert graph.run(items.get()).password_credentials == []
    with pytest.raises(ClientAuthenticationError) as err:
        emulator.credential(client_id=app.app_id, secret=pw.secret_text).get_token(ARM_SCOPE)
    assert "AADSTS7000215" in str(err.value)


def test_create_service_principal(graph, app):
    sp = graph.run(graph.client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
    assert isinstance(sp, ServicePrincipal)
    assert is_guid(sp.id) and sp.id not in (app.id, app.app_id)
    assert sp.app_id == app.app_id
    assert sp.display_name == app.display_name
    assert (graph.responses[-1][0], graph.responses[-1][2]) == ("POST", 201)
    by_app_id = graph.run(graph.client.service_principals_with_app_id(app.app_id).get())
    assert by_app_id.id == sp.id
    by_id = graph.run(graph.client.service_principals.by_service_principal_id(sp.id).get())
    assert by_id.app_id == app.app_id
    # A second one for the same appId conflicts.
    with pytest.raises(ODataError) as err:
        graph.run(graph.client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
    assert err.value.response_status_code == 409
    assert odata_error_code(err.value) == "Request_MultipleObjectsWithSameKeyValue"


def test_list_applications_with_filter(graph, app):
    def listed(filter_text):
        config = RequestConfiguration(query_parameters=ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(filter=filter_text))
        return graph.run(graph.client.applications.get(request_configuration=config))

    page = listed(f"appId eq '{app.app_id}'")
    assert [a.id for a in page.value] == [app.id]
    assert isinstance(page.value[0], Application)
    page = listed(f"displayName eq '{app.display_name}'")
    assert [a.app_id for a in page.value] == [app.app_id]
    assert listed(f"appId eq '{uuid.uuid4()}'").value == []
    everything = graph.run(graph.client.applications.get())
    assert app.id in {a.id for a in everything.value}


def test_federated_identity_credentials(graph, app):
    fics = graph.client.applications.by_application_id(app.id).federated_identity_credentials
    wanted = FederatedIdentityCredential(
        name="contract-fic",
        issuer="https://oidc.prod-aks.azure.com/00000000-0000-4000-8000-000000000001/",
        subject="system:serviceaccount:payments:api",
        audiences=["api://AzureADTokenExchange"],
        description="contract suite",
    )
    created = graph.run(fics.post(wanted))
    assert isinstance(created, FederatedIdentityCredential)
    assert is_guid(created.id)
    assert (created.name, created.issuer, created.subject, created.audiences, created.description) == (
        wanted.name, wanted.issuer, wanted.subject, wanted.audiences, wanted.description)
    method, url, status, body = graph.responses[-1]
    assert (method, status) == ("POST", 201)
    assert body["@odata.context"].endswith(f"/$metadata#applications('{app.id}')/federatedIdentityCredentials/$entity")

    listed = graph.run(fics.get())
    assert [(f.id, f.name) for f in listed.value] == [(created.id, "contract-fic")]

    # Same name again: 409 Request_MultipleObjectsWithSameKeyValue.
    with pytest.raises(ODataError) as err:
        graph.run(fics.post(FederatedIdentityCredential(name="contract-fic", issuer=wanted.issuer, subject="system:serviceaccount:other:sa", audiences=wanted.audiences)))
    assert err.value.response_status_code == 409
    assert odata_error_code(err.value) == "Request_MultipleObjectsWithSameKeyValue"
    # Same issuer and subject under another name: 400 InvalidFederatedIdentityCredentialValue.
    with pytest.raises(ODataError) as err:
        graph.run(fics.post(FederatedIdentityCredential(name="contract-fic-2", issuer=wanted.issuer, subject=wanted.subject, audiences=wanted.audiences)))
    assert err.value.response_status_code == 400
    assert odata_error_code(err.value) == "InvalidFederatedIdentityCredentialValue"

    assert graph.run(fics.by_federated_identity_credential_id(created.id).delete()) is None
    assert graph.responses[-1][2] == 204
    assert graph.run(fics.get()).value == []


def test_delete_application_goes_to_deleted_items(graph, app):
    assert graph.run(graph.client.applications.by_application_id(app.id).delete()) is None
    assert graph.responses[-1][2] == 204
    with pytest.raises(ODataError) as err:
        graph.run(graph.client.applications.by_application_id(app.id).get())
    assert err.value.response_status_code == 404
    assert odata_error_code(err.value) == "Request_ResourceNotFound"

    deleted = graph.run(graph.client.directory.deleted_items.by_directory_object_id(app.id).get())
    # @odata.type makes the SDK build the derived type.
    assert isinstance(deleted, Application)
    assert deleted.app_id == app.app_id
    assert isinstance(deleted.deleted_date_time, datetime.datetime)
    listed = graph.run(graph.client.directory.deleted_items.graph_application.get())
    assert app.id in {a.id for a in listed.value}


def test_federated_identity_credential_upsert_by_name(graph, app):
    """name is an alternate key: PATCH .../federatedIdentityCredentials(name='n') with Prefer: create-if-missing
    creates (201) or updates (204); GET and DELETE address one credential by name."""
    item = graph.client.applications.by_application_id(app.id)
    by_name = item.federated_identity_credentials_with_name("contract-upsert")
    body = FederatedIdentityCredential(
        issuer="https://oidc.prod-aks.azure.com/00000000-0000-4000-8000-000000000002/",
        subject="system:serviceaccount:payments:upsert",
        audiences=["api://AzureADTokenExchange"],
    )
    created = graph.run(by_name.patch(body, request_configuration=prefer_create_if_missing()))
    assert graph.responses[-1][2] == 201, graph.responses[-1]
    assert isinstance(created, FederatedIdentityCredential) and created.name == "contract-upsert"

    body.subject = "system:serviceaccount:payments:upsert2"
    assert graph.run(by_name.patch(body, request_configuration=prefer_create_if_missing())) is None
    assert graph.responses[-1][2] == 204, graph.responses[-1]

    got = graph.run(by_name.get())
    assert isinstance(got, FederatedIdentityCredential)
    assert (got.name, got.subject) == ("contract-upsert", "system:serviceaccount:payments:upsert2")
    assert graph.run(by_name.delete()) is None
    assert graph.run(item.federated_identity_credentials.get()).value == []


def test_service_principal_upsert_by_app_id(graph, app):
    builder = graph.client.service_principals_with_app_id(app.app_id)
    created = graph.run(builder.patch(ServicePrincipal(), request_configuration=prefer_create_if_missing()))
    assert graph.responses[-1][2] == 201
    assert isinstance(created, ServicePrincipal) and created.app_id == app.app_id
    assert graph.run(builder.patch(ServicePrincipal(tags=["contract"]), request_configuration=prefer_create_if_missing())) is None
    assert graph.responses[-1][2] == 204
    assert graph.run(builder.get()).tags == ["contract"]


def test_restore_and_purge_deleted_application(graph, app):
    graph.run(graph.client.applications.by_application_id(app.id).delete())
    deleted_item = graph.client.directory.deleted_items.by_directory_object_id(app.id)
    restored = graph.run(deleted_item.restore.post())
    assert isinstance(restored, Application) and restored.id == app.id
    assert graph.run(graph.client.applications.by_application_id(app.id).get()).app_id == app.app_id

    graph.run(graph.client.applications.by_application_id(app.id).delete())
    assert graph.run(deleted_item.delete()) is None
    assert graph.responses[-1][2] == 204
    with pytest.raises(ODataError) as err:
        graph.run(deleted_item.get())
    assert err.value.response_status_code == 404


def test_applications_delta_first_round(graph, app):
    """Pages carry @odata.nextLink until the last, which carries @odata.deltaLink; never both."""
    page = graph.run(graph.client.applications.delta.get())
    seen = set()
    for _ in range(100):
        seen.update(a.id for a in page.value)
        assert not (page.odata_next_link and page.odata_delta_link)
        if page.odata_delta_link:
            break
        assert page.odata_next_link
        page = graph.run(graph.client.applications.delta.with_url(page.odata_next_link).get())
    assert page.odata_delta_link and "$deltatoken=" in page.odata_delta_link
    assert app.id in seen
