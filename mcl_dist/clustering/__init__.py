"""What happens between two stages: the distributed embedding of the training set (embedding.py),
distributed k-means (kmeans.py, auto_k.py), the pseudo-labels (pseudo_labels.py), the stop signal,
and the cluster inspector."""
