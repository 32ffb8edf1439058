"""Models of this plugin, one file per model (``recbole_histllm.model.<lowercase name>``)."""
