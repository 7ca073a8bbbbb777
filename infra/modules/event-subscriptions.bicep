// One Event Grid subscription per region, pushing every event of the topic to that region's
// `eventgrid` function (functions-host/worker/eventgrid, route `eventgrid` under `api`).
//
// Created in the second deployment pass only: Event Grid sends the validation handshake the
// moment a subscription is created, so the worker must already run and hold the `eventgrid`
// host key.
//
// Delivery: webhooks cannot be called with a managed identity (Event Grid delivers with its
// identity only to Azure services such as Service Bus, Event Hubs and Storage queues), so the
// function key travels in the URL, as Azure Functions expects. Dead-lettering does use the
// topic's managed identity (no storage key).
param topicName string
param regions array
param workerAppNames array
@secure()
param eventGridKey string
param deadLetterStorageId string
param deadLetterContainerName string
param maxEventsPerBatch int
param preferredBatchSizeInKilobytes int
param maxDeliveryAttempts int
param eventTimeToLiveInMinutes int

resource topic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: topicName
}

resource subscriptions 'Microsoft.EventGrid/topics/eventSubscriptions@2025-02-15' = [for (region, i) in regions: {
  parent: topic
  name: 'worker-${region}'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${workerAppNames[i]}.azurewebsites.net/api/eventgrid?code=${eventGridKey}'
        maxEventsPerBatch: maxEventsPerBatch
        preferredBatchSizeInKilobytes: preferredBatchSizeInKilobytes
      }
    }
    // Every worker records every command and notification (see ARCHITECTURE.md).
    filter: {
      includedEventTypes: [
        'recordUpdated'
        'transactionCompleted'
        'nodeHeartbeat'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}]

output subscriptionNames array = [for (region, i) in regions: subscriptions[i].name]
