#!/usr/bin/env bash
# The demo behind `make demo`: the local control plane (already up), the Azure emulator, the operator signed in
# with workload identity (a projected-style ServiceAccount token, validated by the emulator against the API
# server's own OIDC discovery), and the examples applied. Ends by proving the delivered credential works.
#
# Expects: KUBECTL (command line with --kubeconfig), TESTENV_STATE (testenv's state dir), DEMO_DIR.
set -euo pipefail
: "${KUBECTL:?}" "${TESTENV_STATE:?}" "${DEMO_DIR:?}"
cd "$(dirname "$0")/.."
mkdir -p "$DEMO_DIR"
kubectl() { $KUBECTL "$@"; }

echo "--- CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null

echo "--- Azure emulator"
# The local Azure goes with the local cluster: a new control plane (after `make demo-down`, or a restarted
# testenv) gets a fresh one. Kept, its objects would belong to the old cluster's operator, and the new one
# would rightly leave them alone (a Key Vault secret another cluster wrote is a Conflict).
cluster_uid=$(kubectl get namespace kube-system -o jsonpath='{.metadata.uid}')
if [ "$(cat "$DEMO_DIR/cluster-uid" 2>/dev/null)" != "$cluster_uid" ]; then
    rm -rf "$DEMO_DIR/emulator"
    echo "$cluster_uid" >"$DEMO_DIR/cluster-uid"
fi
rm -f "$DEMO_DIR/emulator.env"
target/debug/azure-emulator --state-dir "$DEMO_DIR/emulator" --listen 127.0.0.1:0 --env-file "$DEMO_DIR/emulator.env" \
    >"$DEMO_DIR/emulator.log" 2>&1 &
echo $! >"$DEMO_DIR/emulator.pid"
for _ in $(seq 1 100); do [ -s "$DEMO_DIR/emulator.env" ] && break; sleep 0.1; done
# shellcheck disable=SC1091
source "$DEMO_DIR/emulator.env"
echo "serving on $AZURE_EMULATOR_URL (tenant $AZURE_TENANT_ID)"
curl_emulator() { curl -sS --fail-with-body --cacert "$AZURE_EMULATOR_CA_FILE" "$@"; }

echo "--- the operator's identity: workload identity for entra-operator-system/entra-operator"
kubectl create namespace entra-operator-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n entra-operator-system create serviceaccount entra-operator --dry-run=client -o yaml | kubectl apply -f - >/dev/null
issuer=$(cat "$TESTENV_STATE/server")
operator_app=0e0e0e0e-0000-4000-8000-00000000e0e0
# The emulator trusts the cluster's issuer for the operator's ServiceAccount, as `az identity
# federated-credential create` would set it up against a real AKS cluster. The operator writes to the example
# vault as Key Vault Secrets Officer there (in the built-in seed too; repeated for an emulator state kept from
# a demo of an earlier version, which predates it: seeding is idempotent).
curl_emulator -X POST "$AZURE_EMULATOR_URL/_emulator/seed" -H 'Content-Type: application/json' -d @- >/dev/null <<JSON
{"trustedIssuers": [{"issuer": "$issuer", "caFile": "$TESTENV_STATE/pki/ca.crt"}],
 "applications": [{"displayName": "entra-operator", "appId": "$operator_app",
   "objectId": "0e0e0e0e-0000-4000-8000-00000000a0a0", "servicePrincipalId": "0e0e0e0e-0000-4000-8000-00000000b0b0",
   "federatedCredentials": [{"name": "testenv", "issuer": "$issuer",
     "subject": "system:serviceaccount:entra-operator-system:entra-operator"}]}],
 "roleAssignments": [{"role": "Key Vault Secrets Officer", "principalId": "0e0e0e0e-0000-4000-8000-00000000b0b0",
   "scope": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-shared/providers/Microsoft.KeyVault/vaults/contoso-kv"}]}
JSON
kubectl -n entra-operator-system create token entra-operator --audience api://AzureADTokenExchange --duration 24h \
    >"$DEMO_DIR/azure-identity-token"

echo "--- operator"
# A new credential is published (and a new ServicePrincipal turns Ready) once 3 rounds of sign-ins over 10s pass:
# shorter than the default (4 over 60s), since the emulator accepts a credential at once unless told otherwise.
AZURE_CLOUD=custom AZURE_AUTHORITY_HOST="$AZURE_AUTHORITY_HOST" AZURE_GRAPH_ENDPOINT="$AZURE_GRAPH_ENDPOINT" \
AZURE_RESOURCE_MANAGER_ENDPOINT="$AZURE_RESOURCE_MANAGER_ENDPOINT" AZURE_CA_FILE="$AZURE_EMULATOR_CA_FILE" \
AZURE_CLIENT_ID="$operator_app" AZURE_TENANT_ID="$AZURE_TENANT_ID" AZURE_FEDERATED_TOKEN_FILE="$DEMO_DIR/azure-identity-token" \
HTTPS_PROXY="$AZURE_EMULATOR_PROXY_URL" NO_PROXY=127.0.0.1,localhost \
VERIFY_SIGN_INS=3 VERIFY_WINDOW=10s \
    target/debug/entra-operator run --kubeconfig "$TESTENV_STATE/kubeconfig" --log-format text >"$DEMO_DIR/operator.log" 2>&1 &
echo $! >"$DEMO_DIR/operator.pid"
for _ in $(seq 1 100); do grep -q 'operator ready' "$DEMO_DIR/operator.log" && break
    kill -0 "$(cat "$DEMO_DIR/operator.pid")" 2>/dev/null || { cat "$DEMO_DIR/operator.log"; exit 1; }; sleep 0.1; done
grep -E 'azure credential|operator ready' "$DEMO_DIR/operator.log" | sed 's/\x1b\[[0-9;]*m//g'

echo "--- examples"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The example DelegationPolicy lets namespaces labelled team=platform grant the seed's roles.
kubectl label namespace demo team=platform --overwrite >/dev/null
# The rotation last: a CredentialRotation resets only a cluster that already runs as the application it rotates.
rotation=examples/07-credential-rotation.yaml
for f in examples/*.yaml; do [ "$f" = "$rotation" ] || kubectl apply -n demo -f "$f"; done
kubectl -n demo wait --for=condition=Ready --timeout=120s serviceprincipal/aks-cluster-sp
# The cluster is created with the ServicePrincipal's application, as `az aks create --service-principal <appId>`
# would do (the emulator's seed cluster runs as another application until then).
cluster=/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/prod
app_id=$(kubectl -n demo get serviceprincipal aks-cluster-sp -o jsonpath='{.status.appId}')
curl_emulator -X POST "$AZURE_EMULATOR_URL/_emulator/seed" -H 'Content-Type: application/json' \
    -d "{\"aksClusters\": [{\"id\": \"$cluster\", \"clientId\": \"$app_id\"}]}" >/dev/null
echo "AKS cluster prod runs as application $app_id"
kubectl apply -n demo -f "$rotation"
kubectl -n demo wait --for=condition=Ready --timeout=90s roledelegation --all
kubectl -n demo wait --for=condition=Ready --timeout=120s credentialrotation --all
kubectl get delegationpolicies
# 09's watch: the demo's operator holds only Application.ReadWrite.OwnedBy, so it says ApplicationReadNotGranted
# (see docs/credential-watch.md for the optional grant).
kubectl get credentialwatches -o wide
kubectl -n demo get serviceprincipals,roledelegations,credentialrotations -o wide
echo
kubectl -n demo describe secret aks-cluster-sp-credentials | sed -n '/^Data/,$p'

echo "--- the delivered credential signs in (client credentials against the emulator)"
secret_value() { kubectl -n demo get secret aks-cluster-sp-credentials -o "jsonpath={.data.$1}" | base64 -d; }
curl_emulator -o /dev/null -X POST "$AZURE_AUTHORITY_HOST/$AZURE_TENANT_ID/oauth2/v2.0/token" \
    --data-urlencode grant_type=client_credentials --data-urlencode "client_id=$(secret_value AZURE_CLIENT_ID)" \
    --data-urlencode "client_secret=$(secret_value AZURE_CLIENT_SECRET)" \
    --data-urlencode scope=https://management.azure.com/.default
echo "token issued for $(secret_value AZURE_CLIENT_ID)"

echo "--- the AKS cluster holds the delivered secret (the CredentialRotation reset its service principal profile)"
curl_emulator -X POST "$AZURE_EMULATOR_URL/_emulator/aks/check" -H 'Content-Type: application/json' \
    -d "{\"clusterId\": \"$cluster\", \"secret\": \"$(secret_value AZURE_CLIENT_SECRET)\"}"
echo

echo "--- the role assignments in (emulated) Azure"
principal=$(kubectl -n demo get serviceprincipal aks-cluster-sp -o jsonpath='{.status.servicePrincipalId}')
if command -v jq >/dev/null; then
    curl_emulator "$AZURE_EMULATOR_URL/_emulator/state" | jq -r --arg p "$principal" '
        .arm as $arm | $arm.roleAssignments[] | select(.principalId == $p)
        | (.roleDefinitionId | split("/") | last) as $g
        | "\($g)  \(($arm.customRoles[$g].roleName) // "built-in")  \(.scope)"'
else
    kubectl -n demo get roledelegations -o custom-columns='NAME:.metadata.name,ASSIGNMENT:.status.roleAssignmentId'
fi

# --- The seed's own az commands, run by the real Azure CLI against the local Azure: the view of what the
# operator made that a user of the seed workflow knows. az is pinned and installed once into target/az-venv.
echo "--- what the operator made, as the Azure CLI shows it (az against the local Azure)"
az_bin=$(emulator/contract/az-venv.sh)
az_config="$DEMO_DIR/azure-config"
rm -rf "$az_config"
# A custom cloud whose endpoints az discovers from the emulator; see docs/local-azure.md.
az() {
    AZURE_CONFIG_DIR="$az_config" REQUESTS_CA_BUNDLE="$AZURE_EMULATOR_CA_FILE" AZURE_CORE_INSTANCE_DISCOVERY=false \
    HTTPS_PROXY="$AZURE_EMULATOR_PROXY_URL" NO_PROXY=127.0.0.1,localhost \
    AZURE_CORE_COLLECT_TELEMETRY=false AZURE_CORE_SURVEY_MESSAGE=false AZURE_CORE_NO_COLOR=true "$az_bin" "$@"
}
show() { echo "\$ az $*"; az "$@"; echo; }
az cloud register --name LocalAzure --endpoint-resource-manager "$AZURE_EMULATOR_URL/" >/dev/null
az cloud set --name LocalAzure --only-show-errors
# Signed in as the operator itself is: its workload identity token, exchanged with --federated-token.
az login --service-principal --username "$operator_app" --tenant "$AZURE_TENANT_ID" \
    --federated-token "$(cat "$DEMO_DIR/azure-identity-token")" >/dev/null
show ad sp show --id "$app_id" --query "{appId:appId, displayName:displayName, objectId:id}" --output table
show ad app credential list --id "$app_id" --query "[].endDateTime" --output tsv
show role assignment list --assignee "$app_id" --all --query "[].{role:roleDefinitionName, scope:scope}" --output table
show aks show --resource-group rg-aks --name prod --query servicePrincipalProfile.clientId --output tsv
# 08's application holds a certificate, not a password: Entra has its public half, named by its thumbprint.
kubectl -n demo wait --for=condition=Ready --timeout=120s serviceprincipal/batch-worker >/dev/null
cert_app=$(kubectl -n demo get serviceprincipal batch-worker -o jsonpath='{.status.appId}')
show ad app credential list --id "$cert_app" --cert --query "[].{keyId:keyId, thumbprint:customKeyIdentifier, end:endDateTime}" --output table

# 08's certificate, as a consumer that mounts the Secret has it: az signs in with the PEM file (MSAL signs a client
# assertion with it), and Entra holds only the public certificate.
echo "--- the delivered certificate signs in (az login --certificate, with the PEM file the Secret holds)"
cert_file="$DEMO_DIR/batch-worker.pem"
(umask 077; kubectl -n demo get secret batch-worker-credentials -o 'jsonpath={.data.certificate\.pem}' | base64 -d >"$cert_file")
az login --service-principal --username "$cert_app" --certificate "$cert_file" \
    --tenant "$AZURE_TENANT_ID" --allow-no-subscriptions >/dev/null
# az keeps the file's path and signs each new token request with it: the file goes once the token is shown.
show account get-access-token --query "{tokenType:tokenType, expiresOn:expiresOn}" --output table
az logout >/dev/null
rm -f "$cert_file"

# The vault, read as a consumer outside the cluster reads it: signed in as the delivered service principal
# itself, which 03's Key Vault Secrets User grant lets read the secret 01 delivers there.
echo "--- the vault holds the service principal's secret (az keyvault, signed in as the service principal)"
az login --service-principal --username "$app_id" --password="$(secret_value AZURE_CLIENT_SECRET)" \
    --tenant "$AZURE_TENANT_ID" --allow-no-subscriptions >/dev/null
show keyvault secret show --vault-name contoso-kv --name aks-cluster-sp-secret \
    --query "{expires:attributes.expires, notBefore:attributes.notBefore, contentType:contentType, tags:tags}" --output json
if [ "$(az keyvault secret show --vault-name contoso-kv --name aks-cluster-sp-secret --query value --output tsv)" \
    = "$(secret_value AZURE_CLIENT_SECRET)" ]; then
    echo "the vault's latest version is the Secret's client secret"
else
    echo "the vault's latest version differs from the Secret's client secret" >&2; exit 1
fi

echo "--- a rotation (a new rotationToken) moves the vault to a new version; the previous one stays enabled for the overlap"
crot() { kubectl -n demo get credentialrotation aks-cluster-sp -o "jsonpath={$1}"; }
if [ -n "$(crot .status.previousKeyId)" ]; then
    # A demo run again within a day: the earlier rotation's overlap (24h in 07) still runs, and a rotation
    # never makes a third password, so the next one waits for it. The versions show that earlier rotation.
    echo "a rotation's overlap runs until $(crot .status.previousKeyRemovalTime); the next one waits for it"
else
    before=$(crot .status.currentKeyId)
    kubectl -n demo patch credentialrotation aks-cluster-sp --type merge -p "{\"spec\":{\"rotationToken\":\"demo-$(date +%s)\"}}"
    for _ in $(seq 1 150); do
        now=$(crot .status.currentKeyId)
        [ "$now" != "$before" ] && [ "$(crot '.status.conditions[?(@.type=="Ready")].status')" = True ] && break; sleep 0.2
    done
    [ "$now" != "$before" ] || { echo "the rotation did not complete" >&2; exit 1; }
fi
show keyvault secret list-versions --vault-name contoso-kv --name aks-cluster-sp-secret \
    --query "sort_by([], &attributes.created)[].{enabled:attributes.enabled, keyId:tags.\"entra-operator-key-id\", expires:attributes.expires}" --output table
