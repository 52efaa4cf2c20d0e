"""Using trained models: the predictor behind predict.py and the web page (both models on a batch of
slices, with their warnings), Grad-CAM maps, and the models bundled in models/. Above lightning_modules,
apart from training, as MONAI keeps its inferers."""
