#!/usr/bin/env bash
# Runs the emulator's contract suite: Microsoft's Python SDKs (azure-identity, msgraph-sdk,
# azure-mgmt-authorization, azure-mgmt-containerservice, azure-keyvault-secrets) and the Azure CLI against the azure-emulator
# binary, plus schema checks against Microsoft's API descriptions.
#
#   emulator/contract/run.sh [pytest arguments...]
#
# Environment:
#   AZURE_EMULATOR_BIN  the emulator binary (default <repo>/target/debug/azure-emulator)
#   AZURE_SPECS_DIR     Microsoft's API descriptions (default <repo>/../shared/azure-specs); the schema
#                       tests are skipped, saying so, when it is absent
#   PYTHON              the interpreter for the venv (default python3.11, else python3)
#
# The venv lives at <repo>/target/contract-venv (sdk-venv.sh) and is rebuilt only when requirements.txt changes; the
# Azure CLI has its own (az-venv.sh: <repo>/target/az-venv, rebuilt only when az-requirements.txt changes),
# since its pins differ from the SDKs' and it runs as a separate program anyway.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

export AZURE_EMULATOR_BIN="${AZURE_EMULATOR_BIN:-$repo/target/debug/azure-emulator}"
if [[ ! -x "$AZURE_EMULATOR_BIN" ]]; then
    echo "contract suite: emulator binary not found or not executable: $AZURE_EMULATOR_BIN" >&2
    echo "  build it with 'cargo build -p azure-emulator', or point AZURE_EMULATOR_BIN at one" >&2
    exit 2
fi
export AZURE_SPECS_DIR="${AZURE_SPECS_DIR:-$repo/../shared/azure-specs}"

python="$("$here/sdk-venv.sh")"

# test_az_cli.py runs this az.
export AZ_CLI_BIN="$("$here/az-venv.sh")"

cd "$here"
# The SDKs must not pick up a developer's Azure settings or proxies: the suite talks to loopback only.
unset AZURE_CLIENT_ID AZURE_CLIENT_SECRET AZURE_TENANT_ID AZURE_AUTHORITY_HOST REQUESTS_CA_BUNDLE SSL_CERT_FILE
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
exec "$python" -m pytest -p no:cacheprovider "$@"
