"""Class-conditional diffusion models and Score Forgetting Distillation (SFD), blindspot_sfd.md §2.

Layout (``params``, ``metrics`` and ``png`` are torch-free and safe for the API process; workers import
the rest lazily):

- ``params``     pydantic models: the model config (U-Net + noise schedule), DDPM training, sampling, SFD,
                 the metric classifier and the generative evaluation; the reference constants, named.
- ``schedule``   the linear-beta VP schedule (a_t = sqrt(alpha_bar_t), b_t = sqrt(1 - alpha_bar_t)).
- ``unet``       a small class-conditional conv U-Net with a null class for classifier-free guidance.
- ``ema``        the EMA of weights (teacher and generator).
- ``ddpm``       epsilon-prediction training with condition dropout, antithetic t, grad-norm clip and EMA.
- ``sampling``   strided ancestral DDPM / DDIM samplers with CFG, and the one-step SFD generator.
- ``sfd``        the SiD generator loss, the fake-score loss and the alternating data-free SFD loop.
- ``classifier`` the metric classifier (a small CNN trained on the real data; its penultimate features
                 feed the Frechet distance).
- ``metrics``    forget-class generation rate (UA), override rate, entropy, retained accuracy, Frechet
                 distance overall and per class.
- ``png``        a dependency-free PNG encoder for sample grids (classes x samples).
- ``checkpoint`` resumable safetensors step checkpoints; ``runtime`` device / reproducibility helpers;
  ``weights``    state dicts <-> ``dict[str, np.ndarray]``.
- ``api``        the typed entry points the job runner calls.
"""
