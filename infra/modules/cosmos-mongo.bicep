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
// - Provisioned autoscale throughput rather than serverless: serverless accounts cannot have
//   more than one region. Autoscale bills, each hour, the highest RU/s it scaled to, at least a
//   tenth of the maximum (maximum 1,000 RU/s at the least, so 100 RU/s at rest per resource).
// - Two kinds of collections, because Cosmos DB for MongoDB refuses an unsharded collection in a
//   database with shared throughput ("Shared throughput collection should have a partition key")
//   and runs multi-document transactions only inside ONE UNSHARDED collection:
//   * transactional collections: unsharded, each with its own (dedicated) autoscale throughput:
//     `warehouse` (products and "applied" markers change in one transaction) and every
//     `ledger_<node>` (a node allocates its sequence numbers in its ledger, which the feed design
//     may do in a transaction with the entry);
//   * the others, sharded on `_id` and sharing the database's autoscale throughput:
//     `idempotency`, every `peers_<node>` and every `quarantine_<node>` (the bad events a node
//     kept), which the code reads and writes one document at a time by `_id` (or scans a range
//     of it), so `_id` is the natural shard key.
//   infra/tests/azure_rules.py checks both rules and that every collection the code opens is
//   declared here (a collection created by a first write would be unsharded, hence refused).
// - Server version 4.2 with EnableMongoRetryableWrites (drivers retry a write once after a
//   network blip; without the capability Cosmos DB refuses retryWrites=true).
param accountName string
param regions array
param databaseName string
@description('Autoscale maximum RU/s shared by the sharded collections (billed from a tenth of it).')
param sharedMaxThroughput int
@description('Autoscale maximum RU/s of EACH transactional collection (billed from a tenth of it).')
param collectionMaxThroughput int
param freeTier bool
param tags object

// Unsharded, dedicated throughput: the collections that take multi-document transactions.
var nodeLedgers = [for region in regions: 'ledger_${region}']
var transactionalCollections = concat([
  'warehouse'
], nodeLedgers)
// Sharded on `_id`, in the database's shared throughput.
var nodePeers = [for region in regions: 'peers_${region}']
var nodeQuarantines = [for region in regions: 'quarantine_${region}']
var shardedCollections = concat([
  'idempotency'
], nodePeers, nodeQuarantines)
var collectionNames = concat(transactionalCollections, shardedCollections)

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
        maxThroughput: sharedMaxThroughput
      }
    }
  }
}

// Only the _id index is declared here (Cosmos DB requires it in the resource). The store creates
// the other indexes at start-up through the MongoDB driver, the same code that runs against
// SecantusDB locally, so one definition of the indexes serves both.
resource transactional 'Microsoft.DocumentDB/databaseAccounts/mongodbDatabases/collections@2024-11-15' = [for name in transactionalCollections: {
  parent: database
  name: name
  properties: {
    resource: {
      id: name
      // No shardKey: transactions need an unsharded collection, which needs its own throughput.
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
    options: {
      autoscaleSettings: {
        maxThroughput: collectionMaxThroughput
      }
    }
  }
}]

resource sharded 'Microsoft.DocumentDB/databaseAccounts/mongodbDatabases/collections@2024-11-15' = [for name in shardedCollections: {
  parent: database
  name: name
  properties: {
    resource: {
      id: name
      // A collection in a shared-throughput database must have a shard key.
      shardKey: {
        _id: 'Hash'
      }
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
    // No options: the collection draws on the database's shared autoscale throughput.
  }
}]

output accountName string = account.name
output collectionNames array = collectionNames
