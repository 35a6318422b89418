"""What the command line, the app and the figures share above the diffusion math: the model
store, PNG recipes, the one generation request, upscaling, model cards and figures."""
