"""The Ray deployments (thin shells) and the plain domain logic they own."""
