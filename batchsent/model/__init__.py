"""The model: loading (``loading``), tokenized chunks and their batch plans (``encoding``, ``batching``), the
``Classifier`` (``classifier``) and the pipeline's post-processing (``postprocess``)."""
