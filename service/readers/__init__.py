"""The reader study: vote and Likert file formats (:mod:`.rankings`) and the paper's agreement
statistics (:mod:`.agreement`). Pure NumPy, no torch: the training pipeline and the reader app
share one implementation."""
