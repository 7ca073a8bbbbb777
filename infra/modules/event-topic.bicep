// The Event Grid custom topic every command and notification goes through, and the storage
// account whose blob container receives what Event Grid could not deliver.
//
// Keyless: local (key and SAS) auth is off, so only Entra identities holding the role
// "EventGrid Data Sender" on this topic can publish (the API and the workers, see
// worker-app.bicep and api-app.bicep). Locally the emulator takes a key instead; the same
// publisher code (crates/publish) picks the mode from SALDO_TOPIC_KEY being set or not.
param location string
param topicName string
param deadLetterStorageName string
param deadLetterContainerName string
param logAnalyticsId string
param tags object

// Built-in role: Storage Blob Data Contributor.
var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource topic 'Microsoft.EventGrid/topics@2025-02-15' = {
  // checkov:skip=CKV_AZURE_193: the publishers are Flex Consumption apps without a virtual network; local auth is off, so only identities holding EventGrid Data Sender can publish
  name: topicName
  location: location
  tags: tags
  // The topic's own identity writes dead letters (deadLetterWithResourceIdentity), so the
  // subscriptions need no storage key.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    // The workers and the API publish over the internet from Flex Consumption apps without a
    // virtual network; Entra auth is the gate (see the checkov skip above).
    publicNetworkAccess: 'Enabled'
  }
}

resource deadLetterStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Event Grid writes dead letters from outside any virtual network; shared keys are off, so only the topic's identity and the operator get in
  // checkov:skip=CKV_AZURE_43: the name is prefix letters + 13 characters of uniqueString(), always 3-24 lower-case letters and digits, which checkov cannot evaluate
  // checkov:skip=CKV_AZURE_206: zone-redundant (ZRS) is enough: dead letters are a diagnostic copy (a stopped region catches up from its peers), and geo-replication would copy them to a region Saldo does not run in
  name: deadLetterStorageName
  location: location
  tags: tags
  kind: 'StorageV2'
  // Zone-redundant: dead letters are the record of what a stopped region missed.
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    // Only identities (the topic, the operator) reach it.
    allowSharedKeyAccess: false
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: deadLetterStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource topicWritesDeadLetters 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterStorage.id, topic.id, blobDataContributorRoleId)
  scope: deadLetterStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Delivery failures and publish failures land in the workspace (the demo's "what did the stopped
// region miss" query reads them).
resource topicDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: topic
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output topicName string = topic.name
output endpoint string = topic.properties.endpoint
output deadLetterStorageId string = deadLetterStorage.id
