"""Settings: every option and its bounds (``options``), job files (``jobfile``), and how outputs, progress
folders, staging folders and locks are named and kept off inputs (``naming``)."""
