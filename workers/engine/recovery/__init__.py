"""Recovery audits (issue 22): does the forgetting survive quantization, pruning and relearning?

``transforms`` holds the weight transforms (int8 / 4-bit round-to-nearest, an NF4-style codebook, global
magnitude pruning), ``relearn`` the k-step relearning attacks and their data sources, ``scores`` the
recovery figures against the retrain control, ``params`` the job's params (torch-free) and ``job`` the job
kind's engine run. Every transform works on copies: the models it is given are never modified.
"""
