"""The runtime under a classifier: devices and dtypes, CPU features, torch and ONNX runners, int8 kernels,
``--precision`` and its tuning, and ``batchsent info``. It never imports the model part: a tuning is handed
the ``Classifier`` to measure."""
