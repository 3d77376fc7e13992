"""The tiny run's fixtures (tiny_assets, tiny_uneven, tiny_uneven_batch4) are in tests/conftest.py:
the shared msrun job of tests/msrun_jobs.py uses them for parts of tests/train and tests/infer."""
