# shellcheck shell=bash
# shellcheck disable=SC2034 # the constants and flags here are read by the scripts that source this file
# Common code of the operator's scripts (deploy, region, status, teardown). Sourced, never run.
#
# Every command that touches Azure, builds or uploads goes through `run` or `capture`, which
# print it first as one line starting with "+ " (secrets replaced by <redacted>). With --dry-run
# they print and do nothing else, so `deploy --dry-run` lists, in order, every command a real
# deploy would run, without needing az, func, cargo or a login. infra/tests/check.sh compares
# that list with the Bicep templates and functions-host/.
#
# Names: every resource name derives from the prefix and a region, exactly as in
# infra/main.bicep (section "Names"); the check compares both.
set -euo pipefail

SALDO_SCRIPT="saldo $(basename "$0")"
SALDO_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Paths printed in commands are relative to the repository root, so the dry-run output is the
# same on every machine.
cd "$SALDO_REPO_ROOT"

# Defaults, the same values as infra/main.parameters.json (checked by infra/tests/check.sh).
readonly DEFAULT_PREFIX="saldo"
readonly DEFAULT_REGIONS="westeurope,northeurope,swedencentral"
readonly DEFAULT_STATIC_SITE_LOCATION="westeurope"

readonly MUSL_TARGET="x86_64-unknown-linux-musl"
readonly TEMPLATE="infra/main.bicep"
readonly PARAMETERS="infra/main.parameters.json"
readonly STAGE_ROOT=".saldo/deploy"
# The worker's Event Grid webhook: routePrefix `api` + the `eventgrid` function's route.
readonly EVENTGRID_PATH="/api/eventgrid"
# Azure's limit on the number of worker regions in main.bicep (@maxLength(5)).
readonly MAX_REGIONS=5

# Azure public-cloud regions (`az account list-locations --query "[].name"`, physical regions).
# Checked offline so that a typo fails before anything is created; a real deploy then also asks
# Azure which of them offer Flex Consumption.
readonly KNOWN_REGIONS="australiacentral australiacentral2 australiaeast australiasoutheast
austriaeast belgiumcentral brazilsouth brazilsoutheast canadacentral canadaeast centralindia
centralus chilecentral denmarkeast eastasia eastus eastus2 francecentral francesouth germanynorth
germanywestcentral indonesiacentral israelcentral italynorth japaneast japanwest jioindiacentral
jioindiawest koreacentral koreasouth malaysiawest mexicocentral newzealandnorth northcentralus
northeurope norwayeast norwaywest polandcentral qatarcentral southafricanorth southafricawest
southcentralus southeastasia southindia spaincentral swedencentral swedensouth switzerlandnorth
switzerlandwest uaecentral uaenorth uksouth ukwest westcentralus westeurope westindia westus
westus2 westus3"
# Static Web Apps exist in these regions only (main.bicep @allowed).
readonly STATIC_SITE_LOCATIONS="westus2 centralus eastus2 westeurope eastasia"

DRY_RUN=0
ASSUME_YES=0
ROTATE_KEYS=0
PREFIX="${SALDO_PREFIX:-$DEFAULT_PREFIX}"
REGIONS_CSV="${SALDO_REGIONS:-$DEFAULT_REGIONS}"
STATIC_SITE_LOCATION="${SALDO_STATIC_SITE_LOCATION:-$DEFAULT_STATIC_SITE_LOCATION}"
REGIONS=()
ARGS=()
SECRETS=()

# The command trace goes to file descriptor 3 (the script's stdout), so that commands run
# inside $(capture ...) still show their trace line instead of it landing in the captured value.
exec 3>&1

# One clear line on stderr, non-zero exit.
die() {
  printf '%s: %s\n' "$SALDO_SCRIPT" "$*" >&2
  exit 1
}

# Progress for the operator; stderr, so that stdout is only the command trace.
note() {
  printf '%s: %s\n' "$SALDO_SCRIPT" "$*" >&2
}

# Remember a secret so that no trace line ever shows it.
add_secret() {
  [[ -n "$1" ]] && SECRETS+=("$1")
  return 0
}

# Quote one word the way a reader (and a POSIX shell) expects: bare when it is plain, else in
# single quotes.
quote_arg() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
  fi
}

print_cmd() {
  local line="+" arg secret
  for arg in "$@"; do
    line+=" $(quote_arg "$arg")"
  done
  for secret in "${SECRETS[@]+"${SECRETS[@]}"}"; do
    line="${line//"$secret"/<redacted>}"
  done
  printf '%s\n' "$line" >&3
}

# Run a command (or, with --dry-run, only print it).
run() {
  print_cmd "$@"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# Like run, but in DIR (printed as "+ cd DIR && command ...").
run_in() {
  local dir="$1"
  shift
  local line
  line="$(print_cmd "$@" 3>&1)"
  printf '+ cd %s && %s\n' "$(quote_arg "$dir")" "${line#+ }" >&3
  if ((DRY_RUN)); then
    return 0
  fi
  (cd "$dir" && "$@")
}

# Run a command and print its stdout, for $(capture PLACEHOLDER cmd ...). With --dry-run the
# command is only printed and PLACEHOLDER stands in for its output.
capture() {
  local placeholder="$1"
  shift
  print_cmd "$@"
  if ((DRY_RUN)); then
    printf '%s\n' "$placeholder"
    return 0
  fi
  "$@"
}

usage_common() {
  cat <<EOF
Options (every script):
  --dry-run                 print every command, one per line starting with "+ ", and run none
  --prefix P                name prefix (default \$SALDO_PREFIX or "$DEFAULT_PREFIX")
  --regions a,b,c           worker regions, the first is primary (default \$SALDO_REGIONS or
                            "$DEFAULT_REGIONS")
  --static-site-location L  Static Web App region (default "$DEFAULT_STATIC_SITE_LOCATION")
  -h, --help                this text
EOF
}

# Parse the options every script shares; the rest go to ARGS.
parse_common_args() {
  while (($#)); do
    case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --yes) ASSUME_YES=1 ;;
    --rotate-keys) ROTATE_KEYS=1 ;;
    --prefix)
      (($# >= 2)) || die "--prefix needs a value"
      PREFIX="$2"
      shift
      ;;
    --prefix=*) PREFIX="${1#--prefix=}" ;;
    --regions)
      (($# >= 2)) || die "--regions needs a value"
      REGIONS_CSV="$2"
      shift
      ;;
    --regions=*) REGIONS_CSV="${1#--regions=}" ;;
    --static-site-location)
      (($# >= 2)) || die "--static-site-location needs a value"
      STATIC_SITE_LOCATION="$2"
      shift
      ;;
    --static-site-location=*) STATIC_SITE_LOCATION="${1#--static-site-location=}" ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) ARGS+=("$1") ;;
    esac
    shift
  done
  validate_names
}

in_list() {
  local needle="$1" item
  for item in $2; do
    [[ "$item" == "$needle" ]] && return 0
  done
  return 1
}

# Refuse, before anything runs, any name Azure would refuse.
validate_names() {
  # Function App names are 2-60 characters of letters, digits and hyphens (global DNS names);
  # Cosmos DB accounts 3-44 lower-case; storage accounts take the prefix's letters and digits.
  # A prefix of 3-14 lower-case letters, digits and single hyphens fits all of them.
  if ! [[ "$PREFIX" =~ ^[a-z][a-z0-9-]{1,12}[a-z0-9]$ ]] || [[ "$PREFIX" == *--* ]]; then
    die "prefix '$PREFIX' is refused: use 3-14 lower-case letters, digits and single hyphens, starting with a letter and ending with a letter or digit"
  fi
  local region
  REGIONS=()
  IFS=',' read -r -a REGIONS <<<"$REGIONS_CSV"
  ((${#REGIONS[@]} >= 1)) || die "no regions given (--regions a,b,c)"
  ((${#REGIONS[@]} <= MAX_REGIONS)) || die "at most $MAX_REGIONS worker regions, got ${#REGIONS[@]}"
  local seen=" " hostids=" " hostid
  for region in "${REGIONS[@]}"; do
    in_list "$region" "$KNOWN_REGIONS" || die "unknown region '$region' (expected an Azure region name such as westeurope)"
    [[ "$seen" != *" $region "* ]] || die "region '$region' is listed twice"
    seen+="$region "
    # Apps sharing a storage account must differ in their first 32 characters (the host id).
    # Each app here has its own storage account, but keep names safe for sharing anyway.
    hostid="$(worker_app "$region")"
    hostid="${hostid:0:32}"
    [[ "$hostids" != *" $hostid "* ]] || die "worker app names for the regions collide in their first 32 characters ('$hostid'): use a shorter prefix"
    hostids+="$hostid "
  done
  in_list "$STATIC_SITE_LOCATION" "$STATIC_SITE_LOCATIONS" ||
    die "Static Web Apps are not offered in '$STATIC_SITE_LOCATION' (choose one of: $STATIC_SITE_LOCATIONS)"
}

# --- Names (the same formulas as infra/main.bicep) -------------------------------------------
primary_region() { printf '%s' "${REGIONS[0]}"; }
resource_group() { printf '%s-rg' "$PREFIX"; }
worker_app() { printf '%s-worker-%s' "$PREFIX" "$1"; }
api_app() { printf '%s-api' "$PREFIX"; }
topic_name() { printf '%s-topic' "$PREFIX"; }
cosmos_account() { printf '%s-cosmos' "$PREFIX"; }
static_site() { printf '%s-web' "$PREFIX"; }
infra_deployment() { printf '%s-infra' "$PREFIX"; }
keys_deployment() { printf '%s-keys' "$PREFIX"; }
wire_deployment() { printf '%s-wire' "$PREFIX"; }
app_url() { printf 'https://%s.azurewebsites.net' "$1"; }

# Functions of an app folder (functions-host/<app>/<function>/function.json), sorted.
function_names() {
  local dir="functions-host/$1" f
  [[ -f "$dir/host.json" ]] || die "missing $dir/host.json (is this a Saldo checkout?)"
  for f in "$dir"/*/function.json; do
    [[ -e "$f" ]] || continue
    f="${f%/function.json}"
    printf '%s\n' "${f##*/}"
  done | LC_ALL=C sort
}

# The handler binary an app folder names (host.json customHandler.description.defaultExecutablePath).
handler_binary() {
  local host="functions-host/$1/host.json" name
  name="$(sed -n 's/.*"defaultExecutablePath"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$host")"
  [[ -n "$name" ]] || die "$host names no customHandler.description.defaultExecutablePath"
  printf '%s' "$name"
}

# --- Prerequisites (skipped by --dry-run, which needs none of these) -------------------------
require_tools() {
  ((DRY_RUN)) && return 0
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool': $(install_hint "$tool")"
  done
}

install_hint() {
  case "$1" in
  az) printf 'install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli)' ;;
  func) printf 'install Azure Functions Core Tools 4 (npm install -g azure-functions-core-tools@4)' ;;
  cargo | rustup) printf 'install Rust with rustup (https://rustup.rs)' ;;
  musl-gcc) printf 'install the musl C toolchain (apt-get install musl-tools)' ;;
  swa) printf 'install the Static Web Apps CLI (npm install -g @azure/static-web-apps-cli)' ;;
  npm) printf 'install Node.js 20 or later with npm' ;;
  curl) printf 'install curl (apt-get install curl)' ;;
  *) printf 'install it and put it on PATH' ;;
  esac
}

require_musl_target() {
  print_cmd rustup target list --installed
  ((DRY_RUN)) && return 0
  rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET" ||
    die "missing Rust target $MUSL_TARGET: run 'rustup target add $MUSL_TARGET'"
}

require_login() {
  print_cmd az account show --query id --output tsv
  ((DRY_RUN)) && return 0
  az account show --query id --output tsv >/dev/null 2>&1 ||
    die "not logged in to Azure: run 'az login' (and 'az account set --subscription ...')"
}

# Every worker region must offer Flex Consumption (a subset of Azure's regions, growing).
require_flex_regions() {
  print_cmd az functionapp list-flexconsumption-locations --query '[].name' --output tsv
  ((DRY_RUN)) && return 0
  local offered region
  # Compared without spaces and case, in case the names come back as display names.
  offered="$(az functionapp list-flexconsumption-locations --query '[].name' --output tsv | tr -d ' \r' | tr '[:upper:]' '[:lower:]')" ||
    die "could not list the regions that offer Flex Consumption (az functionapp list-flexconsumption-locations failed)"
  for region in "${REGIONS[@]}"; do
    in_list "$region" "$offered" || die "region '$region' does not offer Flex Consumption Function Apps"
  done
}

# A whole number from the environment (or the default), refused in one line if it is not one.
env_count() { # $1 = variable name, $2 = default, $3 = smallest allowed
  local value="${!1:-$2}"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < $3)); then
    die "$1 must be a whole number of at least $3, got '$value'"
  fi
  printf '%s' "$value"
}

# A fresh random key (48 hex characters) for a function host key.
new_key() {
  od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}
