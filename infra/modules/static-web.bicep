// The shop's front end: a Static Web App (Standard, the plan that can link a backend) serving
// the React SPA from frontend/dist, with the API Function App linked as its /api backend.
// Managed SWA functions cannot run custom handlers, hence "bring your own functions".
param location string
param siteName string
param backendResourceId string
param backendLocation string
param tags object

resource site 'Microsoft.Web/staticSites@2024-04-01' = {
  name: siteName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    // Content is uploaded by `swa deploy` with the deployment token, not from a repository.
    allowConfigFileUpdates: true
    stagingEnvironmentPolicy: 'Disabled'
  }
}

// Linking puts the API behind the site's /api routes and its roles (staticwebapp.config.json);
// the site passes the signed-in user on in x-ms-client-principal, which the API re-checks.
resource backend 'Microsoft.Web/staticSites/linkedBackends@2024-04-01' = {
  parent: site
  name: 'api'
  properties: {
    backendResourceId: backendResourceId
    region: backendLocation
  }
}

output defaultHostname string = site.properties.defaultHostname
