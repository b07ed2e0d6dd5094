"""The controller: resources, reconcilers, local runtime and the xDS server for the Envoy gateway."""
