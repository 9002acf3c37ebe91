"""Privacy audits: per-example membership attacks over many shadow pipelines, with a shadow-model store.

``params`` (torch-free) validates an audit's parameters; ``store`` defines the shadow-model store interface
and its content keys (torch-free); ``pipeline`` (torch) trains or reuses the shadows, runs the audited
unlearning method on every pipeline and computes U-LiRA, the Kaggle score, LiRA and RMIA.
"""
