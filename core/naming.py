"""Names every layer agrees on: Serve deployment names and the in-house provider's name."""

IN_HOUSE_PROVIDER = "inhouse"  # the provider name of models served on our own replicas
MODEL_DEPLOYMENT = "Model-"  # + an in-house model's name
PROVIDER_DEPLOYMENT = "Provider-"  # + a third-party provider's name


def model_deployment(model: str) -> str:
    return MODEL_DEPLOYMENT + model


def provider_deployment(provider: str) -> str:
    return PROVIDER_DEPLOYMENT + provider


def in_house_model_of(deployment: str) -> str | None:
    """The in-house model a deployment serves, or None for any other deployment."""
    return deployment.removeprefix(MODEL_DEPLOYMENT) if deployment.startswith(MODEL_DEPLOYMENT) else None
