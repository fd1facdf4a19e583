"""Sequential recommenders in torch: the device models (TTT4Rec, SASRec, GRU4Rec, DIN), the
TTT-Linear layer, the losses, the trainer, evaluation, checkpoints and the ONNX export.

The device's training and the cloud's item LM both train here; a device itself never imports
this package: it runs the exported graphs from a bundle (`device/`).
"""
