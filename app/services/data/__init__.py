"""Data lifecycle: datasets and their sources, models, forget sets, artifact references, deletion and
retention."""
