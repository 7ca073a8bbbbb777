// The API's Function App: a Rust custom handler on a Linux Dedicated (App Service) plan, linked
// to the Static Web App as its backend.
//
// Why not Flex Consumption like the workers (see infra/README.md, "The API's front door"):
// - Static Web Apps documents Consumption, Premium and Dedicated as the plans of a linked
//   ("bring your own") Functions app (static-web-apps/apis-functions);
// - linking locks the app to the Static Web App through App Service authentication
//   (static-web-apps/functions-bring-your-own, "Security constraints"), and on Flex Consumption
//   that is not enforced: "Unauthenticated callers currently aren't blocked when EasyAuth is
//   enabled in a Flex Consumption plan app" (azure-functions/flex-consumption-plan,
//   "Considerations"). The API trusts `x-ms-client-principal`, so a direct call with a forged
//   principal would set stock;
// - of the documented plans, Dedicated runs custom handlers with identity-based host storage and
//   a zip deployment through Core Tools, at a fixed price (Basic B1 ≈ $13/month); Linux
//   Consumption retires on 30 September 2028, and Premium bills at least one always-on
//   elastic instance (about ten times as much).
// The deploy script checks the lock after publishing: a request straight to this app must be
// refused by the platform (infra/scripts/deploy, step 6).
param location string
param appName string
param storageName string
param topicName string
@description('App settings; secure because the database connection string is one of them.')
@secure()
param appSettings object
param tags object

// Built-in roles.
var blobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var eventGridDataSenderRoleId = 'd5a91429-5739-47e2-a06b-3470a27159e7'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the API reaches its host storage without a virtual network (a linked backend must stay publicly reachable); shared keys are off, so only the app's identity gets in
  // checkov:skip=CKV_AZURE_206: locally redundant on purpose: it holds only the host's locks and keys, which a redeploy recreates
  // checkov:skip=CKV_AZURE_43: the name is prefix letters + 13 characters of uniqueString(), always 3-24 lower-case letters and digits, which checkov cannot evaluate
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy needs Premium v3 with at least three instances; one Basic instance serves a small shop's stateless API
  name: '${appName}-plan'
  location: location
  tags: tags
  kind: 'linux'
  sku: {
    name: 'B1'
    tier: 'Basic'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: a linked Static Web Apps backend must be publicly reachable (no IP restrictions, no private endpoint); linking locks it to the Static Web App instead
  // checkov:skip=CKV_AZURE_17: the Static Web App proxies to its linked backend without a client certificate
  // checkov:skip=CKV_AZURE_212: one instance: the API is stateless and a restart costs seconds; the regions' workers carry the fleet's redundancy
  // checkov:skip=CKV_AZURE_213: one instance (see the plan): a health check has no other instance to route to; the deploy script probes the app
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // A Dedicated plan unloads idle apps unless Always On is set.
      alwaysOn: true
      appSettings: [for setting in items(union(appSettings, {
        FUNCTIONS_EXTENSION_VERSION: '~4'
        // Outside Flex Consumption the runtime is an app setting.
        FUNCTIONS_WORKER_RUNTIME: 'custom'
        // Identity-based host storage: only the account name, no connection string.
        AzureWebJobsStorage__accountName: storage.name
      })): {
        name: setting.key
        value: setting.value
      }]
    }
  }
}

resource appOwnsItsStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, app.id, blobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataOwnerRoleId)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource topic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: topicName
}

// Keyless publishing, as on the workers (flex-function-app.bicep).
resource appPublishesToTopic 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, app.id, eventGridDataSenderRoleId)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSenderRoleId)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output appId string = app.id
output appName string = app.name
output defaultHostName string = app.properties.defaultHostName
