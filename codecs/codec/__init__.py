"""The RVQ codec: model, quantizer, container format, training, evaluation, export and bundling."""
