"""Numeric kernels behind the methods and acquisition strategies: pure functions on tensors and arrays.

No Lightning here. kNN search and k-means go through faiss (on the GPU when faiss-gpu and a GPU
are present); the rest is vectorised torch or sparse scipy, never an N x N dense matrix.
"""

from al_lightning.ops.alfamix import alfamix_candidates, alfamix_select
from al_lightning.ops.as3l import (constrained_seed_kmeans, finetune_features, kmeans_runs, prior_pseudo_labels,
                                  stable_cluster_select, stable_clusters)
from al_lightning.ops.cdal import contextual_diversity_k_center
from al_lightning.ops.faiss_ops import kmeans, knn_search, nearest_to_centres, range_search
from al_lightning.ops.indexing import last_occurrence, occurrence_rank
from al_lightning.ops.kcenter import k_center_greedy, row_sq_norms
from al_lightning.ops.kmedoids import k_medoids
from al_lightning.ops.kmeanspp import badge_kmeanspp, badge_pairwise_sq_distances, kmeanspp
from al_lightning.ops.label_propagation import (conjugate_gradient, joint_label_propagation_select, knn_affinity,
                                                label_propagation)
from al_lightning.ops.probcover import (ball_graph, ball_purity, nearest_other_label_distance, probcover_delta,
                                       probcover_greedy, probcover_select, purity_delta)
from al_lightning.ops.typiclust import typiclust_from_clusters, typiclust_select, typicality
from al_lightning.ops.usl import knn_density, usl_select

__all__ = ["alfamix_candidates", "alfamix_select", "badge_kmeanspp", "badge_pairwise_sq_distances",
           "ball_graph", "ball_purity", "conjugate_gradient", "constrained_seed_kmeans",
           "contextual_diversity_k_center", "finetune_features", "joint_label_propagation_select",
           "k_center_greedy", "k_medoids", "kmeans", "kmeans_runs", "kmeanspp", "knn_affinity", "knn_density",
           "knn_search", "label_propagation", "last_occurrence", "nearest_other_label_distance",
           "nearest_to_centres", "occurrence_rank", "prior_pseudo_labels", "probcover_delta",
           "probcover_greedy", "probcover_select", "purity_delta", "range_search", "row_sq_norms",
           "stable_cluster_select", "stable_clusters", "typicality", "typiclust_from_clusters",
           "typiclust_select", "usl_select"]
