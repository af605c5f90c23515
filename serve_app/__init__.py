"""The Serve application: ingress routes, wire schemas, error mapping, the ``neuroapi`` CLI."""
