"""The semantic tokenizer: model, k-means targets, training, evaluation and bundling."""
