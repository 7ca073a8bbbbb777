// One Function App on the Flex Consumption plan, running a Rust custom handler.
//
// Why Flex Consumption: Linux Consumption retires on 30 September 2028 and gets no new
// features; Flex Consumption scales to zero like it, runs custom handlers (runtime `custom`,
// set in functionAppConfig.runtime instead of FUNCTIONS_WORKER_RUNTIME, which Flex refuses),
// takes its storage and deployment package through the app's managed identity (no storage
// keys anywhere), and can keep instances always ready if cold starts ever matter.
//
// Each app gets its own plan (a plan is regional) and its own storage account: the host's
// locks and the deployment package of one region then never depend on another region, and two
// apps can never clash on a host id in shared storage.
param location string
param appName string
param storageName string
param topicName string
@description('App settings; secure because the database connection string is one of them.')
@secure()
param appSettings object
@description('Instance size. The Rust handlers need well under 100 MB, and Flex bills memory x active time, so the smallest size (512 MB) is the cheapest; 2048 is the other common choice.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512
@description('Flex Consumption scale-out limit. The worker is safe with several instances (the warehouse transaction decides who applies a command), but the bill is not: keep it small.')
param maximumInstanceCount int = 40
param tags object

// Built-in roles.
var blobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var eventGridDataSenderRoleId = 'd5a91429-5739-47e2-a06b-3470a27159e7'
var deploymentContainerName = 'app-package'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the app reaches its host storage from Flex Consumption without a virtual network; shared keys are off, so only the app's identity gets in
  // checkov:skip=CKV_AZURE_206: locally redundant on purpose: it holds only the host's timer locks and the package the deploy script uploads again; a region's app storage may fail with its region, which the fleet tolerates
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
    // The host and the deployment use the app's identity; no key is ever handed out.
    allowSharedKeyAccess: false
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption needs always-ready instances (billed at rest); Saldo's redundancy is one worker per region
  name: '${appName}-plan'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Event Grid webhooks, peer workers and the API call these apps over the internet; function keys guard every non-anonymous function
  // checkov:skip=CKV_AZURE_17: Event Grid cannot present a client certificate to a webhook; callers authenticate with function keys instead
  // checkov:skip=CKV_AZURE_212: the fleet of regions is the failover; always-ready instances would be billed at rest
  // checkov:skip=CKV_AZURE_213: Flex Consumption has no instance pool that a health check could take an instance out of; the heartbeat timer and /api/status report liveness
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
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(union(appSettings, {
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

// Keyless publishing: the app asks Entra for a token for https://eventgrid.azure.net with its
// managed identity, and this role lets that token publish to the topic (and nothing else).
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
