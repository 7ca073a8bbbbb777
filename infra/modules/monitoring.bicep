// Logs and traces: one Log Analytics workspace and one workspace-based Application Insights
// resource for every app, so the application map shows the API, the three workers and the
// calls between them (operation id = W3C trace id, carried in events as data.traceparent).
param location string
param logAnalyticsName string
param appInsightsName string
param retentionDays int
param tags object

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionDays
    // A daily cap keeps a runaway log loop from running up the bill (see infra/README.md, costs).
    workspaceCapping: {
      dailyQuotaGb: 1
    }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  kind: 'web'
  tags: tags
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
  }
}

output logAnalyticsId string = workspace.id
// The connection string identifies where to send telemetry; it is not a credential for reading it.
output connectionString string = insights.properties.ConnectionString
