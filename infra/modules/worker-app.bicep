// One regional worker: a Flex Consumption Function App running `saldo-worker` with the
// functions in functions-host/worker (eventgrid, products, ledger, status, heartbeat, sweep).
param location string
param appName string
param storageName string
@description('Node name: the region, as in the local stack (ledger_<node>, peers_<node> collections).')
param nodeName string
@description('Base URLs of every worker, this one included (the peers are the others).')
param fleetUrls array
@description('Node names of every worker, this one included: heartbeats and completions from any other node are refused (SALDO_FLEET).')
param fleetNodes array
param cosmosAccountName string
param databaseName string
param topicName string
param appInsightsConnectionString string
@secure()
param fleetKey string
@secure()
param eventGridKey string
@description('Create the named host keys (second deployment pass, once the app runs code).')
param createHostKeys bool
param heartbeatSchedule string
param sweepSchedule string
param takeoverMs int
param livenessMs int
param tags object

var publicUrl = 'https://${appName}.azurewebsites.net'
// The other workers: the bootstrap list for catch-up.
var peerUrls = filter(fleetUrls, url => url != publicUrl)

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' existing = {
  name: cosmosAccountName
}

// The account hands out connection strings with `retrywrites=false` (and maxIdleTimeMS=120000,
// which the apps keep). The account has the EnableMongoRetryableWrites capability, so turn the
// driver's retry of a write after a network blip back on.
var mongoUri = replace(cosmos.listConnectionStrings().connectionStrings[0].connectionString, 'retrywrites=false', 'retrywrites=true')

resource topic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: topicName
}

module app 'flex-function-app.bicep' = {
  name: '${appName}-app'
  params: {
    location: location
    appName: appName
    storageName: storageName
    topicName: topicName
    tags: tags
    appSettings: {
      SALDO_NODE: nodeName
      SALDO_REGION: location
      // Cosmos DB for MongoDB (RU) has no Entra sign-in for the data plane, so the apps need
      // the account's connection string. It is read from the account at deployment time and
      // never written to a file or a parameter.
      SALDO_MONGODB_URI: mongoUri
      SALDO_DATABASE: databaseName
      // No SALDO_TOPIC_KEY: the topic refuses keys; the worker uses its managed identity.
      SALDO_TOPIC_ENDPOINT: topic.properties.endpoint
      SALDO_PUBLIC_URL: publicUrl
      SALDO_PEERS: join(peerUrls, ',')
      SALDO_FLEET: join(fleetNodes, ',')
      SALDO_FLEET_KEY: fleetKey
      SALDO_TAKEOVER_MS: string(takeoverMs)
      SALDO_LIVENESS_MS: string(livenessMs)
      SALDO_HEARTBEAT_SCHEDULE: heartbeatSchedule
      SALDO_SWEEP_SCHEDULE: sweepSchedule
      APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
      RUST_LOG: 'info'
    }
  }
}

// Named host keys, valid for every function of the app. `fleet` is what peers and the API send
// (x-functions-key) to call `ledger` and `products`; `eventgrid` goes into the Event Grid
// subscription's URL (?code=). Both values come from the deploy script: fresh on the first deploy (or
// --rotate-keys), the ones the workers already hold on the next.
resource fleetHostKey 'Microsoft.Web/sites/host/functionKeys@2024-04-01' = if (createHostKeys) {
  name: '${appName}/default/fleet'
  properties: {
    name: 'fleet'
    value: fleetKey
  }
  dependsOn: [
    app
  ]
}

resource eventGridHostKey 'Microsoft.Web/sites/host/functionKeys@2024-04-01' = if (createHostKeys) {
  name: '${appName}/default/eventgrid'
  properties: {
    name: 'eventgrid'
    value: eventGridKey
  }
  dependsOn: [
    app
  ]
}

output appName string = app.outputs.appName
output hostKeysCreated bool = createHostKeys
