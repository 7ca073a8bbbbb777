// Cosmos DB for MongoDB (RU-based): the warehouse, the per-node ledgers and the API's
// idempotency records.
//
// Choices (see infra/README.md for the costs):
// - ONE write region (the first region), read regions beside the other workers. Multi-region
//   writes resolve conflicts last-writer-wins, which could sell the same stock twice.
// - Consistency Strong. Every stock change is a multi-document transaction in the write region,
//   so a worker always reads its own writes whatever the level; what Strong adds is RPO = 0 on a
//   regional failover: a committed "applied" marker is never lost when the read region in line
//   takes over the writes, so no command is executed twice after a failover. The price is
//   write latency of a round trip to the farthest region (all three default regions are in
//   Europe, well within the 5,000-mile limit Azure sets for Strong) and reads that cost twice
//   the RUs of Session consistency; at this shop's volume that is cents.
// - Provisioned autoscale throughput shared by the database rather than serverless: serverless
//   accounts cannot have more than one region. Autoscale bills a tenth of the maximum at rest.
// - Every collection unsharded (no shard key): Cosmos DB runs multi-document transactions only
//   inside one unsharded collection, and the warehouse keeps products and "applied" markers
//   together for exactly that reason.
// - Server version 4.2 with EnableMongoRetryableWrites (drivers retry a write once after a
//   network blip; without the capability Cosmos DB refuses retryWrites=true).
param accountName string
param regions array
param databaseName string
param maxThroughput int
param freeTier bool
param tags object

// warehouse: products and applied markers (one unsharded collection, so they can share a
// transaction); idempotency: the API's order records; one ledger and one peer table per node.
var sharedCollections = [
  'warehouse'
  'idempotency'
]
var ledgerCollections = [for region in regions: 'ledger_${region}']
var peerCollections = [for region in regions: 'peers_${region}']
var collectionNames = concat(sharedCollections, ledgerCollections, peerCollections)

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  // checkov:skip=CKV_AZURE_132: the store creates its indexes at start-up through the MongoDB driver (one definition for SecantusDB and Cosmos DB), which needs key-based metadata writes
  // checkov:skip=CKV_AZURE_101: the Flex Consumption apps have no virtual network, so they reach the account over its public endpoint (TLS 1.2 and the account key); private endpoints in every region are a later hardening step
  name: accountName
  location: regions[0]
  kind: 'MongoDB'
  tags: tags
  properties: {
    databaseAccountOfferType: 'Standard'
    enableFreeTier: freeTier
    apiProperties: {
      serverVersion: '4.2'
    }
    capabilities: [
      {
        name: 'EnableMongo'
      }
      {
        name: 'EnableMongoRetryableWrites'
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Strong'
    }
    enableMultipleWriteLocations: false
    // If the write region goes down, Cosmos DB promotes the next region in failoverPriority order.
    enableAutomaticFailover: true
    locations: [for (region, i) in regions: {
      locationName: region
      failoverPriority: i
      isZoneRedundant: false
    }]
    minimalTlsVersion: 'Tls12'
    backupPolicy: {
      type: 'Continuous'
      continuousModeProperties: {
        tier: 'Continuous7Days'
      }
    }
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/mongodbDatabases@2024-11-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
    options: {
      autoscaleSettings: {
        maxThroughput: maxThroughput
      }
    }
  }
}

// Only the _id index is declared here (Cosmos DB requires it in the resource). The store creates
// the other indexes at start-up through the MongoDB driver, the same code that runs against
// SecantusDB locally, so one definition of the indexes serves both.
resource collections 'Microsoft.DocumentDB/databaseAccounts/mongodbDatabases/collections@2024-11-15' = [for name in collectionNames: {
  parent: database
  name: name
  properties: {
    resource: {
      id: name
      indexes: [
        {
          key: {
            keys: [
              '_id'
            ]
          }
        }
      ]
    }
  }
}]

output accountName string = account.name
output collectionNames array = collectionNames
