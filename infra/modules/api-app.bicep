// The shop's API: a Flex Consumption Function App running `saldo-api` with the functions in
// functions-host/api, reached by the browser only through the Static Web App it is linked to.
param location string
param appName string
param storageName string
@description('Base URLs of the worker apps (read paths fan out to them; /api/nodes shows the fleet).')
param workerUrls array
param cosmosAccountName string
param databaseName string
param topicName string
param appInsightsConnectionString string
@secure()
param fleetKey string
param tags object

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
      SALDO_MONGODB_URI: mongoUri
      SALDO_DATABASE: databaseName
      SALDO_TOPIC_ENDPOINT: topic.properties.endpoint
      SALDO_NODES: join(workerUrls, ',')
      SALDO_FLEET_KEY: fleetKey
      // The reconcile timer (crates/api/src/reconcile.rs): every 10 s; after 3 runs unknown to
      // every node, an accepted command is delivered to the workers again.
      SALDO_RECONCILE_SCHEDULE: '*/10 * * * * *'
      APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
      RUST_LOG: 'info'
    }
  }
}

output appId string = app.outputs.appId
output appName string = app.outputs.appName
