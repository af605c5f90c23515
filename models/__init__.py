"""In-house inference: the engine interface, vLLM and CPU engines, the model catalog."""
