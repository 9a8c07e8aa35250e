"""CluP stage 1's mathematics, on arrays: no Lightning, no files.

`cluster_pseudo_labels` is the whole of it (k-means, vote, score, select), built from
`kmeans` (faiss and scikit-learn k-means with k-means++ starts), `pseudo_labels` (purity,
labels and the per-class selection), `scores` (the rules that rank the samples) and
diagnosed by `diagnostics` (how good pseudo-labels are and how well each rule ranks them,
and the baselines' kNN and class-share diagnostics); `features` keeps the stage's
embeddings on disk. The stage itself (`clup.stages.cluster_labeler`) only runs the
prediction pass and writes the artifacts.
"""

from clup.clustering.cluster_labels import PseudoLabels, cluster_pseudo_labels

__all__ = ["PseudoLabels", "cluster_pseudo_labels"]
